//! Batched forward passes: several sequences in one `forward_batch` call (the server's decode
//! step) give each sequence bit for bit the logits it gets alone (every kernel computes a row
//! the same way whatever else is in the batch), and the batch leaves each cache exactly
//! where a lone call would.

mod common;

use common::*;
use moestream_engine::models::{LogitRows, SeqStep};
use moestream_engine::{load_model, LoadOptions, Loaded};
use moestream_kernels::Precision;

fn load(name: &str, precision: Precision) -> Loaded {
    let opts = LoadOptions {
        threads: Some(2),
        warm: false,
        precision,
        stream: None,
        ..Default::default()
    };
    let dir = if name == TINY {
        repo_root().join("models").join(TINY)
    } else {
        fixture(name)
    };
    load_model(&dir, &opts, &mut |_| {}).expect("model loads")
}

/// The embedded default model (bf16 scales, 8-bit router): what the server tests run.
const TINY: &str = "tiny-qwen3-moe";

fn prompt_of(name: &str) -> Vec<u32> {
    if name == TINY {
        (0..40).map(|i| (i * 37 + 11) % 500).collect()
    } else {
        ids(&expected(name)["prompt_ids"])
    }
}

/// Prompts of different lengths, decoded greedily alone and then in one batch; the
/// batch also mixes a prompt chunk with decode steps (continuous batching).
fn check(name: &str, precision: Precision, tol: f32) {
    let m = load(name, precision);
    let model = &m.model;
    let base = prompt_of(name);
    let mut prompts: Vec<Vec<u32>> = vec![
        base.clone(),
        base[..base.len() / 2].to_vec(),
        base.iter().rev().copied().collect(),
    ];
    // Enough sequences for every tile width of the kernels (4, 2, 1).
    for i in 0..4 {
        prompts.push(base.iter().map(|&t| (t + i + 1) % 50).collect());
    }
    let n = prompts.len();
    let steps = 6;
    // Alone: prefill, then greedy decode; record every logits vector.
    let mut alone: Vec<Vec<Vec<f32>>> = Vec::new();
    for p in &prompts {
        let mut cache = model.new_cache();
        let mut logits = Vec::new();
        model.forward(p, &mut cache, false, &mut logits).unwrap();
        let mut seen = vec![logits.clone()];
        for _ in 0..steps {
            let id = argmax(&logits);
            model
                .forward(&[id], &mut cache, false, &mut logits)
                .unwrap();
            seen.push(logits.clone());
        }
        alone.push(seen);
    }
    // Batched: sequence 2 starts one step late, its prompt riding along with the others'
    // decode tokens.
    let vocab = model.info.vocab_size;
    let mut caches: Vec<_> = prompts.iter().map(|_| model.new_cache()).collect();
    let mut scratch = Default::default();
    let mut logits = Vec::new();
    let mut next: Vec<Vec<u32>> = prompts.clone();
    next[2].clear();
    let mut got: Vec<Vec<Vec<f32>>> = vec![Vec::new(); n];
    for round in 0..=steps + 1 {
        if round == 1 {
            next[2] = prompts[2].clone();
        }
        let live: Vec<usize> = (0..n)
            .filter(|&i| !next[i].is_empty() && got[i].len() <= steps)
            .collect();
        let mut batch: Vec<SeqStep> = Vec::new();
        for (i, cache) in caches.iter_mut().enumerate() {
            if live.contains(&i) {
                batch.push(SeqStep {
                    tokens: &next[i],
                    cache,
                    logits: LogitRows::Last,
                });
            }
        }
        if batch.is_empty() {
            break;
        }
        model
            .forward_batch(&mut batch, &mut scratch, &mut logits)
            .unwrap();
        for (row, &i) in live.iter().enumerate() {
            let l = logits[row * vocab..(row + 1) * vocab].to_vec();
            next[i] = vec![argmax(&l)];
            got[i].push(l);
        }
    }
    for i in 0..3 {
        assert_eq!(
            got[i].len(),
            alone[i].len(),
            "{name}: sequence {i} step count"
        );
        for (s, (a, b)) in alone[i].iter().zip(&got[i]).enumerate() {
            let d = max_abs_diff(a, b);
            assert!(
                d <= tol,
                "{name}: sequence {i} step {s}: batched differs by {d}"
            );
            assert_eq!(argmax(a), argmax(b), "{name}: sequence {i} step {s}");
        }
        assert_eq!(
            caches[i].offset,
            prompts[i].len() + steps,
            "{name}: offset {i}"
        );
    }
}

