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
use super::ops;
use crate::cache::{sized, DeltaScratch, DeltaState, LayerLog, Scratch};
use crate::error::LoadError;
use crate::weights::{Floats, Linear, WeightLoader};
use moestream_kernels::delta::{
    conv1d_causal_silu, delta_gates, gated_delta, gated_rms_norm, l2norm, DeltaShape,
};
use moestream_kernels::ThreadPool;

/// The input projections.
#[allow(clippy::large_enum_variant)] // one per layer, built at load
pub enum DeltaIn {
    /// qwen3_next: `in_proj_qkvz [2*Hk*Dk + 2*Hv*Dv, H]` laid out per key head as
    /// `[q (Dk) | k (Dk) | v (r*Dv) | z (r*Dv)]`, and `in_proj_ba [2*Hv, H]` per key head as
    /// `[b (r) | a (r)]` (`r = Hv / Hk`).
    Fused { qkvz: Linear, ba: Linear },
    /// qwen3_5: `in_proj_qkv` already `[q | k | v]` (head-major), and separate `z`, `b`, `a`.
    Split {
        qkv: Linear,
        z: Linear,
        b: Linear,
        a: Linear,
    },
}

pub struct DeltaNet {
    pub input: DeltaIn,
    pub shape: DeltaShape,
    pub kernel: usize,
    /// `conv1d.weight [C, K, 1]` transposed to `[K, C]` (f32).
    pub conv_w: Vec<f32>,
    /// `exp(A_log)` in f32, per value head.
    pub a_exp: Vec<f32>,
    pub dt_bias: Vec<f32>,
    /// Gated RMSNorm weight `[Dv]`.
    pub norm: Floats,
    pub out_proj: Linear,
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

    /// A zeroed recurrent state for a new sequence.
    pub fn new_state(&self) -> DeltaState {
        DeltaState::zeros(
            (self.kernel - 1) * self.shape.channels(),
            self.shape.state_len(),
        )
    }

    /// Weight bytes one token reads.
    pub fn bytes(&self) -> usize {
        let inputs = match &self.input {
            DeltaIn::Fused { qkvz, ba } => qkvz.bytes() + ba.bytes(),
            DeltaIn::Split { qkv, z, b, a } => qkv.bytes() + z.bytes() + b.bytes() + a.bytes(),
        };
        inputs + self.out_proj.bytes() + self.norm.bytes.len() + self.conv_w.len() * 4
    }

    /// Reads `s.xn` (the `l` normed rows of all steps), advances each step's recurrent state
    /// of layer `layer` by its tokens, writes the layer's output projection to `s.delta`.
    /// Projections and the output norm run over all rows at once; the conv and the delta
    /// rule per sequence. (The caller has checked that every step's cache has the state.)
    pub fn forward(
        &self,
        ex: &Exec,
        layer: usize,
        steps: &mut [SeqStep],
        l: usize,
        s: &mut Scratch,
    ) {
        let hv = self.shape.hv;
        let (kd, vd, c) = (
            self.shape.key_dim(),
            self.shape.value_dim(),
            self.shape.channels(),
        );
        let d = &mut s.delta_net;
        let mm = |x: &[f32], lin: &Linear, out: &mut [f32]| ex.linear(x, l, lin, out);
        let qkv = sized(&mut d.qkv, l * c);
        let z = sized(&mut d.z, l * vd);
        let b = sized(&mut d.b, l * hv);
        let a = sized(&mut d.a, l * hv);
        match &self.input {
            DeltaIn::Split {
                qkv: wq,
                z: wz,
                b: wb,
                a: wa,
            } => {
                mm(&s.xn, wq, qkv);
                mm(&s.xn, wz, z);
                mm(&s.xn, wb, b);
                mm(&s.xn, wa, a);
            }
            DeltaIn::Fused { qkvz, ba } => {
                let fused = sized(&mut d.qkvz, l * (2 * kd + 2 * vd));
                mm(&s.xn, qkvz, fused);
                let nba = sized(&mut d.ba, l * 2 * hv);
                mm(&s.xn, ba, nba);
                ops::unfuse_delta_inputs(fused, nba, self.shape, l, [qkv, z, b, a]);
            }
        }
        let conv = sized(&mut d.conv, l * c);
        let g = sized(&mut d.g, l * hv);
        let beta = sized(&mut d.beta, l * hv);
        delta_gates(a, b, &self.a_exp, &self.dt_bias, g, beta);
        let y = sized(&mut d.y, l * vd);
        let mut row = 0;
        for step in steps.iter_mut() {
            let n = step.tokens.len();
            let rows = row * c..(row + n) * c;
            let (gr, yr) = (row * hv..(row + n) * hv, row * vd..(row + n) * vd);
            let (gs, bs) = (&g[gr.clone()], &beta[gr]);
            step.cache.log.record(layer, &qkv[rows.clone()], gs, bs);
            let Some(Some(st)) = step.cache.recurrent.get_mut(layer) else {
                unreachable!("forward_batch checks every step's recurrent state")
            };
            self.advance(
                ex.pool,
                st,
                &qkv[rows.clone()],
                gs,
                bs,
                &mut conv[rows],
                &mut y[yr],
            );
            row += n;
        }
        gated_rms_norm(y, z, &self.norm.view(), self.eps);
        let delta = sized(&mut s.delta, l * ex.hidden);
        mm(y, &self.out_proj, delta);
    }

    /// Advances one sequence's state over the tokens of `qkv` (pre-conv rows `[n, C]`, with
    /// their gates `g`, `beta` `[n, Hv]`): the conv window, SiLU, q/k normalisation, then the
    /// delta rule. `conv` (`[n, C]`) and `y` (`[n, Hv * Dv]`) receive the intermediate and
    /// final outputs. The state after `n` tokens does not depend on how they were chunked.
    #[allow(clippy::too_many_arguments)]
    fn advance(
        &self,
        pool: &ThreadPool,
        st: &mut DeltaState,
        qkv: &[f32],
        g: &[f32],
        beta: &[f32],
        conv: &mut [f32],
        y: &mut [f32],
    ) {
        let (dk, kd, c) = (self.shape.dk, self.shape.key_dim(), self.shape.channels());
        conv1d_causal_silu(&mut st.conv, qkv, c, &self.conv_w, self.kernel, conv);
        for r in conv.chunks_exact_mut(c) {
            // mlx's normalize_qk: l2norm with eps 1e-6, q further scaled by Dk^-0.5.
            l2norm(&mut r[..kd], dk, 1e-6, (dk as f32).powf(-0.5));
            l2norm(&mut r[kd..2 * kd], dk, 1e-6, 1.0);
        }
        gated_delta(pool, conv, g, beta, self.shape, &mut st.state, y);
    }

    /// Re-runs the recurrence over the first `n` logged tokens from the state `st` (restored
    /// to where the log started): the state then equals that of a sequence fed only those
    /// tokens. The layer's output is not needed and goes to scratch.
    pub fn replay(
        &self,
        pool: &ThreadPool,
        st: &mut DeltaState,
        log: &LayerLog,
        n: usize,
        s: &mut DeltaScratch,
    ) {
        let (c, hv) = (self.shape.channels(), self.shape.hv);
        if n == 0 {
            return;
        }
        let conv = sized(&mut s.conv, n * c);
        let y = sized(&mut s.y, n * self.shape.value_dim());
        self.advance(
            pool,
            st,
            &log.qkv[..n * c],
            &log.g[..n * hv],
            &log.beta[..n * hv],
            conv,
            y,
        );
    }
}
