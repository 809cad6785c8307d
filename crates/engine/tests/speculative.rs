//! Speculative decoding: greedy output equals plain greedy decoding (MoE with a dense draft,
//! hybrids with drafts), rollback of the recurrent state is exact, sampled tokens follow the
//! main model's distribution, and a draft with another tokenizer is refused.
//!
//! Comparisons are bit-exact (`assert_eq!` on logits and states): every kernel computes a
//! row of a batch the same way whatever else is in it (the verification pass of `n + 1`
//! tokens gives the rows single-token decoding gives), and the Gated DeltaNet kernels give
//! the same state however the tokens are chunked, so a rolled-back-and-replayed state is the
//! state of plain decoding, not an approximation of it.

mod common;

use common::*;
use moestream_engine::cache::{Checkpoint, SeqCache};
use moestream_engine::generate::{Flow, GenerateParams, GenerationStats, TokenEvent, TokenLoop};
use moestream_engine::models::Transformer;
use moestream_engine::sampling::{Sampler, SamplingParams};
use moestream_engine::session::generate;
use moestream_engine::speculative::{rollback, Draft, SpecSeq, SpecStats};
use moestream_engine::{load_model, Engine, LoadOptions};
use moestream_kernels::Precision;

fn opts(precision: Precision) -> LoadOptions {
    LoadOptions {
        threads: Some(2),
        warm: false,
        precision,
        stream: None,
        ..Default::default()
    }
}

fn load(name: &str, precision: Precision) -> Transformer {
    load_model(&fixture(name), &opts(precision), &mut |_| {})
        .unwrap()
        .model
}

fn greedy() -> Sampler {
    Sampler::new(SamplingParams::default())
}

const PARAMS: GenerateParams = GenerateParams {
    max_tokens: 40,
    eos_ids: &[],
    logprobs: None,
};

/// Greedy tokens (through `draft` when given), the main cache at the end, and the stats.
fn run(
    m: &Transformer,
    draft: Option<&Draft>,
    prompt: &[u32],
) -> (Vec<u32>, SeqCache, GenerationStats) {
    let mut out = Vec::new();
    let mut cache = m.new_cache();
    let mut keep = |t: &TokenEvent, _: &[f32]| {
        out.push(t.id);
        Flow::Continue
    };
    let stats = generate(m, draft, &mut cache, prompt, greedy(), &PARAMS, &mut keep).unwrap();
    (out, cache, stats)
}

fn plain_tokens(m: &Transformer, prompt: &[u32]) -> Vec<u32> {
    run(m, None, prompt).0
}

/// Speculative greedy tokens, the main cache at the end, and the counters.
fn spec_tokens(m: &Transformer, d: &Draft, prompt: &[u32]) -> (Vec<u32>, SeqCache, SpecStats) {
    let (out, cache, stats) = run(m, Some(d), prompt);
    (out, cache, stats.speculative.expect("speculative counters"))
}

/// The cache plain decoding leaves after feeding `tokens` one at a time after the prompt.
fn plain_cache(m: &Transformer, prompt: &[u32], tokens: &[u32]) -> SeqCache {
    let mut cache = m.new_cache();
    let mut logits = Vec::new();
    m.forward(prompt, &mut cache, false, &mut logits).unwrap();
    for &t in tokens {
        m.forward(&[t], &mut cache, false, &mut logits).unwrap();
    }
    cache
}

#[test]
fn greedy_speculative_equals_plain_greedy() {
    // (main, draft, precision): a MoE with a dense draft; hybrids with a dense draft, with
    // their own quantized copy (mostly agrees: partial acceptances, so rollback is used)
    // and with themselves (everything accepted).
    let cases = [
        ("qwen3_moe_f32", "qwen3_dense_f32", Precision::Exact),
        ("qwen3_moe_q4_g32_f32", "qwen3_dense_f32", Precision::Fast),
        ("qwen3_moe_f32", "qwen3_moe_q4_g32_f32", Precision::Exact),
        ("qwen3_next_f32", "qwen3_dense_f32", Precision::Exact),
        ("qwen3_next_f32", "qwen3_next_q4_g32_f32", Precision::Exact),
        ("qwen3_5_moe_f32", "qwen3_5_moe_q4_g32_f32", Precision::Fast),
        (
            "qwen3_5_moe_q4_g32_f32",
            "qwen3_5_moe_q4_g32_f32",
            Precision::Fast,
        ),
    ];
    let mut partial = 0;
    for (main, draft, precision) in cases {
        let m = load(main, precision);
        let prompt = ids(&expected(main)["prompt_ids"]);
        let want = plain_tokens(&m, &prompt);
        for n in [1, 3, 5] {
            let d = Draft {
                model: load(draft, precision),
                num_draft: n,
            };
            let (got, cache, stats) = spec_tokens(&m, &d, &prompt);
            assert_eq!(got, want, "{main} with draft {draft}, {n} per round");
            assert_eq!(
                stats.emitted + 1,
                want.len(),
                "{main}: the first token is not drafted"
            );
            assert!(stats.rounds < want.len() || stats.accepted == 0);
            if main == draft {
                assert_eq!(
                    stats.accepted, stats.drafted,
                    "{main}: a draft equal to the model"
                );
                assert!(stats.tokens_per_step() > 1.0 + 0.5 * n as f64, "{stats:?}");
            }
            if stats.accepted > 0 && stats.accepted < stats.drafted {
                partial += 1;
            }
            // The main cache holds every token but the last, exactly as plain decoding
            // leaves it (KV rows and recurrent states).
            let fed = &want[..want.len() - 1];
            let plain = plain_cache(&m, &prompt, fed);
            assert_eq!(cache.offset, plain.offset, "{main}: cache length");
            assert_eq!(
                cache.recurrent, plain.recurrent,
                "{main} / {draft} / {n}: state"
            );
        }
    }
    assert!(
        partial >= 3,
        "partial acceptances exercise the rollback ({partial})"
    );
}

