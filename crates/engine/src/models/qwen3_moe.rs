//! `qwen3_moe`: Qwen3-30B-A3B, Qwen3-235B-A22B, Qwen3-Coder-30B-A3B.
//!
//! GQA attention with per-head q/k RMSNorm and full-head RoPE (`rope_scaling` is ignored, as
//! in mlx-lm); layer `i` is MoE iff `i` is not in `mlp_only_layers`, `num_experts > 0` and
//! `(i + 1) % decoder_sparse_step == 0`, else a dense SwiGLU MLP. The router is a softmax over
//! all experts, top-k, renormalised when `norm_topk_prob`. No shared expert.

use super::attention::AttnConfig;
use super::common::{
    attention, decoder_layer, dense, dense_mlp, model_trunk, rope_inv_freq, Heads,
};
use super::ffn::{FeedForward, MoeBlock};
use super::transformer::{Mixer, Transformer};
use super::BuildContext;
use super::DecoderParts;
use crate::config::ModelConfig;
use crate::error::LoadError;
use crate::weights::WeightLoader;
use moestream_kernels::router::RouterKind;
use serde::Deserialize;

#[derive(Deserialize, Debug, Clone)]
pub struct Qwen3MoeConfig {
    pub hidden_size: usize,
    pub num_hidden_layers: usize,
    #[serde(default)]
    pub intermediate_size: usize,
    pub num_attention_heads: usize,
    pub num_key_value_heads: Option<usize>,
    pub head_dim: Option<usize>,
    pub num_experts: usize,
    pub num_experts_per_tok: usize,
    #[serde(default = "one")]
    pub decoder_sparse_step: usize,
    #[serde(default)]
    pub mlp_only_layers: Vec<usize>,
    pub moe_intermediate_size: usize,
    #[serde(default = "default_eps")]
    pub rms_norm_eps: f32,
    pub vocab_size: usize,
    #[serde(default = "default_theta")]
    pub rope_theta: f32,
    #[serde(default)]
    pub tie_word_embeddings: bool,
    #[serde(default = "default_ctx")]
    pub max_position_embeddings: usize,
    #[serde(default)]
    pub norm_topk_prob: bool,
}

fn one() -> usize {
    1
}
fn default_eps() -> f32 {
    1e-6
}
fn default_theta() -> f32 {
    1_000_000.0
}
fn default_ctx() -> usize {
    40960
}

impl Qwen3MoeConfig {
    pub fn is_moe_layer(&self, i: usize) -> bool {
        !self.mlp_only_layers.contains(&i)
            && self.num_experts > 0
            && (i + 1).is_multiple_of(self.decoder_sparse_step)
    }

    fn validate(&self) -> Result<Heads, LoadError> {
        let heads = Heads::resolve(
            self.hidden_size,
            self.num_attention_heads,
            self.num_key_value_heads,
            self.head_dim,
        )?;
        if self.decoder_sparse_step == 0 {
            return Err(LoadError::Config(
                "decoder_sparse_step must be at least 1".into(),
            ));
        }
        if self.num_experts > 0
            && (self.num_experts_per_tok == 0 || self.num_experts_per_tok > self.num_experts)
        {
            return Err(LoadError::Config(format!(
                "num_experts_per_tok ({}) must be between 1 and num_experts ({})",
                self.num_experts_per_tok, self.num_experts
            )));
        }
        let any_dense = (0..self.num_hidden_layers).any(|i| !self.is_moe_layer(i));
        if any_dense && self.intermediate_size == 0 {
            return Err(LoadError::Config(
                "a dense layer needs intermediate_size".into(),
            ));
        }
        Ok(heads)
    }
}

pub fn load(
    cfg: &ModelConfig,
    w: &WeightLoader,
    ctx: &BuildContext,
) -> Result<Transformer, LoadError> {
    let c: Qwen3MoeConfig = cfg.parse()?;
    let heads = c.validate()?;
    let (n_kv, hd) = (heads.n_kv, heads.head_dim);
    let h = c.hidden_size;
    let trunk = model_trunk(w, c.vocab_size, h, c.tie_word_embeddings)?;
    let mut layers = Vec::with_capacity(c.num_hidden_layers);
    for i in 0..c.num_hidden_layers {
        let p = format!("model.layers.{i}");
        let ffn = if c.is_moe_layer(i) {
            let m = format!("{p}.mlp");
            let router = w.linear(&format!("{m}.gate"), c.num_experts, h, false)?;
            let ex = super::load_experts(w, &m, c.num_experts, h, c.moe_intermediate_size)?;
            let block = MoeBlock {
                router,
                kind: RouterKind::SoftmaxTopK {
                    norm_topk_prob: c.norm_topk_prob,
                },
                n_experts: c.num_experts,
                top_k: c.num_experts_per_tok,
                expert_inter: c.moe_intermediate_size,
                shared: None,
                selection_bias: None,
            };
            (FeedForward::Moe(block), Some(ex))
        } else {
            dense(dense_mlp(
                w,
                &format!("{p}.mlp"),
                h,
                c.intermediate_size,
                false,
            )?)
        };
        layers.push(decoder_layer(
            w,
            &p,
            h,
            Mixer::Attention(attention(w, &p, h, heads, true, false)?),
            ffn,
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
                rope_inv_freq(hd, c.rope_theta, None)?,
                false,
            ),
        },
        w,
    )
}
