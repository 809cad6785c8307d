//! Bad GGUF files through the binary: exit code 1 and an error naming the file and what is
//! wrong (the tensor, the type, the key), for `generate` and for `serve`, which refuses to
//! start with the same message.

use moestream_gguf::writer::tiny_llama;
use moestream_gguf::{GgmlType, GgufWriter, Value};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn moestream(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_moestream"))
        .args(args)
        .output()
        .expect("the binary runs")
}

/// Writes `bytes` as `NAME.gguf` in a scratch directory of this test process.
fn file(name: &str, bytes: &[u8]) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("moestream-cli-gguf-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let p = dir.join(format!("{name}.gguf"));
    std::fs::write(&p, bytes).unwrap();
    p
}

/// `generate` and `serve` on `path` both exit 1 naming `path`'s file and every needle.
fn refused(path: &Path, needles: &[&str]) {
    let p = path.to_str().unwrap();
    let name = path.file_name().unwrap().to_str().unwrap();
    for args in [
        vec![
            "generate",
            "--model",
            p,
            "--prompt-ids",
            "1,2",
            "--max-tokens",
            "2",
        ],
        vec!["serve", "--model", p, "--port", "0"],
    ] {
        let o = moestream(&args);
        let err = String::from_utf8_lossy(&o.stderr);
        assert_eq!(
            o.status.code(),
            Some(1),
            "{}: exit code; stderr: {err}",
            args[0]
        );
        assert!(
            err.contains(name),
            "{}: should name the file: {err}",
            args[0]
        );
        for n in needles {
            assert!(err.contains(n), "{}: should mention {n:?}: {err}", args[0]);
        }
        assert!(!err.contains("panicked"), "must not panic: {err}");
    }
}

fn tiny() -> GgufWriter {
    tiny_llama(GgmlType::Q4_0, 1)
}

#[test]
fn truncated_file() {
    let bytes = tiny().to_bytes();
    refused(
        &file("truncated", &bytes[..bytes.len() / 2]),
        &["truncated", "tensor"],
    );
    refused(&file("header-cut", &bytes[..100]), &["truncated"]);
}

#[test]
fn wrong_magic_and_version() {
    let mut bytes = tiny().to_bytes();
    bytes[..4].copy_from_slice(b"GGML");
    refused(&file("magic", &bytes), &["not a GGUF file"]);
    let mut bytes = tiny().to_bytes();
    bytes[4..8].copy_from_slice(&7u32.to_le_bytes());
    refused(
        &file("version", &bytes),
        &["GGUF version 7 is not supported"],
    );
}

#[test]
fn unknown_architecture() {
    let mut w = tiny();
    w.set_meta("general.architecture", Value::String("mamba".into()));
    refused(
        &file("arch", &w.to_bytes()),
        &["\"mamba\"", "not supported", "qwen3moe"],
    );
}

#[test]
fn missing_tensor() {
    let mut w = tiny();
    w.without("blk.1.ffn_up.weight");
    refused(&file("missing", &w.to_bytes()), &["blk.1.ffn_up.weight"]);
}

#[test]
fn unsupported_type() {
    // IQ4_NL has Q4_0's block size, so the file stays well-formed.
    let mut w = tiny();
    w.retype("blk.0.attn_v.weight", GgmlType::from_id(20));
    refused(
        &file("iq4", &w.to_bytes()),
        &["blk.0.attn_v.weight", "IQ4_NL"],
    );
}

#[test]
fn missing_tokenizer_metadata() {
    refused(&file("no-vocab", &tiny().to_bytes()), &["tokenizer"]);
}
