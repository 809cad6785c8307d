//! One generation session: a sequence's token loop, an optional draft model, and the model
//! calls that advance them, with one `step`. Every way the engine generates goes through it:
//! [`generate`] (the CLI's `generate` and `validate`), `Engine::generate_text`, `bench`, and
//! the server's scheduler, which runs a batch of sessions through one forward pass by asking
//! each for its [`Session::feed`] and handing back the logits with [`Session::absorb`].
//!
//! A session first feeds its prompt (in chunks: the one prefill loop), takes the first token
//! from the prompt's logits, then per step feeds the last token and samples the next, or,
//! with a draft, feeds the last token plus the draft's proposals and takes the verified ones.

use crate::backend::{Backend, Host, Memory};
use crate::cache::SeqCache;
use crate::error::RunError;
use crate::generate::{
    FinishReason, Flow, GenerateParams, GenerationStats, Next, TokenEvent, TokenLoop, PREFILL_CHUNK,
};
use crate::models::{LogitRows, Transformer};
use crate::sampling::Sampler;
use crate::speculative::{Draft, SpecSeq};

/// The per-sequence logic a session drives: the token loop itself, or a loop that also
/// turns tokens into text (`pipeline::TextLoop`).
pub trait Sequence {
    /// What one token (or the end) produces for the consumer.
    type Step;
    fn token_loop(&mut self) -> &mut TokenLoop;
    /// Samples the token after `logits`.
    fn next(&mut self, logits: &[f32]) -> Result<Self::Step, RunError>;
    /// Takes `id`, chosen elsewhere (speculative decoding) from `logits`.
    fn commit(&mut self, id: u32, logits: &[f32]) -> Result<Self::Step, RunError>;
    /// Whether `step` added a token to the sequence.
    fn joined(step: &Self::Step) -> bool;
}

impl Sequence for TokenLoop {
    type Step = Next;
    fn token_loop(&mut self) -> &mut TokenLoop {
        self
    }
    fn next(&mut self, logits: &[f32]) -> Result<Next, RunError> {
        Ok(TokenLoop::next(self, logits))
    }
    fn commit(&mut self, id: u32, logits: &[f32]) -> Result<Next, RunError> {
        Ok(TokenLoop::commit(self, id, logits))
    }
    fn joined(step: &Next) -> bool {
        matches!(step, Next::Token(_))
    }
}

/// Receives each step's output with the logits row it came from, and may stop the sequence
/// (through the loop it is handed); returns whether generation goes on.
pub type Emit<'e, S> = dyn FnMut(&mut S, <S as Sequence>::Step, &[f32]) -> bool + 'e;

/// One sequence being generated, on a model whose memory is `M`. The cache stays with the
/// caller (a prompt cache may hand one in, and the scheduler batches several).
pub struct Session<'d, S: Sequence, M: Memory = Host> {
    pub seq: S,
    draft: Option<(&'d Draft, SpecSeq<M>)>,
    /// Prompt tokens fed to the model so far.
    fed: usize,
    prompt_len: usize,
    /// The tokens of the pass being run, and which logits it wants.
    feed: Vec<u32>,
    wants: LogitRows,
    /// The logits of a session run on its own ([`Session::step`]).
    logits: Vec<f32>,
}

impl<'d, S: Sequence, M: Memory> Session<'d, S, M> {
    /// A session over `seq` (which holds the prompt); `cached` prompt tokens are already in
    /// the cache the caller will pass (a prompt-cache hit). With `draft`, tokens are proposed
    /// by it and verified by the main model.
    pub fn new(mut seq: S, draft: Option<&'d Draft>, cached: usize) -> Self {
        let prompt_len = seq.token_loop().tokens().len();
        let draft = draft.map(|d| {
            let spec = SpecSeq::new(d, seq.token_loop().sampler_mut());
            (d, spec)
        });
        Session {
            seq,
            draft,
            fed: cached.min(prompt_len),
            prompt_len,
            feed: Vec::new(),
            wants: LogitRows::None,
            logits: Vec::new(),
        }
    }

    pub fn is_finished(&mut self) -> bool {
        self.seq.token_loop().is_finished()
    }

    /// Whether the prompt is still being fed.
    pub fn prefilling(&self) -> bool {
        self.fed < self.prompt_len
    }

    /// The draft's counters (speculative sessions).
    pub fn spec_stats(&self) -> Option<crate::spec_stats::SpecStats> {
        self.draft.as_ref().map(|(_, s)| s.stats)
    }

