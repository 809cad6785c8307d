//! `--stream-experts` under the default int8 activations on a CPU whose int8 kernels need the
//! interleaved layout (everything but AVX-512 VNNI): each 4-bit expert is re-laid in its slot
//! as it arrives, and the streamed tokens and logits equal the resident (interleaved) path's
//! bit for bit, however slots are reused. On x86 this binary caps the kernels at AVX2
//! (`MOESTREAM_ISA=avx2`) so the re-lay runs on AVX-512 machines too; on aarch64 both NEON
//! families re-lay.

mod common;

use common::*;
use moestream_engine::experts::streamed::StreamOptions;
use moestream_engine::experts::Prefetch;
use moestream_engine::Loaded;
use moestream_kernels::Precision;
use std::path::Path;

fn load(dir: &Path, stream: Option<StreamOptions>) -> Loaded {
    load_with(dir, Precision::Fast, stream)
}

/// Prefill the prompt, then 12 greedy tokens: (ids, logits of every step).
fn greedy(m: &Loaded, prompt: &[u32]) -> (Vec<u32>, Vec<Vec<f32>>) {
    greedy_steps(m, prompt, 12)
}

#[test]
fn streamed_int8_experts_are_re_laid_and_equal_resident_bit_for_bit() {
    #[cfg(target_arch = "x86_64")]
    {
        if !std::arch::is_x86_feature_detected!("avx2") {
            eprintln!("skipped: this x86 CPU has no AVX2, so no int8 kernel needs the re-lay");
            return;
        }
        // The only test in this binary, set before any kernel runs (the choice is made once).
        std::env::set_var("MOESTREAM_ISA", "avx2");
    }
    if !moestream_kernels::qdot::needs_interleaved_4bit() {
        eprintln!(
            "skipped: int8 family {} has a row-major 4-bit kernel; slots are not re-laid",
            moestream_kernels::isa::int8().name()
        );
        return;
    }
    eprintln!("int8 family: {}", moestream_kernels::isa::int8().name());
    let mut re_laid = 0;
    for name in [
        "qwen3_moe_q4_g64_f32",
        "qwen3_moe_q4_g64_bf16",
        "olmoe_q4_g32_f32",
        "qwen3_next_q4_g32_f32",
        "glm4_moe_lite_q4_g32_f32",
    ] {
        let dir = fixture(name);
        let prompt = ids(&expected(name)["prompt_ids"]);
        let resident = load(&dir, None);
        // A fixture whose 4-bit shapes the layout does not serve still must agree.
        if resident.interleaved_bytes > 0 {
            re_laid += 1;
        } else {
            eprintln!("{name}: no interleavable 4-bit matrix (streamed row-major, f32)");
        }
        let want = greedy(&resident, &prompt);
        // 2 slots: experts are evicted and re-read (and re-laid) all the time; 16: all fit.
        for (slots, prefetch) in [
            (2, Prefetch::None),
            (5, Prefetch::Lookahead),
            (16, Prefetch::Prev),
        ] {
            let streamed = load(
                &dir,
                Some(StreamOptions {
                    cache_slots: slots,
                    io_depth: 4,
                    prefetch,
                    ..Default::default()
                }),
            );
            let got = greedy(&streamed, &prompt);
            assert_eq!(got.0, want.0, "{name}, {slots} slots, {prefetch:?}");
            for (step, (a, b)) in got.1.iter().zip(&want.1).enumerate() {
                assert!(
                    a.iter().zip(b).all(|(x, y)| x.to_bits() == y.to_bits()),
                    "{name}, {slots} slots, {prefetch:?}: step {step} differs by {}",
                    max_abs_diff(a, b)
                );
            }
        }
    }
    assert!(
        re_laid >= 2,
        "the qwen3 fixtures have interleavable experts"
    );
}
