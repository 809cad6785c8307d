//! `glm4_moe_lite` tensors (GLM-4.7-Flash): DeepSeek-V3-style MLA with the absorbed
//! per-head matrices `embed_q` / `unembed_out` (quantized 3-D `MultiLinear`s), a sigmoid
//! router whose weight is a raw parameter (never quantized) with a float32
//! `e_score_correction_bias`, and shared experts. The first `first_k_dense_replace`
//! layers are dense.

use super::common::{
    embedding, experts, final_norm_and_head, layer_norms, parse, require, swiglu, READ, WRITE,
};
use crate::synth::error::SynthError;
use crate::synth::plan::{Fill, Plan};
use crate::weights::Dtype;
use serde::Deserialize;
use serde_json::Value;

#[derive(Deserialize)]
struct Cfg {
    vocab_size: usize,
    hidden_size: usize,
    intermediate_size: usize,
    moe_intermediate_size: usize,
    num_hidden_layers: usize,
    num_attention_heads: usize,
    n_shared_experts: Option<usize>,
    n_routed_experts: Option<usize>,
    kv_lora_rank: usize,
    q_lora_rank: Option<usize>,
    qk_rope_head_dim: usize,
    qk_nope_head_dim: usize,
    v_head_dim: usize,
    num_experts_per_tok: usize,
    #[serde(default = "one")]
    moe_layer_freq: usize,
    #[serde(default = "one")]
    first_k_dense_replace: usize,
}

fn one() -> usize {
    1
}

pub fn plan(cfg: &Value, plan: &mut Plan) -> Result<(), SynthError> {
    const ARCH: &str = "glm4_moe_lite";
    let c: Cfg = parse(cfg, ARCH)?;
    require(c.moe_layer_freq > 0, ARCH, "moe_layer_freq is 0")?;
    let routed = c.n_routed_experts.unwrap_or(0);
    require(
        routed == 0 || (1..=routed).contains(&c.num_experts_per_tok),
        ARCH,
        "num_experts_per_tok must be 1..=n_routed_experts",
    )?;
    let h = c.hidden_size;
    embedding(plan, "model.", c.vocab_size, h);
    for i in 0..c.num_hidden_layers {
        let l = format!("model.layers.{i}");
        mla(plan, &format!("{l}.self_attn"), &c);
        let m = format!("{l}.mlp");
        let moe = routed > 0 && i >= c.first_k_dense_replace && i % c.moe_layer_freq == 0;
        if moe {
            router(plan, &format!("{m}.gate"), routed, h);
            experts(plan, &m, h, routed, c.moe_intermediate_size);
            if let Some(n) = c.n_shared_experts {
                let inter = c.moe_intermediate_size * n;
                swiglu(plan, &format!("{m}.shared_experts"), h, inter);
            }
        } else {
            swiglu(plan, &m, h, c.intermediate_size);
        }
        layer_norms(plan, &l, h);
    }
    final_norm_and_head(plan, "model.", Some("lm_head"), c.vocab_size, h);
    Ok(())
}

fn mla(plan: &mut Plan, a: &str, c: &Cfg) {
    let (h, heads, r) = (c.hidden_size, c.num_attention_heads, c.kv_lora_rank);
    let q_head = c.qk_nope_head_dim + c.qk_rope_head_dim;
    match c.q_lora_rank {
        Some(qr) => {
            plan.linear(&format!("{a}.q_a_proj"), qr, h, READ);
            plan.norm(&format!("{a}.q_a_layernorm"), qr);
            plan.linear(&format!("{a}.q_b_proj"), heads * q_head, qr, READ);
        }
        None => plan.linear(&format!("{a}.q_proj"), heads * q_head, h, READ),
    }
    plan.linear(
        &format!("{a}.kv_a_proj_with_mqa"),
        r + c.qk_rope_head_dim,
        h,
        READ,
    );
    plan.norm(&format!("{a}.kv_a_layernorm"), r);
    // embed_q [heads, R, dn] maps q_nope (dn) into the latent space (R); unembed_out
    // [heads, dv, R] maps the attended latent back to dv.
    plan.stacked(&format!("{a}.embed_q"), heads, r, c.qk_nope_head_dim, READ);
    plan.stacked(&format!("{a}.unembed_out"), heads, c.v_head_dim, r, READ);
    plan.linear(&format!("{a}.o_proj"), h, heads * c.v_head_dim, WRITE);
}

/// The `MoEGate`: a raw `[E, H]` weight in the model's float type and a float32 bias that
/// only steers selection.
pub(super) fn router(plan: &mut Plan, gate: &str, experts: usize, hidden: usize) {
    let float = plan.float.dtype();
    plan.raw(
        &format!("{gate}.weight"),
        float,
        vec![experts, hidden],
        Fill::Normal {
            mean: 0.0,
            std: 1.0 / (hidden as f32).sqrt(),
        },
    );
    plan.raw(
        &format!("{gate}.e_score_correction_bias"),
        Dtype::F32,
        vec![experts],
        Fill::Normal {
            mean: 0.0,
            std: 0.01,
        },
    );
}
