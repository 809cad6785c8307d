//! What a hostile or broken client can do to the server, and what stops it: connections
//! that send nothing or stop halfway are closed by their timeouts, connections past the cap
//! get a 503 with `Retry-After`, stop strings are bounded, and errors caused by the model's
//! files name the model and the file relative to its directory, never a server path (the
//! full message goes to the log).

mod common;

use common::*;
use moestream_engine::experts::streamed::StreamOptions;
use moestream_engine::sampling::{Sampler, SamplingParams};
use moestream_engine::{Engine, LoadOptions, TextParams};
use moestream_server::ConnLimits;
use serde_json::{json, Value};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

fn limits(header: f64, body: f64, idle: f64, max_connections: usize) -> ConnLimits {
    ConnLimits {
        header_timeout: Duration::from_secs_f64(header),
        body_timeout: Duration::from_secs_f64(body),
        idle_timeout: Duration::from_secs_f64(idle),
        max_connections,
    }
}

fn connect(addr: SocketAddr) -> TcpStream {
    let s = TcpStream::connect(addr).unwrap();
    s.set_nodelay(true).unwrap();
    s
}

/// Reads until the server closes `s`; panics if it is still open after `limit`. Returns
/// how long that took and what the server sent.
fn wait_closed(s: &mut TcpStream, limit: Duration) -> (Duration, String) {
    let t0 = Instant::now();
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let left = limit.saturating_sub(t0.elapsed());
        assert!(
            !left.is_zero(),
            "the connection is still open after {limit:?}"
        );
        s.set_read_timeout(Some(left)).unwrap();
        match s.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                panic!("the connection is still open after {limit:?}")
            }
            Err(_) => break, // reset: closed too
        }
    }
    (t0.elapsed(), String::from_utf8_lossy(&got).into_owned())
}

/// Reads one response with a Content-Length body from a kept-alive connection.
fn read_response(s: &mut TcpStream) -> String {
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 1];
    while !got.ends_with(b"\r\n\r\n") {
        assert_eq!(s.read(&mut buf).unwrap(), 1, "closed mid-response");
        got.push(buf[0]);
    }
    let head = String::from_utf8_lossy(&got).to_ascii_lowercase();
    let len: usize = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .map(|v| v.trim().parse().unwrap())
        .expect("content-length");
    let mut body = vec![0u8; len];
    s.read_exact(&mut body).unwrap();
    format!("{head}{}", String::from_utf8_lossy(&body))
}

fn metric(addr: SocketAddr, line_start: &str) -> f64 {
    let m = get(addr, "/metrics").body;
    m.lines()
        .find_map(|l| l.strip_prefix(line_start))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("{line_start} missing from {m}"))
}

