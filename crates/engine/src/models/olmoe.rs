//! `olmoe` (OLMoE-1B-7B), after mlx-lm's `olmoe.py`.
//!
//! GQA attention whose q/k RMSNorms run over the **whole projection** (`[nh * hd]` and
//! `[nkv * hd]`, before the split into heads), RoPE over the full head (`rope_scaling`
//! honoured), optional biases on q/k/v/o. Every layer is MoE: softmax over all experts,
//! top-k, renormalised only when `norm_topk_prob`; no shared expert.

use super::attention::{Attention, AttnConfig};
use super::common::{decoder_layer, model_trunk, moe_block, rope_inv_freq, rope_mscale, Heads};
use super::ffn::FeedForward;
use super::transformer::{Mixer, Transformer};
use super::DecoderParts;
use super::{load_experts, BuildContext};
use crate::config::ModelConfig;
use crate::error::LoadError;
use crate::weights::WeightLoader;
use moestream_kernels::router::RouterKind;
use serde::Deserialize;

#[derive(Deserialize, Debug, Clone)]
pub struct OlmoeConfig {
    pub hidden_size: usize,
    pub num_hidden_layers: usize,
    /// Per-expert intermediate size.
    pub intermediate_size: usize,
    pub num_attention_heads: usize,
    pub rms_norm_eps: f32,
    pub vocab_size: usize,
    pub num_experts: usize,
    pub num_experts_per_tok: usize,
    #[serde(default)]
    pub norm_topk_prob: bool,
    pub head_dim: Option<usize>,
    pub max_position_embeddings: Option<usize>,
    pub num_key_value_heads: Option<usize>,
    #[serde(default)]
    pub attention_bias: bool,
    #[serde(default)]
    pub mlp_bias: bool,
    #[serde(default = "default_theta")]
    pub rope_theta: f32,
    #[serde(default)]
    pub rope_traditional: bool,
    #[serde(default)]
    pub rope_scaling: Option<serde_json::Value>,
    #[serde(default = "default_tied")]
    pub tie_word_embeddings: bool,
}

fn default_theta() -> f32 {
    10_000.0
}
fn default_tied() -> bool {
    true
}

pub fn load(
    cfg: &ModelConfig,
    w: &WeightLoader,
    ctx: &BuildContext,
) -> Result<Transformer, LoadError> {
    let c: OlmoeConfig = cfg.parse()?;
    let heads = Heads::resolve(
        c.hidden_size,
        c.num_attention_heads,
        c.num_key_value_heads,
        c.head_dim,
    )?;
    if c.mlp_bias {
        return Err(LoadError::Config(
            "olmoe: mlp_bias (biases on the routed experts) is not supported".into(),
        ));
    }
    let (h, nh, n_kv, hd) = (c.hidden_size, heads.n_heads, heads.n_kv, heads.head_dim);
    let trunk = model_trunk(w, c.vocab_size, h, c.tie_word_embeddings)?;
    let mut layers = Vec::with_capacity(c.num_hidden_layers);
    for i in 0..c.num_hidden_layers {
        let p = format!("model.layers.{i}");
        let a = |n: &str| format!("{p}.self_attn.{n}");
        let bias = c.attention_bias;
        let attn = Attention {
            q_proj: w.linear(&a("q_proj"), nh * hd, h, bias)?,
            k_proj: w.linear(&a("k_proj"), n_kv * hd, h, bias)?,
            v_proj: w.linear(&a("v_proj"), n_kv * hd, h, bias)?,
            o_proj: w.linear(&a("o_proj"), h, nh * hd, bias)?,
            // Norm weights as long as the projection: the norm spans all heads at once.
            q_norm: Some(w.vector(&a("q_norm.weight"), nh * hd)?),
            k_norm: Some(w.vector(&a("k_norm.weight"), n_kv * hd)?),
            output_gate: false,
        };
        let m = format!("{p}.mlp");
        let kind = RouterKind::SoftmaxTopK {
            norm_topk_prob: c.norm_topk_prob,
        };
        let block = moe_block(
            w,
            &m,
            h,
            c.num_experts,
            c.num_experts_per_tok,
            c.intermediate_size,
            kind,
        )?;
        let ex = load_experts(w, &m, c.num_experts, h, c.intermediate_size)?;
        layers.push(decoder_layer(
            w,
            &p,
            h,
            Mixer::Attention(attn),
            (FeedForward::Moe(block), Some(ex)),
        )?);
    }
    ctx.assemble(
        cfg,
        DecoderParts {
            trunk,
            max_context: c.max_position_embeddings.unwrap_or(4096),
            layers,
            eps: c.rms_norm_eps,
            attn: AttnConfig::new(
                nh,
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
