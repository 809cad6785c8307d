//! The scheduler with a draft model: several sequences decode together, each drafting on its
//! own and verifying inside the shared batched pass; greedy answers equal the engine alone
//! without a draft, and the speculative counters reach the metrics.

use moestream_engine::generate::{FinishReason, PREFILL_CHUNK};
use moestream_engine::sampling::{Sampler, SamplingParams};
use moestream_engine::{Engine, LoadOptions, TextParams};
use moestream_server::metrics::Metrics;
use moestream_server::scheduler::{self, Event, Job, SchedulerConfig};
use std::path::PathBuf;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../fixtures/models")
        .join(name)
}

fn opts() -> LoadOptions {
    LoadOptions {
        threads: Some(2),
        warm: false,
        ..Default::default()
    }
}

fn prompt(i: usize) -> Vec<u32> {
    (0..5 + 3 * i as u32)
        .map(|t| (t * 37 + 11 * i as u32) % 470)
        .collect()
}

#[test]
fn batched_speculative_sequences_answer_as_the_engine_alone() {
    let main = fixture("qwen3_next_q4_g32_f32");
    let plain = Engine::load(&main, &opts(), &mut |_| {}).unwrap();
    let mut spec = Engine::load(&main, &opts(), &mut |_| {}).unwrap();
    spec.load_draft(&main, &fixture("qwen3_next_f32"), 3, &opts(), &mut |_| {})
        .unwrap();
    let metrics = Arc::new(Metrics::default());
    let cfg = SchedulerConfig {
        max_batch: 4,
        max_queue: 8,
        prefill_chunk: PREFILL_CHUNK,
        prompt_cache_entries: 0,
        prompt_cache_bytes: 0,
    };
    let handle = scheduler::start(
        Arc::new(spec),
        moestream_server::Placement::Cpu,
        cfg,
        Arc::clone(&metrics),
    );
    let max_tokens = 24;
    let mut receivers = Vec::new();
    for i in 0..4 {
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        let job = Job {
            prompt: prompt(i),
            sampling: SamplingParams::default(),
            max_tokens,
            stop: Vec::new(),
            logprobs: None,
            events: tx,
        };
        assert!(handle.submit(job).is_ok());
        receivers.push(rx);
    }
    for (i, mut rx) in receivers.into_iter().enumerate() {
        let mut ids = Vec::new();
        let finish = loop {
            match rx.blocking_recv().expect("an event") {
                Event::Token { token, .. } => ids.push(token.id),
                Event::Done { finish, usage, .. } => {
                    assert_eq!(usage.completion_tokens, ids.len());
                    break finish;
                }
                Event::Failed(e) => panic!("sequence {i} failed: {e}"),
            }
        };
        let mut want = Vec::new();
        let params = TextParams {
            max_tokens,
            stop: &[],
            logprobs: None,
        };
        let mut cache = plain.model().new_cache();
        let out = plain
            .generate_text(
                &mut cache,
                &prompt(i),
                Sampler::new(SamplingParams::default()),
                &params,
                &mut |ev| {
                    want.push(ev.token.id);
                    true
                },
            )
            .unwrap();
        assert_eq!(ids, want, "sequence {i}");
        assert_eq!(Some(finish), out.stats.finish);
        assert!(matches!(finish, FinishReason::Length | FinishReason::Stop));
    }
    let (rounds, drafted, accepted) = (
        metrics.spec_rounds.load(Relaxed),
        metrics.spec_drafted.load(Relaxed),
        metrics.spec_accepted.load(Relaxed),
    );
    assert!(
        rounds > 0 && accepted > 0 && accepted <= drafted,
        "{rounds} {drafted} {accepted}"
    );
    let text = metrics.render(&Default::default());
    assert!(text.contains("moestream_speculative_acceptance_rate"));
}
