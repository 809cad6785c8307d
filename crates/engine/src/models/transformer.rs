//! The pre-norm decoder shared by every architecture here: embed, then per layer
//! `h = x + attn(norm(x)); x = h + ffn(norm(h))`, then a final norm and the LM head.
//! Architecture files describe their parts (which attention, dense or MoE feed-forward,
//! which router) and load the weights; this file runs them.

use crate::cache::{sized, KvCache, Scratch, SeqCache};
use crate::error::RunError;
use crate::experts::ExpertStore;
use crate::weights::{Floats, Linear};
use moestream_kernels::activation::sigmoid;
use moestream_kernels::attention::{attention, AttnShape};
use moestream_kernels::matmul::{
    gather_matmul, gather_swiglu, gather_swiglu_unfused, matmul, GatherGroup, GatherPair,
};
use moestream_kernels::norm::{add_rms_norm, rms_norm_inplace};
use moestream_kernels::qdot::Precision;
use moestream_kernels::router::{router_topk, RouterKind};
use moestream_kernels::{rope::rope, simd, ThreadPool};
use std::sync::Arc;

/// Grouped-query self-attention with optional per-head q/k RMSNorm and RoPE.
pub struct Attention {
    pub q_proj: Linear,
    pub k_proj: Linear,
    pub v_proj: Linear,
    pub o_proj: Linear,
    /// RMSNorm weights, per head `[head_dim]` (Qwen3) or over the whole projection (OLMoE).
    pub q_norm: Option<Floats>,
    pub k_norm: Option<Floats>,
    /// Qwen3-Next's output gate: `q_proj` yields `[q | gate]` per head (`2 * head_dim`), and
    /// the attention output is multiplied by `sigmoid(gate)` before `o_proj`.
    pub output_gate: bool,
}

/// The token mixer of a layer: attention over the KV cache, multi-head latent attention
/// over its compressed cache, or a Gated DeltaNet over its recurrent state. (One per layer,
/// built at load: variant sizes do not matter.)
#[allow(clippy::large_enum_variant)]
pub enum Mixer {
    Attention(Attention),
    Mla(Box<super::mla::Mla>),
    DeltaNet(Box<super::delta_net::DeltaNet>),
}