/// A round that accepts some drafts and rejects the rest, on the hybrids: afterwards the
/// recurrent states and the next logits are those of plain decoding of the kept tokens.
#[test]
fn rollback_after_partial_acceptance_is_exact() {
    for name in ["qwen3_next_f32", "qwen3_next_q4_g32_f32", "qwen3_5_moe_f32"] {
        let m = load(name, Precision::Exact);
        let prompt = ids(&expected(name)["prompt_ids"]);
        let verified = [17u32, 300, 5, 460, 88];
        for keep in [0usize, 1, 3, 5] {
            let mut cache = m.new_cache();
            let mut logits = Vec::new();
            m.forward(&prompt, &mut cache, false, &mut logits).unwrap();
            let mut cp = Checkpoint::default();
            rollback::mark(&m, &mut cache, &mut cp);
            m.forward(&verified, &mut cache, true, &mut logits).unwrap();
            rollback::rewind(&m, &mut cache, &cp, prompt.len() + keep);
            assert!(!cache.log.active);
            let plain = plain_cache(&m, &prompt, &verified[..keep]);
            assert_eq!(cache.offset, plain.offset);
            assert_eq!(cache.recurrent, plain.recurrent, "{name}, keep {keep}");
            // And the next step agrees bit for bit.
            let (mut a, mut b) = (Vec::new(), Vec::new());
            let mut plain = plain;
            m.forward(&[42, 7], &mut cache, true, &mut a).unwrap();
            m.forward(&[42, 7], &mut plain, true, &mut b).unwrap();
            assert_eq!(a, b, "{name}, keep {keep}: logits after the rollback");
        }
    }
}

/// Sampling: the first token a round emits (accepted draft or replacement) is distributed as
/// the main model's sampling distribution, not the draft's. The round is repeated from the
/// same point (rolling both caches back each time) with different seeds.
#[test]
fn sampled_tokens_follow_the_main_model() {
    let m = load("qwen3_moe_f32", Precision::Exact);
    let d = Draft {
        model: load("qwen3_dense_f32", Precision::Exact),
        num_draft: 2,
    };
    let mut history = ids(&expected("qwen3_moe_f32")["prompt_ids"]);
    history.push(200);
    let params = |seed| SamplingParams {
        temperature: 0.7,
        top_k: 40,
        seed: Some(seed),
        ..Default::default()
    };
    let gp = GenerateParams {
        max_tokens: 100,
        eos_ids: &[],
        logprobs: None,
    };
    // The target distributions at the position after `history`.
    let dist = |model: &Transformer| {
        let mut c = model.new_cache();
        let mut logits = Vec::new();
        model.forward(&history, &mut c, false, &mut logits).unwrap();
        let mut probs = vec![0f32; logits.len()];
        Sampler::new(params(0)).probabilities(&logits, &mut probs);
        probs
    };
    let (p, q) = (dist(&m), dist(&d.model));
    let tv = |a: &[f32], b: &[f64]| -> f64 {
        0.5 * a
            .iter()
            .zip(b)
            .map(|(x, y)| (*x as f64 - y).abs())
            .sum::<f64>()
    };
    let mut cache = m.new_cache();
    let mut logits = Vec::new();
    m.forward(
        &history[..history.len() - 1],
        &mut cache,
        false,
        &mut logits,
    )
    .unwrap();
    let mut spec = SpecSeq::new(&d, &Sampler::new(params(0)));
    let n = 6000;
    let mut hist = vec![0f64; p.len()];
    for seed in 0..n {
        let mut lp = TokenLoop::new(&history, Sampler::new(params(seed)), &gp);
        spec.round(&d, &m, &mut cache, &mut lp, &mut logits)
            .unwrap();
        hist[spec.chosen()[0] as usize] += 1.0 / n as f64;
        // Commit nothing: both caches go back to where the round started.
        spec.settle(&d, &m, &mut cache, 0);
    }
    let s = spec.stats;
    assert!(
        s.accepted > 0 && s.accepted < s.drafted,
        "both branches of the rule are exercised: {s:?}"
    );
    let (to_main, to_draft) = (tv(&p, &hist), tv(&q, &hist));
    let main_vs_draft = tv(&p, &q.iter().map(|&x| x as f64).collect::<Vec<_>>());
    assert!(
        main_vs_draft > 0.3,
        "the draft must differ to test anything ({main_vs_draft})"
    );
    assert!(
        to_main < 0.06,
        "distance to the main model's distribution {to_main}"
    );
    assert!(
        to_draft > 0.25,
        "distance to the draft's distribution {to_draft}"
    );
}

