//! Golden logits: every fixture model and a synth cut at real shapes give, bit for bit, the
//! logits recorded in `fixtures/golden/logits.json` — under the exact f32 path, the default
//! int8 path, and with the experts streamed from disk.
//!
//! This pins the engine's arithmetic across refactors: a restructuring that changes the order
//! of a single float sum shows up here, while the mlx-lm parity tests (tolerances of 1e-4 and
//! more) would not notice. Floating-point sums differ between instruction sets, so the
//! recording is per kernel choice (the f32 width and the int8 family, see
//! `moestream_kernels::isa`), keyed like `avx512+avx512vnni`.
//!
//! Recording (only after a change meant to alter the arithmetic, saying why in the commit):
//!
//! ```text
//! for isa in avx512 avxvnni avx2 scalar; do
//!   MOESTREAM_ISA=$isa MOESTREAM_GOLDEN_RECORD=1 cargo test -p moestream-engine \
//!     --test golden_logits
//! done
//! ```
//!
//! A machine whose kernel choice has no recording prints that it skipped the comparison and
//! which choices are recorded.

mod common;

use common::*;
use moestream_engine::experts::streamed::StreamOptions;
use moestream_engine::synth::{self, SynthOptions};
use moestream_kernels::Precision;
use serde_json::{json, Map, Value};
use std::path::{Path, PathBuf};

/// Decode steps after the prompt's prefill (every step's logits are hashed).
const STEPS: usize = 4;

fn golden_path() -> PathBuf {
    repo_root().join("fixtures/golden/logits.json")
}

/// The kernel choice of this process: f32 width + int8 family.
fn isa_key() -> String {
    format!(
        "{}+{}",
        format!("{:?}", moestream_kernels::isa::isa()).to_lowercase(),
        moestream_kernels::isa::int8().name()
    )
}

/// FNV-1a (64-bit) over the bit patterns of every logit of every step.
fn hash(steps: &[Vec<f32>]) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for v in steps.iter().flatten() {
        for b in v.to_bits().to_le_bytes() {
            h ^= b as u64;
            h = h.wrapping_mul(0x0000_0100_0000_01b3);
        }
    }
    format!("{h:016x}")
}

/// A cut of Qwen3-30B-A3B: its per-layer shapes (hidden 2048, 32 query / 4 KV heads of 128,
/// experts of 768, top-8, 4-bit groups of 64) over 2 layers, 16 experts and a 4096-token
/// vocabulary, so it is written and run in seconds.
fn synth_cut() -> PathBuf {
    let dir = std::env::temp_dir().join(format!("moestream-golden-cut-{}", std::process::id()));
    let preset = synth::PRESETS
        .iter()
        .find(|p| p.name == "qwen3-30b-a3b")
        .expect("preset exists");
    let mut config: Value = (preset.config)();
    config["num_hidden_layers"] = json!(2);
    config["num_experts"] = json!(16);
    config["vocab_size"] = json!(4096);
    let mut opts = SynthOptions::new(synth::Source::Config {
        label: "qwen3-30b-a3b cut".into(),
        config,
    });
    opts.seed = 7;
    let model = synth::build(&opts).expect("synth plan");
    synth::write(&model, &dir, true, &mut |_, _| {}).expect("synth writes");
    dir
}

/// Prefill `prompt`, then STEPS greedy tokens; the hash of every step's logits.
fn run(dir: &Path, prompt: &[u32], precision: Precision, stream: bool) -> String {
    let stream = stream.then(|| StreamOptions {
        cache_slots: 3,
        io_depth: 4,
        ..Default::default()
    });
    let m = load_with(dir, precision, stream);
    let (_, logits) = greedy_steps(&m, prompt, STEPS);
    hash(&logits)
}

/// Every case's hash: `name/mode` → hex.
fn current() -> Map<String, Value> {
    let mut cases: Vec<(String, PathBuf, Vec<u32>, bool)> = Vec::new();
    let mut names: Vec<String> = std::fs::read_dir(repo_root().join("fixtures/models"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| fixture(n).join("config.json").is_file())
        .collect();
    names.sort();
    for name in names {
        let prompt = ids(&expected(&name)["prompt_ids"]);
        let moe = std::fs::read_to_string(fixture(&name).join("config.json"))
            .unwrap()
            .contains("experts");
        cases.push((name.clone(), fixture(&name), prompt, moe));
    }
    let cut = synth_cut();
    cases.push((
        "qwen3-30b-a3b-cut".into(),
        cut.clone(),
        (0..24).map(|i| (i * 131 + 7) % 4096).collect(),
        true,
    ));
    let mut out = Map::new();
    for (name, dir, prompt, moe) in &cases {
        out.insert(
            format!("{name}/exact"),
            json!(run(dir, prompt, Precision::Exact, false)),
        );
        out.insert(
            format!("{name}/int8"),
            json!(run(dir, prompt, Precision::Fast, false)),
        );
        if *moe {
            out.insert(
                format!("{name}/int8-streamed"),
                json!(run(dir, prompt, Precision::Fast, true)),
            );
        }
    }
    let _ = std::fs::remove_dir_all(&cut);
    out
}

#[test]
fn logits_match_the_recording() {
    let key = isa_key();
    let path = golden_path();
    let mut golden: Map<String, Value> = match std::fs::read_to_string(&path) {
        Ok(text) => serde_json::from_str(&text).expect("golden logits parse"),
        Err(_) => Map::new(),
    };
    let got = current();
    if std::env::var_os("MOESTREAM_GOLDEN_RECORD").is_some() {
        golden.insert(key.clone(), Value::Object(got));
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        let text = serde_json::to_string_pretty(&Value::Object(golden)).unwrap();
        std::fs::write(&path, text + "\n").unwrap();
        println!("recorded golden logits for {key} in {}", path.display());
        return;
    }
    let Some(want) = golden.get(&key).and_then(Value::as_object) else {
        let recorded: Vec<&String> = golden.keys().collect();
        println!("SKIPPED: no golden logits recorded for kernels {key} (recorded: {recorded:?})");
        return;
    };
    let mut bad = Vec::new();
    for (case, hash) in &got {
        match want.get(case) {
            Some(w) if w == hash => {}
            Some(w) => bad.push(format!("{case}: {hash} (recorded {w})")),
            None => bad.push(format!("{case}: not recorded")),
        }
    }
    for case in want.keys().filter(|c| !got.contains_key(*c)) {
        bad.push(format!("{case}: recorded but no longer run"));
    }
    assert!(
        bad.is_empty(),
        "logits differ from the recording for {key}:\n{}",
        bad.join("\n")
    );
    println!(
        "{} cases bit-identical to the recording for {key}",
        got.len()
    );
}
