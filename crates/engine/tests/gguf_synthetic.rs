//! Every GGUF type the engine runs, through the whole loader (renaming, q/k un-permuting,
//! the affine re-lay with f16 or f32 parameters, groups of 16 for the K-quants): a tiny llama
//! model in each type gives the logits of the same model with every tensor dequantized to
//! F32 by llama.cpp's formulas (`moestream_gguf::reference`).

mod common;

use moestream_gguf::writer::tiny_llama;
use moestream_gguf::GgmlType;
use moestream_kernels::qdot::Precision;

const TYPES: [GgmlType; 13] = [
    GgmlType::F32,
    GgmlType::F16,
    GgmlType::Bf16,
    GgmlType::Q4_0,
    GgmlType::Q4_1,
    GgmlType::Q5_0,
    GgmlType::Q5_1,
    GgmlType::Q8_0,
    GgmlType::Q2K,
    GgmlType::Q3K,
    GgmlType::Q4K,
    GgmlType::Q5K,
    GgmlType::Q6K,
];

fn logits(path: &std::path::Path, prompt: &[u32]) -> Vec<Vec<f32>> {
    let m = common::load_with(path, Precision::Exact, None);
    common::greedy_steps(&m, prompt, 4).1
}

#[test]
fn each_type_gives_the_logits_of_its_f32_dequantization() {
    let dir = std::env::temp_dir().join(format!("moestream-gguf-types-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let prompt = [1u32, 77, 300, 5, 42];
    for (i, ty) in TYPES.into_iter().enumerate() {
        let w = tiny_llama(ty, 100 + i as u64);
        let (q, f) = (dir.join("q.gguf"), dir.join("f.gguf"));
        w.write(&q).unwrap();
        w.dequantized().write(&f).unwrap();
        let (got, want) = (logits(&q, &prompt), logits(&f, &prompt));
        let scale = want.iter().flatten().fold(0f32, |m, x| m.max(x.abs()));
        let diff = got
            .iter()
            .zip(&want)
            .map(|(a, b)| common::max_abs_diff(a, b))
            .fold(0f32, f32::max);
        println!(
            "{}: max |logit diff| {diff:e} (logits up to {scale:.3})",
            ty.name()
        );
        assert!(
            diff <= 1e-4 * scale.max(1.0),
            "{}: logits differ by {diff} from the F32 dequantization",
            ty.name()
        );
    }
    std::fs::remove_dir_all(&dir).ok();
}
