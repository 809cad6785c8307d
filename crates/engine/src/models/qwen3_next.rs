//! `qwen3_next` (Qwen3-Next-80B-A3B, Qwen3-Coder-Next), after mlx-lm's `qwen3_next.py`; also
//! the builder behind `qwen3_5_moe` (see that file for what differs).
//!
//! A hybrid: layer `i` is a Gated DeltaNet ([`super::delta_net`]) iff
//! `(i + 1) % full_attention_interval != 0`, else gated full attention: `q_proj` yields
//! `[q | gate]` per head, q/k get per-head RMSNorm, RoPE turns only the first
//! `head_dim * partial_rotary_factor` features (`rope_scaling` honoured), the SDPA scale uses
//! the full head_dim, and the output is multiplied by `sigmoid(gate)` before `o_proj`.
//! Feed-forward: MoE iff `i` is not in `mlp_only_layers`, `num_experts > 0` and
//! `(i + 1) % decoder_sparse_step == 0` (softmax router, top-k, optional renormalisation,
//! plus a shared SwiGLU expert scaled by `sigmoid(shared_expert_gate(x))`), else a dense MLP.

use super::attention::{Attention, AttnConfig};
use super::common::{
    check_top_k, decoder_layer, dense, dense_mlp, rope_inv_freq, rope_mscale, trunk, Heads,
};
use super::delta_net::DeltaNet;
use super::ffn::{FeedForward, MoeBlock, SharedExpert};
use super::transformer::{Mixer, Transformer};
use super::DecoderParts;
use super::{load_experts, BuildContext};
use crate::config::ModelConfig;
use crate::error::LoadError;
use crate::weights::WeightLoader;
use moestream_kernels::delta::DeltaShape;
use moestream_kernels::router::RouterKind;
use serde::Deserialize;

/// config.json fields; those without a default are required, as in mlx-lm's `ModelArgs`.
#[derive(Deserialize, Debug, Clone)]
pub struct Qwen3NextConfig {
    pub hidden_size: usize,
    pub num_hidden_layers: usize,
    pub intermediate_size: usize,
    pub num_attention_heads: usize,
    pub linear_num_value_heads: usize,
    pub linear_num_key_heads: usize,
    pub linear_key_head_dim: usize,
    pub linear_value_head_dim: usize,
    pub linear_conv_kernel_dim: usize,
    pub num_experts: usize,
    pub num_experts_per_tok: usize,
    pub decoder_sparse_step: usize,
    pub shared_expert_intermediate_size: usize,
    pub mlp_only_layers: Vec<usize>,
    pub moe_intermediate_size: usize,
    pub rms_norm_eps: f32,
    pub vocab_size: usize,
    pub num_key_value_heads: usize,
    pub rope_theta: f32,
    pub partial_rotary_factor: f32,
    pub max_position_embeddings: usize,
    pub head_dim: usize,
    #[serde(default)]
    pub norm_topk_prob: bool,
    #[serde(default)]
    pub tie_word_embeddings: bool,
    #[serde(default)]
    pub attention_bias: bool,
    #[serde(default)]
    pub rope_scaling: Option<serde_json::Value>,
    #[serde(default = "four")]
    pub full_attention_interval: usize,
}

fn four() -> usize {
    4
}

/// Where the weights live and which GDN projection layout they use.
pub struct Layout {
    /// Prefix of the decoder (`model` or `language_model.model`).
    pub model: &'static str,
    /// The untied LM head (`lm_head` or `language_model.lm_head`).
    pub lm_head: &'static str,
    /// qwen3_next's fused `in_proj_qkvz` / `in_proj_ba` (else qwen3_5's split projections).
    pub fused_projections: bool,
}

impl Qwen3NextConfig {
    pub fn is_linear_layer(&self, i: usize) -> bool {
        !(i + 1).is_multiple_of(self.full_attention_interval)
    }

    pub fn is_moe_layer(&self, i: usize) -> bool {
        !self.mlp_only_layers.contains(&i)
            && self.num_experts > 0
            && (i + 1).is_multiple_of(self.decoder_sparse_step)
    }

