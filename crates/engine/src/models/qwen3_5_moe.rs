//! `qwen3_5_moe` (Qwen3.5 / Qwen3.6 MoE text models), after mlx-lm's `qwen3_5.py` +
//! `qwen3_5_moe.py`: the Qwen3-Next hybrid ([`super::qwen3_next`]) with
//! * the text fields under `text_config` (merged over the top level by [`ModelConfig`]) and
//!   the weights under `language_model.` (`language_model.model.*`, `language_model.lm_head`);
//! * Gated DeltaNet input projections split into `in_proj_qkv`, `in_proj_z`, `in_proj_b`,
//!   `in_proj_a`;
//! * `rope_theta` / `partial_rotary_factor` read from `rope_parameters` (defaults 1e5 / 0.25;
//!   `default` and `mrope` types are plain RoPE for text);
//! * the shared-expert MoE on **every** layer when `num_experts > 0` (`decoder_sparse_step`,
//!   `mlp_only_layers` and `layer_types` are ignored, as in mlx-lm).
//!
//! One deliberate difference: mlx-lm gives the `linear_*` head fields Qwen3-Next-like
//! defaults; a config without them is rejected here rather than loaded with guessed sizes.

use super::qwen3_next::{build, Layout, Qwen3NextConfig};
use super::transformer::Transformer;
use super::BuildContext;
use crate::config::ModelConfig;
use crate::error::LoadError;
use crate::weights::WeightLoader;
use serde::Deserialize;
use serde_json::Value;

/// `TextModelArgs` fields; defaults are mlx-lm's.
#[derive(Deserialize, Debug, Clone)]
struct Qwen35Config {
    hidden_size: usize,
    #[serde(default = "d_inter")]
    intermediate_size: usize,
    num_hidden_layers: usize,
    num_attention_heads: usize,
    #[serde(default = "d_eps")]
    rms_norm_eps: f32,
    vocab_size: usize,
    #[serde(default = "d_kv")]
    num_key_value_heads: usize,
    #[serde(default = "d_ctx")]
    max_position_embeddings: usize,
    linear_num_value_heads: usize,
    linear_num_key_heads: usize,
    linear_key_head_dim: usize,
    linear_value_head_dim: usize,
    #[serde(default = "d_conv")]
    linear_conv_kernel_dim: usize,
    #[serde(default)]
    tie_word_embeddings: bool,
    #[serde(default)]
    attention_bias: bool,
    head_dim: Option<usize>,
    #[serde(default = "d_conv")]
    full_attention_interval: usize,
    #[serde(default)]
    num_experts: usize,
    #[serde(default)]
    num_experts_per_tok: usize,
    #[serde(default)]
    shared_expert_intermediate_size: usize,
    #[serde(default)]
    moe_intermediate_size: usize,
    #[serde(default = "d_true")]
    norm_topk_prob: bool,
    rope_parameters: Option<Value>,
}

fn d_inter() -> usize {
    14336
}
fn d_eps() -> f32 {
    1e-6
}
fn d_kv() -> usize {
    8
}
fn d_ctx() -> usize {
    131072
}
fn d_conv() -> usize {
    4
}
fn d_true() -> bool {
    true
}

pub fn load(
    cfg: &ModelConfig,
    w: &WeightLoader,
    ctx: &BuildContext,
) -> Result<Transformer, LoadError> {
    let t: Qwen35Config = cfg.parse()?;
    let rope = t.rope_parameters.clone().unwrap_or_else(|| {
        serde_json::json!({"type": "default", "rope_theta": 100000.0, "partial_rotary_factor": 0.25})
    });
    let num = |k: &str, d: f64| rope.get(k).and_then(Value::as_f64).unwrap_or(d);
    let c = Qwen3NextConfig {
        hidden_size: t.hidden_size,
        num_hidden_layers: t.num_hidden_layers,
        intermediate_size: t.intermediate_size,
        num_attention_heads: t.num_attention_heads,
        linear_num_value_heads: t.linear_num_value_heads,
        linear_num_key_heads: t.linear_num_key_heads,
        linear_key_head_dim: t.linear_key_head_dim,
        linear_value_head_dim: t.linear_value_head_dim,
        linear_conv_kernel_dim: t.linear_conv_kernel_dim,
        num_experts: t.num_experts,
        num_experts_per_tok: t.num_experts_per_tok,
        decoder_sparse_step: 1,
        shared_expert_intermediate_size: t.shared_expert_intermediate_size,
        mlp_only_layers: Vec::new(),
        moe_intermediate_size: t.moe_intermediate_size,
        rms_norm_eps: t.rms_norm_eps,
        vocab_size: t.vocab_size,
        num_key_value_heads: t.num_key_value_heads,
        rope_theta: num("rope_theta", 100000.0) as f32,
        partial_rotary_factor: num("partial_rotary_factor", 0.25) as f32,
        max_position_embeddings: t.max_position_embeddings,
        head_dim: t
            .head_dim
            .unwrap_or(t.hidden_size / t.num_attention_heads.max(1)),
        norm_topk_prob: t.norm_topk_prob,
        tie_word_embeddings: t.tie_word_embeddings,
        attention_bias: t.attention_bias,
        rope_scaling: Some(rope),
        full_attention_interval: t.full_attention_interval,
    };
    let layout = Layout {
        model: "language_model.model",
        lm_head: "language_model.lm_head",
        fused_projections: false,
    };
    build(cfg, &c, &layout, w, ctx)
}
