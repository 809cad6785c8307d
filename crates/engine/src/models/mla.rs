//! Multi-head latent attention, the token mixer of `glm4_moe_lite` (after mlx-lm's
//! `Glm4MoeLiteAttention` in `mlx_lm/models/glm4_moe_lite.py`):
//!
//! queries `q_b_proj(rms_norm(q_a_proj(x)))` (or `q_proj(x)`) split per head into
//! `q_nope [dn]` and `q_pe [dr]`; `kv_a_proj_with_mqa(x)` gives the latent (RMSNorm'd, `[R]`)
//! and one rotary key `k_pe [dr]` shared by all heads; traditional RoPE on `q_pe` / `k_pe`.
//! The cache keeps only latent + `k_pe` per token (one "head" of a [`KvCache`]).
//! Attention runs in the absorbed form for decode and prefill alike (see
//! `moestream_kernels::mla`): mlx-lm expands per-head keys for prefill instead, which is the
//! same math up to float rounding (the parity tests hold both to mlx's logits).

use super::exec::{Exec, SeqStep};
use crate::backend::{Backend, HostWeights, Memory, Rope, WeightSet};
use crate::cache::{KvCache, Scratch};
use crate::error::LoadError;
use crate::weights::{Linear, WeightLoader};
use moestream_kernels::mla::MlaShape;

/// Head counts and widths of an MLA layer.
#[derive(Clone, Copy, Debug)]
pub struct MlaDims {
    pub n_heads: usize,
    /// `qk_nope_head_dim` (dn), `qk_rope_head_dim` (dr), `kv_lora_rank` (R), `v_head_dim` (dv).
    pub nope: usize,
    pub rope: usize,
    pub rank: usize,
    pub v_dim: usize,
}

/// How queries are made: through a low-rank bottleneck (`q_lora_rank` set) or directly.
pub enum QueryProj<W: WeightSet = HostWeights> {
    LowRank {
        a: W::Matrix,
        norm: W::Vector,
        b: W::Matrix,
    },
    Full(W::Matrix),
}

pub struct Mla<W: WeightSet = HostWeights> {
    pub query: QueryProj<W>,
    /// `kv_a_proj_with_mqa` `[R + dr, H]`.
    pub kv_a: W::Matrix,
    /// `kv_a_layernorm` `[R]`.
    pub kv_norm: W::Vector,
    /// Per head: `embed_q` `[R, dn]` and `unembed_out` `[dv, R]`.
    pub embed_q: Vec<W::Matrix>,
    pub unembed_out: Vec<W::Matrix>,
    pub o_proj: W::Matrix,
    pub dims: MlaDims,
    /// Inverse frequencies of the `dr / 2` rotated pairs.
    pub inv_freq: Vec<f32>,
    /// YaRN's factor on `q_pe` and `k_pe` before RoPE (else 1).
    pub rope_mscale: f32,
    pub scale: f32,
    pub eps: f32,
}

impl Mla {
    /// Loads `{prefix}.self_attn`. `bias` (`attention_bias`) applies to `q_a_proj`,
    /// `kv_a_proj_with_mqa` and `o_proj`, as in mlx-lm.
    #[allow(clippy::too_many_arguments)]
    pub fn load(
        w: &WeightLoader,
        prefix: &str,
        hidden: usize,
        dims: MlaDims,
        q_lora_rank: Option<usize>,
        bias: bool,
        (inv_freq, rope_mscale): (Vec<f32>, f32),
        scale: f32,
        eps: f32,
    ) -> Result<Self, LoadError> {
        let p = |n: &str| format!("{prefix}.self_attn.{n}");
        let MlaDims {
            n_heads: nh,
            nope,
            rope,
            rank,
            v_dim,
        } = dims;
        let q_out = nh * (nope + rope);
        let query = match q_lora_rank {
            Some(qr) => QueryProj::LowRank {
                a: w.linear(&p("q_a_proj"), qr, hidden, bias)?,
                norm: w.vector(&p("q_a_layernorm.weight"), qr)?,
                b: w.linear(&p("q_b_proj"), q_out, qr, false)?,
            },
            None => QueryProj::Full(w.linear(&p("q_proj"), q_out, hidden, false)?),
        };
        Ok(Mla {
            query,
            kv_a: w.linear(&p("kv_a_proj_with_mqa"), rank + rope, hidden, bias)?,
            kv_norm: w.vector(&p("kv_a_layernorm.weight"), rank)?,
            embed_q: w.stacked(&p("embed_q"), nh, rank, nope)?,
            unembed_out: w.stacked(&p("unembed_out"), nh, v_dim, rank)?,
            o_proj: w.linear(&p("o_proj"), hidden, nh * v_dim, bias)?,
            dims,
            inv_freq,
            rope_mscale,
            scale,
            eps,
        })
    }

