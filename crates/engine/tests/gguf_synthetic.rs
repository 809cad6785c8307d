//! Every GGUF type the engine runs, through the whole loader (renaming, q/k un-permuting,
//! the affine re-lay with f16 or f32 parameters, groups of 16 for the K-quants, stacked
//! experts): tiny llama and qwen3moe models in each type give the logits of the same models
//! with every tensor dequantized to F32 by llama.cpp's formulas
//! (`moestream_gguf::reference`). And `--stream-experts` on a GGUF file (experts re-laid
//! into a file once, then read from it) gives the resident model's logits bit for bit.

mod common;

use moestream_engine::experts::streamed::StreamOptions;
use moestream_gguf::writer::{tiny_llama, tiny_qwen3moe};
use moestream_gguf::{GgmlType, GgufWriter};
use moestream_kernels::Precision;
use std::path::{Path, PathBuf};

/// A tiny-model writer of `moestream_gguf::writer`.
type Builder = fn(GgmlType, u64) -> GgufWriter;

const PROMPT: [u32; 5] = [1, 77, 300, 5, 42];

fn scratch(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("moestream-gguf-{tag}-{}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn logits(path: &Path, precision: Precision, stream: Option<StreamOptions>) -> Vec<Vec<f32>> {
    let m = common::load_with(path, precision, stream);
    common::greedy_steps(&m, &PROMPT, 4).1
}

fn max_diff(a: &[Vec<f32>], b: &[Vec<f32>]) -> f32 {
    a.iter()
        .zip(b)
        .map(|(x, y)| common::max_abs_diff(x, y))
        .fold(0f32, f32::max)
}

#[test]
fn each_type_gives_the_logits_of_its_f32_dequantization() {
    let dir = scratch("types");
    let builders: [(&str, Builder); 2] = [("llama", tiny_llama), ("qwen3moe", tiny_qwen3moe)];
    for (arch, build) in builders {
        for (i, ty) in GgmlType::RUNNABLE.into_iter().enumerate() {
            let w = build(ty, 100 + i as u64);
            let (q, f) = (dir.join("q.gguf"), dir.join("f.gguf"));
            w.write(&q).unwrap();
            w.dequantized().write(&f).unwrap();
            let got = logits(&q, Precision::Exact, None);
            let want = logits(&f, Precision::Exact, None);
            let scale = want.iter().flatten().fold(0f32, |m, x| m.max(x.abs()));
            let diff = max_diff(&got, &want);
            println!(
                "{arch} {}: max |logit diff| {diff:e} (logits up to {scale:.3})",
                ty.name()
            );
            assert!(
                diff <= 1e-4 * scale.max(1.0),
                "{arch} {}: logits differ by {diff} from the F32 dequantization",
                ty.name()
            );
        }
    }
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn streamed_gguf_experts_equal_resident() {
    let dir = scratch("stream");
    // The cache directory of the re-laid experts (read by the loader at load time).
    std::env::set_var("MOESTREAM_GGUF_CACHE", dir.join("cache"));
    for ty in [GgmlType::Q4_0, GgmlType::Q4K, GgmlType::Q8_0] {
        let path = dir.join(format!("{}.gguf", ty.name()));
        tiny_qwen3moe(ty, 7).write(&path).unwrap();
        let stream = StreamOptions {
            cache_slots: 3,
            ..Default::default()
        };
        // Exact: the int8 kernels may differ between a resident layout and a slot's in float
        // summation order (streaming_int8.rs covers that); here the question is the bytes.
        let resident = logits(&path, Precision::Exact, None);
        // Twice: the first run writes the cache, the second reads it back.
        for run in ["writes", "reuses"] {
            let streamed = logits(&path, Precision::Exact, Some(stream));
            assert_eq!(
                max_diff(&streamed, &resident),
                0.0,
                "{}: streamed ({run} the cache) differs from resident",
                ty.name()
            );
        }
    }
    let cached = std::fs::read_dir(dir.join("cache")).unwrap().count();
    assert_eq!(cached, 3, "one cache directory per GGUF file");
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn a_split_model_loads_from_any_part_and_equals_the_single_file() {
    let dir = scratch("split");
    let w = tiny_qwen3moe(GgmlType::Q4_0, 11);
    let single = dir.join("single.gguf");
    w.write(&single).unwrap();
    let parts = w.split(3);
    let names: Vec<PathBuf> = (1..=3)
        .map(|k| dir.join(format!("tiny-{k:05}-of-00003.gguf")))
        .collect();
    for (p, name) in parts.iter().zip(&names) {
        p.write(name).unwrap();
    }
    let want = logits(&single, Precision::Exact, None);
    for name in &names {
        assert_eq!(
            max_diff(&logits(name, Precision::Exact, None), &want),
            0.0,
            "loaded from {}",
            name.display()
        );
    }
    // A missing part is an error naming it.
    std::fs::remove_file(&names[2]).unwrap();
    let opts = moestream_engine::LoadOptions::default();
    let err = match moestream_engine::load_model(&names[0], &opts, &mut |_| {}) {
        Ok(_) => panic!("a model missing a part loaded"),
        Err(e) => e.to_string(),
    };
    assert!(err.contains("tiny-00003-of-00003.gguf is missing"), "{err}");
    std::fs::remove_dir_all(&dir).ok();
}

/// A YaRN-scaled llama GGUF (the metadata llama.cpp's converter writes for an HF
/// `rope_scaling` of type yarn) loads as that HF `rope_scaling`, whose YaRN is held to mlx-lm
/// in tests/rope_scaling.rs, and the scaling reaches the model (its logits change).
#[test]
fn yarn_metadata_gives_hf_yarn() {
    use moestream_gguf::Value;
    let dir = scratch("yarn");
    let plain = tiny_llama(GgmlType::F32, 7);
    let mut yarn = tiny_llama(GgmlType::F32, 7);
    yarn.set_meta("llama.rope.scaling.type", Value::String("yarn".into()))
        .set_meta("llama.rope.scaling.factor", Value::F32(4.0))
        .set_meta("llama.rope.scaling.original_context_length", Value::U32(64))
        .set_meta("llama.rope.scaling.yarn_beta_fast", Value::F32(16.0));
    let (p, y) = (dir.join("plain.gguf"), dir.join("yarn.gguf"));
    plain.write(&p).unwrap();
    yarn.write(&y).unwrap();
    let got = logits(&y, Precision::Exact, None);
    // The same model as a config: the GGUF loader's own HF config with rope_scaling set.
    let want_cfg = serde_json::json!({"type": "yarn", "factor": 4.0,
        "original_max_position_embeddings": 64, "beta_fast": 16.0});
    let cfg = common::load_with(&y, Precision::Exact, None).config.raw;
    assert_eq!(cfg["rope_scaling"], want_cfg);
    let unscaled = logits(&p, Precision::Exact, None);
    assert!(
        max_diff(&got, &unscaled) > 1e-3,
        "YaRN must change this model's logits"
    );
    std::fs::remove_dir_all(&dir).ok();
}
