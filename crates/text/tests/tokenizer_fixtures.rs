//! The tokenizer wrapper and streaming decoder against real `tokenizer.json` files:
//! the chat-template fixture tokenizer (with ids recorded by Python `tokenizers`) and the
//! fixture model directory made by mlx-lm.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use moestream_text::{RenderRequest, StreamDecoder, Tokenizer, TokenizerBundle};
use serde_json::{json, Map, Value};

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// Streams `ids` one at a time and returns the concatenated deltas plus the final flush.
fn stream_all(decoder: &mut StreamDecoder, ids: &[u32]) -> String {
    let mut out = String::new();
    for &id in ids {
        let delta = decoder.push(id).expect("stream decode");
        assert!(
            !delta.contains(char::REPLACEMENT_CHARACTER),
            "broken character in delta {delta:?}"
        );
        out.push_str(&delta);
    }
    out.push_str(&decoder.finish().expect("finish"));
    out
}

#[test]
fn encode_and_decode_match_python_tokenizers() {
    let dir = repo_root().join("fixtures/chat_templates/tokenizer");
    let tokenizer = Arc::new(Tokenizer::from_file(dir.join("tokenizer.json")).expect("load"));
    let text = std::fs::read_to_string(dir.join("cases.json")).expect("cases.json is committed");
    let cases: Vec<Value> = serde_json::from_str(&text).expect("cases.json is JSON");
    assert!(!cases.is_empty());

    let ids_of =
        |v: &Value| -> Vec<u32> { serde_json::from_value(v.clone()).expect("a list of token ids") };
    for case in &cases {
        let text = case["text"].as_str().expect("text");
        let plain = ids_of(&case["ids"]);
        let with_special = ids_of(&case["ids_with_special"]);
        assert_eq!(
            tokenizer.encode(text, false).expect("encode"),
            plain,
            "{text:?}"
        );
        assert_eq!(
            tokenizer.encode(text, true).expect("encode"),
            with_special,
            "{text:?}"
        );
        assert_eq!(
            tokenizer.decode(&with_special, false).expect("decode"),
            case["decoded_keep_special"]
                .as_str()
                .expect("decoded_keep_special"),
        );
        let skipped = case["decoded_skip_special"]
            .as_str()
            .expect("decoded_skip_special");
        assert_eq!(
            tokenizer.decode(&with_special, true).expect("decode"),
            skipped
        );

        // Streaming one id at a time gives exactly the full decode.
        let mut decoder = StreamDecoder::new(tokenizer.clone());
        assert_eq!(stream_all(&mut decoder, &with_special), skipped, "{text:?}");
    }
}

#[test]
fn special_and_added_token_sets() {
    let path = repo_root().join("fixtures/chat_templates/tokenizer/tokenizer.json");
    let tokenizer = Tokenizer::from_file(path).expect("load");
    let im_end = tokenizer
        .token_to_id("<|im_end|>")
        .expect("<|im_end|> exists");
    let think = tokenizer.token_to_id("<think>").expect("<think> exists");
    assert!(tokenizer.is_special(im_end));
    assert!(!tokenizer.is_special(think));
    assert!(tokenizer.added_token_ids().contains(&think));
    assert_eq!(tokenizer.id_to_token(im_end).as_deref(), Some("<|im_end|>"));
    assert!(tokenizer.vocab_size() > im_end as usize);
}

#[test]
fn fixture_model_bundle_round_trips() {
    let dir = repo_root().join("fixtures/models/qwen3_moe_f32");
    if !dir.join("tokenizer.json").exists() {
        eprintln!("skipped: {} has no tokenizer.json yet", dir.display());
        return;
    }
    let bundle = TokenizerBundle::from_model_dir(&dir).expect("bundle loads");
    let tokenizer = &bundle.tokenizer;
    for text in [
        "Hello, world! The quick brown fox.",
        "Zürich, 東京, Москва 🚀🇫🇷 — mixed scripts",
        "<|im_start|>user\nhi<|im_end|>\n<think>\n\n</think>\n\n",
        "  spaces\t\ttabs\n\nnewlines  ",
    ] {
        let ids = tokenizer.encode(text, false).expect("encode");
        assert_eq!(tokenizer.decode(&ids, false).expect("decode"), text);
        let mut decoder = bundle.stream_decoder().with_skip_special_tokens(false);
        assert_eq!(stream_all(&mut decoder, &ids), text);
    }

    // eos_token <|im_end|> (473), generation_config [473, 471], config 473.
    let im_end = tokenizer.token_to_id("<|im_end|>").expect("<|im_end|>");
    let endoftext = tokenizer
        .token_to_id("<|endoftext|>")
        .expect("<|endoftext|>");
    assert_eq!(bundle.eos_token_ids, BTreeSet::from([im_end, endoftext]));

    // The model's embedding is larger than the vocabulary: ids without a token decode to
    // nothing instead of failing.
    let mut decoder = bundle.stream_decoder();
    assert_eq!(
        decoder
            .push(tokenizer.vocab_size() as u32 + 3)
            .expect("decode"),
        ""
    );

    let template = bundle
        .chat_template
        .as_ref()
        .expect("fixture has a chat template");
    let messages = [json!({"role": "user", "content": "hi"})];
    let extra = Map::new();
    let mut request = RenderRequest::new(&messages, &extra);
    request.add_generation_prompt = true;
    let prompt = template.render(&request).expect("renders");
    assert_eq!(
        prompt,
        "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"
    );
    let ids = tokenizer.encode(&prompt, false).expect("encode");
    assert!(
        ids.contains(&im_end),
        "special tokens in the prompt encode as single ids"
    );
}