    /// The tokens to run next and which logits rows they need: up to `budget` prompt
    /// tokens while prefilling (logits only after the last), else the last token (logits
    /// after it), or with a draft the last token and the draft's proposals (logits after
    /// each). Runs the draft model.
    pub fn feed<B: Backend<Mem = M>>(
        &mut self,
        model: &Transformer<B>,
        cache: &mut SeqCache<M>,
        budget: usize,
    ) -> Result<(&[u32], LogitRows), RunError> {
        self.feed.clear();
        if self.prefilling() {
            let n = (self.prompt_len - self.fed).min(budget.max(1));
            let tokens = &self.seq.token_loop().tokens()[self.fed..self.fed + n];
            self.feed.extend_from_slice(tokens);
            self.wants = if self.fed + n == self.prompt_len {
                LogitRows::Last
            } else {
                LogitRows::None
            };
        } else if let Some((d, spec)) = &mut self.draft {
            let proposed = spec.propose(d, model, cache, self.seq.token_loop())?;
            self.feed.extend_from_slice(proposed);
            self.wants = LogitRows::All;
        } else {
            let last = self.seq.token_loop().last_token();
            self.feed.push(last);
            self.wants = LogitRows::Last;
        }
        Ok((&self.feed, self.wants))
    }

    /// The tokens of the pass [`Session::feed`] last set up, and the logits rows it wants.
    pub fn pending(&self) -> (&[u32], LogitRows) {
        (&self.feed, self.wants)
    }

    /// Takes the logits of the tokens [`Session::feed`] gave (the rows it asked for), and
    /// hands each resulting step to `emit`; returns whether generation goes on.
    pub fn absorb<B: Backend<Mem = M>>(
        &mut self,
        model: &Transformer<B>,
        cache: &mut SeqCache<M>,
        rows: &[f32],
        emit: &mut Emit<S>,
    ) -> Result<bool, RunError> {
        if self.prefilling() {
            self.fed += self.feed.len();
            if self.prefilling() {
                return Ok(true);
            }
            // The prompt is in: the draft reads it too, and the first token comes from the
            // prompt's logits.
            if let Some((d, spec)) = &mut self.draft {
                let prompt = &self.seq.token_loop().tokens()[..self.prompt_len];
                spec.prefill(d, prompt)?;
            }
            let step = self.seq.next(rows)?;
            return Ok(emit(&mut self.seq, step, rows));
        }
        match &mut self.draft {
            None => {
                let step = self.seq.next(rows)?;
                Ok(emit(&mut self.seq, step, rows))
            }
            Some((d, spec)) => {
                spec.decide(self.seq.token_loop(), rows);
                let seq = &mut self.seq;
                spec.finish_round(d, model, cache, rows, |id, row| {
                    let step = seq.commit(id, row)?;
                    let joined = S::joined(&step);
                    Ok::<_, RunError>((joined, emit(seq, step, row)))
                })
            }
        }
    }

    /// One step of a session run on its own: feed, the model's pass, absorb. While the
    /// prompt is fed a step is one chunk of it and emits nothing.
    pub fn step<B: Backend<Mem = M>>(
        &mut self,
        model: &Transformer<B>,
        cache: &mut SeqCache<M>,
        emit: &mut Emit<S>,
    ) -> Result<bool, RunError> {
        let mut logits = std::mem::take(&mut self.logits);
        let (feed, wants) = self.feed(model, cache, PREFILL_CHUNK)?;
        let r = model.forward_rows(feed, cache, wants, &mut logits);
        let alive = match r {
            Ok(()) => self.absorb(model, cache, &logits, emit),
            Err(e) => Err(e),
        };
        self.logits = logits;
        alive
    }

    /// Runs [`Session::step`] until generation is over.
    pub fn run<B: Backend<Mem = M>>(
        &mut self,
        model: &Transformer<B>,
        cache: &mut SeqCache<M>,
        emit: &mut Emit<S>,
    ) -> Result<(), RunError> {
        while self.step(model, cache, emit)? {}
        Ok(())
    }
}

/// Generates after `prompt` (appended to whatever `cache` already holds), calling `on_token`
/// with each new token and the main model's logits that chose it; with `draft`, through
/// speculative decoding (the same tokens under greedy decoding, the same distribution under
/// sampling). EOS tokens end generation and are not reported.
pub fn generate<B: Backend>(
    model: &Transformer<B>,
    draft: Option<&Draft>,
    cache: &mut SeqCache<B::Mem>,
    prompt: &[u32],
    sampler: Sampler,
    params: &GenerateParams,
    on_token: &mut dyn FnMut(&TokenEvent, &[f32]) -> Flow,
) -> Result<GenerationStats, RunError> {
    if prompt.is_empty() {
        return Err(RunError::EmptyPrompt);
    }
    let mut session = Session::new(TokenLoop::new(prompt, sampler, params), draft, 0);
    session.run(model, cache, &mut |lp, next, row| {
        let Next::Token(tok) = next else { return false };
        match on_token(&tok, row) {
            Flow::Continue => {}
            Flow::Stop => {
                lp.finish(FinishReason::Stop);
            }
            Flow::Cancel => {
                lp.finish(FinishReason::Cancelled);
            }
        }
        !lp.is_finished()
    })?;
    let spec = session.spec_stats();
    let mut stats = session.seq.stats;
    stats.speculative = spec;
    Ok(stats)
}