    /// Weight bytes one token reads.
    pub fn bytes(&self) -> usize {
        let q = match &self.query {
            QueryProj::LowRank { a, norm, b } => a.bytes() + norm.bytes.len() + b.bytes(),
            QueryProj::Full(q) => q.bytes(),
        };
        let heads: usize = self
            .embed_q
            .iter()
            .chain(&self.unembed_out)
            .map(Linear::bytes)
            .sum();
        q + self.kv_a.bytes() + self.kv_norm.bytes.len() + heads + self.o_proj.bytes()
    }
}

impl<W: WeightSet> Mla<W> {
    /// The compressed cache: the latent as the key row, `k_pe` as the value row.
    pub fn new_cache<M: Memory>(&self) -> KvCache<M> {
        KvCache::with_widths(1, self.dims.rank, self.dims.rope)
    }

    pub fn cache_floats_per_token(&self) -> usize {
        self.dims.rank + self.dims.rope
    }

    /// Reads `s.xn` (the `l` normed rows of all steps), appends each step's latents to its
    /// cache of layer `layer`, writes the layer's output projection to `s.delta`. Every
    /// projection (the per-head absorbed ones included) runs over all rows at once; RoPE, the
    /// cache write and attention per sequence.
    pub fn forward<B: Backend<Weights = W>>(
        &self,
        ex: &Exec<B>,
        layer: usize,
        steps: &mut [SeqStep<B>],
        l: usize,
        s: &mut Scratch<B::Mem>,
    ) {
        let MlaDims {
            n_heads: nh,
            nope: dn,
            rope: dr,
            rank: r,
            ..
        } = self.dims;
        let (dev, p) = (ex.dev, ex.precision);
        let sc = &mut s.mla;
        match &self.query {
            QueryProj::LowRank { a, norm, b } => {
                ex.linear(&s.xn, l, a, &mut sc.q_a);
                dev.rms_norm_rows(&mut sc.q_a, norm, self.eps);
                ex.linear(&sc.q_a, l, b, &mut sc.q);
            }
            QueryProj::Full(q) => ex.linear(&s.xn, l, q, &mut sc.q),
        }
        dev.split_heads(&sc.q, &mut sc.q_nope, &mut sc.q_pe, dn, dr);
        ex.linear(&s.xn, l, &self.kv_a, &mut sc.ckv);
        dev.rms_norm_prefix(&mut sc.ckv, &self.kv_norm, self.eps, r + dr);
        // Absorb embed_q into the queries: q' = q_nope @ Wq_h^T, `[l, nh, R]`.
        dev.per_head_linear(p, &sc.q_nope, l, &self.embed_q, &mut sc.rows, &mut sc.q_lat);
        dev.resize(&mut sc.o_lat, l * nh * r);
        let mut row = 0;
        for st in steps.iter_mut() {
            let (n, offset) = (st.tokens.len(), st.cache.offset);
            let kv = &mut st.cache.layers[layer];
            let rows = row..row + n;
            let rope = Rope {
                head_dim: dr,
                inv_freq: &self.inv_freq,
                traditional: true,
                mscale: self.rope_mscale,
            };
            let (q_pe, ckv) = (&mut sc.q_pe, &mut sc.ckv);
            dev.rope_append_latent(kv, q_pe, ckv, rows.clone(), offset, (r, dr), rope);
            let shape = MlaShape {
                l: n,
                t: offset + n,
                cap: kv.cap,
                n_heads: nh,
                rank: r,
                rope_dim: dr,
                scale: self.scale,
            };
            dev.mla_attention((&sc.q_lat, &sc.q_pe), rows, kv, shape, &mut sc.o_lat);
            row += n;
        }
        // Un-absorb: out = o @ Wo_h^T, `[l, nh, dv]`, then o_proj.
        let unembed = &self.unembed_out;
        dev.per_head_linear(p, &sc.o_lat, l, unembed, &mut sc.rows, &mut sc.out);
        ex.linear(&sc.out, l, &self.o_proj, &mut s.delta);
    }
}
