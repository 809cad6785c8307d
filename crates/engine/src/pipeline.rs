//! A model with its tokenizer: prompts in (chat messages, raw text or ids), text out
//! (streamed deltas that never split a character and stop at stop strings).

use crate::cache::SeqCache;
use crate::error::{LoadError, RunError};
use crate::generate::{generate, Flow, GenerateParams, GenerationStats, TokenEvent};
use crate::loader::{load_model, LoadOptions, LoadProgress, Loaded};
use crate::models::Transformer;
use crate::sampling::Sampler;
use moestream_text::{RenderRequest, StopMatcher, TokenizerBundle};
use serde_json::{Map, Value};
use std::path::Path;

pub struct Engine {
    pub loaded: Loaded,
    pub text: TokenizerBundle,
}

/// One generated token and the text that became visible with it.
#[derive(Clone, Debug)]
pub struct TextEvent<'a> {
    pub token: &'a TokenEvent,
    /// May be empty (an incomplete character, a special token, text held back because it
    /// could be the start of a stop string); held-back text arrives with a later token or in
    /// the final flush.
    pub text: &'a str,
}

#[derive(Clone, Debug)]
pub struct TextParams<'a> {
    pub max_tokens: usize,
    pub stop: &'a [String],
    pub top_logprobs: usize,
}

/// Result of a text generation: counters, plus text released after the last token.
#[derive(Clone, Debug, Default)]
pub struct TextOutcome {
    pub stats: GenerationStats,
    pub tail: String,
}

impl Engine {
    pub fn load(
        dir: &Path,
        opts: &LoadOptions,
        progress: &mut dyn FnMut(LoadProgress),
    ) -> Result<Self, LoadError> {
        let loaded = load_model(dir, opts, progress)?;
        let text =
            TokenizerBundle::from_model_dir(dir).map_err(|e| LoadError::Text(e.to_string()))?;
        let vocab = loaded.model.info.vocab_size;
        if let Some(&id) = text.eos_token_ids.iter().find(|&&id| id as usize >= vocab) {
            return Err(LoadError::Config(format!(
                "EOS token id {id} is outside the vocabulary ({vocab})"
            )));
        }
        Ok(Engine { loaded, text })
    }

    pub fn model(&self) -> &Transformer {
        &self.loaded.model
    }

    pub fn eos_ids(&self) -> Vec<u32> {
        self.text.eos_token_ids.iter().copied().collect()
    }

    /// Renders `messages` with the model's chat template (with the generation prompt) and
    /// tokenizes the result without adding special tokens, as mlx-lm does.
    pub fn chat_prompt(
        &self,
        messages: &[Value],
        tools: Option<&[Value]>,
        extra: &Map<String, Value>,
    ) -> Result<Vec<u32>, RunError> {
        let template = self.text.chat_template.as_ref().ok_or_else(|| {
            RunError::Text("the model has no chat template (use a raw prompt)".into())
        })?;
        let mut req = RenderRequest::new(messages, extra);
        req.tools = tools;
        req.add_generation_prompt = true;
        let rendered = template
            .render(&req)
            .map_err(|e| RunError::Text(e.to_string()))?;
        self.text
            .tokenizer
            .encode(&rendered, false)
            .map_err(|e| RunError::Text(e.to_string()))
    }

    /// Tokenizes text as is (adding the tokenizer's own special tokens, e.g. a BOS).
    pub fn raw_prompt(&self, text: &str) -> Result<Vec<u32>, RunError> {
        self.text
            .tokenizer
            .encode(text, true)
            .map_err(|e| RunError::Text(e.to_string()))
    }

    /// Generates after `prompt`, streaming text through `on_event` (return `false` to cancel).
    pub fn generate_text(
        &self,
        cache: &mut SeqCache,
        prompt: &[u32],
        sampler: &mut Sampler,
        params: &TextParams,
        on_event: &mut dyn FnMut(TextEvent) -> bool,
    ) -> Result<TextOutcome, RunError> {
        let mut decoder = self.text.stream_decoder().with_prompt_context(prompt);
        let mut stops = StopMatcher::new(params.stop.iter().filter(|s| !s.is_empty()));
        let eos = self.eos_ids();
        let gp = GenerateParams {
            max_tokens: params.max_tokens,
            eos_ids: &eos,
            top_logprobs: params.top_logprobs,
        };
        let mut text_error = None;
        let stats = generate(self.model(), cache, prompt, sampler, &gp, &mut |tok| {
            let delta = match decoder.push(tok.id) {
                Ok(d) => d,
                Err(e) => {
                    text_error = Some(e.to_string());
                    return Flow::Cancel;
                }
            };
            let out = stops.push(&delta);
            let keep_going = on_event(TextEvent {
                token: tok,
                text: &out.emit,
            });
            if out.stopped {
                Flow::Stop
            } else if keep_going {
                Flow::Continue
            } else {
                Flow::Cancel
            }
        })?;
        if let Some(e) = text_error {
            return Err(RunError::Text(e));
        }
        let mut tail = String::new();
        if !stops.is_stopped() {
            let rest = decoder
                .finish()
                .map_err(|e| RunError::Text(e.to_string()))?;
            tail.push_str(&stops.push(&rest).emit);
            if !stops.is_stopped() {
                tail.push_str(&stops.finish());
            }
        }
        Ok(TextOutcome { stats, tail })
    }
}
