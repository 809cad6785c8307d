//! `qwen3_5` / `qwen3_5_moe` tensors (Qwen3.5): the hybrid layout with split GDN
//! projections, float32 `A_log`, everything under `language_model.`, and (with experts)
//! MoE on every layer.

use super::common::{parse, require, AttnDims};
use super::hybrid::{self, Gdn, GdnLayout, Hybrid};
use crate::synth::error::SynthError;
use crate::synth::plan::Plan;
use serde::Deserialize;
use serde_json::Value;

#[derive(Deserialize)]
struct Cfg {
    hidden_size: usize,
    num_hidden_layers: usize,
    #[serde(default)]
    intermediate_size: usize,
    num_attention_heads: usize,
    num_key_value_heads: usize,
    head_dim: Option<usize>,
    linear_num_value_heads: usize,
    linear_num_key_heads: usize,
    linear_key_head_dim: usize,
    linear_value_head_dim: usize,
    #[serde(default = "four")]
    linear_conv_kernel_dim: usize,
    #[serde(default)]
    num_experts: usize,
    #[serde(default)]
    num_experts_per_tok: usize,
    #[serde(default)]
    shared_expert_intermediate_size: usize,
    #[serde(default)]
    moe_intermediate_size: usize,
    vocab_size: usize,
    #[serde(default)]
    tie_word_embeddings: bool,
    #[serde(default = "four")]
    full_attention_interval: usize,
}

fn four() -> usize {
    4
}

/// `cfg` is the whole config.json; the text model's fields live in `text_config` (or at the
/// top level when there is none).
pub fn plan(cfg: &Value, plan: &mut Plan) -> Result<(), SynthError> {
    const ARCH: &str = "qwen3_5";
    let c: Cfg = parse(cfg.get("text_config").unwrap_or(cfg), ARCH)?;
    require(
        c.num_key_value_heads > 0 && c.num_attention_heads.is_multiple_of(c.num_key_value_heads),
        ARCH,
        "num_attention_heads must be a multiple of num_key_value_heads",
    )?;
    require(
        c.linear_num_key_heads > 0
            && c.linear_num_value_heads
                .is_multiple_of(c.linear_num_key_heads),
        ARCH,
        "linear_num_value_heads must be a multiple of linear_num_key_heads",
    )?;
    require(
        c.full_attention_interval > 0,
        ARCH,
        "full_attention_interval is 0",
    )?;
    require(
        c.num_experts == 0 || (1..=c.num_experts).contains(&c.num_experts_per_tok),
        ARCH,
        "num_experts_per_tok must be 1..=num_experts",
    )?;
    let h = Hybrid {
        model: "language_model.model.",
        head: (!c.tie_word_embeddings).then_some("language_model.lm_head"),
        layers: c.num_hidden_layers,
        vocab: c.vocab_size,
        attn: AttnDims {
            hidden: c.hidden_size,
            heads: c.num_attention_heads,
            kv_heads: c.num_key_value_heads,
            head_dim: c
                .head_dim
                .unwrap_or(c.hidden_size / c.num_attention_heads.max(1)),
        },
        full_attention_interval: c.full_attention_interval,
        gdn: Gdn {
            key_heads: c.linear_num_key_heads,
            value_heads: c.linear_num_value_heads,
            key_dim: c.linear_key_head_dim,
            value_dim: c.linear_value_head_dim,
            conv_kernel: c.linear_conv_kernel_dim,
            layout: GdnLayout::Split,
            a_log_f32: true,
        },
        experts: c.num_experts,
        moe_intermediate: c.moe_intermediate_size,
        shared_intermediate: c.shared_expert_intermediate_size,
        dense_intermediate: c.intermediate_size,
    };
    hybrid::plan(&h, plan, &|_| c.num_experts > 0);
    Ok(())
}
