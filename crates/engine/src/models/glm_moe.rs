//! The MoE feed-forward of GLM-4.5/4.6 (`glm4_moe`) and GLM-4.7-Flash (`glm4_moe_lite`),
//! after mlx-lm's `MoEGate` / `group_expert_select`: a raw (never quantized) router weight,
//! sigmoid scores, selection on scores + `e_score_correction_bias` with group top-k,
//! renormalised and scaled weights, and shared experts added unscaled.

use super::common::{check_top_k, dense, dense_mlp, Ffn};
use super::ffn::{FeedForward, MoeBlock, SharedExpert};
use super::load_experts;
use crate::error::LoadError;
use crate::weights::WeightLoader;
use moestream_kernels::router::{RouterKind, MAX_GROUPS};

/// The routed-expert block shared by `glm4_moe` and `glm4_moe_lite`.
pub struct GlmRouter {
    pub n_experts: usize,
    pub top_k: usize,
    pub expert_inter: usize,
    /// Shared experts: one SwiGLU of `expert_inter * n` (`None`: no shared expert).
    pub n_shared: Option<usize>,
    pub kind: RouterKind,
}

/// The feed-forward at `module`: the GLM MoE block (`moe` given) or a dense SwiGLU MLP.
pub fn glm_feed_forward(
    w: &WeightLoader,
    module: &str,
    h: usize,
    moe: Option<&GlmRouter>,
    dense_inter: usize,
) -> Result<Ffn, LoadError> {
    let Some(r) = moe else {
        return Ok(dense(dense_mlp(w, module, h, dense_inter, false)?));
    };
    let (e, im) = (r.n_experts, r.expert_inter);
    let shared = match r.n_shared {
        Some(n) => Some(SharedExpert {
            mlp: dense_mlp(w, &format!("{module}.shared_experts"), h, im * n, false)?,
            gate: None,
        }),
        None => None,
    };
    let block = MoeBlock {
        // A raw parameter in mlx-lm (never quantized); float32 sigmoid scores.
        router: w.linear(&format!("{module}.gate"), e, h, false)?,
        kind: r.kind.clone(),
        n_experts: e,
        top_k: r.top_k,
        expert_inter: im,
        shared,
        selection_bias: Some(
            w.vector(&format!("{module}.gate.e_score_correction_bias"), e)?
                .to_vec(),
        ),
    };
    Ok((
        FeedForward::Moe(block),
        Some(load_experts(w, module, e, h, im)?),
    ))
}

/// Checks of the noaux_tc router fields shared by `glm4_moe` and `glm4_moe_lite`.
pub fn check_glm_router(
    arch: &str,
    n_experts: usize,
    top_k: usize,
    n_group: usize,
    topk_group: usize,
    topk_method: &str,
    scoring_func: &str,
) -> Result<(), LoadError> {
    let bad = |m: String| Err(LoadError::Config(format!("{arch}: {m}")));
    if topk_method != "noaux_tc" {
        return bad(format!(
            "topk_method {topk_method:?} is not supported (mlx-lm requires \"noaux_tc\")"
        ));
    }
    if scoring_func != "sigmoid" {
        return bad(format!(
            "scoring_func {scoring_func:?} is not supported (only \"sigmoid\")"
        ));
    }
    check_top_k(n_experts, top_k)?;
    let (e, g, tg) = (n_experts, n_group, topk_group);
    if g == 0 || g > MAX_GROUPS || !e.is_multiple_of(g) || (g > 1 && e / g < 2) {
        return bad(format!(
            "n_group ({g}) must divide n_routed_experts ({e}) into groups of at least \
             two experts (at most {MAX_GROUPS} groups)"
        ));
    }
    if tg == 0 || tg > g {
        return bad(format!(
            "topk_group ({tg}) must be between 1 and n_group ({g})"
        ));
    }
    Ok(())
}