    /// Checks what mlx-lm would only find out as a shape error (or not at all).
    pub fn validate(&self) -> Result<(Heads, DeltaShape, usize), LoadError> {
        let bad = |m: String| Err(LoadError::Config(m));
        let heads = Heads::resolve(
            self.hidden_size,
            self.num_attention_heads,
            Some(self.num_key_value_heads),
            Some(self.head_dim),
        )?;
        let shape = DeltaShape {
            hk: self.linear_num_key_heads,
            dk: self.linear_key_head_dim,
            hv: self.linear_num_value_heads,
            dv: self.linear_value_head_dim,
        };
        if shape.hk == 0 || shape.dk == 0 || shape.hv == 0 || shape.dv == 0 {
            return bad(
                "linear_num_key_heads, linear_num_value_heads, linear_key_head_dim \
                 and linear_value_head_dim must be positive"
                    .into(),
            );
        }
        if !shape.hv.is_multiple_of(shape.hk) {
            return bad(format!(
                "linear_num_value_heads ({}) is not a multiple of linear_num_key_heads ({})",
                shape.hv, shape.hk
            ));
        }
        if self.linear_conv_kernel_dim == 0 {
            return bad("linear_conv_kernel_dim must be at least 1".into());
        }
        if self.full_attention_interval == 0 || self.decoder_sparse_step == 0 {
            return bad(
                "full_attention_interval and decoder_sparse_step must be at least 1".into(),
            );
        }
        // mlx-lm: int(head_dim * partial_rotary_factor).
        let rot = (self.head_dim as f32 * self.partial_rotary_factor) as usize;
        if !(0.0..=1.0).contains(&self.partial_rotary_factor) || !rot.is_multiple_of(2) {
            return bad(format!(
                "partial_rotary_factor {} of head_dim {} gives {rot} rotated features \
                 (must be even and at most head_dim)",
                self.partial_rotary_factor, self.head_dim
            ));
        }
        if self.num_experts > 0 {
            check_top_k(self.num_experts, self.num_experts_per_tok)?;
        }
        let any_dense = (0..self.num_hidden_layers).any(|i| !self.is_moe_layer(i));
        if any_dense && self.intermediate_size == 0 {
            return bad("a dense layer needs intermediate_size".into());
        }
        Ok((heads, shape, rot))
    }
}

pub fn load(
    cfg: &ModelConfig,
    w: &WeightLoader,
    ctx: &BuildContext,
) -> Result<Transformer, LoadError> {
    let c: Qwen3NextConfig = cfg.parse()?;
    let layout = Layout {
        model: "model",
        lm_head: "lm_head",
        fused_projections: true,
    };
    build(cfg, &c, &layout, w, ctx)
}

/// Builds a Qwen3-Next-style hybrid from a parsed config.
pub fn build(
    cfg: &ModelConfig,
    c: &Qwen3NextConfig,
    layout: &Layout,
    w: &WeightLoader,
    ctx: &BuildContext,
) -> Result<Transformer, LoadError> {
    let (heads, shape, rot) = c.validate()?;
    let (h, nh, n_kv, hd) = (c.hidden_size, heads.n_heads, heads.n_kv, heads.head_dim);
    let root = layout.model;
    let trunk = trunk(
        w,
        root,
        layout.lm_head,
        c.vocab_size,
        h,
        c.tie_word_embeddings,
    )?;
    let mut layers = Vec::with_capacity(c.num_hidden_layers);
    for i in 0..c.num_hidden_layers {
        let p = format!("{root}.layers.{i}");
        let attn = if c.is_linear_layer(i) {
            let kernel = c.linear_conv_kernel_dim;
            let fused = layout.fused_projections;
            Mixer::DeltaNet(Box::new(DeltaNet::load(
                w,
                &p,
                h,
                shape,
                kernel,
                c.rms_norm_eps,
                fused,
            )?))
        } else {
            let a = |n: &str| format!("{p}.self_attn.{n}");
            let bias = c.attention_bias;
            Mixer::Attention(Attention {
                q_proj: w.linear(&a("q_proj"), 2 * nh * hd, h, bias)?,
                k_proj: w.linear(&a("k_proj"), n_kv * hd, h, bias)?,
                v_proj: w.linear(&a("v_proj"), n_kv * hd, h, bias)?,
                o_proj: w.linear(&a("o_proj"), h, nh * hd, bias)?,
                q_norm: Some(w.vector(&a("q_norm.weight"), hd)?),
                k_norm: Some(w.vector(&a("k_norm.weight"), hd)?),
                output_gate: true,
            })
        };
        let m = format!("{p}.mlp");
        let ffn = if c.is_moe_layer(i) {
            let (e, im, is) = (
                c.num_experts,
                c.moe_intermediate_size,
                c.shared_expert_intermediate_size,
            );
            let shared = SharedExpert {
                mlp: dense_mlp(w, &format!("{m}.shared_expert"), h, is, false)?,
                gate: Some(w.linear(&format!("{m}.shared_expert_gate"), 1, h, false)?),
            };
            let block = MoeBlock {
                router: w.linear(&format!("{m}.gate"), e, h, false)?,
                kind: RouterKind::SoftmaxTopK {
                    norm_topk_prob: c.norm_topk_prob,
                },
                n_experts: e,
                top_k: c.num_experts_per_tok,
                expert_inter: im,
                shared: Some(shared),
                selection_bias: None,
            };
            (
                FeedForward::Moe(block),
                Some(load_experts(w, &m, e, h, im)?),
            )
        } else {
            let mlp = dense_mlp(w, &m, h, c.intermediate_size, false)?;
            dense(mlp)
        };
        layers.push(decoder_layer(w, &p, h, attn, ffn)?);
    }
    ctx.assemble(
        cfg,
        DecoderParts {
            trunk,
            max_context: c.max_position_embeddings,
            layers,
            eps: c.rms_norm_eps,
            attn: AttnConfig::new(
                nh,
                n_kv,
                hd,
                rope_inv_freq(rot, c.rope_theta, c.rope_scaling.as_ref())?,
                false,
            )
            .with_rope_mscale(rope_mscale(c.rope_scaling.as_ref())),
        },
        w,
    )
}
