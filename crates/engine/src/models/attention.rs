//! Grouped-query self-attention over the KV cache: optional per-head q/k RMSNorm (Qwen3) or
//! whole-projection norm (OLMoE), RoPE, and Qwen3-Next's sigmoid output gate.

use super::exec::{Exec, SeqStep};
use crate::backend::{Backend, HostWeights, Rope, WeightSet};
use crate::cache::Scratch;
use moestream_kernels::attention::AttnShape;

/// Shapes and RoPE parameters common to all attention layers of a model.
#[derive(Clone, Debug)]
pub struct AttnConfig {
    pub n_heads: usize,
    pub n_kv: usize,
    pub head_dim: usize,
    /// Inverse frequencies of the rotated feature pairs (`rot_dims / 2` of them).
    pub inv_freq: Vec<f32>,
    pub rope_traditional: bool,
    /// Factor on the rotated features of queries and keys before RoPE (YaRN; else 1).
    pub rope_mscale: f32,
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
            rope_mscale: 1.0,
            scale: (head_dim as f32).powf(-0.5),
        }
    }

    /// With YaRN's input scaling (see `common::rope_mscale`).
    pub fn with_rope_mscale(mut self, mscale: f32) -> Self {
        self.rope_mscale = mscale;
        self
    }
}

/// Grouped-query self-attention with optional per-head q/k RMSNorm and RoPE.
pub struct Attention<W: WeightSet = HostWeights> {
    pub q_proj: W::Matrix,
    pub k_proj: W::Matrix,
    pub v_proj: W::Matrix,
    pub o_proj: W::Matrix,
    /// RMSNorm weights, per head `[head_dim]` (Qwen3) or over the whole projection (OLMoE).
    pub q_norm: Option<W::Vector>,
    pub k_norm: Option<W::Vector>,
    /// Qwen3-Next's output gate: `q_proj` yields `[q | gate]` per head (`2 * head_dim`), and
    /// the attention output is multiplied by `sigmoid(gate)` before `o_proj`.
    pub output_gate: bool,
}

impl<W: WeightSet> Attention<W> {
    /// Attention sub-layer over the rows of every step: reads `s.xn`, writes its output
    /// projection to `s.delta`. Projections run over all rows at once; RoPE, the cache write
    /// and attention itself run per sequence.
    pub fn forward<B: Backend<Weights = W>>(
        &self,
        ex: &Exec<B>,
        c: &AttnConfig,
        layer: usize,
        steps: &mut [SeqStep<B>],
        l: usize,
        s: &mut Scratch<B::Mem>,
    ) {
        let dev = ex.dev;
        let qd = c.n_heads * c.head_dim;
        ex.linear(&s.xn, l, &self.q_proj, &mut s.q);
        ex.linear(&s.xn, l, &self.k_proj, &mut s.k);
        ex.linear(&s.xn, l, &self.v_proj, &mut s.v);
        if self.output_gate {
            dev.split_query_gate(&mut s.q, &mut s.gate, c.head_dim);
        }
        for (norm, x) in [(&self.q_norm, &mut s.q), (&self.k_norm, &mut s.k)] {
            if let Some(w) = norm {
                dev.rms_norm_rows(x, w, ex.eps);
            }
        }
        dev.resize(&mut s.attn, l * qd);
        let rope = Rope {
            head_dim: c.head_dim,
            inv_freq: &c.inv_freq,
            traditional: c.rope_traditional,
            mscale: c.rope_mscale,
        };
        let mut row = 0;
        for st in steps.iter_mut() {
            let (n, offset) = (st.tokens.len(), st.cache.offset);
            let kv = &mut st.cache.layers[layer];
            let rows = row..row + n;
            dev.rope_append(kv, &mut s.q, &mut s.k, &s.v, rows.clone(), offset, rope);
            let shape = AttnShape {
                l: n,
                t: offset + n,
                cap: kv.cap,
                n_heads: c.n_heads,
                n_kv: c.n_kv,
                head_dim: c.head_dim,
                scale: c.scale,
            };
            dev.attention(&s.q, rows, kv, shape, &mut s.attn);
            row += n;
        }
        if self.output_gate {
            dev.sigmoid_gate(&mut s.attn, &s.gate);
        }
        ex.linear(&s.attn, l, &self.o_proj, &mut s.delta);
    }
}
