//! The Gated DeltaNet token mixer of Qwen3-Next and Qwen3.5 (mlx-lm's
//! `Qwen3NextGatedDeltaNet` in `mlx_lm/models/qwen3_next.py` and `GatedDeltaNet` in
//! `qwen3_5.py`, with the recurrence of `mlx_lm/models/gated_delta.py`):
//!
//! project -> causal depthwise conv (window in the cache) + SiLU -> L2-normalise q, k
//! (q also scaled by `Dk^-0.5`) -> gates `g = exp(-exp(A_log) softplus(a + dt_bias))`,
//! `beta = sigmoid(b)` -> gated delta rule over the f32 state -> gated RMSNorm with `z` ->
//! `out_proj`.
//!
//! The two checkpoints differ only in the input projections (see [`DeltaIn`]).

use super::exec::{Exec, SeqStep};
use crate::backend::{Backend, DeltaRule, HostWeights, WeightSet};
use crate::cache::{DeltaScratch, DeltaState, LayerLog, Scratch};
use crate::error::LoadError;
use crate::weights::WeightLoader;
use moestream_kernels::delta::DeltaShape;

/// The input projections.
#[allow(clippy::large_enum_variant)] // one per layer, built at load
pub enum DeltaIn<W: WeightSet = HostWeights> {
    /// qwen3_next: `in_proj_qkvz [2*Hk*Dk + 2*Hv*Dv, H]` laid out per key head as
    /// `[q (Dk) | k (Dk) | v (r*Dv) | z (r*Dv)]`, and `in_proj_ba [2*Hv, H]` per key head as
    /// `[b (r) | a (r)]` (`r = Hv / Hk`).
    Fused { qkvz: W::Matrix, ba: W::Matrix },
    /// qwen3_5: `in_proj_qkv` already `[q | k | v]` (head-major), and separate `z`, `b`, `a`.
    Split {
        qkv: W::Matrix,
        z: W::Matrix,
        b: W::Matrix,
        a: W::Matrix,
    },
}

pub struct DeltaNet<W: WeightSet = HostWeights> {
    pub input: DeltaIn<W>,
    pub shape: DeltaShape,
    pub kernel: usize,
    /// `conv1d.weight [C, K, 1]` transposed to `[K, C]` (f32).
    pub conv_w: W::Values,
    /// `exp(A_log)` in f32, per value head.
    pub a_exp: W::Values,
    pub dt_bias: W::Values,
    /// Gated RMSNorm weight `[Dv]`.
    pub norm: W::Vector,
    pub out_proj: W::Matrix,
    pub eps: f32,
}

impl DeltaNet {
    /// Loads `{prefix}.linear_attn`; `fused` picks the qwen3_next projection layout, unless
    /// the weights come split (`in_proj_qkv`: a GGUF file's `attn_qkv`), which computes the
    /// same projections with the value heads in the same grouped order.
    pub fn load(
        w: &WeightLoader,
        prefix: &str,
        hidden: usize,
        shape: DeltaShape,
        kernel: usize,
        eps: f32,
        fused: bool,
    ) -> Result<Self, LoadError> {
        let p = |n: &str| format!("{prefix}.linear_attn.{n}");
        let (kd, vd, hv) = (shape.key_dim(), shape.value_dim(), shape.hv);
        let c = shape.channels();
        let input = if fused && !w.has(&p("in_proj_qkv")) {
            DeltaIn::Fused {
                qkvz: w.linear(&p("in_proj_qkvz"), 2 * kd + 2 * vd, hidden, false)?,
                ba: w.linear(&p("in_proj_ba"), 2 * hv, hidden, false)?,
            }
        } else {
            DeltaIn::Split {
                qkv: w.linear(&p("in_proj_qkv"), c, hidden, false)?,
                z: w.linear(&p("in_proj_z"), vd, hidden, false)?,
                b: w.linear(&p("in_proj_b"), hv, hidden, false)?,
                a: w.linear(&p("in_proj_a"), hv, hidden, false)?,
            }
        };
        let conv = w.array(&p("conv1d.weight"), &[c, kernel, 1])?.to_vec();
        let mut conv_w = vec![0f32; kernel * c];
        for ch in 0..c {
            for j in 0..kernel {
                conv_w[j * c + ch] = conv[ch * kernel + j];
            }
        }
        Ok(DeltaNet {
            input,
            shape,
            kernel,
            conv_w,
            a_exp: w
                .vector(&p("A_log"), hv)?
                .to_vec()
                .iter()
                .map(|v| v.exp())
                .collect(),
            dt_bias: w.vector(&p("dt_bias"), hv)?.to_vec(),
            norm: w.vector(&p("norm.weight"), shape.dv)?,
            out_proj: w.linear(&p("out_proj"), hidden, vd, false)?,
            eps,
        })
    }

