//! The interleaved weight layout (resident 4-bit matrices re-laid at load for the decode
//! kernel) against the files' row-major layout, on the embedded tiny model, whose every
//! 4-bit matrix has an interleavable shape: bit-identical logits with f32 activations (the
//! dequantized values are the same, only their order in memory changed), and the same greedy
//! tokens with int8 activations (where the two kernels sum in different orders).

mod common;

use common::*;
use moestream_engine::{load_model, LoadOptions, Loaded};
use moestream_kernels::Precision;

fn load(precision: Precision, row_major_weights: bool) -> Loaded {
    let opts = LoadOptions {
        threads: Some(2),
        precision,
        row_major_weights,
        ..Default::default()
    };
    let dir = repo_root().join("models").join("tiny-qwen3-moe");
    load_model(&dir, &opts, &mut |_| {}).expect("tiny model loads")
}

/// A 40-token prompt, then 24 greedy tokens: (ids, logits of every step).
fn greedy(m: &Loaded) -> (Vec<u32>, Vec<Vec<f32>>) {
    let prompt: Vec<u32> = (0..40).map(|i| (i * 37 + 11) % 470).collect();
    greedy_steps(m, &prompt, 24)
}

#[test]
fn interleaved_layout_is_used_and_exact_arithmetic_is_bit_identical() {
    // Loading for f32 activations keeps the row-major layout (it dequantizes rows faster);
    // an interleaved model switched to f32 activations must still agree bit for bit.
    let (mut il, rm) = (load(Precision::Fast, false), load(Precision::Exact, false));
    if !moestream_kernels::qdot::prefers_interleaved() {
        // No int8 kernel family (MOESTREAM_ISA=scalar): nothing is re-laid.
        eprintln!("no int8 kernels on this CPU or cap: checking that nothing is interleaved");
        assert_eq!((il.interleaved_bytes, rm.interleaved_bytes), (0, 0));
        return;
    }
    il.model.precision = Precision::Exact;
    assert!(
        il.interleaved_bytes > 0 && rm.interleaved_bytes == 0,
        "interleaved {} / {} bytes",
        il.interleaved_bytes,
        rm.interleaved_bytes
    );
    let (a, b) = (greedy(&il), greedy(&rm));
    assert_eq!(a.0, b.0);
    for (x, y) in a.1.iter().zip(&b.1) {
        assert!(x.iter().zip(y).all(|(p, q)| p.to_bits() == q.to_bits()));
    }
}

#[test]
fn interleaved_layout_gives_the_same_tokens_with_int8_activations() {
    if moestream_kernels::qdot::needs_interleaved_4bit() {
        // Row-major 4-bit weights run f32 activations here: they must be the exact path.
        eprintln!(
            "int8 family {}: no row-major 4-bit kernel, so row-major weights are checked \
             against the exact path instead",
            moestream_kernels::isa::int8().name()
        );
        let (a, b) = (
            greedy(&load(Precision::Fast, true)),
            greedy(&load(Precision::Exact, true)),
        );
        assert_eq!(a, b);
        return;
    }
    let (a, b) = (
        greedy(&load(Precision::Fast, false)),
        greedy(&load(Precision::Fast, true)),
    );
    assert_eq!(a.0, b.0);
    let diffs: Vec<f32> =
        a.1.iter()
            .zip(&b.1)
            .map(|(x, y)| max_abs_diff(x, y))
            .collect();
    // The prompt's logits differ by summation order only (~5e-5 here). Later steps can move
    // by ~2e-2: a value whose int8 rounding sits on a .5 boundary flips by one step in one
    // layout and not the other, the int8 path's own error scale (README: ~1e-2 vs f32).
    assert!(diffs[0] < 1e-3, "prompt logits differ by {}", diffs[0]);
    assert!(diffs.iter().all(|&d| d < 0.1), "logits differ by {diffs:?}");
}
