//! `glm4_moe` (GLM-4.5 / GLM-4.6), after mlx-lm's `mlx_lm/models/glm4_moe.py`.
//!
//! Standard GQA attention: optional per-head q/k RMSNorm (`use_qk_norm`), biases on q/k/v
//! when `attention_bias` (never on `o_proj`), RoPE on the first
//! `int(head_dim * partial_rotary_factor)` features (non-traditional; `rope_scaling` is
//! ignored, as in mlx-lm), scale `head_dim^-0.5`. Layer `i` is MoE iff `n_routed_experts` is
//! set and `i >= first_k_dense_replace`; the MoE block is GLM's ([`super::glm_moe`]). mlx-lm
//! renormalises the top-k weights without the `+1e-20` that `glm4_moe_lite` adds; in f32 the
//! two agree unless the selected scores sum below ~1e-13. The LM head is never tied.
//! Every field is required, as in mlx-lm's `ModelArgs`.

use super::attention::AttnConfig;
use super::common::{attention, decoder_layer, model_trunk, rope_inv_freq, Heads};
use super::glm_moe::{check_glm_router, glm_feed_forward, GlmRouter};
use super::transformer::{Mixer, Transformer};
use super::{BuildContext, DecoderParts};
use crate::config::ModelConfig;
use crate::error::LoadError;
use crate::weights::WeightLoader;
use moestream_kernels::router::RouterKind;
use serde::Deserialize;

#[derive(Deserialize, Debug, Clone)]
pub struct Glm4MoeConfig {
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub max_position_embeddings: usize,
    pub moe_intermediate_size: usize,
    pub norm_topk_prob: bool,
    pub num_attention_heads: usize,
    pub n_group: usize,
    pub head_dim: usize,
    pub topk_group: usize,
    pub n_shared_experts: Option<usize>,
    pub n_routed_experts: Option<usize>,
    pub routed_scaling_factor: f32,
    pub num_experts_per_tok: usize,
    pub first_k_dense_replace: usize,
    pub num_hidden_layers: usize,
    pub num_key_value_heads: usize,
    pub rms_norm_eps: f32,
    pub rope_theta: f32,
    pub use_qk_norm: bool,
    pub attention_bias: bool,
    pub partial_rotary_factor: f32,
    #[serde(default = "sigmoid")]
    pub scoring_func: String,
    #[serde(default = "noaux_tc")]
    pub topk_method: String,
}

fn sigmoid() -> String {
    "sigmoid".into()
}
fn noaux_tc() -> String {
    "noaux_tc".into()
}

pub fn load(
    cfg: &ModelConfig,
    w: &WeightLoader,
    ctx: &BuildContext,
) -> Result<Transformer, LoadError> {
    let c: Glm4MoeConfig = cfg.parse()?;
    let heads = Heads::resolve(
        c.hidden_size,
        c.num_attention_heads,
        Some(c.num_key_value_heads),
        Some(c.head_dim),
    )?;
    // mlx-lm: int(head_dim * partial_rotary_factor).
    let rot = (c.head_dim as f32 * c.partial_rotary_factor) as usize;
    if !(0.0..=1.0).contains(&c.partial_rotary_factor) || !rot.is_multiple_of(2) {
        return Err(LoadError::Config(format!(
            "glm4_moe: partial_rotary_factor {} of head_dim {} gives {rot} rotated features \
             (must be even and at most head_dim)",
            c.partial_rotary_factor, c.head_dim
        )));
    }
    if let Some(e) = c.n_routed_experts {
        check_glm_router(
            "glm4_moe",
            e,
            c.num_experts_per_tok,
            c.n_group,
            c.topk_group,
            &c.topk_method,
            &c.scoring_func,
        )?;
    }
    let h = c.hidden_size;
    let trunk = model_trunk(w, c.vocab_size, h, false)?;
    let router = GlmRouter {
        n_experts: c.n_routed_experts.unwrap_or(0),
        top_k: c.num_experts_per_tok,
        expert_inter: c.moe_intermediate_size,
        n_shared: c.n_shared_experts,
        kind: RouterKind::SigmoidTopK {
            norm_topk_prob: c.norm_topk_prob,
            routed_scaling: c.routed_scaling_factor,
            n_group: c.n_group,
            topk_group: c.topk_group,
        },
    };
    let mut layers = Vec::with_capacity(c.num_hidden_layers);
    for i in 0..c.num_hidden_layers {
        let p = format!("model.layers.{i}");
        let attn = attention(w, &p, h, heads, c.use_qk_norm, c.attention_bias)?;
        let moe = c.n_routed_experts.is_some() && i >= c.first_k_dense_replace;
        let ffn = glm_feed_forward(
            w,
            &format!("{p}.mlp"),
            h,
            moe.then_some(&router),
            c.intermediate_size,
        )?;
        layers.push(decoder_layer(w, &p, h, Mixer::Attention(attn), ffn)?);
    }
    ctx.assemble(
        cfg,
        DecoderParts {
            trunk,
            max_context: c.max_position_embeddings,
            layers,
            eps: c.rms_norm_eps,
            attn: AttnConfig::new(
                heads.n_heads,
                heads.n_kv,
                heads.head_dim,
                rope_inv_freq(rot, c.rope_theta, None)?,
                false,
            ),
        },
        w,
    )
}