impl Mixer {
    /// The layer's (empty) cache: keys/values of the model's attention shape, MLA's latent
    /// cache, or an unused placeholder for a recurrent layer (its state lives apart).
    fn new_cache(&self, c: &AttnConfig) -> KvCache {
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

/// Shapes and RoPE parameters common to all attention layers of a model.
#[derive(Clone, Debug)]
pub struct AttnConfig {
    pub n_heads: usize,
    pub n_kv: usize,
    pub head_dim: usize,
    /// Inverse frequencies of the rotated feature pairs (`rot_dims / 2` of them).
    pub inv_freq: Vec<f32>,
    pub rope_traditional: bool,
    pub scale: f32,
}

impl AttnConfig {
    /// Standard scaled dot-product attention (`scale = head_dim^-0.5`).
    pub fn new(
        n_heads: usize,
        n_kv: usize,
        head_dim: usize,
        inv_freq: Vec<f32>,
        rope_traditional: bool,
    ) -> Self {
        AttnConfig {
            n_heads,
            n_kv,
            head_dim,
            inv_freq,
            rope_traditional,
            scale: (head_dim as f32).powf(-0.5),
        }
    }
}

/// SwiGLU feed-forward: `down(silu(gate(x)) * up(x))`.
pub struct DenseMlp {
    pub gate_proj: Linear,
    pub up_proj: Linear,
    pub down_proj: Linear,
}

/// Routed experts: the router runs here, the experts' weights come from the expert store.
pub struct MoeBlock {
    pub router: Linear,
    pub kind: RouterKind,
    pub n_experts: usize,
    pub top_k: usize,
    pub expert_inter: usize,
    /// An always-on expert added to the routed sum (Qwen3-Next, GLM).
    pub shared: Option<SharedExpert>,
    /// Added to the router scores for selection only (GLM's `e_score_correction_bias`).
    pub selection_bias: Option<Vec<f32>>,
}

/// A dense SwiGLU expert every token goes through, optionally scaled by
/// `sigmoid(gate(x))` (Qwen3-Next's `shared_expert_gate`, a `[1, hidden]` linear).
pub struct SharedExpert {
    pub mlp: DenseMlp,
    pub gate: Option<Linear>,
}

#[allow(clippy::large_enum_variant)] // one per layer, built at load
pub enum FeedForward {
    Dense(Box<DenseMlp>),
    Moe(MoeBlock),
}

pub struct Layer {
    pub input_norm: Floats,
    pub attn: Mixer,
    pub post_norm: Floats,
    pub ffn: FeedForward,
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

/// Which logits a step of [`Transformer::forward_batch`] wants.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LogitRows {
    /// None (a prompt chunk that is not the last).
    None,
    /// The last token's (`[vocab]`).
    Last,
    /// Every token's (`[tokens, vocab]`).
    All,
}

/// One sequence's share of a batched forward pass: its new tokens and its cache.
pub struct SeqStep<'a> {
    pub tokens: &'a [u32],
    pub cache: &'a mut SeqCache,
    pub logits: LogitRows,
}

pub struct Transformer {
    pub info: ModelInfo,
    pub embed: Linear,
    pub layers: Vec<Layer>,
    pub norm: Floats,
    /// `None` when the head is tied to the embedding.
    pub lm_head: Option<Linear>,
    pub eps: f32,
    pub attn: AttnConfig,
    pub experts: Box<dyn ExpertStore>,
    pub pool: Arc<ThreadPool>,
    /// Arithmetic of the quantized matmuls (int8 activations by default; `Exact` for
    /// comparisons with mlx and for `validate`'s reference).
    pub precision: Precision,
    /// gate+up+SwiGLU in one pass (default) or as two matmuls then the activation (the
    /// baseline `validate` compares against).
    pub fused_swiglu: bool,
    /// Experts per token for every MoE layer instead of the config's `num_experts_per_tok`
    /// (`--moe-top-k`: fewer is faster and changes the output). Set with `set_moe_top_k`.
    pub moe_top_k: Option<usize>,
}

impl Transformer {
    pub fn new_cache(&self) -> SeqCache {
        SeqCache {
            offset: 0,
            layers: self
                .layers
                .iter()
                .map(|l| l.attn.new_cache(&self.attn))
                .collect(),
            scratch: Scratch::default(),
            recurrent: self
                .layers
                .iter()
                .map(|l| match &l.attn {
                    Mixer::DeltaNet(d) => Some(d.new_state()),
                    Mixer::Attention(_) | Mixer::Mla(_) => None,
                })
                .collect(),
            log: Default::default(),
        }
    }

    /// Experts each token is routed to in `m` (the runtime override, else the config's).
    pub fn top_k(&self, m: &MoeBlock) -> usize {
        self.moe_top_k.map_or(m.top_k, |k| k.min(m.n_experts))
    }

    pub fn head(&self) -> &Linear {
        self.lm_head.as_ref().unwrap_or(&self.embed)
    }

    /// Runs `tokens` through the model at positions `cache.offset..`, appends them to the
    /// cache and writes logits: for the last token (`all_logits == false`, `[vocab]`) or for
    /// every token (`[tokens.len(), vocab]`).
    pub fn forward(
        &self,
        tokens: &[u32],
        cache: &mut SeqCache,
        all_logits: bool,
        logits: &mut Vec<f32>,
    ) -> Result<(), RunError> {
        let mut scratch = std::mem::take(&mut cache.scratch);
        let want = if all_logits {
            LogitRows::All
        } else {
            LogitRows::Last
        };
        let r = self.forward_batch(
            &mut [SeqStep {
                tokens,
                cache,
                logits: want,
            }],
            &mut scratch,
            logits,
        );
        cache.scratch = scratch;
        r
    }

