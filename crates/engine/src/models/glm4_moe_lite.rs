//! `glm4_moe_lite` (GLM-4.7-Flash), after mlx-lm's `mlx_lm/models/glm4_moe_lite.py`.
//!
//! Every layer's token mixer is multi-head latent attention ([`super::mla`]). Layer `i` is
//! MoE iff `n_routed_experts` is set, `i >= first_k_dense_replace` and
//! `i % moe_layer_freq == 0`, else a dense SwiGLU MLP (`intermediate_size`). The MoE router
//! (`noaux_tc`) takes sigmoid scores, selects on scores + `e_score_correction_bias` with
//! group top-k (`n_group` / `topk_group`), renormalises (`norm_topk_prob`, `+1e-20`) and
//! scales by `routed_scaling_factor`; `n_shared_experts` shared experts (one SwiGLU of
//! `moe_intermediate_size * n_shared_experts`) are added unscaled. The LM head is never tied
//! (mlx-lm always builds `lm_head`). Layers past `num_hidden_layers` (the MTP layer of the
//! released checkpoint) are not read, as mlx-lm's sanitize drops them.
//!
//! Not supported (clear errors): the Hugging Face `kv_b_proj` layout (mlx-lm's sanitize
//! splits it into `embed_q` / `unembed_out` at load; convert with `mlx_lm.convert` first),
//! and RoPE scaling types other than those of `common::rope_inv_freq`.

use super::attention::AttnConfig;
use super::common::{decoder_layer, model_trunk, rope_inv_freq, rope_mscale};
use super::glm_moe::{check_glm_router, glm_feed_forward, GlmRouter};
use super::mla::{Mla, MlaDims};
use super::transformer::{Mixer, Transformer};
use super::BuildContext;
use super::DecoderParts;
use crate::config::ModelConfig;
use crate::error::LoadError;
use crate::weights::WeightLoader;
use moestream_kernels::router::RouterKind;
use serde::Deserialize;
use serde_json::Value;

/// `ModelArgs` fields; defaults are mlx-lm's (GLM-4.7-Flash's sizes).
#[derive(Deserialize, Debug, Clone)]
pub struct Glm4MoeLiteConfig {
    #[serde(default = "d_vocab")]
    pub vocab_size: usize,
    #[serde(default = "d_hidden")]
    pub hidden_size: usize,
    #[serde(default = "d_inter")]
    pub intermediate_size: usize,
    #[serde(default = "d_moe_inter")]
    pub moe_intermediate_size: usize,
    #[serde(default = "d_layers")]
    pub num_hidden_layers: usize,
    #[serde(default = "d_heads")]
    pub num_attention_heads: usize,
    #[serde(default = "d_one")]
    pub n_shared_experts: Option<usize>,
    #[serde(default = "d_experts")]
    pub n_routed_experts: Option<usize>,
    #[serde(default = "d_scaling")]
    pub routed_scaling_factor: f32,
    #[serde(default = "d_rank")]
    pub kv_lora_rank: usize,
    #[serde(default = "d_q_rank")]
    pub q_lora_rank: Option<usize>,
    #[serde(default = "d_rope_dim")]
    pub qk_rope_head_dim: usize,
    #[serde(default = "d_nope_dim")]
    pub qk_nope_head_dim: usize,
    #[serde(default = "d_v_dim")]
    pub v_head_dim: usize,
    #[serde(default = "d_topk_method")]
    pub topk_method: String,
    #[serde(default = "d_scoring")]
    pub scoring_func: String,
    #[serde(default = "d_true")]
    pub norm_topk_prob: bool,
    #[serde(default = "d_one_usize")]
    pub n_group: usize,
    #[serde(default = "d_one_usize")]
    pub topk_group: usize,
    #[serde(default = "d_top_k")]
    pub num_experts_per_tok: usize,
    #[serde(default = "d_one_usize")]
    pub moe_layer_freq: usize,
    #[serde(default = "d_one_usize")]
    pub first_k_dense_replace: usize,
    #[serde(default = "d_ctx")]
    pub max_position_embeddings: usize,
    #[serde(default = "d_eps")]
    pub rms_norm_eps: f32,
    #[serde(default = "d_theta")]
    pub rope_theta: f32,
    #[serde(default)]
    pub rope_scaling: Option<Value>,
    #[serde(default)]
    pub attention_bias: bool,
}

fn d_vocab() -> usize {
    154880
}
fn d_hidden() -> usize {
    2048
}
fn d_inter() -> usize {
    10240
}
fn d_moe_inter() -> usize {
    1536
}
fn d_layers() -> usize {
    47
}
fn d_heads() -> usize {
    20
}
fn d_one() -> Option<usize> {
    Some(1)
}
fn d_experts() -> Option<usize> {
    Some(64)
}
fn d_scaling() -> f32 {
    1.8
}
fn d_rank() -> usize {
    512
}
fn d_q_rank() -> Option<usize> {
    Some(768)
}
fn d_rope_dim() -> usize {
    64
}
fn d_nope_dim() -> usize {
    192
}
fn d_v_dim() -> usize {
    256
}
fn d_topk_method() -> String {
    "noaux_tc".into()
}
fn d_scoring() -> String {
    "sigmoid".into()
}
fn d_true() -> bool {
    true
}
fn d_one_usize() -> usize {
    1
}
fn d_top_k() -> usize {
    4
}
fn d_ctx() -> usize {
    202752
}
fn d_eps() -> f32 {
    1e-5
}
fn d_theta() -> f32 {
    1_000_000.0
}

