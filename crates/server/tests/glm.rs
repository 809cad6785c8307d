//! The server over a `glm4_moe_lite` model (multi-head latent attention): batched requests
//! and the prompt cache, which hands out prefixes of the latent cache, give the answers a
//! server without batching partners or prompt cache gives.

mod common;

use common::*;
use moestream_engine::{Engine, LoadOptions};
use serde_json::json;
use std::sync::Arc;

fn glm_engine() -> Arc<Engine> {
    let opts = LoadOptions {
        threads: Some(2),
        warm: false,
        ..Default::default()
    };
    let dir = repo_root().join("fixtures/models/glm4_moe_lite_q4_g32_f32");
    Arc::new(Engine::load(&dir, &opts, &mut |_| {}).expect("the glm fixture loads"))
}

#[test]
fn glm_answers_with_and_without_the_prompt_cache_agree() {
    let engine = glm_engine();
    let long_system = "You answer questions about the weather. ".repeat(20);
    let body = |q: &str| {
        json!({"messages": [{"role": "system", "content": long_system},
                            {"role": "user", "content": q}],
               "temperature": 0, "max_tokens": 8})
        .to_string()
    };
    let questions = ["Will it rain?", "Will it snow?", "Is it windy?"];
    let cached = start_with(Arc::clone(&engine), config());
    let mut cfg = config();
    cfg.scheduler.prompt_cache_entries = 0;
    let plain = start_with(engine, cfg);
    let mut reused = 0;
    for q in questions {
        let a = post(cached.addr, "/v1/chat/completions", &body(q)).json();
        let b = post(plain.addr, "/v1/chat/completions", &body(q)).json();
        assert_eq!(
            a["choices"][0]["message"]["content"], b["choices"][0]["message"]["content"],
            "{q}"
        );
        assert_eq!(b["usage"]["prompt_tokens_details"]["cached_tokens"], 0);
        reused += a["usage"]["prompt_tokens_details"]["cached_tokens"]
            .as_u64()
            .unwrap();
    }
    assert!(
        reused > 200,
        "the shared system prompt came from the cache ({reused} tokens)"
    );
}
