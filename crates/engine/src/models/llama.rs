//! `llama` (Llama 2/3.x, and the many dense models built on it): GQA attention with optional
//! q/k/v/o biases, RoPE with `rope_scaling` (default, linear, llama3), dense SwiGLU MLP.
//! Also the loader for `qwen3` (dense), which adds per-head q/k RMSNorm.

use super::attention::AttnConfig;
use super::common::{
    attention, decoder_layer, dense, dense_mlp, model_trunk, rope_inv_freq, rope_mscale, Heads,
};
use super::transformer::{Mixer, Transformer};
use super::BuildContext;
use super::DecoderParts;
use crate::config::ModelConfig;
use crate::error::LoadError;
use crate::weights::WeightLoader;
use serde::Deserialize;

#[derive(Deserialize, Debug, Clone)]
pub struct LlamaConfig {
    pub hidden_size: usize,
    pub num_hidden_layers: usize,
    pub intermediate_size: usize,
    pub num_attention_heads: usize,
    pub num_key_value_heads: Option<usize>,
    pub head_dim: Option<usize>,
    #[serde(default = "default_eps")]
    pub rms_norm_eps: f32,
    pub vocab_size: usize,
    #[serde(default = "default_theta")]
    pub rope_theta: f32,
    #[serde(default)]
    pub rope_traditional: bool,
    #[serde(default)]
    pub rope_scaling: Option<serde_json::Value>,
    #[serde(default)]
    pub attention_bias: bool,
    #[serde(default)]
    pub mlp_bias: bool,
    #[serde(default = "default_tied")]
    pub tie_word_embeddings: bool,
    #[serde(default = "default_ctx")]
    pub max_position_embeddings: usize,
}

fn default_eps() -> f32 {
    1e-6
}
fn default_theta() -> f32 {
    10_000.0
}
fn default_tied() -> bool {
    true
}
fn default_ctx() -> usize {
    4096
}

pub fn load(
    cfg: &ModelConfig,
    w: &WeightLoader,
    ctx: &BuildContext,
) -> Result<Transformer, LoadError> {
    let c: LlamaConfig = cfg.parse()?;
    build(cfg, &c, false, w, ctx)
}

/// Builds a dense decoder; `qk_norm` adds Qwen3's per-head q/k RMSNorm.
pub fn build(
    cfg: &ModelConfig,
    c: &LlamaConfig,
    qk_norm: bool,
    w: &WeightLoader,
    ctx: &BuildContext,
) -> Result<Transformer, LoadError> {
    let heads = Heads::resolve(
        c.hidden_size,
        c.num_attention_heads,
        c.num_key_value_heads,
        c.head_dim,
    )?;
    let (n_kv, hd) = (heads.n_kv, heads.head_dim);
    let h = c.hidden_size;
    let trunk = model_trunk(w, c.vocab_size, h, c.tie_word_embeddings)?;
    let mut layers = Vec::with_capacity(c.num_hidden_layers);
    for i in 0..c.num_hidden_layers {
        let p = format!("model.layers.{i}");
        layers.push(decoder_layer(
            w,
            &p,
            h,
            Mixer::Attention(attention(w, &p, h, heads, qk_norm, c.attention_bias)?),
            dense(dense_mlp(
                w,
                &format!("{p}.mlp"),
                h,
                c.intermediate_size,
                c.mlp_bias,
            )?),
        )?);
    }
    ctx.assemble(
        cfg,
        DecoderParts {
            trunk,
            max_context: c.max_position_embeddings,
            layers,
            eps: c.rms_norm_eps,
            attn: AttnConfig::new(
                c.num_attention_heads,
                n_kv,
                hd,
                rope_inv_freq(hd, c.rope_theta, c.rope_scaling.as_ref())?,
                c.rope_traditional,
            )
            .with_rope_mscale(rope_mscale(c.rope_scaling.as_ref())),
        },
        w,
    )
}
