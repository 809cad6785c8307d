//! `--stream-experts`: the streamed expert store gives exactly the resident path's tokens
//! (including when a layer needs more experts than it has slots), counts hits and misses, and
//! a failed read fails that call with the file named, after which the next call works again.

mod common;

use common::*;
use moestream_engine::experts::io::IoEngine;
use moestream_engine::experts::streamed::StreamOptions;
use moestream_engine::experts::Prefetch;
use moestream_engine::models::ffn::FeedForward;
use moestream_engine::Loaded;
use moestream_kernels::Precision;
use std::path::Path;

fn load(dir: &Path, stream: Option<StreamOptions>) -> Loaded {
    load_with(dir, Precision::Exact, stream)
}

/// Prefill the fixture prompt, then 16 greedy tokens: (ids, last logits).
fn greedy(m: &Loaded, prompt: &[u32]) -> (Vec<u32>, Vec<f32>) {
    let model = &m.model;
    let mut cache = model.new_cache();
    let mut logits = Vec::new();
    model
        .forward(prompt, &mut cache, false, &mut logits)
        .unwrap();
    let mut ids = Vec::new();
    for _ in 0..16 {
        let id = argmax(&logits);
        ids.push(id);
        model
            .forward(&[id], &mut cache, false, &mut logits)
            .unwrap();
    }
    (ids, logits)
}

/// Every policy, I/O engine and read mode gives the resident path's tokens and logits bit for
/// bit: prefetch and direct reads only change what is in the slots and how it got there.
#[test]
fn streamed_equals_resident_for_every_slot_count_policy_and_engine() {
    let modes = [
        (Prefetch::None, false, IoEngine::Auto),
        (Prefetch::Prev, false, IoEngine::Auto),
        (Prefetch::Lookahead, false, IoEngine::Auto),
        (Prefetch::None, true, IoEngine::Pread),
        (Prefetch::Lookahead, true, IoEngine::IoUring),
        (Prefetch::Prev, true, IoEngine::Auto),
        (Prefetch::Lookahead, false, IoEngine::Pread),
    ];
    for name in [
        "qwen3_moe_q4_g64_f32",
        "qwen3_moe_q4_g64_bf16",
        "qwen3_moe_hf_f32",
        "qwen3_moe_sparse_step2_f32",
        "olmoe_q4_g32_f32",
        "mixtral_q4_g32_f32",
        "mixtral_hf_f32",
        "qwen3_next_q4_g32_f32",
        "qwen3_5_moe_f32",
        "glm4_moe_lite_q4_g32_f32",
        "glm4_moe_q4_g32_f32",
    ] {
        let dir = fixture(name);
        let prompt = ids(&expected(name)["prompt_ids"]);
        let resident = load(&dir, None);
        let (want_ids, want_logits) = greedy(&resident, &prompt);
        let experts: usize = resident
            .model
            .layers
            .iter()
            .map(|l| match &l.ffn {
                FeedForward::Moe(m) => m.n_experts,
                FeedForward::Dense(_) => 0,
            })
            .sum();
        for (prefetch, direct_io, io_engine) in modes {
            // 2 slots < top-k 4: every call is served in batches; 16 slots: all experts fit.
            for slots in [2, 5, 16] {
                let what = format!(
                    "{name} with {slots} slots, {prefetch:?}, direct {direct_io}, {io_engine:?}"
                );
                let streamed = load(
                    &dir,
                    Some(StreamOptions {
                        cache_slots: slots,
                        io_depth: 4,
                        prefetch,
                        direct_io,
                        io_engine,
                        ..Default::default()
                    }),
                );
                let (got_ids, got_logits) = greedy(&streamed, &prompt);
                assert_eq!(got_ids, want_ids, "{what}");
                assert_eq!(
                    got_logits, want_logits,
                    "{what}: logits must be bit-identical"
                );
                let st = streamed.model.experts.stats();
                assert!(
                    st.misses > 0 && st.bytes_read > 0,
                    "{what}: reads were counted: {st:?}"
                );
                assert!(st.prefetch_hits <= st.prefetch_reads, "{what}: {st:?}");
                if prefetch == Prefetch::None {
                    assert_eq!(st.prefetch_reads, 0, "{what}");
                }
                // (The sparse fixture has a single MoE layer: nothing to look ahead to.)
                if prefetch == Prefetch::Lookahead && slots == 5 && !name.contains("sparse") {
                    assert!(
                        st.prefetch_reads > 0,
                        "{what}: lookahead read ahead: {st:?}"
                    );
                }
                if slots == 16 {
                    // Every expert fits: after the first reads everything is a hit.
                    assert!(
                        (st.misses + st.prefetch_reads) as usize <= experts,
                        "{what}: at most one read per expert per layer: {st:?}"
                    );
                    assert!(st.hits > st.misses);
                }
            }
        }
    }
}

#[test]
fn a_failed_read_names_the_file_and_the_next_call_works() {
    let src = fixture("qwen3_moe_q4_g64_f32");
    let dir = std::env::temp_dir().join(format!("moestream-stream-fail-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    for e in std::fs::read_dir(&src).unwrap() {
        let p = e.unwrap().path();
        std::fs::copy(&p, dir.join(p.file_name().unwrap())).unwrap();
    }
    let weights = dir.join("model.safetensors");
    let full = std::fs::read(&weights).unwrap();
    let _ = full.len();
    let m = load(
        &dir,
        Some(StreamOptions {
            cache_slots: 2,
            io_depth: 2,
            ..Default::default()
        }),
    );
    let prompt = ids(&expected("qwen3_moe_q4_g64_f32")["prompt_ids"]);

    // Truncate the file under the loaded model at the first expert tensor: every expert
    // read now comes up short. (With streaming, dense weights were copied at load, so the
    // mapping is never touched and nothing else can fault.)
    let first_expert = moestream_engine::weights::safetensors::read_file(&weights)
        .unwrap()
        .values()
        .filter(|t| t.name.contains("switch_mlp"))
        .map(|t| t.bytes.offset())
        .min()
        .unwrap();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&weights)
        .unwrap()
        .set_len(first_expert as u64)
        .unwrap();
    let mut cache = m.model.new_cache();
    let mut logits = Vec::new();
    let err = m.model.forward(&prompt, &mut cache, false, &mut logits);
    let msg = err
        .expect_err("a short read must fail the call")
        .to_string();
    assert!(
        msg.contains("model.safetensors") && msg.contains("offset"),
        "{msg}"
    );

    // Put the file back: the next call succeeds with the right tokens.
    std::fs::write(&weights, &full).unwrap();
    let (got, _) = greedy(&m, &prompt);
    let (want, _) = greedy(&load(&fixture("qwen3_moe_q4_g64_f32"), None), &prompt);
    assert_eq!(got, want);
    let _ = std::fs::remove_dir_all(&dir);
}
