//! The token level of generation: [`TokenLoop`] picks each next token and decides when to
//! stop; the model calls that feed it are [`crate::session`]'s. Text concerns
//! (detokenization, stop strings) live a layer up, in `pipeline` and the `moestream-text`
//! crate.

use crate::cache::SeqCache;
use crate::error::RunError;
use crate::models::Transformer;
use crate::sampling::{logprobs, Sampler};
use std::time::Instant;

/// Prompt tokens per forward call during prefill (bounds scratch memory for long prompts).
pub const PREFILL_CHUNK: usize = 512;

#[derive(Clone, Debug)]
pub struct TokenEvent {
    pub id: u32,
    /// Log-softmax of the model's logits (before penalties and filters) at the chosen token,
    /// when log-probabilities were asked for.
    pub logprob: Option<f32>,
    /// The `k` most likely tokens with their log-probabilities (empty unless asked for).
    pub top_logprobs: Vec<(u32, f32)>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FinishReason {
    /// An end-of-sequence token or a stop string.
    Stop,
    /// `max_tokens` reached.
    Length,
    /// The consumer asked to stop (client gone).
    Cancelled,
}

impl FinishReason {
    pub fn as_str(self) -> &'static str {
        match self {
            FinishReason::Stop => "stop",
            FinishReason::Length => "length",
            FinishReason::Cancelled => "cancelled",
        }
    }
}

/// What the token consumer wants after each token.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Flow {
    Continue,
    /// A stop string completed.
    Stop,
    /// The consumer is gone.
    Cancel,
}

#[derive(Clone, Debug)]
pub struct GenerateParams<'a> {
    pub max_tokens: usize,
    pub eos_ids: &'a [u32],
    /// Report log-probabilities: the chosen token's, and this many of the most likely
    /// tokens'. `None` skips them (a log-sum-exp over the vocabulary per token, a few percent
    /// of a decode step).
    pub logprobs: Option<usize>,
}

#[derive(Clone, Debug, Default)]
pub struct GenerationStats {
    pub prompt_tokens: usize,
    pub generated_tokens: usize,
    pub prefill_secs: f64,
    pub decode_secs: f64,
    pub finish: Option<FinishReason>,
    /// Speculative decoding's counters, when a draft model proposed the tokens.
    pub speculative: Option<crate::spec_stats::SpecStats>,
}

impl GenerationStats {
    pub fn prefill_tok_s(&self) -> f64 {
        rate(self.prompt_tokens, self.prefill_secs)
    }

    /// Decode speed over the tokens after the first (the first comes out of prefill).
    pub fn decode_tok_s(&self) -> f64 {
        rate(self.generated_tokens.saturating_sub(1), self.decode_secs)
    }
}

fn rate(n: usize, secs: f64) -> f64 {
    if secs > 0.0 {
        n as f64 / secs
    } else {
        0.0
    }
}

/// The per-sequence half of generation: given the logits after the latest token, pick the
/// next token and decide whether to go on. The model calls are [`crate::session::Session`]'s,
/// which serves one sequence and a batch of them (the server's scheduler) alike.
pub struct TokenLoop {
    sampler: Sampler,
    history: Vec<u32>,
    prompt_len: usize,
    max_tokens: usize,
    eos_ids: Vec<u32>,
    logprobs: Option<usize>,
    processed: Vec<f32>,
    /// History plus tokens looked ahead at (scratch of `processed_logits`).
    context: Vec<u32>,
    started: Instant,
    decode_started: Option<Instant>,
    pub stats: GenerationStats,
}

/// What [`TokenLoop::next`] decided.
#[derive(Clone, Debug)]
pub enum Next {
    /// A new token (to report, then to feed to the model unless the loop is finished).
    Token(TokenEvent),
    /// Generation is over (an EOS token, which is not reported, or `max_tokens`).
    Done(FinishReason),
}

impl TokenLoop {
    /// Starts timing now: prefill is everything until the first call to [`TokenLoop::next`].
    pub fn new(prompt: &[u32], sampler: Sampler, params: &GenerateParams) -> Self {
        TokenLoop {
            sampler,
            history: prompt.to_vec(),
            prompt_len: prompt.len(),
            max_tokens: params.max_tokens,
            eos_ids: params.eos_ids.to_vec(),
            logprobs: params.logprobs,
            processed: Vec::new(),
            context: Vec::new(),
            started: Instant::now(),
            decode_started: None,
            stats: GenerationStats {
                prompt_tokens: prompt.len(),
                ..Default::default()
            },
        }
    }

    pub fn last_token(&self) -> u32 {
        *self.history.last().expect("a loop always has its prompt")
    }

    /// Tokens of prompt and generation so far.
    pub fn tokens(&self) -> &[u32] {
        &self.history
    }

    pub fn is_finished(&self) -> bool {
        self.stats.finish.is_some()
    }

    /// Picks the token after `logits` (`[vocab]`, the model's output for the last token).
    pub fn next(&mut self, logits: &[f32]) -> Next {
        if let Some(f) = self.check_done() {
            return Next::Done(f);
        }
        let mut processed = std::mem::take(&mut self.processed);
        self.processed_logits(logits, &[], &mut processed);
        let id = self.sampler.sample(&processed);
        self.processed = processed;
        self.commit(id, logits)
    }

