//! The hybrid Qwen layout shared by `qwen3_next` and `qwen3_5(_moe)`: every
//! `full_attention_interval`-th layer is gated full attention, the others Gated DeltaNet;
//! MoE layers have routed experts plus a gated shared expert, routers kept at 8 bits.

use super::common::{
    attention, embedding, experts, final_norm_and_head, layer_norms, swiglu, AttnDims, QkNorm,
    READ, WRITE,
};
use crate::synth::plan::{Fill, Plan};
use crate::weights::Dtype;

/// How the GDN input projections are split (the only structural difference).
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum GdnLayout {
    /// qwen3_next: `in_proj_qkvz` and `in_proj_ba`.
    Fused,
    /// qwen3_5: `in_proj_qkv`, `in_proj_z`, `in_proj_b`, `in_proj_a`.
    Split,
}

pub struct Gdn {
    pub key_heads: usize,
    pub value_heads: usize,
    pub key_dim: usize,
    pub value_dim: usize,
    pub conv_kernel: usize,
    pub layout: GdnLayout,
    /// qwen3_5 keeps `A_log` in float32 (its cast_predicate); qwen3_next casts it.
    pub a_log_f32: bool,
}

pub struct Hybrid {
    /// Prefix of the decoder: `model.` or `language_model.model.`.
    pub model: &'static str,
    /// Path of the output head, `None` when tied.
    pub head: Option<&'static str>,
    pub layers: usize,
    pub vocab: usize,
    pub attn: AttnDims,
    pub full_attention_interval: usize,
    pub gdn: Gdn,
    pub experts: usize,
    pub moe_intermediate: usize,
    pub shared_intermediate: usize,
    pub dense_intermediate: usize,
}

/// Writes the whole model; `is_moe(i)` says which layers have experts.
pub fn plan(h: &Hybrid, plan: &mut Plan, is_moe: &dyn Fn(usize) -> bool) {
    let hidden = h.attn.hidden;
    embedding(plan, h.model, h.vocab, hidden);
    for i in 0..h.layers {
        let l = format!("{}layers.{i}", h.model);
        if (i + 1) % h.full_attention_interval == 0 {
            attention(plan, &l, &h.attn, QkNorm::PerHead, true);
        } else {
            gdn(plan, &format!("{l}.linear_attn"), hidden, &h.gdn);
        }
        let m = format!("{l}.mlp");
        if is_moe(i) {
            plan.router(&format!("{m}.gate"), h.experts, hidden, READ, true);
            experts(plan, &m, hidden, h.experts, h.moe_intermediate);
            swiglu(
                plan,
                &format!("{m}.shared_expert"),
                hidden,
                h.shared_intermediate,
            );
            plan.router(&format!("{m}.shared_expert_gate"), 1, hidden, READ, true);
        } else {
            swiglu(plan, &m, hidden, h.dense_intermediate);
        }
        layer_norms(plan, &l, hidden);
    }
    final_norm_and_head(plan, h.model, h.head, h.vocab, hidden);
}

fn gdn(plan: &mut Plan, p: &str, hidden: usize, g: &Gdn) {
    let key = g.key_heads * g.key_dim;
    let value = g.value_heads * g.value_dim;
    let conv_channels = 2 * key + value;
    match g.layout {
        GdnLayout::Fused => {
            plan.linear(
                &format!("{p}.in_proj_qkvz"),
                2 * key + 2 * value,
                hidden,
                READ,
            );
            plan.linear(&format!("{p}.in_proj_ba"), 2 * g.value_heads, hidden, READ);
        }
        GdnLayout::Split => {
            plan.linear(&format!("{p}.in_proj_qkv"), conv_channels, hidden, READ);
            plan.linear(&format!("{p}.in_proj_z"), value, hidden, READ);
            plan.linear(&format!("{p}.in_proj_b"), g.value_heads, hidden, READ);
            plan.linear(&format!("{p}.in_proj_a"), g.value_heads, hidden, READ);
        }
    }
    let float = plan.float.dtype();
    // Depthwise causal conv, MLX layout [C, K, 1]; never quantized.
    plan.raw(
        &format!("{p}.conv1d.weight"),
        float,
        vec![conv_channels, g.conv_kernel, 1],
        Fill::Normal {
            mean: 0.0,
            std: 1.0 / (g.conv_kernel.max(1) as f32).sqrt(),
        },
    );
    // Per-head decay: A = exp(A_log) with A ~ U(1, 16) as the models initialise it.
    let a_dtype = if g.a_log_f32 { Dtype::F32 } else { float };
    plan.raw(
        &format!("{p}.A_log"),
        a_dtype,
        vec![g.value_heads],
        Fill::LnUniform { lo: 1.0, hi: 16.0 },
    );
    // Around the initial value 1.0, varied so that a head-indexing mistake shows.
    plan.raw(
        &format!("{p}.dt_bias"),
        float,
        vec![g.value_heads],
        Fill::Uniform { lo: 0.5, hi: 1.5 },
    );
    plan.norm(&format!("{p}.norm"), g.value_dim);
    plan.linear(&format!("{p}.out_proj"), hidden, value, WRITE);
}
