//! Speculative decoding with a draft model. Each round the draft proposes `n` tokens after
//! the sequence's last token; the main model verifies them all in one forward pass (the last
//! token and the `n` drafts, logits for every row); the longest acceptable prefix is kept and
//! the first rejected position is replaced by the main model's own choice (or, when every
//! draft is accepted, the main model's next token is added). Then both caches roll back to
//! exactly the kept tokens ([`rollback`]).
//!
//! The acceptance rule ([`accept`]) makes the output the main model's: under greedy decoding
//! the same tokens as decoding without a draft; under sampling the same distribution (Leviathan
//! et al. 2023, "Fast Inference from Transformers via Speculative Decoding": accept a draft
//! `d ~ q` with probability `min(1, p(d) / q(d))`, else draw from `norm(max(0, p - q))`),
//! where `p` and `q` are the distributions the sampler would draw from (after penalties,
//! filters and temperature) given the history and the drafts before the position.
//!
//! The caller ([`crate::session::Session`]) owns the model calls of the main model, so the
//! same round serves one sequence and a batch of them (the server's scheduler):
//! [`SpecSeq::propose`] runs the
//! draft and returns the tokens to verify; the caller runs them through the main model with
//! logits for every row; [`SpecSeq::decide`] picks the round's tokens; the caller commits
//! them one by one (stopping at the end of generation); [`SpecSeq::settle`] rolls back.

pub mod accept;
pub mod rollback;

use crate::backend::{Backend, Host, Memory};
use crate::cache::{Checkpoint, SeqCache};
use crate::error::{LoadError, RunError};
use crate::generate::{prefill, TokenLoop};
use crate::models::Transformer;
use crate::sampling::{argmax, Sampler};
use moestream_text::TokenizerBundle;
use std::path::Path;

/// A loaded draft model and how many tokens it proposes per round.
pub struct Draft {
    pub model: Transformer,
    pub num_draft: usize,
}

pub use crate::spec_stats::SpecStats;

/// Speculation needs the draft to speak the main model's token ids: the same vocabulary
/// size, the same token for every id, the same special and end-of-sequence ids. The error
/// names both directories and the first difference.
pub fn check_compatible(
    main_dir: &Path,
    main: (&Transformer, &TokenizerBundle),
    draft_dir: &Path,
    draft: (&Transformer, &TokenizerBundle),
) -> Result<(), LoadError> {
    let mismatch = |what: String| {
        LoadError::DraftMismatch(format!(
            "the draft model {} and the main model {} do not share a tokenizer: {what}",
            draft_dir.display(),
            main_dir.display()
        ))
    };
    let (mv, dv) = (main.0.info.vocab_size, draft.0.info.vocab_size);
    if mv != dv {
        return Err(mismatch(format!("vocab_size {dv} (draft) vs {mv} (main)")));
    }
    let (mt, dt) = (&main.1.tokenizer, &draft.1.tokenizer);
    if mt.vocab_size() != dt.vocab_size() {
        return Err(mismatch(format!(
            "tokenizer.json has {} tokens (draft) vs {} (main)",
            dt.vocab_size(),
            mt.vocab_size()
        )));
    }
    for id in 0..mt.vocab_size() as u32 {
        let (a, b) = (mt.id_to_token(id), dt.id_to_token(id));
        if a != b {
            return Err(mismatch(format!(
                "token id {id} is {b:?} (draft) vs {a:?} (main)"
            )));
        }
    }
    if mt.special_token_ids() != dt.special_token_ids() {
        return Err(mismatch(format!(
            "special token ids {:?} (draft) vs {:?} (main)",
            dt.special_token_ids(),
            mt.special_token_ids()
        )));
    }
    if main.1.eos_token_ids != draft.1.eos_token_ids {
        return Err(mismatch(format!(
            "end-of-sequence ids {:?} (draft) vs {:?} (main)",
            draft.1.eos_token_ids, main.1.eos_token_ids
        )));
    }
    Ok(())
}

/// At most this many tokens the draft lags behind are fed together with the round's first
/// token (and logged for rollback); a longer lag (a fresh prompt) is fed first, unlogged.
const MAX_CATCH_UP: usize = 16;