    /// Weight bytes one token reads.
    pub fn bytes(&self) -> usize {
        let inputs = match &self.input {
            DeltaIn::Fused { qkvz, ba } => qkvz.bytes() + ba.bytes(),
            DeltaIn::Split { qkv, z, b, a } => qkv.bytes() + z.bytes() + b.bytes() + a.bytes(),
        };
        inputs + self.out_proj.bytes() + self.norm.bytes.len() + self.conv_w.len() * 4
    }
}

impl<W: WeightSet> DeltaNet<W> {
    /// A zeroed recurrent state for a new sequence.
    pub fn new_state<B: Backend>(&self, dev: &B) -> DeltaState<B::Mem> {
        DeltaState {
            conv: dev.zeros((self.kernel - 1) * self.shape.channels()),
            state: dev.zeros(self.shape.state_len()),
        }
    }

    /// Reads `s.xn` (the `l` normed rows of all steps), advances each step's recurrent state
    /// of layer `layer` by its tokens, writes the layer's output projection to `s.delta`.
    /// Projections and the output norm run over all rows at once; the conv and the delta
    /// rule per sequence. (The caller has checked that every step's cache has the state.)
    pub fn forward<B: Backend<Weights = W>>(
        &self,
        ex: &Exec<B>,
        layer: usize,
        steps: &mut [SeqStep<B>],
        l: usize,
        s: &mut Scratch<B::Mem>,
    ) {
        let dev = ex.dev;
        let (hv, c) = (self.shape.hv, self.shape.channels());
        let d = &mut s.delta_net;
        match &self.input {
            DeltaIn::Split { qkv, z, b, a } => {
                ex.linear(&s.xn, l, qkv, &mut d.qkv);
                ex.linear(&s.xn, l, z, &mut d.z);
                ex.linear(&s.xn, l, b, &mut d.b);
                ex.linear(&s.xn, l, a, &mut d.a);
            }
            DeltaIn::Fused { qkvz, ba } => {
                ex.linear(&s.xn, l, qkvz, &mut d.qkvz);
                ex.linear(&s.xn, l, ba, &mut d.ba);
                let out = [&mut d.qkv, &mut d.z, &mut d.b, &mut d.a];
                dev.unfuse_delta_inputs(&d.qkvz, &d.ba, self.shape, l, out);
            }
        }
        dev.delta_gates(
            &d.a,
            &d.b,
            &self.a_exp,
            &self.dt_bias,
            &mut d.g,
            &mut d.beta,
        );
        dev.resize(&mut d.conv, l * c);
        dev.resize(&mut d.y, l * self.shape.value_dim());
        let mut row = 0;
        for step in steps.iter_mut() {
            let rows = row..row + step.tokens.len();
            if let Some(log) = step.cache.log.recording(layer) {
                dev.append_rows(&mut log.qkv, &d.qkv, rows.clone(), c);
                dev.append_rows(&mut log.g, &d.g, rows.clone(), hv);
                dev.append_rows(&mut log.beta, &d.beta, rows.clone(), hv);
            }
            let Some(Some(st)) = step.cache.recurrent.get_mut(layer) else {
                unreachable!("forward_batch checks every step's recurrent state")
            };
            let inputs = (&d.qkv, &d.g, &d.beta);
            dev.delta_advance(self.rule(), st, inputs, rows.clone(), &mut d.conv, &mut d.y);
            row = rows.end;
        }
        dev.gated_rms_norm(&mut d.y, &d.z, &self.norm, self.eps);
        ex.linear(&d.y, l, &self.out_proj, &mut s.delta);
    }

    /// The recurrence's shapes and conv weight.
    fn rule<B: Backend<Weights = W>>(&self) -> DeltaRule<'_, B> {
        DeltaRule {
            shape: self.shape,
            kernel: self.kernel,
            conv_w: &self.conv_w,
        }
    }

    /// Re-runs the recurrence over the first `n` logged tokens from the state `st` (restored
    /// to where the log started): the state then equals that of a sequence fed only those
    /// tokens. The layer's output is not needed and goes to scratch.
    pub fn replay<B: Backend<Weights = W>>(
        &self,
        dev: &B,
        st: &mut DeltaState<B::Mem>,
        log: &LayerLog<B::Mem>,
        n: usize,
        s: &mut DeltaScratch<B::Mem>,
    ) {
        if n == 0 {
            return;
        }
        dev.resize(&mut s.conv, n * self.shape.channels());
        dev.resize(&mut s.y, n * self.shape.value_dim());
        let inputs = (&log.qkv, &log.g, &log.beta);
        dev.delta_advance(self.rule(), st, inputs, 0..n, &mut s.conv, &mut s.y);
    }
}
