//! The `moestream` binary end to end: outputs on the fixtures, and clear errors (exit code 1,
//! the culprit named) for every kind of bad model directory; exit code 2 for bad usage.

use moestream_engine::weights::safetensors::{read_file, write_file, Dtype};
use std::path::PathBuf;
use std::process::{Command, Output};

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn fixture(name: &str) -> PathBuf {
    repo().join("fixtures/models").join(name)
}

fn moestream(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_moestream"))
        .args(args)
        .output()
        .expect("the binary runs")
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// A scratch copy of a fixture model, removed on drop.
struct Scratch(PathBuf);

impl Scratch {
    fn copy_of(name: &str, tag: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("moestream-cli-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        for e in std::fs::read_dir(fixture(name)).unwrap() {
            let p = e.unwrap().path();
            // Without the index the loader finds the shard by name, so a test can drop tensors.
            if p.file_name().unwrap() != "model.safetensors.index.json" {
                std::fs::copy(&p, dir.join(p.file_name().unwrap())).unwrap();
            }
        }
        Scratch(dir)
    }

    fn path(&self) -> &str {
        self.0.to_str().unwrap()
    }

    /// Rewrites model.safetensors through `edit` (name, dtype, shape, bytes).
    fn edit_weights(&self, edit: impl Fn(&mut Vec<(String, Dtype, Vec<usize>, Vec<u8>)>)) {
        let file = self.0.join("model.safetensors");
        let mut tensors: Vec<_> = read_file(&file)
            .unwrap()
            .into_values()
            .map(|t| {
                (
                    t.name.clone(),
                    t.dtype,
                    t.shape.clone(),
                    t.bytes.as_slice().to_vec(),
                )
            })
            .collect();
        edit(&mut tensors);
        write_file(&file, &tensors, &[("format", "mlx")]).unwrap();
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn expect_failure(o: &Output, needles: &[&str]) {
    let err = stderr(o);
    assert_eq!(o.status.code(), Some(1), "exit code; stderr: {err}");
    for n in needles {
        assert!(err.contains(n), "stderr should mention {n:?}: {err}");
    }
    assert!(!err.contains("panicked"), "must not panic: {err}");
}

fn generate_ids(dir: &str) -> Output {
    moestream(&[
        "generate",
        "--model",
        dir,
        "--prompt-ids",
        "1,2,3",
        "--max-tokens",
        "2",
    ])
}

#[test]
fn json_output_reproduces_mlx_lm_greedy_tokens() {
    let exp: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(fixture("qwen3_moe_q4_g64_f32").join("expected.json")).unwrap(),
    )
    .unwrap();
    let prompt: Vec<String> = exp["prompt_ids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.to_string())
        .collect();
    let want: Vec<u64> = exp["greedy_ids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_u64().unwrap())
        .collect();
    let dir = fixture("qwen3_moe_q4_g64_f32");
    let o = moestream(&[
        "generate",
        "--model",
        dir.to_str().unwrap(),
        "--prompt-ids",
        &prompt.join(","),
        "--max-tokens",
        &want.len().to_string(),
        "--json",
        "--logprobs",
        "3",
        "--exact",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let lines: Vec<serde_json::Value> = String::from_utf8(o.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let (summary, tokens) = lines.split_last().unwrap();
    let ids: Vec<u64> = tokens.iter().map(|t| t["id"].as_u64().unwrap()).collect();
    // The fixture model can emit EOS (not printed); compare up to where it stopped.
    assert_eq!(ids[..], want[..ids.len()]);
    assert!(ids.len() >= 16, "at least 16 tokens before any EOS");
    assert_eq!(summary["summary"], true);
    assert_eq!(summary["generated_tokens"].as_u64(), Some(ids.len() as u64));
    let first_top = &tokens[0]["top_logprobs"].as_array().unwrap()[0];
    assert_eq!(first_top["id"].as_u64(), exp["top_logprobs"][0][0].as_u64());
    let lp = first_top["logprob"].as_f64().unwrap();
    assert!((lp - exp["top_logprobs"][0][1].as_f64().unwrap()).abs() < 1e-4);
}

#[test]
fn same_seed_same_text_and_chat_prompt_runs() {
    let dir = fixture("qwen3_moe_f32");
    let run = |seed: &str| {
        let o = moestream(&[
            "generate",
            "--model",
            dir.to_str().unwrap(),
            "--prompt",
            "Hello there",
            "--system",
            "Be brief.",
            "--temperature",
            "0.9",
            "--top-p",
            "0.95",
            "--seed",
            seed,
            "--max-tokens",
            "20",
        ]);
        assert!(o.status.success(), "{}", stderr(&o));
        assert!(stderr(&o).contains("decode"), "summary on stderr");
        o.stdout
    };
    assert_eq!(run("5"), run("5"));
}

#[test]
fn embedded_default_model_runs() {
    let o = moestream(&["generate", "--prompt", "Hi", "--max-tokens", "8"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stderr(&o).contains("embedded"));
}

#[test]
fn nonexistent_directory() {
    expect_failure(
        &generate_ids("/nonexistent/model/dir"),
        &["/nonexistent/model/dir", "does not exist"],
    );
}

#[test]
fn truncated_safetensors() {
    let s = Scratch::copy_of("qwen3_moe_q4_g64_f32", "trunc");
    let f = s.0.join("model.safetensors");
    let len = std::fs::metadata(&f).unwrap().len();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&f)
        .unwrap()
        .set_len(len - 1000)
        .unwrap();
    expect_failure(&generate_ids(s.path()), &["model.safetensors", "truncated"]);
}

#[test]
fn garbage_header() {
    let s = Scratch::copy_of("qwen3_moe_f32", "garbage");
    std::fs::write(
        s.0.join("model.safetensors"),
        b"\x10\x00\x00\x00\x00\x00\x00\x00not json at all!",
    )
    .unwrap();
    expect_failure(&generate_ids(s.path()), &["model.safetensors", "header"]);
}

#[test]
fn missing_tensor() {
    let s = Scratch::copy_of("qwen3_moe_q4_g64_f32", "missing");
    s.edit_weights(|t| t.retain(|(n, ..)| n != "model.layers.2.self_attn.k_norm.weight"));
    expect_failure(
        &generate_ids(s.path()),
        &["missing tensor model.layers.2.self_attn.k_norm.weight"],
    );
}

#[test]
fn wrong_shape() {
    let s = Scratch::copy_of("qwen3_moe_f32", "shape");
    s.edit_weights(|t| {
        let e = t
            .iter_mut()
            .find(|(n, ..)| n == "model.layers.0.self_attn.o_proj.weight")
            .unwrap();
        e.2 = vec![32, 128]; // same bytes, wrong shape
    });
    expect_failure(
        &generate_ids(s.path()),
        &[
            "model.layers.0.self_attn.o_proj.weight",
            "shape [32, 128]",
            "expected [64, 64]",
        ],
    );
}

#[test]
fn wrong_dtype() {
    let s = Scratch::copy_of("qwen3_moe_f32", "dtype");
    s.edit_weights(|t| {
        let e = t
            .iter_mut()
            .find(|(n, ..)| n == "model.norm.weight")
            .unwrap();
        e.1 = Dtype::I32;
    });
    expect_failure(&generate_ids(s.path()), &["model.norm.weight", "I32"]);
}

#[test]
fn unknown_architecture() {
    let s = Scratch::copy_of("qwen3_moe_f32", "arch");
    let cfg = std::fs::read_to_string(s.0.join("config.json"))
        .unwrap()
        .replace("\"qwen3_moe\"", "\"made_up_moe\"");
    std::fs::write(s.0.join("config.json"), cfg).unwrap();
    expect_failure(
        &generate_ids(s.path()),
        &["made_up_moe", "not support", "qwen3_moe"],
    );
}

#[test]
fn inconsistent_config() {
    let s = Scratch::copy_of("qwen3_moe_f32", "heads");
    let cfg = std::fs::read_to_string(s.0.join("config.json")).unwrap();
    let cfg = cfg.replace("\"num_key_value_heads\": 2", "\"num_key_value_heads\": 3");
    std::fs::write(s.0.join("config.json"), cfg).unwrap();
    expect_failure(&generate_ids(s.path()), &["num_key_value_heads"]);
    std::fs::write(s.0.join("config.json"), "{\"model_type\": \"qwen3_moe\"}").unwrap();
    expect_failure(&generate_ids(s.path()), &["config", "missing field"]);
    std::fs::write(s.0.join("config.json"), "{ not json").unwrap();
    expect_failure(&generate_ids(s.path()), &["config.json", "invalid JSON"]);
}

#[test]
fn missing_tokenizer() {
    let s = Scratch::copy_of("qwen3_moe_f32", "tok");
    std::fs::remove_file(s.0.join("tokenizer.json")).unwrap();
    expect_failure(&generate_ids(s.path()), &["tokenizer.json"]);
}

#[test]
fn out_of_vocabulary_prompt_id() {
    let dir = fixture("qwen3_moe_f32");
    let o = moestream(&[
        "generate",
        "--model",
        dir.to_str().unwrap(),
        "--prompt-ids",
        "1,99999",
    ]);
    expect_failure(&o, &["99999", "vocabulary"]);
}

#[test]
fn bad_usage_exits_2() {
    for args in [
        vec!["generate"],
        vec!["generate", "--prompt-ids", "1,x"],
        vec!["generate", "--prompt", "a", "--temperature", "hot"],
        vec!["frobnicate"],
    ] {
        let o = moestream(&args);
        assert_eq!(o.status.code(), Some(2), "{args:?}: {}", stderr(&o));
    }
}

/// `validate --stream-experts --reference-resident` compares the streamed store (2 slots, so
/// every layer is served in batches) against a resident copy: exact paths must agree.
#[test]
fn validate_streamed_against_resident_is_identical() {
    let dir = fixture("qwen3_moe_q4_g64_f32");
    let o = moestream(&[
        "validate",
        "--model",
        dir.to_str().unwrap(),
        "--stream-experts",
        "--cache-slots",
        "2",
        "--reference-resident",
        "--exact",
        "--max-tokens",
        "8",
    ]);
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(o.status.success(), "{out}\n{}", stderr(&o));
    assert!(out.contains("all prompts token-identical"), "{out}");
    assert!(
        stderr(&o).contains("reference: resident experts"),
        "{}",
        stderr(&o)
    );
}

/// `--device cuda` on a machine without an NVIDIA driver is a clear error naming what is
/// missing, exit code 1, before anything is loaded; a device that does not exist is a usage
/// error. (On a GPU machine the first half runs the model instead: see scripts/gpu/test.sh.)
#[test]
fn device_cuda_without_a_gpu_is_a_clear_error() {
    for cmd in ["generate", "bench", "validate", "serve"] {
        let mut args = vec![cmd, "--device", "cuda", "--model"];
        let model = fixture("qwen3_moe_f32");
        args.push(model.to_str().unwrap());
        match cmd {
            "generate" => args.extend(["--prompt", "hi", "--max-tokens", "2"]),
            "bench" => args.extend(["--prompt-tokens", "4", "--gen-tokens", "2"]),
            "serve" => args.extend(["--port", "0"]),
            _ => args.extend(["--max-tokens", "2"]),
        }
        let o = moestream(&args);
        if o.status.success() {
            eprintln!(
                "{cmd} --device cuda: this machine has a GPU, the error case is not testable"
            );
            continue;
        }
        assert_eq!(o.status.code(), Some(1), "{cmd}: {}", stderr(&o));
        let err = stderr(&o);
        assert!(
            err.contains("--device cuda:0") && (err.contains("CUDA") || err.contains("NVRTC")),
            "{cmd}: {err}"
        );
        assert!(!err.contains("panicked"), "{cmd}: {err}");
    }
    let o = moestream(&["generate", "--device", "tpu", "--prompt", "hi"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("expected cpu, cuda or cuda:N"));
}