/// One sequence's speculative state: the draft's cache and the buffers of a round (kept
/// across rounds: a round allocates nothing once they have grown). `M` is the main model's
/// memory (the draft runs on the CPU).
pub struct SpecSeq<M: Memory = Host> {
    /// The draft model's cache (it holds a prefix of the sequence's tokens).
    pub cache: SeqCache,
    main_cp: Checkpoint<M>,
    draft_cp: Checkpoint,
    /// The tokens to verify: the sequence's last token, then the drafts.
    feed: Vec<u32>,
    /// The draft's distribution at each drafted position (`[n, vocab]`, sampling only).
    q: Vec<f32>,
    p: Vec<f32>,
    processed: Vec<f32>,
    draft_logits: Vec<f32>,
    /// The round's tokens, as decided.
    chosen: Vec<u32>,
    greedy: bool,
    pub stats: SpecStats,
}

impl<M: Memory> SpecSeq<M> {
    pub fn new(draft: &Draft, sampler: &Sampler) -> Self {
        SpecSeq {
            cache: draft.model.new_cache(),
            main_cp: Checkpoint::default(),
            draft_cp: Checkpoint::default(),
            feed: Vec::with_capacity(draft.num_draft + 1),
            q: Vec::new(),
            p: Vec::new(),
            processed: Vec::new(),
            draft_logits: Vec::new(),
            chosen: Vec::with_capacity(draft.num_draft + 1),
            greedy: sampler.params().temperature == 0.0,
            stats: SpecStats::default(),
        }
    }

    /// Feeds prompt tokens to the draft ahead of the first round (optional: a round catches
    /// the draft up with whatever it lacks, but prefill is the place to pay for it).
    pub fn prefill(&mut self, draft: &Draft, tokens: &[u32]) -> Result<(), RunError> {
        prefill(
            &draft.model,
            &mut self.cache,
            tokens,
            &mut self.draft_logits,
        )
    }

    /// Starts a round: marks the main cache (which holds every token of `lp` but the last),
    /// runs the draft, and returns the tokens the main model must verify in one pass with
    /// logits for every row: the last token, then up to `num_draft` drafts (none when the
    /// round can yield only one token, near `max_tokens` or the end of the context).
    pub fn propose<B: Backend<Mem = M>>(
        &mut self,
        draft: &Draft,
        main: &Transformer<B>,
        main_cache: &mut SeqCache<M>,
        lp: &mut TokenLoop,
    ) -> Result<&[u32], RunError> {
        let history = lp.tokens();
        let len = history.len();
        debug_assert_eq!(
            main_cache.offset + 1,
            len,
            "main cache must lag by one token"
        );
        let room = |max_context: usize| max_context.saturating_sub(len + 1);
        let n = draft
            .num_draft
            .min(lp.remaining().saturating_sub(1))
            .min(room(main.info.max_context))
            .min(room(draft.model.info.max_context));
        self.feed.clear();
        self.feed.push(history[len - 1]);
        rollback::mark(main, main_cache, &mut self.main_cp);
        if n == 0 {
            return Ok(&self.feed);
        }
        // Catch the draft up with the tokens it has not seen (a fresh prompt, or the last
        // draft of a round that accepted everything), then draft n tokens.
        let dm = &draft.model;
        if len - self.cache.offset > MAX_CATCH_UP {
            let lagging = &lp.tokens()[self.cache.offset..len - 1];
            prefill(dm, &mut self.cache, lagging, &mut self.draft_logits)?;
        }
        rollback::mark(dm, &mut self.cache, &mut self.draft_cp);
        let start = self.cache.offset;
        dm.forward(
            &lp.tokens()[start..len],
            &mut self.cache,
            false,
            &mut self.draft_logits,
        )?;
        let vocab = dm.info.vocab_size;
        if !self.greedy {
            self.q.resize(n * vocab, 0.0);
        }
        for i in 0..n {
            lp.processed_logits(&self.draft_logits, &self.feed[1..], &mut self.processed);
            let d = if self.greedy {
                argmax(&self.processed)
            } else {
                let q = &mut self.q[i * vocab..(i + 1) * vocab];
                lp.sampler_mut().probabilities(&self.processed, q);
                let u = lp.sampler_mut().uniform();
                crate::sampling::draw(q, u)
            };
            self.feed.push(d);
            if i + 1 < n {
                dm.forward(&[d], &mut self.cache, false, &mut self.draft_logits)?;
            }
        }
        Ok(&self.feed)
    }

