//! `--draft-model`, `--num-draft-tokens` and `--moe-top-k` through the binary: the same
//! tokens with a draft, counters in the JSON summary, the streaming warning, a clear error
//! for a draft with another tokenizer, and validate's drift report for top-k.

use std::path::PathBuf;
use std::process::{Command, Output};

fn fixture(name: &str) -> String {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../fixtures/models")
        .join(name)
        .to_string_lossy()
        .into_owned()
}

fn moestream(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_moestream"))
        .args(args)
        .output()
        .expect("the binary runs")
}

fn text(o: &[u8]) -> String {
    String::from_utf8_lossy(o).into_owned()
}

/// The generated ids and the summary object of `generate --json`.
fn generate_json(extra: &[&str]) -> (Vec<u64>, serde_json::Value, String) {
    let main = fixture("qwen3_next_q4_g32_f32");
    let mut args = vec![
        "generate",
        "--model",
        &main,
        "--prompt-ids",
        "5,77,300,12,9",
        "--max-tokens",
        "20",
        "--json",
    ];
    args.extend_from_slice(extra);
    let o = moestream(&args);
    assert!(o.status.success(), "{}", text(&o.stderr));
    let mut ids = Vec::new();
    let mut summary = serde_json::Value::Null;
    for line in text(&o.stdout).lines() {
        let v: serde_json::Value = serde_json::from_str(line).unwrap();
        if v["summary"] == true {
            summary = v;
        } else {
            ids.push(v["id"].as_u64().unwrap());
        }
    }
    (ids, summary, text(&o.stderr))
}

#[test]
fn generate_with_a_draft_gives_the_same_tokens_and_reports_counters() {
    let (want, plain, _) = generate_json(&[]);
    assert!(plain["speculative"].is_null());
    let draft = fixture("qwen3_next_f32");
    let (got, summary, err) = generate_json(&["--draft-model", &draft, "--num-draft-tokens", "3"]);
    assert_eq!(got, want);
    let s = &summary["speculative"];
    assert!(s["verification_steps"].as_u64().unwrap() > 0, "{summary}");
    let rate = s["acceptance_rate"].as_f64().unwrap();
    assert!((0.0..=1.0).contains(&rate), "{s}");
    assert!(
        s["tokens_per_verification_step"].as_f64().unwrap() >= 1.0,
        "{s}"
    );
    assert!(err.contains("speculative decoding: draft"), "{err}");
    // Combined with streaming: allowed, with a warning.
    let (got, _, err) = generate_json(&["--draft-model", &draft, "--stream-experts"]);
    assert_eq!(got, want);
    assert!(
        err.contains("warning: speculative decoding with --stream-experts"),
        "{err}"
    );
}

#[test]
fn a_draft_with_another_tokenizer_fails_at_startup() {
    let dir = std::env::temp_dir().join(format!("moestream-cli-draft-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    for e in std::fs::read_dir(fixture("qwen3_dense_f32")).unwrap() {
        let p = e.unwrap().path();
        std::fs::copy(&p, dir.join(p.file_name().unwrap())).unwrap();
    }
    let path = dir.join("tokenizer.json");
    let mut tok: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    tok["added_tokens"][0]["content"] = "<|something_else|>".into();
    std::fs::write(&path, serde_json::to_string(&tok).unwrap()).unwrap();
    let main = fixture("qwen3_moe_f32");
    let o = moestream(&[
        "generate",
        "--model",
        &main,
        "--draft-model",
        dir.to_str().unwrap(),
        "--prompt-ids",
        "1,2,3",
    ]);
    let err = text(&o.stderr);
    let _ = std::fs::remove_dir_all(&dir);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(err.contains("do not share a tokenizer"), "{err}");
    assert!(
        err.contains(dir.to_str().unwrap()) && err.contains(&main),
        "{err}"
    );
    assert!(!err.contains("panicked"), "{err}");
}

#[test]
fn validate_reports_top_k_drift_and_checks_speculative_output() {
    let main = fixture("qwen3_moe_q4_g32_f32");
    let o = moestream(&[
        "validate",
        "--model",
        &main,
        "--moe-top-k",
        "2",
        "--max-tokens",
        "8",
    ]);
    let out = text(&o.stdout);
    assert!(o.status.success(), "{out}{}", text(&o.stderr));
    assert!(out.contains("token agreement with the reference"), "{out}");
    assert!(text(&o.stderr).contains("MoE top-k 2 (approximate)"));
    let draft = fixture("qwen3_dense_f32");
    let o = moestream(&[
        "validate",
        "--model",
        &main,
        "--draft-model",
        &draft,
        "--max-tokens",
        "8",
    ]);
    let out = text(&o.stdout);
    assert!(o.status.success(), "{out}{}", text(&o.stderr));
    assert!(out.contains("all prompts token-identical"), "{out}");
    assert!(out.contains("speculative: acceptance"), "{out}");
    // Bad values are usage errors named by their flag.
    let o = moestream(&["validate", "--model", &main, "--moe-top-k", "99"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        text(&o.stderr).contains("--moe-top-k 99"),
        "{}",
        text(&o.stderr)
    );
    let o = moestream(&[
        "generate",
        "--model",
        &main,
        "--prompt",
        "x",
        "--num-draft-tokens",
        "3",
    ]);
    assert_eq!(o.status.code(), Some(2), "needs --draft-model");
}
