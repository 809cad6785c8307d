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
use super::ops;
use crate::cache::{sized, KvCache, Scratch};
use crate::error::LoadError;
use crate::weights::{Floats, Linear, WeightLoader};
use moestream_kernels::mla::{mla_attention, per_head_matmul, MlaShape};
use moestream_kernels::norm::rms_norm_inplace;
use moestream_kernels::Matrix;

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
pub enum QueryProj {
    LowRank { a: Linear, norm: Floats, b: Linear },
    Full(Linear),
}

pub struct Mla {
    pub query: QueryProj,
    /// `kv_a_proj_with_mqa` `[R + dr, H]`.
    pub kv_a: Linear,
    /// `kv_a_layernorm` `[R]`.
    pub kv_norm: Floats,
    /// Per head: `embed_q` `[R, dn]` and `unembed_out` `[dv, R]`.
    pub embed_q: Vec<Linear>,
    pub unembed_out: Vec<Linear>,
    pub o_proj: Linear,
    pub dims: MlaDims,
    /// Inverse frequencies of the `dr / 2` rotated pairs.
    pub inv_freq: Vec<f32>,
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
        inv_freq: Vec<f32>,
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
            scale,
            eps,
        })
    }

    /// The compressed cache: the latent as the key row, `k_pe` as the value row.
    pub fn new_cache(&self) -> KvCache {
        KvCache::with_widths(1, self.dims.rank, self.dims.rope)
    }

    pub fn cache_floats_per_token(&self) -> usize {
        self.dims.rank + self.dims.rope
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

    /// Reads `s.xn` (the `l` normed rows of all steps), appends each step's latents to its
    /// cache of layer `layer`, writes the layer's output projection to `s.delta`. Every
    /// projection (the per-head absorbed ones included) runs over all rows at once; RoPE, the
    /// cache write and attention per sequence.
    pub fn forward(
        &self,
        ex: &Exec,
        layer: usize,
        steps: &mut [SeqStep],
        l: usize,
        s: &mut Scratch,
    ) {
        let MlaDims {
            n_heads: nh,
            nope: dn,
            rope: dr,
            rank: r,
            v_dim: dv,
        } = self.dims;
        let sc = &mut s.mla;
        let mm = |x: &[f32], lin: &Linear, out: &mut [f32]| ex.linear(x, l, lin, out);
        let q = sized(&mut sc.q, l * nh * (dn + dr));
        match &self.query {
            QueryProj::LowRank { a, norm, b } => {
                let qa = sized(&mut sc.q_a, l * a.rows);
                mm(&s.xn, a, qa);
                rms_norm_inplace(qa, &norm.view(), self.eps);
                mm(qa, b, q);
            }
            QueryProj::Full(p) => mm(&s.xn, p, q),
        }
        let q_nope = sized(&mut sc.q_nope, l * nh * dn);
        let q_pe = sized(&mut sc.q_pe, l * nh * dr);
        ops::split_heads(q, q_nope, q_pe, dn, dr);
        let ckv = sized(&mut sc.ckv, l * (r + dr));
        mm(&s.xn, &self.kv_a, ckv);
        for row in ckv.chunks_exact_mut(r + dr) {
            rms_norm_inplace(&mut row[..r], &self.kv_norm.view(), self.eps);
        }
        // Absorb embed_q into the queries: q' = q_nope @ Wq_h^T, `[l, nh, R]`.
        let embed: Vec<Matrix> = self.embed_q.iter().map(Linear::matrix).collect();
        let q_lat = sized(&mut sc.q_lat, l * nh * r);
        per_head_matmul(
            ex.pool,
            ex.precision,
            q_nope,
            l,
            &embed,
            &mut sc.rows,
            q_lat,
        );
        let o_lat = sized(&mut sc.o_lat, l * nh * r);
        let mut row = 0;
        for st in steps.iter_mut() {
            let (n, offset) = (st.tokens.len(), st.cache.offset);
            let kv = &mut st.cache.layers[layer];
            ops::rope_append_latent(
                kv,
                &mut q_pe[row * nh * dr..(row + n) * nh * dr],
                &mut ckv[row * (r + dr)..(row + n) * (r + dr)],
                n,
                offset,
                (r, dr),
                &self.inv_freq,
            );
            let shape = MlaShape {
                l: n,
                t: offset + n,
                cap: kv.cap,
                n_heads: nh,
                rank: r,
                rope_dim: dr,
                scale: self.scale,
            };
            let (lat, pe) = (
                row * nh * r..(row + n) * nh * r,
                row * nh * dr..(row + n) * nh * dr,
            );
            let q_rows = &q_lat[lat.clone()];
            mla_attention(
                ex.pool,
                q_rows,
                &q_pe[pe],
                &kv.k,
                &kv.v,
                shape,
                &mut o_lat[lat],
            );
            row += n;
        }
        // Un-absorb: out = o @ Wo_h^T, `[l, nh, dv]`, then o_proj.
        let unembed: Vec<Matrix> = self.unembed_out.iter().map(Linear::matrix).collect();
        let out = sized(&mut sc.out, l * nh * dv);
        per_head_matmul(ex.pool, ex.precision, o_lat, l, &unembed, &mut sc.rows, out);
        let delta = sized(&mut s.delta, l * ex.hidden);
        mm(out, &self.o_proj, delta);
    }
}
