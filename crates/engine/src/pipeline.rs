//! A model with its tokenizer: prompts in (chat messages, raw text or ids), text out
//! (streamed deltas that never split a character and stop at stop strings).

use crate::backend::Backend;
use crate::cache::SeqCache;
use crate::error::{LoadError, RunError};
use crate::generate::{FinishReason, GenerateParams, GenerationStats, Next, TokenEvent, TokenLoop};
use crate::loader::{load_model, LoadOptions, LoadProgress, Loaded};
use crate::models::Transformer;
use crate::sampling::Sampler;
use crate::session::{Sequence, Session};
use crate::speculative::{check_compatible, Draft};
use moestream_text::{RenderRequest, StopMatcher, StreamDecoder, TokenizerBundle};
use serde_json::{Map, Value};
use std::path::{Path, PathBuf};

pub struct Engine {
    pub loaded: Loaded,
    pub text: TokenizerBundle,
    /// A draft model for speculative decoding (see [`Engine::load_draft`]).
    pub draft: Option<Draft>,
    /// The directories the model and the draft were loaded from, as given (errors name
    /// files under them; a server keeps these paths from its clients).
    pub model_dir: PathBuf,
    pub draft_dir: Option<PathBuf>,
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
    /// As [`crate::generate::GenerateParams::logprobs`].
    pub logprobs: Option<usize>,
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
        let text = if crate::gguf::is_gguf(dir) {
            TokenizerBundle::from_gguf(dir)
        } else {
            TokenizerBundle::from_model_dir(dir)
        }
        .map_err(|e| LoadError::Text(e.to_string()))?;
        let vocab = loaded.model.info.vocab_size;
        if let Some(&id) = text.eos_token_ids.iter().find(|&&id| id as usize >= vocab) {
            return Err(LoadError::Config(format!(
                "EOS token id {id} is outside the vocabulary ({vocab})"
            )));
        }
        Ok(Engine {
            loaded,
            text,
            draft: None,
            model_dir: dir.to_path_buf(),
            draft_dir: None,
        })
    }

    /// Loads a draft model for speculative decoding (`num_draft` tokens per round). It must
    /// share the main model's tokenizer: a mismatch is an error naming both directories.
    pub fn load_draft(
        &mut self,
        main_dir: &Path,
        draft_dir: &Path,
        num_draft: usize,
        opts: &LoadOptions,
        progress: &mut dyn FnMut(LoadProgress),
    ) -> Result<(), LoadError> {
        if num_draft == 0 {
            return Err(LoadError::Config(
                "--num-draft-tokens must be at least 1".into(),
            ));
        }
        let draft = Engine::load(draft_dir, opts, progress)?;
        check_compatible(
            main_dir,
            (self.model(), &self.text),
            draft_dir,
            (draft.model(), &draft.text),
        )?;
        let mut model = draft.loaded.model;
        // One pool for both models: they run in turn, and a second pool's spinning workers
        // would compete with the first for the cores.
        model.dev.pool = std::sync::Arc::clone(&self.loaded.model.dev.pool);
        self.draft = Some(Draft { model, num_draft });
        self.draft_dir = Some(draft_dir.to_path_buf());
        Ok(())
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
        let rendered = template.render(&req).map_err(RunError::Template)?;
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

    /// Starts the text-level loop of one sequence (sampling, detokenization, stop strings).
    pub fn text_loop(&self, prompt: &[u32], sampler: Sampler, params: &TextParams) -> TextLoop {
        let eos = self.eos_ids();
        let gp = GenerateParams {
            max_tokens: params.max_tokens,
            eos_ids: &eos,
            logprobs: params.logprobs,
        };
        TextLoop {
            tokens: TokenLoop::new(prompt, sampler, &gp),
            decoder: self.text.stream_decoder().with_prompt_context(prompt),
            stops: StopMatcher::new(params.stop.iter().filter(|s| !s.is_empty())),
        }
    }

    /// Generates after `prompt`, streaming text through `on_event` (return `false` to cancel).
    pub fn generate_text(
        &self,
        cache: &mut SeqCache,
        prompt: &[u32],
        sampler: Sampler,
        params: &TextParams,
        on_event: &mut dyn FnMut(TextEvent) -> bool,
    ) -> Result<TextOutcome, RunError> {
        self.generate_text_on(self.model(), cache, prompt, sampler, params, on_event)
    }

    /// [`Engine::generate_text`] with `model`, this engine's model on another backend.
    pub fn generate_text_on<B: Backend>(
        &self,
        model: &Transformer<B>,
        cache: &mut SeqCache<B::Mem>,
        prompt: &[u32],
        sampler: Sampler,
        params: &TextParams,
        on_event: &mut dyn FnMut(TextEvent) -> bool,
    ) -> Result<TextOutcome, RunError> {
        if prompt.is_empty() {
            return Err(RunError::EmptyPrompt);
        }
        let lp = self.text_loop(prompt, sampler, params);
        let mut session = Session::new(lp, self.draft.as_ref(), 0);
        let mut tail = String::new();
        session.run(model, cache, &mut |lp, step, _| {
            if let Some(tok) = &step.token {
                if !on_event(TextEvent {
                    token: tok,
                    text: &step.text,
                }) {
                    lp.cancel();
                }
            }
            tail.push_str(&step.tail);
            step.token.is_some() && !lp.is_finished()
        })?;
        let spec = session.spec_stats();
        let mut stats = session.seq.tokens.stats;
        stats.speculative = spec;
        Ok(TextOutcome { stats, tail })
    }
}

