//! The server over raw HTTP: answers equal the engine's own generation (what `moestream
//! generate` runs) alone and under concurrency, the prompt cache, every error case in
//! OpenAI's shape without disturbing other requests, the bounded queue, and client
//! disconnects.

mod common;

use common::*;
use moestream_engine::sampling::{Sampler, SamplingParams};
use moestream_engine::TextParams;
use serde_json::{json, Value};
use std::time::{Duration, Instant};

/// What the engine generates alone for a chat prompt (the `moestream generate` path).
fn lone(messages: &Value, sampling: SamplingParams, max_tokens: usize) -> String {
    let engine = engine();
    let prompt = engine
        .chat_prompt(messages.as_array().unwrap(), None, &Default::default())
        .unwrap();
    let mut cache = engine.model().new_cache();
    let params = TextParams {
        max_tokens,
        stop: &[],
        logprobs: None,
    };
    let mut text = String::new();
    let out = engine
        .generate_text(
            &mut cache,
            &prompt,
            Sampler::new(sampling),
            &params,
            &mut |ev| {
                text.push_str(ev.text);
                true
            },
        )
        .unwrap();
    text + &out.tail
}

fn messages(i: usize) -> Value {
    json!([{"role": "system", "content": "You are a test."},
           {"role": "user", "content": format!("Question number {i}: what comes next?")}])
}

fn chat_body(i: usize, seed: u64, temperature: f32, max_tokens: usize, stream: bool) -> String {
    json!({"model": "tiny", "messages": messages(i), "seed": seed, "temperature": temperature,
           "max_tokens": max_tokens, "stream": stream})
    .to_string()
}

fn stream_text(r: &Reply) -> (String, Option<String>) {
    let mut text = String::new();
    let mut finish = None;
    let events = r.events();
    assert_eq!(
        events.last().map(String::as_str),
        Some("[DONE]"),
        "{}",
        r.body
    );
    for e in &events[..events.len() - 1] {
        let v: Value = serde_json::from_str(e).unwrap();
        let c = &v["choices"][0];
        text.push_str(c["delta"]["content"].as_str().unwrap_or(""));
        if let Some(f) = c["finish_reason"].as_str() {
            finish = Some(f.to_string());
        }
    }
    (text, finish)
}

#[test]
fn answers_equal_the_engine_alone_greedy_and_seeded() {
    let srv = start(config());
    for (temperature, seed) in [(0.0, 1), (0.9, 7), (0.9, 8)] {
        let sampling = SamplingParams {
            temperature,
            seed: Some(seed),
            ..Default::default()
        };
        let want = lone(&messages(0), sampling, 12);
        let r = post(
            srv.addr,
            "/v1/chat/completions",
            &chat_body(0, seed, temperature, 12, false),
        );
        assert_eq!(r.status, 200, "{}", r.body);
        let v = r.json();
        assert_eq!(v["choices"][0]["message"]["content"], want.as_str());
        assert_eq!(v["choices"][0]["finish_reason"], "length");
        assert_eq!(v["usage"]["completion_tokens"], 12);
        let s = post(
            srv.addr,
            "/v1/chat/completions",
            &chat_body(0, seed, temperature, 12, true),
        );
        assert_eq!(stream_text(&s), (want, Some("length".into())));
    }
}