    /// Takes `id` as the next token, chosen elsewhere (speculative decoding) from `logits`
    /// (the main model's output before it, which the reported log-probabilities come from):
    /// the same end-of-sequence and length rules as [`TokenLoop::next`].
    pub fn commit(&mut self, id: u32, logits: &[f32]) -> Next {
        if let Some(f) = self.check_done() {
            return Next::Done(f);
        }
        if self.eos_ids.contains(&id) {
            return Next::Done(self.finish(FinishReason::Stop));
        }
        let (logprob, top_logprobs) = match self.logprobs {
            Some(k) => {
                let (lp, top) = logprobs(logits, id, k);
                (Some(lp), top)
            }
            None => (None, Vec::new()),
        };
        self.stats.generated_tokens += 1;
        self.history.push(id);
        if self.stats.generated_tokens >= self.max_tokens {
            self.finish(FinishReason::Length);
        }
        Next::Token(TokenEvent {
            id,
            logprob,
            top_logprobs,
        })
    }

    /// Starts the decode clock on the first call; the reason to stop, if any.
    fn check_done(&mut self) -> Option<FinishReason> {
        if self.decode_started.is_none() {
            self.stats.prefill_secs = self.started.elapsed().as_secs_f64();
            self.decode_started = Some(Instant::now());
        }
        if let Some(f) = self.stats.finish {
            return Some(f);
        }
        if self.stats.generated_tokens >= self.max_tokens {
            return Some(self.finish(FinishReason::Length));
        }
        None
    }

    /// `logits` after the logits processors (penalties), as if `ahead` (tokens not yet
    /// committed, e.g. drafted ones) followed the history: the input of the sampler.
    pub fn processed_logits(&mut self, logits: &[f32], ahead: &[u32], out: &mut Vec<f32>) {
        out.clear();
        out.extend_from_slice(logits);
        if !self.sampler.params().has_penalties() {
            return;
        }
        let mut context = std::mem::take(&mut self.context);
        let history: &[u32] = if ahead.is_empty() {
            &self.history
        } else {
            context.clear();
            context.extend_from_slice(&self.history);
            context.extend_from_slice(ahead);
            &context
        };
        self.sampler
            .process(out, history, &history[self.prompt_len..]);
        self.context = context;
    }

    pub fn sampler_mut(&mut self) -> &mut Sampler {
        &mut self.sampler
    }

    /// Tokens that may still be generated before `max_tokens`.
    pub fn remaining(&self) -> usize {
        self.max_tokens.saturating_sub(self.stats.generated_tokens)
    }

    /// Ends the loop (a stop string, a cancelled consumer, or the natural end). The first
    /// reason is kept, except that a stop string completed by the last allowed token reports
    /// `Stop` rather than `Length`.
    pub fn finish(&mut self, reason: FinishReason) -> FinishReason {
        let replace = match self.stats.finish {
            None => true,
            Some(FinishReason::Length) => reason == FinishReason::Stop,
            Some(_) => false,
        };
        if replace {
            self.stats.finish = Some(reason);
            if let Some(t) = self.decode_started {
                self.stats.decode_secs = t.elapsed().as_secs_f64();
            }
        }
        self.stats.finish.unwrap_or(reason)
    }
}

/// Feeds `tokens` to `model` after what `cache` holds, [`PREFILL_CHUNK`] at a time; `logits`
/// gets the last token's.
pub fn prefill<B: crate::backend::Backend>(
    model: &Transformer<B>,
    cache: &mut SeqCache<B::Mem>,
    tokens: &[u32],
    logits: &mut Vec<f32>,
) -> Result<(), RunError> {
    for chunk in tokens.chunks(PREFILL_CHUNK) {
        model.forward(chunk, cache, false, logits)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sampling::{Sampler, SamplingParams};

    /// Log-probabilities are computed only when asked for, and then are the log-softmax of
    /// the logits at the chosen token and the k most likely ones.
    #[test]
    fn logprobs_only_when_asked_for() {
        let logits = [1.0f32, 3.0, 2.0, -1.0];
        let run = |logprobs| {
            let params = GenerateParams {
                max_tokens: 4,
                eos_ids: &[],
                logprobs,
            };
            let greedy = Sampler::new(SamplingParams::default());
            match TokenLoop::new(&[0], greedy, &params).next(&logits) {
                Next::Token(ev) => ev,
                Next::Done(f) => panic!("finished before the first token: {f:?}"),
            }
        };
        let plain = run(None);
        assert_eq!((plain.id, plain.logprob), (1, None));
        assert!(plain.top_logprobs.is_empty());
        let lse = logits.iter().map(|&l| (l as f64).exp()).sum::<f64>().ln() as f32;
        let asked = run(Some(2));
        assert_eq!(asked.id, 1);
        assert!((asked.logprob.expect("asked for") - (3.0 - lse)).abs() < 1e-6);
        let top: Vec<u32> = asked.top_logprobs.iter().map(|&(id, _)| id).collect();
        assert_eq!(top, [1, 2]);
        assert!((asked.top_logprobs[1].1 - (2.0 - lse)).abs() < 1e-6);
    }
}
