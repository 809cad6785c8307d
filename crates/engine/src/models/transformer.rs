//! The pre-norm decoder shared by every architecture here: embed, then per layer
//! `h = x + attn(norm(x)); x = h + ffn(norm(h))`, then a final norm and the LM head.
//! Architecture files describe their parts (which attention, dense or MoE feed-forward,
//! which router) and load the weights; this file runs them.

use super::attention::{Attention, AttnConfig};
use super::exec::{Exec, LogitRows, SeqStep};
use super::ffn::{FeedForward, MoeBlock};
use super::lookahead::Lookahead;
use crate::backend::{Backend, Cpu, HostWeights, Mat, Memory, Vector, WeightSet};
use crate::cache::{KvCache, Scratch, SeqCache};
use crate::error::RunError;
use crate::experts::{ExpertSource, Prefetch};
use moestream_kernels::Precision;
use std::sync::Mutex;

/// The token mixer of a layer: attention over the KV cache, multi-head latent attention
/// over its compressed cache, or a Gated DeltaNet over its recurrent state. (One per layer,
/// built at load: variant sizes do not matter.)
#[allow(clippy::large_enum_variant)]
pub enum Mixer<W: WeightSet = HostWeights> {
    Attention(Attention<W>),
    Mla(Box<super::mla::Mla<W>>),
    DeltaNet(Box<super::delta_net::DeltaNet<W>>),
}

impl<W: WeightSet> Mixer<W> {
    /// The layer's (empty) cache: keys/values of the model's attention shape, MLA's latent
    /// cache, or an unused placeholder for a recurrent layer (its state lives apart).
    fn new_cache<M: Memory>(&self, c: &AttnConfig) -> KvCache<M> {
        match self {
            Mixer::Mla(m) => m.new_cache(),
            Mixer::Attention(_) | Mixer::DeltaNet(_) => KvCache::new(c.n_kv, c.head_dim),
        }
    }

    /// Cache floats one more token adds to this layer (0 for a recurrent layer).
    pub fn cache_floats_per_token(&self, c: &AttnConfig) -> usize {
        match self {
            Mixer::Attention(_) => 2 * c.n_kv * c.head_dim,
            Mixer::Mla(m) => m.cache_floats_per_token(),
            Mixer::DeltaNet(_) => 0,
        }
    }
}

pub struct Layer<W: WeightSet = HostWeights> {
    pub input_norm: W::Vector,
    pub attn: Mixer<W>,
    pub post_norm: W::Vector,
    pub ffn: FeedForward<W>,
}

/// Sizes the rest of the engine needs to know.
#[derive(Clone, Debug)]
pub struct ModelInfo {
    pub model_type: String,
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub n_layers: usize,
    pub max_context: usize,
    /// Bytes of weights one decoded token reads (dense weights plus the routed experts it
    /// uses), for roofline figures.
    pub bytes_per_token: usize,
}

/// A model on a backend (the CPU unless named).
pub struct Transformer<B: Backend = Cpu> {
    pub info: ModelInfo,
    pub embed: Mat<B>,
    pub layers: Vec<Layer<B::Weights>>,
    pub norm: Vector<B>,
    /// `None` when the head is tied to the embedding.
    pub lm_head: Option<Mat<B>>,
    pub eps: f32,
    pub attn: AttnConfig,
    pub experts: Box<B::Experts>,
    /// The device the model runs on.
    pub dev: B,
    /// Arithmetic of the quantized matmuls (int8 activations by default; `Exact` for
    /// comparisons with mlx and for `validate`'s reference).
    pub precision: Precision,
    /// gate+up+SwiGLU in one pass (default) or as two matmuls then the activation (the
    /// baseline `validate` compares against).
    pub fused_swiglu: bool,
    /// Experts per token for every MoE layer instead of the config's `num_experts_per_tok`
    /// (`--moe-top-k`: fewer is faster and changes the output). Set with `set_moe_top_k`.
    pub moe_top_k: Option<usize>,
    /// The scratch of [`Transformer::forward`] (a sequence run on its own; batched callers
    /// keep theirs), so a cache is only the sequence's state.
    pub scratch: Mutex<Scratch<B::Mem>>,
}

impl<B: Backend> Transformer<B> {
    pub fn new_cache(&self) -> SeqCache<B::Mem> {
        SeqCache {
            offset: 0,
            layers: self
                .layers
                .iter()
                .map(|l| l.attn.new_cache(&self.attn))
                .collect(),
            recurrent: self
                .layers
                .iter()
                .map(|l| match &l.attn {
                    Mixer::DeltaNet(d) => Some(d.new_state(&self.dev)),
                    Mixer::Attention(_) | Mixer::Mla(_) => None,
                })
                .collect(),
            log: Default::default(),
        }
    }

    /// Experts each token is routed to in `m` (the runtime override, else the config's).
    pub fn top_k(&self, m: &MoeBlock<B::Weights>) -> usize {
        self.moe_top_k.map_or(m.top_k, |k| k.min(m.n_experts))
    }

