//! `mixtral` (Mixtral-8x7B, 8x22B), after mlx-lm's `mixtral.py`.
//!
//! GQA attention without q/k norm or biases, `head_dim = hidden_size / num_attention_heads`
//! (a `head_dim` field is ignored, as in mlx-lm), plain RoPE (`rope_scaling` unused). Every
//! layer's feed-forward is `block_sparse_moe`: top-k on the **raw** router logits, softmax over
//! the k selected only. Hugging Face checkpoints store each expert as `experts.{e}.w1` (gate),
//! `w3` (up), `w2` (down); mlx-lm's sanitize stacks them into `switch_mlp.{gate,up,down}_proj`,
//! and both layouts load here (per-expert tensors stay views, nothing is copied).

use super::attention::AttnConfig;
use super::common::{attention, decoder_layer, model_trunk, moe_block, rope_inv_freq, Heads};
use super::ffn::FeedForward;
use super::transformer::{Mixer, Transformer};
use super::DecoderParts;
use super::{load_experts_named, BuildContext};
use crate::config::ModelConfig;
use crate::error::LoadError;
use crate::weights::WeightLoader;
use moestream_kernels::router::RouterKind;
use serde::Deserialize;

/// Field defaults are mlx-lm's `ModelArgs` defaults (Mixtral-8x7B).
#[derive(Deserialize, Debug, Clone)]
pub struct MixtralConfig {
    #[serde(default = "d_vocab")]
    pub vocab_size: usize,
    #[serde(default = "d_hidden")]
    pub hidden_size: usize,
    #[serde(default = "d_inter")]
    pub intermediate_size: usize,
    #[serde(default = "d_32")]
    pub num_hidden_layers: usize,
    #[serde(default = "d_32")]
    pub num_attention_heads: usize,
    #[serde(default = "d_2")]
    pub num_experts_per_tok: usize,
    /// mlx-lm defaults this to 8 (not to `num_attention_heads`) when the key is absent.
    #[serde(default = "d_8")]
    pub num_key_value_heads: usize,
    #[serde(default = "d_8")]
    pub num_local_experts: usize,
    #[serde(default = "d_eps")]
    pub rms_norm_eps: f32,
    #[serde(default = "d_theta")]
    pub rope_theta: f32,
    #[serde(default)]
    pub rope_traditional: bool,
    #[serde(default)]
    pub tie_word_embeddings: bool,
    pub max_position_embeddings: Option<usize>,
}

fn d_vocab() -> usize {
    32000
}
fn d_hidden() -> usize {
    4096
}
fn d_inter() -> usize {
    14336
}
fn d_32() -> usize {
    32
}
fn d_2() -> usize {
    2
}
fn d_8() -> usize {
    8
}
fn d_eps() -> f32 {
    1e-5
}
fn d_theta() -> f32 {
    1e6
}

/// Hugging Face names of an expert's `[gate, up, down]` projections.
const MIXTRAL_EXPERT_NAMES: [&str; 3] = ["w1", "w3", "w2"];

pub fn load(
    cfg: &ModelConfig,
    w: &WeightLoader,
    ctx: &BuildContext,
) -> Result<Transformer, LoadError> {
    let c: MixtralConfig = cfg.parse()?;
    let heads = Heads::resolve(
        c.hidden_size,
        c.num_attention_heads,
        Some(c.num_key_value_heads),
        None,
    )?;
    let (h, n_kv, hd) = (c.hidden_size, heads.n_kv, heads.head_dim);
    let (e, inter) = (c.num_local_experts, c.intermediate_size);
    let trunk = model_trunk(w, c.vocab_size, h, c.tie_word_embeddings)?;
    let mut layers = Vec::with_capacity(c.num_hidden_layers);
    for i in 0..c.num_hidden_layers {
        let p = format!("model.layers.{i}");
        let m = format!("{p}.block_sparse_moe");
        let block = moe_block(
            w,
            &m,
            h,
            e,
            c.num_experts_per_tok,
            inter,
            RouterKind::TopKSoftmax,
        )?;
        let ex = load_experts_named(w, &m, e, h, inter, MIXTRAL_EXPERT_NAMES)?;
        layers.push(decoder_layer(
            w,
            &p,
            h,
            Mixer::Attention(attention(w, &p, h, heads, false, false)?),
            (FeedForward::Moe(block), Some(ex)),
        )?);
    }
    ctx.assemble(
        cfg,
        DecoderParts {
            trunk,
            max_context: c.max_position_embeddings.unwrap_or(32768),
            layers,
            eps: c.rms_norm_eps,
            attn: AttnConfig::new(
                c.num_attention_heads,
                n_kv,
                hd,
                rope_inv_freq(hd, c.rope_theta, None)?,
                c.rope_traditional,
            ),
        },
        w,
    )
}
