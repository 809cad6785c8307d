//! The token-level generation loop: prefill, then sample and decode one token at a time.
//! Text concerns (detokenization, stop strings) live a layer up in [`crate::text_stream`].

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
    /// Log-softmax of the model's logits (before penalties and filters) at the chosen token.
    pub logprob: f32,
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
    /// How many top log-probabilities to report per token.
    pub top_logprobs: usize,
}

#[derive(Clone, Debug, Default)]
pub struct GenerationStats {
    pub prompt_tokens: usize,
    pub generated_tokens: usize,
    pub prefill_secs: f64,
    pub decode_secs: f64,
    pub finish: Option<FinishReason>,
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

/// Generates after `prompt` (appended to whatever `cache` already holds), calling `on_token`
/// for each new token. EOS tokens end generation and are not reported.
pub fn generate(
    model: &Transformer,
    cache: &mut SeqCache,
    prompt: &[u32],
    sampler: &mut Sampler,
    params: &GenerateParams,
    on_token: &mut dyn FnMut(&TokenEvent) -> Flow,
) -> Result<GenerationStats, RunError> {
    if prompt.is_empty() {
        return Err(RunError::EmptyPrompt);
    }
    let mut stats = GenerationStats {
        prompt_tokens: prompt.len(),
        ..Default::default()
    };
    let mut logits = Vec::with_capacity(model.info.vocab_size);
    let mut processed = Vec::with_capacity(model.info.vocab_size);
    let mut history: Vec<u32> = prompt.to_vec();
    let t0 = Instant::now();
    for chunk in prompt.chunks(PREFILL_CHUNK) {
        model.forward(chunk, cache, false, &mut logits)?;
    }
    stats.prefill_secs = t0.elapsed().as_secs_f64();
    let t1 = Instant::now();
    let finish = loop {
        if stats.generated_tokens >= params.max_tokens {
            break FinishReason::Length;
        }
        processed.clear();
        processed.extend_from_slice(&logits);
        sampler.process(&mut processed, &history, &history[prompt.len()..]);
        let id = sampler.sample(&processed);
        if params.eos_ids.contains(&id) {
            break FinishReason::Stop;
        }
        let (logprob, top) = logprobs(&logits, id, params.top_logprobs);
        stats.generated_tokens += 1;
        history.push(id);
        match on_token(&TokenEvent {
            id,
            logprob,
            top_logprobs: top,
        }) {
            Flow::Continue => {}
            Flow::Stop => break FinishReason::Stop,
            Flow::Cancel => break FinishReason::Cancelled,
        }
        if stats.generated_tokens >= params.max_tokens {
            break FinishReason::Length;
        }
        model.forward(&[id], cache, false, &mut logits)?;
    };
    stats.decode_secs = t1.elapsed().as_secs_f64();
    stats.finish = Some(finish);
    Ok(stats)
}