#[test]
fn silent_and_half_sent_connections_are_closed_by_their_timeouts() {
    let mut cfg = config();
    cfg.conn = limits(0.5, 1.0, 1.5, 64);
    let srv = start(cfg);
    let a = srv.addr;

    // Nothing sent: closed after the header timeout, nothing answered.
    let mut silent = connect(a);
    let (t, got) = wait_closed(&mut silent, Duration::from_secs(5));
    assert!(t >= Duration::from_millis(400), "closed after {t:?}");
    assert!(got.is_empty(), "{got}");

    // Half the headers, then nothing.
    let mut half = connect(a);
    half.write_all(b"GET /health HTTP/1.1\r\nHost: x\r\n")
        .unwrap();
    let (t, _) = wait_closed(&mut half, Duration::from_secs(5));
    assert!(t >= Duration::from_millis(400), "closed after {t:?}");

    // Headers, then a body that stops short: 408 in OpenAI's shape, then closed.
    let mut body = connect(a);
    body.write_all(
        b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{\"prompt\": ",
    )
    .unwrap();
    let (t, got) = wait_closed(&mut body, Duration::from_secs(6));
    assert!(t >= Duration::from_millis(900), "answered after {t:?}");
    assert!(got.starts_with("HTTP/1.1 408"), "{got}");
    let json = &got[got.find('{').unwrap()..];
    let v: Value = serde_json::from_str(json).unwrap();
    assert_eq!(v["error"]["code"], "request_timeout", "{v}");
    assert!(
        v["error"]["message"].as_str().unwrap().contains("1 s"),
        "{v}"
    );

    // Kept alive: a pause longer than the header timeout but shorter than the idle one is
    // fine between requests; a longer one closes the connection.
    let mut kept = connect(a);
    kept.write_all(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    assert!(read_response(&mut kept).starts_with("http/1.1 200"));
    std::thread::sleep(Duration::from_millis(800));
    kept.write_all(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    assert!(read_response(&mut kept).starts_with("http/1.1 200"));
    let (t, _) = wait_closed(&mut kept, Duration::from_secs(6));
    assert!(t >= Duration::from_millis(1300), "closed after {t:?}");

    let timeouts = |kind: &str| {
        metric(
            a,
            &format!("moestream_connection_timeouts_total{{kind=\"{kind}\"}}"),
        )
    };
    assert!(timeouts("header") >= 2.0);
    assert!(timeouts("body") >= 1.0);
    assert!(timeouts("idle") >= 1.0);
    assert_eq!(get(a, "/health").status, 200);
}

#[test]
fn connections_over_the_cap_get_a_503_with_retry_after_until_slots_free_up() {
    let mut cfg = config();
    cfg.conn = limits(1.0, 5.0, 5.0, 3);
    let srv = start(cfg);
    let a = srv.addr;
    let mut idle: Vec<TcpStream> = (0..3).map(|_| connect(a)).collect();
    // Wait until the server has taken all three.
    let t0 = Instant::now();
    while srv.state.metrics.open_connections.load(Relaxed) < 3 {
        assert!(t0.elapsed() < Duration::from_secs(5), "not accepted");
        std::thread::sleep(Duration::from_millis(10));
    }
    let r = get(a, "/health");
    assert_eq!(r.status, 503, "{}", r.body);
    assert!(
        r.headers.to_ascii_lowercase().contains("retry-after: 1"),
        "{}",
        r.headers
    );
    let v = r.json();
    assert_eq!(v["error"]["code"], "server_busy", "{v}");
    assert_eq!(v["error"]["type"], "server_error", "{v}");
    assert!(v["error"]["message"].as_str().unwrap().contains('3'), "{v}");
    // The idle ones time out, and the server answers again.
    for s in &mut idle {
        wait_closed(s, Duration::from_secs(5));
    }
    std::thread::sleep(Duration::from_millis(100));
    assert_eq!(get(a, "/health").status, 200);
    assert!(metric(a, "moestream_rejected_connections_total ") >= 1.0);
}

#[test]
fn a_long_generation_is_not_cut_by_the_timeouts() {
    let mut cfg = config();
    // 20 ms timeouts: the tiny model's generation below takes ~120 ms even on the fastest
    // kernels here, several timeouts over.
    cfg.conn = limits(0.02, 0.02, 0.02, 64);
    let srv = start(cfg);
    // Greedy, this prompt runs for hundreds of tokens before the end-of-sequence token.
    let prompt = "Question number 1: what comes next?";
    let engine = engine();
    let mut want = String::new();
    let params = TextParams {
        max_tokens: 4000,
        stop: &[],
        logprobs: None,
    };
    let greedy = SamplingParams {
        temperature: 0.0,
        ..Default::default()
    };
    let out = engine
        .generate_text(
            &mut engine.model().new_cache(),
            &engine.raw_prompt(prompt).unwrap(),
            Sampler::new(greedy),
            &params,
            &mut |ev| {
                want.push_str(ev.text);
                true
            },
        )
        .unwrap();
    want.push_str(&out.tail);
    let body =
        json!({"prompt": prompt, "max_tokens": 4000, "temperature": 0, "stream": true}).to_string();
    let t0 = Instant::now();
    let r = post(srv.addr, "/v1/completions", &body);
    let took = t0.elapsed();
    let events = r.events();
    assert_eq!(
        events.last().map(String::as_str),
        Some("[DONE]"),
        "{}",
        r.body
    );
    let mut text = String::new();
    for e in &events[..events.len() - 1] {
        let v: Value = serde_json::from_str(e).unwrap();
        text.push_str(v["choices"][0]["text"].as_str().unwrap_or(""));
    }
    assert_eq!(text, want);
    // Meaningful only if the generation outlasted the timeouts several times over.
    assert!(took > Duration::from_millis(60), "took {took:?}");
}

fn chat(content: &str) -> Value {
    json!([{"role": "user", "content": content}])
}

#[test]
fn stop_strings_past_the_limits_get_a_400_naming_the_limit() {
    let srv = start(config());
    let a = srv.addr;
    let path = "/v1/chat/completions";
    let body = |stop: Value| {
        json!({"messages": chat("hello"), "max_tokens": 24, "temperature": 0, "stop": stop})
            .to_string()
    };
    let many: Vec<String> = (0..17).map(|i| format!("s{i}")).collect();
    let r = post(a, path, &body(json!(many)));
    assert_eq!(r.status, 400, "{}", r.body);
    let e = &r.json()["error"];
    assert_eq!(e["param"], "stop");
    assert!(e["message"].as_str().unwrap().contains("16"), "{e}");

    let long = "x".repeat(1025);
    let r = post(a, path, &body(json!(["ok", long])));
    assert_eq!(r.status, 400, "{}", r.body);
    let e = &r.json()["error"];
    assert_eq!(e["param"], "stop");
    assert_eq!(e["type"], "invalid_request_error");
    let msg = e["message"].as_str().unwrap();
    assert!(msg.contains("1024") && msg.contains("stop[1]"), "{e}");

    // At the limits the request runs, and stop strings that never occur change nothing.
    let maximal: Vec<String> = (0..16)
        .map(|i| format!("{}{i:x}", "~".repeat(1023)))
        .collect();
    let r = post(a, path, &body(json!(maximal)));
    assert_eq!(r.status, 200, "{}", r.body);
    let plain = post(a, path, &body(Value::Null)).json();
    assert_eq!(
        r.json()["choices"][0]["message"]["content"],
        plain["choices"][0]["message"]["content"]
    );
}

/// Everything logged, for the tests that check what the log received.
fn log() -> &'static Mutex<Vec<u8>> {
    static LOG: OnceLock<Mutex<Vec<u8>>> = OnceLock::new();
    LOG.get_or_init(|| {
        struct Sink;
        impl Write for Sink {
            fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
                log().lock().unwrap().extend_from_slice(b);
                Ok(b.len())
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        let _ = tracing_subscriber::fmt()
            .with_writer(|| Sink)
            .with_ansi(false)
            .try_init();
        Mutex::new(Vec::new())
    })
}

fn logged() -> String {
    String::from_utf8_lossy(&log().lock().unwrap()).into_owned()
}

/// Every spelling of `dir` a message could carry.
fn spellings(dir: &Path) -> Vec<String> {
    let mut out = vec![dir.display().to_string()];
    if let Ok(c) = dir.canonicalize() {
        out.push(c.display().to_string());
    }
    out
}

/// Fails if `msg` holds one of the spellings of `dir` or any absolute path.
fn assert_no_server_path(msg: &str, dir: &Path) {
    for d in spellings(dir) {
        assert!(!msg.contains(&d), "{msg} names {d}");
    }
    let word_ends = |c: char| c.is_whitespace() || "\"'`()[]{}<>,;".contains(c);
    for w in msg.split(word_ends) {
        assert!(
            !(w.starts_with('/') && w[1..].contains('/')),
            "{msg} holds the path {w}"
        );
    }
}

#[test]
fn a_chat_template_failure_names_the_model_and_file_but_no_server_path() {
    log();
    let srv = start(config());
    // `tool_calls` as a string makes the template fail inside.
    let body = json!({"messages": [
        {"role": "user", "content": "hi"},
        {"role": "assistant", "content": null, "tool_calls": "oops"}], "max_tokens": 2})
    .to_string();
    let r = post(srv.addr, "/v1/chat/completions", &body);
    assert_eq!(r.status, 400, "{}", r.body);
    let e = &r.json()["error"];
    assert_eq!(e["param"], "messages");
    let msg = e["message"].as_str().unwrap();
    assert!(
        msg.contains("'tiny'") && msg.contains("tokenizer_config.json"),
        "{msg}"
    );
    let dir = repo_root().join("models/tiny-qwen3-moe");
    assert_no_server_path(msg, &dir);
    // Nor the template engine's own account (which quotes the template's internals).
    assert!(!msg.contains("(in default"), "{msg}");
    // The log has it all.
    let log = logged();
    assert!(
        log.contains(&format!("{}/tokenizer_config.json", dir.display())),
        "{log}"
    );
    assert_eq!(get(srv.addr, "/health").status, 200);
}

/// A copy of the embedded model in a fresh directory, removed on drop.
struct TempModel(PathBuf);

impl TempModel {
    fn new(tag: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("moestream-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        for e in std::fs::read_dir(repo_root().join("models/tiny-qwen3-moe")).unwrap() {
            let p = e.unwrap().path();
            std::fs::copy(&p, dir.join(p.file_name().unwrap())).unwrap();
        }
        TempModel(dir)
    }
}

impl Drop for TempModel {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[test]
fn a_failed_expert_read_names_the_model_and_file_but_no_server_path() {
    log();
    let model = TempModel::new("srv-read-fault");
    let opts = LoadOptions {
        threads: Some(2),
        warm: false,
        stream: Some(StreamOptions {
            cache_slots: 2,
            io_depth: 2,
            ..Default::default()
        }),
        ..Default::default()
    };
    let engine = Arc::new(Engine::load(&model.0, &opts, &mut |_| {}).unwrap());
    let srv = start_with(engine, config());
    let weights = model.0.join("model.safetensors");
    let full = std::fs::read(&weights).unwrap();
    // Cut the file at its first expert tensor: every expert read now comes up short.
    let first_expert = moestream_engine::weights::safetensors::read_file(&weights)
        .unwrap()
        .values()
        .filter(|t| t.name.contains("switch_mlp"))
        .map(|t| t.bytes.offset())
        .min()
        .unwrap();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&weights)
        .unwrap()
        .set_len(first_expert as u64)
        .unwrap();
    let body = json!({"messages": chat("hello"), "max_tokens": 4, "temperature": 0}).to_string();
    let r = post(srv.addr, "/v1/chat/completions", &body);
    assert_eq!(r.status, 500, "{}", r.body);
    let msg = r.json()["error"]["message"].as_str().unwrap().to_string();
    assert!(msg.contains("tiny/model.safetensors"), "{msg}");
    assert_no_server_path(&msg, &model.0);
    // Streamed, the error event says the same.
    let stream_body =
        json!({"messages": chat("hello"), "max_tokens": 4, "temperature": 0, "stream": true})
            .to_string();
    let s = post(srv.addr, "/v1/chat/completions", &stream_body);
    let err = s
        .events()
        .into_iter()
        .find(|e| e.contains("\"error\""))
        .unwrap_or_else(|| panic!("no error event in {}", s.body));
    assert!(err.contains("tiny/model.safetensors"), "{err}");
    assert_no_server_path(&err, &model.0);
    let log = logged();
    assert!(
        log.contains(&format!("{}", weights.display())),
        "the log lacks the full path: {log}"
    );
    // The file back, the model answers again.
    std::fs::write(&weights, &full).unwrap();
    assert_eq!(post(srv.addr, "/v1/chat/completions", &body).status, 200);
}
