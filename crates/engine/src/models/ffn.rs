//! The feed-forward blocks: a dense SwiGLU MLP, and the routed mixture of experts (routing,
//! dispatch of token slots to experts, the gathered expert matmuls, the weighted combine and
//! an optional shared expert).

use super::exec::Exec;
use super::lookahead::{self, Lookahead};
use crate::backend::{Backend, HostWeights, WeightSet};
use crate::cache::Scratch;
use crate::error::RunError;
use moestream_kernels::router::RouterKind;

/// SwiGLU feed-forward: `down(silu(gate(x)) * up(x))`.
pub struct DenseMlp<W: WeightSet = HostWeights> {
    pub gate_proj: W::Matrix,
    pub up_proj: W::Matrix,
    pub down_proj: W::Matrix,
}

/// Routed experts: the router runs here, the experts' weights come from the expert store.
pub struct MoeBlock<W: WeightSet = HostWeights> {
    pub router: W::Matrix,
    pub kind: RouterKind,
    pub n_experts: usize,
    pub top_k: usize,
    pub expert_inter: usize,
    /// An always-on expert added to the routed sum (Qwen3-Next, GLM).
    pub shared: Option<SharedExpert<W>>,
    /// Added to the router scores for selection only (GLM's `e_score_correction_bias`).
    pub selection_bias: Option<W::Values>,
}

/// A dense SwiGLU expert every token goes through, optionally scaled by
/// `sigmoid(gate(x))` (Qwen3-Next's `shared_expert_gate`, a `[1, hidden]` linear).
pub struct SharedExpert<W: WeightSet = HostWeights> {
    pub mlp: DenseMlp<W>,
    pub gate: Option<W::Matrix>,
}

#[allow(clippy::large_enum_variant)] // one per layer, built at load
pub enum FeedForward<W: WeightSet = HostWeights> {
    Dense(Box<DenseMlp<W>>),
    Moe(MoeBlock<W>),
}

impl<W: WeightSet> DenseMlp<W> {
    /// `h = swiglu(x)` of the `l` rows of `s.xn` into `s.mlp_h`, and `down(h)` into `out`'s
    /// buffer.
    fn run<B: Backend<Weights = W>>(
        &self,
        ex: &Exec<B>,
        l: usize,
        s: &mut Scratch<B::Mem>,
        out: Out,
    ) {
        let gate_up = (&self.gate_proj, &self.up_proj);
        let scratch = (&mut s.identity, &mut s.swiglu_u);
        ex.swiglu(&s.xn, l, gate_up, &mut s.mlp_h, scratch);
        let y = match out {
            Out::Delta => &mut s.delta,
            Out::Shared => &mut s.shared_y,
        };
        ex.linear(&s.mlp_h, l, &self.down_proj, y);
    }

    /// Reads `s.xn`, writes the block's output to `s.delta`.
    pub fn forward<B: Backend<Weights = W>>(
        &self,
        ex: &Exec<B>,
        l: usize,
        s: &mut Scratch<B::Mem>,
    ) {
        self.run(ex, l, s, Out::Delta);
    }
}

/// Where a dense MLP's output goes.
enum Out {
    Delta,
    Shared,
}

impl<W: WeightSet> SharedExpert<W> {
    /// `delta += [sigmoid(gate(x)) *] mlp(x)` for every token.
    fn forward<B: Backend<Weights = W>>(&self, ex: &Exec<B>, l: usize, s: &mut Scratch<B::Mem>) {
        self.mlp.run(ex, l, s, Out::Shared);
        match &self.gate {
            // Exact, like the router: a one-row matmul, and it scales the whole output.
            Some(g) => {
                ex.linear_exact(&s.xn, l, g, &mut s.shared_gate);
                ex.dev.sigmoid(&mut s.shared_gate);
            }
            None => {
                ex.dev.resize(&mut s.shared_gate, l);
                ex.dev.fill(&mut s.shared_gate, 1.0);
            }
        }
        ex.dev
            .scaled_add_rows(&s.shared_gate, &s.shared_y, &mut s.delta, ex.hidden);
    }
}

impl<W: WeightSet> MoeBlock<W> {
    /// Routed experts: route every token (to `top_k` experts), group the (token, choice)
    /// slots by expert, run one gathered SwiGLU and one gathered down projection over all
    /// active experts of `experts`' layer `layer`, then combine each token's k outputs with
    /// its router weights. Reads `s.xn`, writes `s.delta`. `next` is the following MoE
    /// layer, whose experts the router lookahead may prefetch meanwhile.
    #[allow(clippy::too_many_arguments)]
    pub fn forward<B: Backend<Weights = W>>(
        &self,
        ex: &Exec<B>,
        experts: &B::Experts,
        top_k: usize,
        layer: usize,
        next: Option<Lookahead<W>>,
        l: usize,
        s: &mut Scratch<B::Mem>,
    ) -> Result<(), RunError> {
        let (dev, k, e) = (ex.dev, top_k, self.n_experts);
        // The router stays exact: a flipped expert choice changes the output far more than
        // int8 rounding elsewhere, and the router is a small share of the bytes.
        ex.linear_exact(&s.xn, l, &self.router, &mut s.router);
        let bias = self.selection_bias.as_ref();
        let (ids, w) = (&mut s.expert_ids, &mut s.expert_w);
        dev.router_topk(&self.kind, &mut s.router, e, bias, k, ids, w);
        dev.moe_dispatch(&s.expert_ids, e, k, &mut s.dispatch);
        if let Some(next) = next {
            lookahead::prefetch(ex, experts, &next, l, s);
        }
        let arith = (ex.precision, ex.fused_swiglu);
        let shapes = (self.expert_inter, ex.hidden);
        let out = (&mut s.moe_h, &mut s.moe_y, &mut s.swiglu_u);
        dev.moe_experts(arith, experts, layer, &s.xn, &s.dispatch, shapes, out)?;
        dev.moe_combine(&s.expert_w, &s.moe_y, &mut s.delta, k, ex.hidden);
        if let Some(sh) = &self.shared {
            sh.forward(ex, l, s);
        }
        Ok(())
    }
}
