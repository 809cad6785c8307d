//! Grouped-query self-attention over the KV cache: optional per-head q/k RMSNorm (Qwen3) or
//! whole-projection norm (OLMoE), RoPE, and Qwen3-Next's sigmoid output gate.

use super::exec::{Exec, SeqStep};
use super::ops;
use crate::cache::{sized, Scratch};
use crate::weights::{Floats, Linear};
use moestream_kernels::attention::{attention, AttnShape};
use moestream_kernels::norm::rms_norm_inplace;

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

impl Attention {
    /// Attention sub-layer over the rows of every step: reads `s.xn`, writes its output
    /// projection to `s.delta`. Projections run over all rows at once; RoPE, the cache write
    /// and attention itself run per sequence.
    pub fn forward(
        &self,
        ex: &Exec,
        c: &AttnConfig,
        layer: usize,
        steps: &mut [SeqStep],
        l: usize,
        s: &mut Scratch,
    ) {
        let (qd, kd) = (c.n_heads * c.head_dim, c.n_kv * c.head_dim);
        let q = sized(&mut s.q, l * qd * if self.output_gate { 2 } else { 1 });
        let k = sized(&mut s.k, l * kd);
        let v = sized(&mut s.v, l * kd);
        for (proj, out) in [
            (&self.q_proj, &mut *q),
            (&self.k_proj, &mut *k),
            (&self.v_proj, &mut *v),
        ] {
            ex.linear(&s.xn, l, proj, out);
        }
        if self.output_gate {
            ops::split_query_gate(q, sized(&mut s.gate, l * qd), c.head_dim);
        }
        let q = &mut q[..l * qd];
        if let Some(w) = &self.q_norm {
            rms_norm_inplace(q, &w.view(), ex.eps);
        }
        if let Some(w) = &self.k_norm {
            rms_norm_inplace(k, &w.view(), ex.eps);
        }
        let out = sized(&mut s.attn, l * qd);
        let mut row = 0;
        for st in steps.iter_mut() {
            let (n, offset) = (st.tokens.len(), st.cache.offset);
            let kv = &mut st.cache.layers[layer];
            ops::rope_append(
                kv,
                &mut q[row * qd..(row + n) * qd],
                &mut k[row * kd..(row + n) * kd],
                &v[row * kd..(row + n) * kd],
                n,
                offset,
                c.head_dim,
                &c.inv_freq,
                c.rope_traditional,
            );
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
                ex.pool,
                &q[rows.clone()],
                &kv.k,
                &kv.v,
                shape,
                &mut out[rows],
            );
            row += n;
        }
        if self.output_gate {
            ops::sigmoid_gate(out, &s.gate);
        }
        let delta = sized(&mut s.delta, l * ex.hidden);
        ex.linear(out, l, &self.o_proj, delta);
    }
}