    /// Picks the round's tokens from the verification logits (`[feed.len(), vocab]`, row `i`
    /// the main model's output after the `i`-th fed token): the accepted drafts, then one
    /// token of the main model. Row `j` of `logits` belongs to the `j`-th returned token.
    pub fn decide(&mut self, lp: &mut TokenLoop, logits: &[f32]) -> &[u32] {
        let n = self.feed.len() - 1;
        let vocab = logits.len() / self.feed.len();
        self.chosen.clear();
        let mut accepted = 0;
        for i in 0..=n {
            let row = &logits[i * vocab..(i + 1) * vocab];
            lp.processed_logits(row, &self.feed[1..1 + i], &mut self.processed);
            let drafted = (i < n).then(|| self.feed[1 + i]);
            let verdict = if self.greedy {
                accept::greedy(&self.processed, drafted)
            } else {
                self.p.resize(vocab, 0.0);
                lp.sampler_mut().probabilities(&self.processed, &mut self.p);
                let q = drafted.map(|_| &mut self.q[i * vocab..(i + 1) * vocab]);
                accept::sampled(&self.p, q, drafted, lp.sampler_mut())
            };
            match verdict {
                accept::Verdict::Accept(t) => {
                    accepted += 1;
                    self.chosen.push(t);
                }
                accept::Verdict::Replace(t) => {
                    self.chosen.push(t);
                    break;
                }
            }
        }
        self.stats.rounds += 1;
        self.stats.drafted += n;
        self.stats.accepted += accepted;
        &self.chosen
    }

    /// The round's tokens as [`SpecSeq::decide`] returned them.
    pub fn chosen(&self) -> &[u32] {
        &self.chosen
    }

    /// Ends the round once the caller has committed the first `used` chosen tokens to the
    /// sequence: both caches roll back to exactly the sequence's tokens but the last.
    pub fn settle<B: Backend<Mem = M>>(
        &mut self,
        draft: &Draft,
        main: &Transformer<B>,
        main_cache: &mut SeqCache<M>,
        used: usize,
    ) {
        let keep = self.main_cp.offset + used;
        rollback::rewind(main, main_cache, &self.main_cp, keep);
        if self.cache.offset > keep {
            rollback::rewind(&draft.model, &mut self.cache, &self.draft_cp, keep);
        } else {
            self.cache.log.stop();
        }
        self.stats.emitted += used;
    }

    /// Commits the round's tokens in order through `commit(id, logits row)`, which says
    /// whether the token joined the sequence and whether generation goes on, then settles.
    /// Returns whether generation goes on.
    pub fn finish_round<B: Backend<Mem = M>, E>(
        &mut self,
        draft: &Draft,
        main: &Transformer<B>,
        main_cache: &mut SeqCache<M>,
        logits: &[f32],
        mut commit: impl FnMut(u32, &[f32]) -> Result<(bool, bool), E>,
    ) -> Result<bool, E> {
        let vocab = logits.len() / self.feed.len();
        let (mut used, mut alive) = (0, true);
        for (j, &id) in self.chosen.iter().enumerate() {
            let (joined, go_on) = commit(id, &logits[j * vocab..(j + 1) * vocab])?;
            used += joined as usize;
            alive = go_on;
            if !alive {
                break;
            }
        }
        self.settle(draft, main, main_cache, used);
        Ok(alive)
    }

    /// One round for a sequence the caller runs alone: propose, verify (the main model's
    /// pass over the fed tokens, all rows into `logits`), decide. Then
    /// [`SpecSeq::finish_round`] commits the tokens.
    pub fn round<B: Backend<Mem = M>>(
        &mut self,
        draft: &Draft,
        main: &Transformer<B>,
        main_cache: &mut SeqCache<M>,
        lp: &mut TokenLoop,
        logits: &mut Vec<f32>,
    ) -> Result<(), RunError> {
        let feed = self.propose(draft, main, main_cache, lp)?;
        main.forward(feed, main_cache, true, logits)?;
        self.decide(lp, logits);
        Ok(())
    }
}