/// One sequence's generation at the text level: a [`TokenLoop`] plus streaming
/// detokenization and stop strings. Feed it the logits after each token with
/// [`TextLoop::step`]; the model calls stay with the caller.
pub struct TextLoop {
    pub tokens: TokenLoop,
    decoder: StreamDecoder,
    stops: StopMatcher,
}

/// What one [`TextLoop::step`] produced.
#[derive(Clone, Debug, Default)]
pub struct TextStep {
    /// The new token (`None` when generation ended without one: EOS or `max_tokens`).
    pub token: Option<TokenEvent>,
    /// Text that became visible with the token.
    pub text: String,
    /// Text released at the end (held back for a possible stop string or an incomplete
    /// character); only on the step that finishes.
    pub tail: String,
    /// Set on the step that ends generation.
    pub finish: Option<FinishReason>,
}

impl Sequence for TextLoop {
    type Step = TextStep;
    fn token_loop(&mut self) -> &mut TokenLoop {
        &mut self.tokens
    }
    fn next(&mut self, logits: &[f32]) -> Result<TextStep, RunError> {
        self.step(logits)
    }
    fn commit(&mut self, id: u32, logits: &[f32]) -> Result<TextStep, RunError> {
        self.push(id, logits)
    }
    fn joined(step: &TextStep) -> bool {
        step.token.is_some()
    }
}

impl TextLoop {
    pub fn is_finished(&self) -> bool {
        self.tokens.is_finished()
    }

    /// Stops generation at the consumer's request (no tail is released).
    pub fn cancel(&mut self) {
        self.tokens.finish(FinishReason::Cancelled);
    }

    /// Picks the next token from `logits` and turns it into text.
    pub fn step(&mut self, logits: &[f32]) -> Result<TextStep, RunError> {
        let next = self.tokens.next(logits);
        self.text_of(next)
    }

    /// Takes `id`, chosen elsewhere from `logits` (speculative decoding), as the next token
    /// and turns it into text: [`TextLoop::step`] without the sampling.
    pub fn push(&mut self, id: u32, logits: &[f32]) -> Result<TextStep, RunError> {
        let next = self.tokens.commit(id, logits);
        self.text_of(next)
    }

    fn text_of(&mut self, next: Next) -> Result<TextStep, RunError> {
        let mut out = TextStep::default();
        if let Next::Token(tok) = next {
            let delta = self
                .decoder
                .push(tok.id)
                .map_err(|e| RunError::Text(e.to_string()))?;
            let pushed = self.stops.push(&delta);
            out.text = pushed.emit;
            if pushed.stopped {
                self.tokens.finish(FinishReason::Stop);
            }
            out.token = Some(tok);
        }
        out.finish = self.tokens.stats.finish;
        if out.finish.is_some() && !self.stops.is_stopped() {
            let rest = self
                .decoder
                .finish()
                .map_err(|e| RunError::Text(e.to_string()))?;
            out.tail.push_str(&self.stops.push(&rest).emit);
            if !self.stops.is_stopped() {
                out.tail.push_str(&self.stops.finish());
            }
        }
        Ok(out)
    }
}