#[test]
fn concurrent_requests_are_batched_and_each_answer_is_its_own() {
    let srv = start(config());
    let n = 12;
    let want: Vec<String> = (0..n)
        .map(|i| {
            let sampling = SamplingParams {
                temperature: 0.8,
                seed: Some(i as u64),
                ..Default::default()
            };
            lone(&messages(i), sampling, 16)
        })
        .collect();
    let addr = srv.addr;
    let handles: Vec<_> = (0..n)
        .map(|i| {
            std::thread::spawn(move || {
                let r = post(
                    addr,
                    "/v1/chat/completions",
                    &chat_body(i, i as u64, 0.8, 16, i % 2 == 0),
                );
                assert_eq!(r.status, 200, "{}", r.body);
                if i % 2 == 0 {
                    stream_text(&r).0
                } else {
                    r.json()["choices"][0]["message"]["content"]
                        .as_str()
                        .unwrap()
                        .to_string()
                }
            })
        })
        .collect();
    for (i, h) in handles.into_iter().enumerate() {
        assert_eq!(h.join().unwrap(), want[i], "request {i}");
    }
    let m = get(srv.addr, "/metrics").body;
    let value = |name: &str| -> f64 {
        m.lines()
            .find_map(|l| l.strip_prefix(&format!("{name} ")))
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("{name} missing from {m}"))
    };
    // Batching happened: fewer passes than sequence-steps.
    assert!(
        value("moestream_forward_sequences_total") > value("moestream_forward_passes_total"),
        "{m}"
    );
    assert_eq!(value("moestream_completion_tokens_total"), (16 * n) as f64);
    // The scheduler updates the gauge right after sending the last events.
    let t0 = Instant::now();
    while get(srv.addr, "/health").json()["active_sequences"] != 0 {
        assert!(
            t0.elapsed() < Duration::from_secs(10),
            "sequences left active"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn a_repeated_prefix_comes_from_the_prompt_cache() {
    let srv = start(config());
    let long_system = "You answer questions about the weather. ".repeat(30);
    let body = |q: &str| {
        json!({"messages": [{"role": "system", "content": long_system},
                            {"role": "user", "content": q}],
               "temperature": 0, "max_tokens": 6})
        .to_string()
    };
    let a = post(srv.addr, "/v1/chat/completions", &body("Will it rain?")).json();
    assert_eq!(a["usage"]["prompt_tokens_details"]["cached_tokens"], 0);
    let b = post(srv.addr, "/v1/chat/completions", &body("Will it snow?")).json();
    let cached = b["usage"]["prompt_tokens_details"]["cached_tokens"]
        .as_u64()
        .unwrap();
    let prompt = b["usage"]["prompt_tokens"].as_u64().unwrap();
    assert!(
        cached > 200 && cached < prompt,
        "cached {cached} of {prompt}"
    );
    // Reusing the cache changes nothing in the answer.
    let msgs = json!([{"role": "system", "content": long_system}, {"role": "user", "content": "Will it snow?"}]);
    let want = lone(&msgs, SamplingParams::default(), 6);
    assert_eq!(b["choices"][0]["message"]["content"], want.as_str());
    // With the cache off nothing is reused.
    let mut cfg = config();
    cfg.scheduler.prompt_cache_entries = 0;
    let off = start(cfg);
    post(off.addr, "/v1/chat/completions", &body("Will it rain?"));
    let c = post(off.addr, "/v1/chat/completions", &body("Will it snow?")).json();
    assert_eq!(c["usage"]["prompt_tokens_details"]["cached_tokens"], 0);
}

fn assert_error(r: &Reply, status: u16, param: Option<&str>) {
    assert_eq!(r.status, status, "{}", r.body);
    let v = r.json();
    let e = &v["error"];
    assert!(e["message"].as_str().is_some_and(|m| !m.is_empty()), "{v}");
    assert!(e["type"].is_string(), "{v}");
    assert!(e.get("param").is_some() && e.get("code").is_some(), "{v}");
    if let Some(p) = param {
        assert_eq!(e["param"], p, "{v}");
    }
}

#[test]
fn bad_requests_get_openai_errors_and_disturb_nothing() {
    let mut cfg = config();
    cfg.max_prompt_tokens = 64;
    let srv = start(cfg);
    let a = srv.addr;
    let chat = "/v1/chat/completions";
    // A long generation runs throughout; it must finish intact.
    let addr = a;
    let bystander = std::thread::spawn(move || post(addr, chat, &chat_body(3, 3, 0.0, 40, true)));
    let cases: Vec<(&str, String, u16, Option<&str>)> = vec![
        (chat, "{\"messages\": [".into(), 400, None),
        (chat, "[1, 2]".into(), 400, None),
        (chat, r#"{"messages": "hi"}"#.into(), 400, Some("messages")),
        (chat, r#"{"messages": []}"#.into(), 400, Some("messages")),
        (
            chat,
            r#"{"messages": [{"role": "user", "content": "a"}], "max_tokens": -1}"#.into(),
            400,
            Some("max_tokens"),
        ),
        (
            chat,
            r#"{"messages": [{"role": "user", "content": "a"}], "max_tokens": 100000000}"#.into(),
            400,
            Some("max_tokens"),
        ),
        (
            chat,
            r#"{"messages": [{"role": "user", "content": "a"}], "temperature": "hot"}"#.into(),
            400,
            Some("temperature"),
        ),
        (
            chat,
            r#"{"messages": [{"role": "user", "content": "a"}], "top_p": 1.5}"#.into(),
            400,
            Some("top_p"),
        ),
        (
            chat,
            r#"{"messages": [{"role": "user", "content": "a"}], "bogus": 1}"#.into(),
            400,
            None,
        ),
        (
            chat,
            json!({"messages": [{"role": "user", "content": "word ".repeat(100)}]}).to_string(),
            400,
            Some("messages"),
        ),
        (
            chat,
            r#"{"model": "gpt-9", "messages": [{"role": "user", "content": "a"}]}"#.into(),
            404,
            Some("model"),
        ),
        (
            "/v1/completions",
            r#"{"prompt": [999999999]}"#.into(),
            400,
            Some("prompt"),
        ),
        (
            "/v1/completions",
            r#"{"prompt": ""}"#.into(),
            400,
            Some("prompt"),
        ),
        ("/v1/nothing", "{}".into(), 404, None),
    ];
    for (path, body, status, param) in cases {
        let r = post(a, path, &body);
        assert_error(&r, status, param);
    }
    let big = format!(r#"{{"prompt": "{}"}}"#, "x".repeat(100 << 10));
    assert_error(&post(a, "/v1/completions", &big), 413, None);
    assert_error(&get(a, "/v1/chat/completions"), 405, None);
    let r = bystander.join().unwrap();
    assert_eq!(r.status, 200);
    let sampling = SamplingParams::default();
    assert_eq!(
        stream_text(&r),
        (lone(&messages(3), sampling, 40), Some("length".into()))
    );
    assert_eq!(get(a, "/health").json()["status"], "ok");
}

#[test]
fn the_api_key_is_required_when_set() {
    let mut cfg = config();
    cfg.api_key = Some("sesame".into());
    let srv = start(cfg);
    let body = br#"{"prompt": "a", "max_tokens": 2}"#;
    let json = ("Content-Type", "application/json");
    let r = request(srv.addr, "POST", "/v1/completions", &[json], body);
    assert_error(&r, 401, None);
    let r = request(
        srv.addr,
        "POST",
        "/v1/completions",
        &[json, ("Authorization", "Bearer nope")],
        body,
    );
    assert_error(&r, 401, None);
    let r = request(srv.addr, "GET", "/v1/models", &[], b"");
    assert_error(&r, 401, None);
    let r = request(
        srv.addr,
        "POST",
        "/v1/completions",
        &[json, ("Authorization", "Bearer sesame")],
        body,
    );
    assert_eq!(r.status, 200, "{}", r.body);
    let r = request(
        srv.addr,
        "GET",
        "/v1/models",
        &[("Authorization", "Bearer sesame")],
        b"",
    );
    assert_eq!(r.json()["data"][0]["id"], "tiny");
    assert_eq!(get(srv.addr, "/health").status, 200, "health needs no key");
}

#[test]
fn beyond_the_queue_requests_get_503_and_the_rest_complete() {
    let mut cfg = config();
    cfg.scheduler.max_batch = 1;
    cfg.scheduler.max_queue = 1;
    let srv = start(cfg);
    let addr = srv.addr;
    let handles: Vec<_> = (0..6)
        .map(|i| {
            std::thread::spawn(move || {
                post(
                    addr,
                    "/v1/chat/completions",
                    &chat_body(i, 1, 0.0, 200, false),
                )
            })
        })
        .collect();
    let replies: Vec<Reply> = handles.into_iter().map(|h| h.join().unwrap()).collect();
    let ok = replies.iter().filter(|r| r.status == 200).count();
    let busy: Vec<&Reply> = replies.iter().filter(|r| r.status == 503).collect();
    assert_eq!(ok + busy.len(), 6, "only 200 or 503");
    assert!(ok >= 1 && !busy.is_empty(), "{ok} ok, {} busy", busy.len());
    for r in busy {
        assert_error(r, 503, None);
        assert_eq!(r.json()["error"]["code"], "server_busy");
        // Clients are told when to come back.
        assert!(
            r.headers.to_ascii_lowercase().contains("retry-after: 1"),
            "{}",
            r.headers
        );
    }
    for (i, r) in replies.iter().enumerate().filter(|(_, r)| r.status == 200) {
        let want = lone(&messages(i), SamplingParams::default(), 200);
        assert_eq!(r.json()["choices"][0]["message"]["content"], want.as_str());
    }
}

#[test]
fn a_client_that_disconnects_mid_stream_frees_its_sequence() {
    let srv = start(config());
    let mut reader = open_stream(
        srv.addr,
        "/v1/chat/completions",
        &chat_body(1, 1, 0.0, 30000, true),
    );
    let first = read_events(&mut reader, 3);
    assert_eq!(first.len(), 3, "the stream started");
    let active = || {
        get(srv.addr, "/health").json()["active_sequences"]
            .as_u64()
            .unwrap()
    };
    assert_eq!(active(), 1);
    drop(reader);
    let t0 = Instant::now();
    while active() != 0 {
        assert!(
            t0.elapsed() < Duration::from_secs(20),
            "the sequence was not freed"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let m = get(srv.addr, "/metrics").body;
    assert!(m.contains("moestream_cancelled_total 1"), "{m}");
    // The server keeps serving.
    assert_eq!(
        post(
            srv.addr,
            "/v1/chat/completions",
            &chat_body(2, 1, 0.0, 3, false)
        )
        .status,
        200
    );
}

#[test]
fn completions_and_models_endpoints() {
    let srv = start(config());
    let r = post(
        srv.addr,
        "/v1/completions",
        r#"{"model": "tiny", "prompt": "Once upon a time", "max_tokens": 5, "temperature": 0, "logprobs": 3}"#,
    );
    let v = r.json();
    let lp = &v["choices"][0]["logprobs"];
    assert_eq!(lp["tokens"].as_array().unwrap().len(), 5, "{v}");
    assert!(lp["top_logprobs"][0].as_object().unwrap().len() <= 3);
    assert_eq!(v["object"], "text_completion");
    let r = post(
        srv.addr,
        "/v1/completions",
        r#"{"prompt": [1, 2, 3], "max_tokens": 2, "stream": true, "stream_options": {"include_usage": true}}"#,
    );
    let events = r.events();
    let usage: Value = serde_json::from_str(&events[events.len() - 2]).unwrap();
    assert_eq!(usage["usage"]["prompt_tokens"], 3);
    assert_eq!(usage["usage"]["completion_tokens"], 2);
    let m = get(srv.addr, "/v1/models/tiny").json();
    assert_eq!(m["object"], "model");
    assert_eq!(get(srv.addr, "/v1/models/other").status, 404);
    // Chat logprobs in OpenAI's chat shape; a stop string ends the text before it.
    let r = post(
        srv.addr,
        "/v1/chat/completions",
        r#"{"messages": [{"role": "user", "content": "hi"}], "max_tokens": 4, "temperature": 0, "logprobs": true, "top_logprobs": 2}"#,
    );
    let v = r.json();
    let content = v["choices"][0]["logprobs"]["content"].as_array().unwrap();
    assert_eq!(content.len(), 4);
    assert_eq!(content[0]["top_logprobs"].as_array().unwrap().len(), 2);
}
