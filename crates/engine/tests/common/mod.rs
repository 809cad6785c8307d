//! Helpers shared by the engine's integration tests: fixture paths and expected outputs.

#![allow(dead_code)]

use moestream_engine::{load_model, LoadOptions};
use moestream_kernels::Precision;
use std::path::{Path, PathBuf};

/// The repository (`MOESTREAM_REPO_ROOT` when set: a test binary carried to another machine,
/// where the build's path does not exist).
pub fn repo_root() -> PathBuf {
    match std::env::var_os("MOESTREAM_REPO_ROOT") {
        Some(root) => PathBuf::from(root),
        None => PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../.."),
    }
}

pub fn fixture(name: &str) -> PathBuf {
    repo_root().join("fixtures/models").join(name)
}

pub fn expected(name: &str) -> serde_json::Value {
    let p = fixture(name).join("expected.json");
    let text = std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
    serde_json::from_str(&text).expect("expected.json parses")
}

pub fn ids(v: &serde_json::Value) -> Vec<u32> {
    v.as_array()
        .expect("a list of ids")
        .iter()
        .map(|x| x.as_u64().expect("an id") as u32)
        .collect()
}

pub fn floats(v: &serde_json::Value) -> Vec<f32> {
    v.as_array()
        .expect("a list of floats")
        .iter()
        .map(|x| x.as_f64().expect("a float") as f32)
        .collect()
}

pub fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

pub fn argmax(v: &[f32]) -> u32 {
    let mut best = 0;
    for (i, &x) in v.iter().enumerate() {
        if x > v[best] {
            best = i;
        }
    }
    best as u32
}

/// Two threads, no warm-up, the given arithmetic and expert store (`None`: resident).
pub fn load_with(
    dir: &Path,
    precision: Precision,
    stream: Option<moestream_engine::experts::streamed::StreamOptions>,
) -> moestream_engine::Loaded {
    let opts = LoadOptions {
        threads: Some(2),
        warm: false,
        precision,
        stream,
        ..Default::default()
    };
    load_model(dir, &opts, &mut |_| {}).expect("fixture loads")
}

/// Prefills `prompt`, then decodes `steps` greedy tokens: (ids, logits of every step, the
/// prompt's first).
pub fn greedy_steps(
    m: &moestream_engine::Loaded,
    prompt: &[u32],
    steps: usize,
) -> (Vec<u32>, Vec<Vec<f32>>) {
    let mut cache = m.model.new_cache();
    let mut logits = Vec::new();
    m.model
        .forward(prompt, &mut cache, false, &mut logits)
        .unwrap();
    let (mut ids, mut all) = (Vec::new(), vec![logits.clone()]);
    for _ in 0..steps {
        let id = argmax(&logits);
        ids.push(id);
        m.model
            .forward(&[id], &mut cache, false, &mut logits)
            .unwrap();
        all.push(logits.clone());
    }
    (ids, all)
}

/// Two threads, mlx-lm's float32 arithmetic, experts resident.
pub fn exact_options() -> LoadOptions {
    LoadOptions {
        threads: Some(2),
        warm: false,
        precision: Precision::Exact,
        stream: None,
        ..Default::default()
    }
}

/// A copy of fixture `name` in a temporary directory with its config.json changed by `edit`.
pub fn edited(name: &str, tag: &str, edit: impl FnOnce(&mut serde_json::Value)) -> PathBuf {
    let src = fixture(name);
    let dir = std::env::temp_dir().join(format!("moestream-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    for e in std::fs::read_dir(&src).unwrap() {
        let p = e.unwrap().path();
        std::fs::copy(&p, dir.join(p.file_name().unwrap())).unwrap();
    }
    let path = dir.join("config.json");
    let mut cfg: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    edit(&mut cfg);
    std::fs::write(&path, serde_json::to_string(&cfg).unwrap()).unwrap();
    dir
}

/// The error loading `dir` gives (which must fail); removes `dir`.
pub fn load_error(dir: &Path) -> String {
    let err = match load_model(dir, &exact_options(), &mut |_| {}) {
        Ok(_) => panic!("{}: a bad config must not load", dir.display()),
        Err(e) => e.to_string(),
    };
    let _ = std::fs::remove_dir_all(dir);
    err
}