    /// One forward pass over several sequences at once: every weight matrix (dense and
    /// expert) is read once for all their tokens, while attention runs per sequence over its
    /// own cache. Logits are written for the rows each step asks for, in step order
    /// (`[rows, vocab]`). Nothing is changed when an input is rejected.
    pub fn forward_batch(
        &self,
        steps: &mut [SeqStep],
        s: &mut Scratch,
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
        let x = sized(&mut s.x, l * hsz);
        let embed = self.embed.matrix();
        let all_tokens = steps.iter().flat_map(|st| st.tokens.iter());
        for (row, &id) in x.chunks_exact_mut(hsz).zip(all_tokens) {
            embed.row_into(id as usize, row);
        }
        sized(&mut s.delta, l * hsz).fill(0.0);
        sized(&mut s.xn, l * hsz);
        for (li, layer) in self.layers.iter().enumerate() {
            add_rms_norm(
                &mut s.x,
                &s.delta,
                &layer.input_norm.view(),
                self.eps,
                &mut s.xn,
            );
            match &layer.attn {
                Mixer::Attention(a) => self.attention(a, li, steps, l, s),
                Mixer::Mla(m) => m.forward(self, li, steps, l, s),
                Mixer::DeltaNet(d) => d.forward(self, li, steps, l, s),
            }
            add_rms_norm(
                &mut s.x,
                &s.delta,
                &layer.post_norm.view(),
                self.eps,
                &mut s.xn,
            );
            match &layer.ffn {
                FeedForward::Dense(mlp) => self.dense_mlp(mlp, l, s),
                FeedForward::Moe(moe) => self.moe(moe, li, l, s)?,
            }
        }
        // Final norm and head only for the rows whose logits are wanted.
        let mut wanted = std::mem::take(&mut s.wanted_rows);
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
        let normed = sized(&mut s.last_rows, rows * hsz);
        for (dst, &r) in normed.chunks_exact_mut(hsz).zip(&wanted) {
            let src = r * hsz..(r + 1) * hsz;
            for ((d, x), dx) in dst.iter_mut().zip(&s.x[src.clone()]).zip(&s.delta[src]) {
                *d = x + dx;
            }
        }
        s.wanted_rows = wanted;
        rms_norm_inplace(normed, &self.norm.view(), self.eps);
        logits.resize(rows * vocab, 0.0);
        if rows > 0 {
            matmul(
                &self.pool,
                self.precision,
                normed,
                rows,
                &self.head().matrix(),
                logits,
            );
            add_bias(self.head(), logits);
        }
        Ok(())
    }

    /// Every Gated DeltaNet layer needs its recurrent state in the sequence's cache.
    fn check_cache(&self, c: &SeqCache) -> Result<(), RunError> {
        for (li, layer) in self.layers.iter().enumerate() {
            let has = matches!(c.recurrent.get(li), Some(Some(_)));
            if matches!(layer.attn, Mixer::DeltaNet(_)) && !has {
                return Err(RunError::CacheMismatch(li));
            }
        }
        Ok(())
    }

    /// Attention sub-layer over the rows of every step: reads `s.xn`, writes its output
    /// projection to `s.delta`. Projections run over all rows at once; RoPE, the cache write
    /// and attention itself run per sequence.
    fn attention(
        &self,
        a: &Attention,
        layer: usize,
        steps: &mut [SeqStep],
        l: usize,
        s: &mut Scratch,
    ) {
        let c = &self.attn;
        let (qd, kd) = (c.n_heads * c.head_dim, c.n_kv * c.head_dim);
        let q = sized(&mut s.q, l * qd * if a.output_gate { 2 } else { 1 });
        let k = sized(&mut s.k, l * kd);
        let v = sized(&mut s.v, l * kd);
        for (proj, out) in [
            (&a.q_proj, &mut *q),
            (&a.k_proj, &mut *k),
            (&a.v_proj, &mut *v),
        ] {
            matmul(&self.pool, self.precision, &s.xn, l, &proj.matrix(), out);
            add_bias(proj, out);
        }
        if a.output_gate {
            split_query_gate(q, sized(&mut s.gate, l * qd), c.head_dim);
        }
        let q = &mut q[..l * qd];
        if let Some(w) = &a.q_norm {
            rms_norm_inplace(q, &w.view(), self.eps);
        }
        if let Some(w) = &a.k_norm {
            rms_norm_inplace(k, &w.view(), self.eps);
        }
        let out = sized(&mut s.attn, l * qd);
        let mut row = 0;
        for st in steps.iter_mut() {
            let (n, offset) = (st.tokens.len(), st.cache.offset);
            let kv = &mut st.cache.layers[layer];
            kv.reserve(offset + n, offset);
            for i in row..row + n {
                let pos = offset + i - row;
                let (qi, ki) = (&mut q[i * qd..(i + 1) * qd], &mut k[i * kd..(i + 1) * kd]);
                rope(qi, c.head_dim, pos, &c.inv_freq, c.rope_traditional);
                rope(ki, c.head_dim, pos, &c.inv_freq, c.rope_traditional);
                kv.write(pos, ki, &v[i * kd..(i + 1) * kd]);
            }
            let shape = AttnShape {
                l: n,
                t: offset + n,
                cap: kv.cap,
                n_heads: c.n_heads,
                n_kv: c.n_kv,
                head_dim: c.head_dim,
                scale: c.scale,
            };
            let rows = row * qd..(row + n) * qd;
            attention(
                &self.pool,
                &q[rows.clone()],
                &kv.k,
                &kv.v,
                shape,
                &mut out[rows],
            );
            row += n;
        }
        if a.output_gate {
            for (o, g) in out.iter_mut().zip(&s.gate) {
                *o *= sigmoid(*g);
            }
        }
        let delta = sized(&mut s.delta, l * self.info.hidden_size);
        matmul(
            &self.pool,
            self.precision,
            out,
            l,
            &a.o_proj.matrix(),
            delta,
        );
        add_bias(&a.o_proj, delta);
    }