#[test]
fn a_draft_with_another_tokenizer_is_refused() {
    let main = fixture("qwen3_moe_f32");
    let dir = std::env::temp_dir().join(format!("moestream-draft-tok-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let src = fixture("qwen3_dense_f32");
    for e in std::fs::read_dir(&src).unwrap() {
        let p = e.unwrap().path();
        std::fs::copy(&p, dir.join(p.file_name().unwrap())).unwrap();
    }
    // Swap two tokens' ids in the vocabulary: same size, different meaning.
    let path = dir.join("tokenizer.json");
    let mut tok: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    let vocab = tok["model"]["vocab"].as_object_mut().unwrap();
    let (a, b) = (vocab["a"].clone(), vocab["b"].clone());
    vocab.insert("a".into(), b);
    vocab.insert("b".into(), a);
    std::fs::write(&path, serde_json::to_string(&tok).unwrap()).unwrap();

    let o = opts(Precision::Exact);
    let mut engine = Engine::load(&main, &o, &mut |_| {}).unwrap();
    let err = engine
        .load_draft(&main, &dir, 4, &o, &mut |_| {})
        .expect_err("a different vocabulary must be refused")
        .to_string();
    assert!(err.contains("do not share a tokenizer"), "{err}");
    assert!(err.contains(&dir.display().to_string()), "{err}");
    assert!(err.contains(&main.display().to_string()), "{err}");
    assert!(err.contains("token id"), "{err}");
    assert!(engine.draft.is_none());
    // The same tokenizer loads.
    engine
        .load_draft(&main, &src, 4, &o, &mut |_| {})
        .expect("the fixtures share a tokenizer");
    assert_eq!(engine.draft.as_ref().unwrap().num_draft, 4);
    let _ = std::fs::remove_dir_all(&dir);
}

/// The text-level path (what `generate`, `serve` use): same text and tokens with a draft.
#[test]
fn text_generation_with_a_draft_is_unchanged() {
    let main = fixture("qwen3_next_q4_g32_f32");
    let o = opts(Precision::Fast);
    let mut engine = Engine::load(&main, &o, &mut |_| {}).unwrap();
    let prompt = ids(&expected("qwen3_next_q4_g32_f32")["prompt_ids"]);
    let run = |e: &Engine| {
        let mut toks = Vec::new();
        let mut text = String::new();
        let params = moestream_engine::TextParams {
            max_tokens: 30,
            stop: &[],
            logprobs: Some(2),
        };
        let mut cache = e.model().new_cache();
        let out = e
            .generate_text(&mut cache, &prompt, greedy(), &params, &mut |ev| {
                toks.push((ev.token.id, ev.token.logprob, ev.token.top_logprobs.clone()));
                text.push_str(ev.text);
                true
            })
            .unwrap();
        text.push_str(&out.tail);
        (toks, text, out.stats)
    };
    let (want, want_text, plain) = run(&engine);
    engine
        .load_draft(&main, &fixture("qwen3_next_f32"), 3, &o, &mut |_| {})
        .unwrap();
    let (got, got_text, stats) = run(&engine);
    assert_eq!(got, want, "tokens and log-probabilities");
    assert_eq!(got_text, want_text);
    assert_eq!(stats.finish, plain.finish);
    assert!(plain.speculative.is_none());
    let s = stats.speculative.unwrap();
    assert!(
        s.rounds > 0 && s.emitted + 1 == stats.generated_tokens,
        "{s:?}"
    );
}

#[test]
fn moe_top_k_overrides_the_config() {
    let mut m = load("qwen3_moe_f32", Precision::Exact);
    let prompt = ids(&expected("qwen3_moe_f32")["prompt_ids"]);
    assert_eq!(m.default_top_k(), Some(4));
    let bytes = m.info.bytes_per_token;
    let want = plain_tokens(&m, &prompt);
    m.set_moe_top_k(Some(4)).unwrap();
    assert_eq!(
        plain_tokens(&m, &prompt),
        want,
        "the config's k changes nothing"
    );
    m.set_moe_top_k(Some(2)).unwrap();
    assert!(m.info.bytes_per_token < bytes);
    assert_ne!(
        plain_tokens(&m, &prompt),
        want,
        "fewer experts change the output"
    );
    m.set_moe_top_k(None).unwrap();
    assert_eq!(plain_tokens(&m, &prompt), want);
    assert_eq!(m.info.bytes_per_token, bytes);
    for bad in [0, 17] {
        let e = m.set_moe_top_k(Some(bad)).unwrap_err();
        assert!(e.contains("--moe-top-k") && e.contains("16"), "{e}");
    }
    let mut dense = load("qwen3_dense_f32", Precision::Exact);
    assert!(dense.set_moe_top_k(Some(2)).unwrap_err().contains("no MoE"));
}