    /// The execution context the blocks run with.
    fn exec(&self) -> Exec<'_, B> {
        Exec {
            dev: &self.dev,
            precision: self.precision,
            fused_swiglu: self.fused_swiglu,
            hidden: self.info.hidden_size,
            eps: self.eps,
        }
    }

    /// The first MoE layer after `layer`, for the router lookahead.
    fn next_moe(&self, layer: usize) -> Option<Lookahead<'_, B::Weights>> {
        self.layers
            .iter()
            .enumerate()
            .skip(layer + 1)
            .find_map(|(i, ly)| match &ly.ffn {
                FeedForward::Moe(m) => Some(Lookahead {
                    layer: i,
                    norm: &ly.post_norm,
                    router: &m.router,
                    kind: &m.kind,
                    n_experts: m.n_experts,
                    top_k: self.top_k(m),
                }),
                FeedForward::Dense(_) => None,
            })
    }

    pub fn head(&self) -> &Mat<B> {
        self.lm_head.as_ref().unwrap_or(&self.embed)
    }

    /// Runs `tokens` through the model at positions `cache.offset..`, appends them to the
    /// cache and writes logits: for the last token (`all_logits == false`, `[vocab]`) or for
    /// every token (`[tokens.len(), vocab]`).
    pub fn forward(
        &self,
        tokens: &[u32],
        cache: &mut SeqCache<B::Mem>,
        all_logits: bool,
        logits: &mut Vec<f32>,
    ) -> Result<(), RunError> {
        let want = if all_logits {
            LogitRows::All
        } else {
            LogitRows::Last
        };
        self.forward_rows(tokens, cache, want, logits)
    }

    /// [`Transformer::forward`] with the logits rows chosen by `want`.
    pub fn forward_rows(
        &self,
        tokens: &[u32],
        cache: &mut SeqCache<B::Mem>,
        want: LogitRows,
        logits: &mut Vec<f32>,
    ) -> Result<(), RunError> {
        let step = SeqStep {
            tokens,
            cache,
            logits: want,
        };
        // A second sequence run at the same time on another thread takes a scratch of its
        // own.
        match self.scratch.try_lock() {
            Ok(mut s) => self.forward_batch(&mut [step], &mut s, logits),
            Err(_) => self.forward_batch(&mut [step], &mut Scratch::default(), logits),
        }
    }

    /// One forward pass over several sequences at once: every weight matrix (dense and
    /// expert) is read once for all their tokens, while attention runs per sequence over its
    /// own cache. Logits are written for the rows each step asks for, in step order
    /// (`[rows, vocab]`). Nothing is changed when an input is rejected.
    pub fn forward_batch(
        &self,
        steps: &mut [SeqStep<B>],
        s: &mut Scratch<B::Mem>,
        logits: &mut Vec<f32>,
    ) -> Result<(), RunError> {
        let (hsz, vocab) = (self.info.hidden_size, self.info.vocab_size);
        for st in steps.iter() {
            if st.tokens.is_empty() {
                return Err(RunError::EmptyPrompt);
            }
            if let Some(&id) = st.tokens.iter().find(|&&id| id as usize >= vocab) {
                return Err(RunError::TokenOutOfRange { id, vocab });
            }
            self.check_cache(st.cache)?;
            let end = st.cache.offset + st.tokens.len();
            if end > self.info.max_context {
                return Err(RunError::ContextFull {
                    len: end,
                    max: self.info.max_context,
                });
            }
        }
        let l: usize = steps.iter().map(|st| st.tokens.len()).sum();
        if l == 0 {
            return Err(RunError::EmptyPrompt);
        }
        let dev = &self.dev;
        let all_tokens = steps.iter().flat_map(|st| st.tokens.iter());
        dev.embed(&self.embed, all_tokens, l, &mut s.x);
        dev.resize(&mut s.delta, l * hsz);
        dev.fill(&mut s.delta, 0.0);
        let ex = self.exec();
        for (li, layer) in self.layers.iter().enumerate() {
            dev.add_rms_norm(&mut s.x, &s.delta, &layer.input_norm, self.eps, &mut s.xn);
            match &layer.attn {
                Mixer::Attention(a) => a.forward(&ex, &self.attn, li, steps, l, s),
                Mixer::Mla(m) => m.forward(&ex, li, steps, l, s),
                Mixer::DeltaNet(d) => d.forward(&ex, li, steps, l, s),
            }
            dev.add_rms_norm(&mut s.x, &s.delta, &layer.post_norm, self.eps, &mut s.xn);
            match &layer.ffn {
                FeedForward::Dense(mlp) => mlp.forward(&ex, l, s),
                FeedForward::Moe(moe) => {
                    let top_k = self.top_k(moe);
                    let lookahead = self.experts.prefetch_policy() == Prefetch::Lookahead;
                    let next = lookahead.then(|| self.next_moe(li)).flatten();
                    moe.forward(&ex, &*self.experts, top_k, li, next, l, s)?
                }
            }
        }
        // Final norm and head only for the rows whose logits are wanted.
        let wanted = &mut s.wanted_rows;
        wanted.clear();
        let mut start = 0;
        for st in steps.iter_mut() {
            let n = st.tokens.len();
            match st.logits {
                LogitRows::None => {}
                LogitRows::Last => wanted.push(start + n - 1),
                LogitRows::All => wanted.extend(start..start + n),
            }
            st.cache.offset += n;
            start += n;
        }
        let rows = wanted.len();
        dev.residual_rows(&s.x, &s.delta, wanted, hsz, &mut s.last_rows);
        dev.rms_norm_rows(&mut s.last_rows, &self.norm, self.eps);
        dev.logits(self.precision, &s.last_rows, rows, self.head(), logits);
        dev.check()
    }

    /// Every Gated DeltaNet layer needs its recurrent state in the sequence's cache.
    fn check_cache(&self, c: &SeqCache<B::Mem>) -> Result<(), RunError> {
        for (li, layer) in self.layers.iter().enumerate() {
            let has = matches!(c.recurrent.get(li), Some(Some(_)));
            if matches!(layer.attn, Mixer::DeltaNet(_)) && !has {
                return Err(RunError::CacheMismatch(li));
            }
        }
        Ok(())
    }
}