    fn dense_mlp(&self, m: &DenseMlp, l: usize, s: &mut Scratch) {
        if s.identity.len() < l {
            s.identity = (0..l as u32).collect();
        }
        let rows = &s.identity[..l];
        let pair = GatherPair {
            gate: m.gate_proj.matrix(),
            up: m.up_proj.matrix(),
            x_rows: rows,
            out_rows: rows,
        };
        let h = sized(&mut s.mlp_h, l * m.gate_proj.rows);
        self.swiglu(&s.xn, &[pair], h, &mut s.swiglu_u);
        let delta = sized(&mut s.delta, l * self.info.hidden_size);
        matmul(
            &self.pool,
            self.precision,
            h,
            l,
            &m.down_proj.matrix(),
            delta,
        );
    }

    /// Routed experts: route every token, group the (token, choice) slots by expert, run one
    /// gathered SwiGLU and one gathered down projection over all active experts, then
    /// combine each token's k outputs with its router weights.
    fn moe(&self, m: &MoeBlock, layer: usize, l: usize, s: &mut Scratch) -> Result<(), RunError> {
        let (hsz, k, e) = (self.info.hidden_size, self.top_k(m), m.n_experts);
        let router = sized(&mut s.router, l * e);
        // The router stays exact: a flipped expert choice changes the output far more than
        // int8 rounding elsewhere, and the router is a small share of the bytes.
        matmul(
            &self.pool,
            Precision::Exact,
            &s.xn,
            l,
            &m.router.matrix(),
            router,
        );
        s.expert_ids.resize(l * k, 0);
        sized(&mut s.expert_w, l * k);
        for t in 0..l {
            router_topk(
                &m.kind,
                &mut router[t * e..(t + 1) * e],
                m.selection_bias.as_deref(),
                &mut s.expert_ids[t * k..(t + 1) * k],
                &mut s.expert_w[t * k..(t + 1) * k],
            );
        }
        // Counting sort of slots (t * k + j) by expert.
        s.expert_counts.clear();
        s.expert_counts.resize(e + 1, 0);
        for &id in &s.expert_ids {
            s.expert_counts[id as usize + 1] += 1;
        }
        for i in 0..e {
            s.expert_counts[i + 1] += s.expert_counts[i];
        }
        s.active_experts.clear();
        s.active_experts.extend(
            (0..e as u32)
                .filter(|&i| s.expert_counts[i as usize + 1] > s.expert_counts[i as usize]),
        );
        s.slots_by_expert.resize(l * k, 0);
        s.tokens_by_expert.resize(l * k, 0);
        {
            s.expert_fill.clear();
            s.expert_fill.extend_from_slice(&s.expert_counts[..e]);
            for (slot, &id) in s.expert_ids.iter().enumerate() {
                let p = &mut s.expert_fill[id as usize];
                s.slots_by_expert[*p as usize] = slot as u32;
                s.tokens_by_expert[*p as usize] = (slot / k) as u32;
                *p += 1;
            }
        }
        self.prefetch_lookahead(layer, l, s);
        let h = sized(&mut s.moe_h, l * k * m.expert_inter);
        let y = sized(&mut s.moe_y, l * k * hsz);
        let u = &mut s.swiglu_u;
        let (counts, slots, toks, xn) = (
            &s.expert_counts,
            &s.slots_by_expert,
            &s.tokens_by_expert,
            &s.xn,
        );
        let pool = &self.pool;
        self.experts
            .with_experts(layer, &s.active_experts, &mut |batch, mats| {
                let range =
                    |id: u32| counts[id as usize] as usize..counts[id as usize + 1] as usize;
                let pairs: Vec<GatherPair> = batch
                    .iter()
                    .zip(mats)
                    .map(|(&id, m)| GatherPair {
                        gate: m.gate,
                        up: m.up,
                        x_rows: &toks[range(id)],
                        out_rows: &slots[range(id)],
                    })
                    .collect();
                self.swiglu(xn, &pairs, h, u);
                let downs: Vec<GatherGroup> = batch
                    .iter()
                    .zip(mats)
                    .map(|(&id, m)| GatherGroup {
                        w: m.down,
                        x_rows: &slots[range(id)],
                        out_rows: &slots[range(id)],
                    })
                    .collect();
                gather_matmul(pool, self.precision, h, &downs, y);
            })?;
        let delta = sized(&mut s.delta, l * hsz);
        delta.fill(0.0);
        for t in 0..l {
            let d = &mut delta[t * hsz..(t + 1) * hsz];
            for j in 0..k {
                let slot = t * k + j;
                simd::axpy(s.expert_w[slot], &y[slot * hsz..(slot + 1) * hsz], d);
            }
        }
        if let Some(sh) = &m.shared {
            self.shared_expert(sh, l, s);
        }
        Ok(())
    }

