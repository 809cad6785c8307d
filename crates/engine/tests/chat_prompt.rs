//! Chat prompts end to end: our template rendering and tokenization give exactly the text and
//! ids Python transformers produced for the fixtures (`expected.json` "chat").

mod common;

use common::*;
use moestream_engine::{Engine, LoadOptions};

#[test]
fn chat_prompt_ids_match_transformers() {
    for name in ["qwen3_moe_f32", "qwen3_dense_f32", "llama_dense_f32"] {
        let exp = expected(name);
        let engine = Engine::load(&fixture(name), &LoadOptions::default(), &mut |_| {}).unwrap();
        let chat = &exp["chat"];
        let messages = chat["messages"].as_array().unwrap();
        let ids = engine
            .chat_prompt(messages, None, &Default::default())
            .unwrap();
        assert_eq!(ids, common::ids(&chat["ids"]), "{name}");
        let text = engine.text.tokenizer.decode(&ids, false).unwrap();
        assert_eq!(text, chat["rendered"].as_str().unwrap(), "{name}");
    }
}