#[test]
fn batched_decode_matches_lone_sequences_exact() {
    check("qwen3_moe_q4_g64_f32", Precision::Exact, 0.0);
    check("qwen3_moe_f32", Precision::Exact, 0.0);
}

#[test]
fn batched_decode_matches_lone_sequences_fast_kernels() {
    check("qwen3_moe_q4_g64_f32", Precision::Fast, 0.0);
    check("qwen3_dense_f32", Precision::Fast, 0.0);
    check(TINY, Precision::Fast, 0.0);
}

#[test]
fn a_bad_step_rejects_the_whole_batch_and_changes_nothing() {
    let m = load("qwen3_moe_q4_g64_f32", Precision::Fast);
    let model = &m.model;
    let (mut a, mut b) = (model.new_cache(), model.new_cache());
    let bad = model.info.vocab_size as u32;
    let mut batch = [
        SeqStep {
            tokens: &[1, 2, 3],
            cache: &mut a,
            logits: LogitRows::Last,
        },
        SeqStep {
            tokens: &[bad],
            cache: &mut b,
            logits: LogitRows::Last,
        },
    ];
    let err = model
        .forward_batch(&mut batch, &mut Default::default(), &mut Vec::new())
        .unwrap_err();
    assert!(err.to_string().contains(&bad.to_string()), "{err}");
    assert_eq!((a.offset, b.offset), (0, 0));
}

/// The newer architectures, hybrids included: each Gated DeltaNet layer runs its conv and
/// delta rule per sequence over that sequence's own recurrent state, each MLA layer attends
/// over that sequence's own latent cache.
#[test]
fn batched_decode_matches_lone_sequences_other_archs() {
    for name in [
        "qwen3_next_q4_g32_f32",
        "qwen3_5_moe_f32",
        "olmoe_q4_g32_f32",
        "mixtral_q4_g32_f32",
        "glm4_moe_lite_q4_g32_f32",
        "glm4_moe_q4_g32_f32",
    ] {
        check(name, Precision::Exact, 0.0);
    }
    check("qwen3_next_q4_g32_f32", Precision::Fast, 0.0);
    check("glm4_moe_lite_q4_g32_f32", Precision::Fast, 0.0);
}

/// A pass that only feeds prompt tokens (no logits wanted, as for a prompt chunk that is not
/// the last) fills the cache like one that wants them, and writes no logits.
#[test]
fn a_pass_without_logits_fills_the_cache_the_same() {
    let m = load("qwen3_moe_q4_g64_f32", Precision::Fast);
    let prompt = ids(&expected("qwen3_moe_q4_g64_f32")["prompt_ids"]);
    let (head, tail) = prompt.split_at(prompt.len() / 2);
    let (mut a, mut b) = (m.model.new_cache(), m.model.new_cache());
    let (mut la, mut lb) = (Vec::new(), Vec::new());
    m.model
        .forward_rows(head, &mut a, LogitRows::None, &mut la)
        .unwrap();
    assert!(la.is_empty(), "no logits were asked for");
    m.model
        .forward_rows(head, &mut b, LogitRows::Last, &mut lb)
        .unwrap();
    m.model.forward(tail, &mut a, false, &mut la).unwrap();
    m.model.forward(tail, &mut b, false, &mut lb).unwrap();
    assert_eq!(la, lb);
}