    /// `delta += [sigmoid(gate(x)) *] mlp(x)` for every token.
    fn shared_expert(&self, sh: &SharedExpert, l: usize, s: &mut Scratch) {
        let hsz = self.info.hidden_size;
        if s.identity.len() < l {
            s.identity = (0..l as u32).collect();
        }
        let rows = &s.identity[..l];
        let m = &sh.mlp;
        let pair = GatherPair {
            gate: m.gate_proj.matrix(),
            up: m.up_proj.matrix(),
            x_rows: rows,
            out_rows: rows,
        };
        let h = sized(&mut s.mlp_h, l * m.gate_proj.rows);
        self.swiglu(&s.xn, &[pair], h, &mut s.swiglu_u);
        let y = sized(&mut s.shared_y, l * hsz);
        matmul(&self.pool, self.precision, h, l, &m.down_proj.matrix(), y);
        let gates = sized(&mut s.shared_gate, l);
        match &sh.gate {
            // Exact, like the router: a one-row matmul, and it scales the whole output.
            Some(g) => {
                matmul(&self.pool, Precision::Exact, &s.xn, l, &g.matrix(), gates);
                gates.iter_mut().for_each(|v| *v = sigmoid(*v));
            }
            None => gates.fill(1.0),
        }
        for (t, &w) in gates.iter().enumerate() {
            simd::axpy(
                w,
                &y[t * hsz..(t + 1) * hsz],
                &mut s.delta[t * hsz..(t + 1) * hsz],
            );
        }
    }
}

impl Transformer {
    /// Gathered SwiGLU, fused or not per [`Transformer::fused_swiglu`].
    fn swiglu(&self, x: &[f32], pairs: &[GatherPair], h: &mut [f32], u: &mut Vec<f32>) {
        if self.fused_swiglu {
            gather_swiglu(&self.pool, self.precision, x, pairs, h);
        } else {
            gather_swiglu_unfused(&self.pool, self.precision, x, pairs, h, u);
        }
    }
}

/// Qwen3-Next's `q_proj` output `[l, nh, 2 * hd]` (per head `[q | gate]`) split in place:
/// the queries packed into the first `l * nh * hd` values, the gates into `gate`.
fn split_query_gate(qg: &mut [f32], gate: &mut [f32], hd: usize) {
    let heads = gate.len() / hd;
    for i in 0..heads {
        gate[i * hd..(i + 1) * hd].copy_from_slice(&qg[(2 * i + 1) * hd..(2 * i + 2) * hd]);
        // Moving row i down to i never overwrites a row still to be read (rows 2j > i).
        qg.copy_within(2 * i * hd..(2 * i + 1) * hd, i * hd);
    }
}

pub(crate) fn add_bias(lin: &Linear, out: &mut [f32]) {
    if let Some(b) = &lin.bias {
        let b = b.view();
        for row in out.chunks_exact_mut(lin.rows) {
            for (i, v) in row.iter_mut().enumerate() {
                *v += b.get(i);
            }
        }
    }
}
