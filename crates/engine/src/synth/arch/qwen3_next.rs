//! `qwen3_next` tensors (Qwen3-Next-80B-A3B): the hybrid layout with fused GDN projections.

use super::common::AttnDims;
use super::common::{parse, require};
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
    head_dim: usize,
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
    #[serde(default = "one")]
    decoder_sparse_step: usize,
    #[serde(default)]
    shared_expert_intermediate_size: usize,
    #[serde(default)]
    mlp_only_layers: Vec<usize>,
    #[serde(default)]
    moe_intermediate_size: usize,
    vocab_size: usize,
    #[serde(default)]
    tie_word_embeddings: bool,
    #[serde(default = "four")]
    full_attention_interval: usize,
}

fn one() -> usize {
    1
}
fn four() -> usize {
    4
}

pub fn plan(cfg: &Value, plan: &mut Plan) -> Result<(), SynthError> {
    const ARCH: &str = "qwen3_next";
    let c: Cfg = parse(cfg, ARCH)?;
    check(&c)?;
    let h = Hybrid {
        model: "model.",
        head: (!c.tie_word_embeddings).then_some("lm_head"),
        layers: c.num_hidden_layers,
        vocab: c.vocab_size,
        attn: AttnDims {
            hidden: c.hidden_size,
            heads: c.num_attention_heads,
            kv_heads: c.num_key_value_heads,
            head_dim: c.head_dim,
        },
        full_attention_interval: c.full_attention_interval,
        gdn: Gdn {
            key_heads: c.linear_num_key_heads,
            value_heads: c.linear_num_value_heads,
            key_dim: c.linear_key_head_dim,
            value_dim: c.linear_value_head_dim,
            conv_kernel: c.linear_conv_kernel_dim,
            layout: GdnLayout::Fused,
            a_log_f32: false,
        },
        experts: c.num_experts,
        moe_intermediate: c.moe_intermediate_size,
        shared_intermediate: c.shared_expert_intermediate_size,
        dense_intermediate: c.intermediate_size,
    };
    let is_moe = |i: usize| {
        !c.mlp_only_layers.contains(&i)
            && c.num_experts > 0
            && (i + 1).is_multiple_of(c.decoder_sparse_step)
    };
    hybrid::plan(&h, plan, &is_moe);
    Ok(())
}

fn check(c: &Cfg) -> Result<(), SynthError> {
    const ARCH: &str = "qwen3_next";
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
        c.full_attention_interval > 0 && c.decoder_sparse_step > 0,
        ARCH,
        "full_attention_interval and decoder_sparse_step must be positive",
    )?;
    require(
        c.num_experts == 0 || (1..=c.num_experts).contains(&c.num_experts_per_tok),
        ARCH,
        "num_experts_per_tok must be 1..=num_experts",
    )
}