impl Glm4MoeLiteConfig {
    pub fn is_moe_layer(&self, i: usize) -> bool {
        self.n_routed_experts.is_some()
            && i >= self.first_k_dense_replace
            && i.is_multiple_of(self.moe_layer_freq)
    }

    /// Checks what mlx-lm would only find out as a shape error, an assertion or not at all.
    pub fn validate(&self) -> Result<MlaDims, LoadError> {
        let bad = |m: String| Err(LoadError::Config(format!("glm4_moe_lite: {m}")));
        let dims = MlaDims {
            n_heads: self.num_attention_heads,
            nope: self.qk_nope_head_dim,
            rope: self.qk_rope_head_dim,
            rank: self.kv_lora_rank,
            v_dim: self.v_head_dim,
        };
        if self.hidden_size == 0
            || dims.n_heads == 0
            || dims.nope == 0
            || dims.rope == 0
            || dims.rank == 0
            || dims.v_dim == 0
            || self.q_lora_rank == Some(0)
        {
            return bad(
                "hidden_size, num_attention_heads, qk_nope_head_dim, qk_rope_head_dim, \
                 kv_lora_rank, v_head_dim and q_lora_rank must be positive"
                    .into(),
            );
        }
        if !dims.rope.is_multiple_of(2) {
            return bad(format!(
                "qk_rope_head_dim ({}) must be even for RoPE",
                dims.rope
            ));
        }
        if self.moe_layer_freq == 0 {
            return bad("moe_layer_freq must be at least 1".into());
        }
        if let Some(e) = self.n_routed_experts {
            check_glm_router(
                "glm4_moe_lite",
                e,
                self.num_experts_per_tok,
                self.n_group,
                self.topk_group,
                &self.topk_method,
                &self.scoring_func,
            )?;
            if self.n_shared_experts == Some(0) {
                return bad("n_shared_experts must be positive or null".into());
            }
        }
        let any_dense = (0..self.num_hidden_layers).any(|i| !self.is_moe_layer(i));
        if any_dense && self.intermediate_size == 0 {
            return bad("a dense layer needs intermediate_size".into());
        }
        Ok(dims)
    }

    fn router_kind(&self) -> RouterKind {
        RouterKind::SigmoidTopK {
            norm_topk_prob: self.norm_topk_prob,
            routed_scaling: self.routed_scaling_factor,
            n_group: self.n_group,
            topk_group: self.topk_group,
        }
    }

    /// `(dn + dr)^-0.5`, times `s^2` with `s = 0.1 * mscale_all_dim * ln(factor) + 1` when
    /// `rope_scaling` sets `mscale_all_dim` and a `factor` above 1 (mlx-lm's rule).
    fn attention_scale(&self) -> f32 {
        let mut scale = ((self.qk_nope_head_dim + self.qk_rope_head_dim) as f32).powf(-0.5);
        if let Some(Value::Object(r)) = &self.rope_scaling {
            let mscale_all_dim = r.get("mscale_all_dim").and_then(Value::as_f64);
            let factor = r.get("factor").and_then(Value::as_f64).unwrap_or(1.0);
            if let Some(m) = mscale_all_dim.filter(|&m| m != 0.0) {
                if factor > 1.0 {
                    let s = (0.1 * m * factor.ln() + 1.0) as f32;
                    scale *= s * s;
                }
            }
        }
        scale
    }
}

pub fn load(
    cfg: &ModelConfig,
    w: &WeightLoader,
    ctx: &BuildContext,
) -> Result<Transformer, LoadError> {
    let c: Glm4MoeLiteConfig = cfg.parse()?;
    let dims = c.validate()?;
    if w.has("model.layers.0.self_attn.kv_b_proj") {
        return Err(LoadError::Config(
            "glm4_moe_lite: Hugging Face layout (self_attn.kv_b_proj) is not supported; \
             convert with mlx_lm.convert, which splits it into embed_q / unembed_out"
                .into(),
        ));
    }
    let h = c.hidden_size;
    let inv_freq = rope_inv_freq(dims.rope, c.rope_theta, c.rope_scaling.as_ref())?;
    let scale = c.attention_scale();
    let trunk = model_trunk(w, c.vocab_size, h, false)?;
    let router = GlmRouter {
        n_experts: c.n_routed_experts.unwrap_or(0),
        top_k: c.num_experts_per_tok,
        expert_inter: c.moe_intermediate_size,
        n_shared: c.n_shared_experts,
        kind: c.router_kind(),
    };
    let mut layers = Vec::with_capacity(c.num_hidden_layers);
    for i in 0..c.num_hidden_layers {
        let p = format!("model.layers.{i}");
        let attn = Mla::load(
            w,
            &p,
            h,
            dims,
            c.q_lora_rank,
            c.attention_bias,
            (inv_freq.clone(), rope_mscale(c.rope_scaling.as_ref())),
            scale,
            c.rms_norm_eps,
        )?;
        let ffn = glm_feed_forward(
            w,
            &format!("{p}.mlp"),
            h,
            c.is_moe_layer(i).then_some(&router),
            c.intermediate_size,
        )?;
        layers.push(decoder_layer(w, &p, h, Mixer::Mla(Box::new(attn)), ffn)?);
    }
    ctx.assemble(
        cfg,
        DecoderParts {
            trunk,
            max_context: c.max_position_embeddings,
            layers,
            eps: c.rms_norm_eps,
            // Unused by MLA layers (they carry their own shapes); kept consistent.
            attn: AttnConfig::new(dims.n_heads, 1, dims.nope + dims.rope, inv_freq, true),
        },
        w,
    )
}
