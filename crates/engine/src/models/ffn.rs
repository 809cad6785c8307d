//! The feed-forward blocks: a dense SwiGLU MLP, and the routed mixture of experts (routing,
//! dispatch of token slots to experts, the gathered expert matmuls, the weighted combine and
//! an optional shared expert).

use super::exec::Exec;
use super::lookahead::{self, Lookahead};
use super::ops;
use crate::cache::{sized, Scratch};
use crate::error::RunError;
use crate::experts::ExpertStore;
use crate::weights::Linear;
use moestream_kernels::activation::sigmoid;
use moestream_kernels::matmul::{gather_matmul, GatherGroup, GatherPair};
use moestream_kernels::router::{router_topk, RouterKind};

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

/// `identity[..l]`: the row indices `0..l` (a dense block's gather is every row).
fn identity(identity: &mut Vec<u32>, l: usize) -> &[u32] {
    if identity.len() < l {
        *identity = (0..l as u32).collect();
    }
    &identity[..l]
}

impl DenseMlp {
    /// `h = swiglu(x)` of the `l` rows of `s.xn` into `s.mlp_h`, and `out = down(h)`.
    fn run(&self, ex: &Exec, l: usize, s: &mut Scratch, out: Out) {
        let rows = identity(&mut s.identity, l);
        let pair = GatherPair {
            gate: self.gate_proj.matrix(),
            up: self.up_proj.matrix(),
            x_rows: rows,
            out_rows: rows,
        };
        let h = sized(&mut s.mlp_h, l * self.gate_proj.rows);
        ex.swiglu(&s.xn, &[pair], h, &mut s.swiglu_u);
        let y = match out {
            Out::Delta => sized(&mut s.delta, l * ex.hidden),
            Out::Shared => sized(&mut s.shared_y, l * ex.hidden),
        };
        ex.matmul(h, l, &self.down_proj.matrix(), y);
    }

    /// Reads `s.xn`, writes the block's output to `s.delta`.
    pub fn forward(&self, ex: &Exec, l: usize, s: &mut Scratch) {
        self.run(ex, l, s, Out::Delta);
    }
}

/// Where a dense MLP's output goes.
enum Out {
    Delta,
    Shared,
}

impl SharedExpert {
    /// `delta += [sigmoid(gate(x)) *] mlp(x)` for every token.
    fn forward(&self, ex: &Exec, l: usize, s: &mut Scratch) {
        let hsz = ex.hidden;
        self.mlp.run(ex, l, s, Out::Shared);
        let gates = sized(&mut s.shared_gate, l);
        match &self.gate {
            // Exact, like the router: a one-row matmul, and it scales the whole output.
            Some(g) => {
                ex.matmul_exact(&s.xn, l, &g.matrix(), gates);
                gates.iter_mut().for_each(|v| *v = sigmoid(*v));
            }
            None => gates.fill(1.0),
        }
        ops::scaled_add_rows(gates, &s.shared_y, &mut s.delta, hsz);
    }
}

impl MoeBlock {
    /// Routed experts: route every token (to `top_k` experts), group the (token, choice)
    /// slots by expert, run one gathered SwiGLU and one gathered down projection over all
    /// active experts of `experts`' layer `layer`, then combine each token's k outputs with
    /// its router weights. Reads `s.xn`, writes `s.delta`. `next` is the following MoE
    /// layer, whose experts the router lookahead may prefetch meanwhile.
    #[allow(clippy::too_many_arguments)]
    pub fn forward(
        &self,
        ex: &Exec,
        experts: &dyn ExpertStore,
        top_k: usize,
        layer: usize,
        next: Option<Lookahead>,
        l: usize,
        s: &mut Scratch,
    ) -> Result<(), RunError> {
        let (hsz, k, e) = (ex.hidden, top_k, self.n_experts);
        let router = sized(&mut s.router, l * e);
        // The router stays exact: a flipped expert choice changes the output far more than
        // int8 rounding elsewhere, and the router is a small share of the bytes.
        ex.matmul_exact(&s.xn, l, &self.router.matrix(), router);
        s.expert_ids.resize(l * k, 0);
        sized(&mut s.expert_w, l * k);
        for t in 0..l {
            router_topk(
                &self.kind,
                &mut router[t * e..(t + 1) * e],
                self.selection_bias.as_deref(),
                &mut s.expert_ids[t * k..(t + 1) * k],
                &mut s.expert_w[t * k..(t + 1) * k],
            );
        }
        ops::moe_dispatch(s, e, k, l);
        if let Some(next) = next {
            lookahead::prefetch(ex, experts, &next, l, s);
        }
        let h = sized(&mut s.moe_h, l * k * self.expert_inter);
        let y = sized(&mut s.moe_y, l * k * hsz);
        let u = &mut s.swiglu_u;
        let (counts, slots, toks, xn) = (
            &s.expert_counts,
            &s.slots_by_expert,
            &s.tokens_by_expert,
            &s.xn,
        );
        experts.with_experts(layer, &s.active_experts, &mut |batch, mats| {
            let range = |id: u32| counts[id as usize] as usize..counts[id as usize + 1] as usize;
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
            ex.swiglu(xn, &pairs, h, u);
            let downs: Vec<GatherGroup> = batch
                .iter()
                .zip(mats)
                .map(|(&id, m)| GatherGroup {
                    w: m.down,
                    x_rows: &slots[range(id)],
                    out_rows: &slots[range(id)],
                })
                .collect();
            gather_matmul(ex.pool, ex.precision, h, &downs, y);
        })?;
        ops::moe_combine(&s.expert_w, y, sized(&mut s.delta, l * hsz), k, hsz);
        if let Some(sh) = &self.shared {
            sh.forward(ex, l, s);
        }
        Ok(())
    }
}
