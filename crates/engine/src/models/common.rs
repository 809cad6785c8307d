//! Loading helpers shared by the architecture files: the standard attention block, the dense
//! SwiGLU MLP, the embedding/head pair and RoPE frequency schedules.

use super::attention::Attention;
use super::ffn::{DenseMlp, FeedForward};
use super::transformer::{Layer, Mixer};
use super::{LayerParts, Trunk};
use crate::error::LoadError;
use crate::experts::ExpertWeights;
use crate::weights::WeightLoader;
use serde_json::Value;

/// Attention head counts and size.
#[derive(Clone, Copy, Debug)]
pub struct Heads {
    pub n_heads: usize,
    pub n_kv: usize,
    pub head_dim: usize,
}

/// A decoder layer at `p`: its mixer and feed-forward block between the checkpoint's two
/// RMSNorms (`input_layernorm`, `post_attention_layernorm`), as every architecture here
/// names them.
pub fn decoder_layer(
    w: &WeightLoader,
    p: &str,
    h: usize,
    attn: Mixer,
    (ffn, experts): Ffn,
) -> Result<LayerParts, LoadError> {
    let layer = Layer {
        input_norm: w.vector(&format!("{p}.input_layernorm.weight"), h)?,
        attn,
        post_norm: w.vector(&format!("{p}.post_attention_layernorm.weight"), h)?,
        ffn,
    };
    Ok(LayerParts { layer, experts })
}

/// A layer's feed-forward block and, for a MoE block, its routed experts (which go to the
/// model's expert store).
pub type Ffn = (FeedForward, Option<Vec<ExpertWeights>>);

/// A dense feed-forward block (no routed experts).
pub fn dense(mlp: DenseMlp) -> Ffn {
    (FeedForward::Dense(Box::new(mlp)), None)
}

/// The standard attention block at `{prefix}.self_attn`.
pub fn attention(
    w: &WeightLoader,
    prefix: &str,
    hidden: usize,
    heads: Heads,
    qk_norm: bool,
    bias: bool,
) -> Result<Attention, LoadError> {
    let Heads {
        n_heads,
        n_kv,
        head_dim,
    } = heads;
    let p = |n: &str| format!("{prefix}.self_attn.{n}");
    Ok(Attention {
        q_proj: w.linear(&p("q_proj"), n_heads * head_dim, hidden, bias)?,
        k_proj: w.linear(&p("k_proj"), n_kv * head_dim, hidden, bias)?,
        v_proj: w.linear(&p("v_proj"), n_kv * head_dim, hidden, bias)?,
        o_proj: w.linear(&p("o_proj"), hidden, n_heads * head_dim, false)?,
        q_norm: if qk_norm {
            Some(w.vector(&p("q_norm.weight"), head_dim)?)
        } else {
            None
        },
        k_norm: if qk_norm {
            Some(w.vector(&p("k_norm.weight"), head_dim)?)
        } else {
            None
        },
        output_gate: false,
    })
}

pub fn dense_mlp(
    w: &WeightLoader,
    prefix: &str,
    hidden: usize,
    inter: usize,
    bias: bool,
) -> Result<DenseMlp, LoadError> {
    Ok(DenseMlp {
        gate_proj: w.linear(&format!("{prefix}.gate_proj"), inter, hidden, bias)?,
        up_proj: w.linear(&format!("{prefix}.up_proj"), inter, hidden, bias)?,
        down_proj: w.linear(&format!("{prefix}.down_proj"), hidden, inter, bias)?,
    })
}

/// [`trunk`] at the usual `model` / `lm_head`.
pub fn model_trunk(
    w: &WeightLoader,
    vocab: usize,
    hidden: usize,
    tied: bool,
) -> Result<Trunk, LoadError> {
    trunk(w, "model", "lm_head", vocab, hidden, tied)
}

/// The decoder's trunk at `root` (`model`, Qwen3.5's `language_model.model`): its
/// `embed_tokens`, final `norm` and the LM head `head` (`None` when `tied` to the
/// embedding), for a `vocab x hidden` model.
pub fn trunk(
    w: &WeightLoader,
    root: &str,
    head: &str,
    vocab: usize,
    hidden: usize,
    tied: bool,
) -> Result<Trunk, LoadError> {
    Ok(Trunk {
        embed: w.linear(&format!("{root}.embed_tokens"), vocab, hidden, false)?,
        norm: w.vector(&format!("{root}.norm.weight"), hidden)?,
        lm_head: match tied {
            true => None,
            false => Some(w.linear(head, vocab, hidden, false)?),
        },
    })
}

/// The YaRN rope types of mlx-lm's `initialize_rope` (one implementation, `YarnRoPE`).
const YARN: [&str; 3] = ["yarn", "deepseek_yarn", "telechat3-yarn"];

fn rope_type(s: &serde_json::Map<String, Value>) -> &str {
    s.get("rope_type")
        .or_else(|| s.get("type"))
        .and_then(Value::as_str)
        .unwrap_or("default")
}

/// The factor YaRN scales the rotated features of queries and keys by before rotating them
/// (mlx-lm's `YarnRoPE.mscale`: `m(factor, mscale) / m(factor, mscale_all_dim)` with
/// `m(s, k) = 0.1 k ln(s) + 1` for `s > 1`, else 1); 1 for every other rope type.
pub fn rope_mscale(scaling: Option<&Value>) -> f32 {
    let Some(Value::Object(s)) = scaling else {
        return 1.0;
    };
    if !YARN.contains(&rope_type(s)) {
        return 1.0;
    }
    let num = |k: &str, d: f64| s.get(k).and_then(Value::as_f64).unwrap_or(d);
    let factor = num("factor", 1.0);
    let m = |k: f64| {
        if factor <= 1.0 {
            1.0
        } else {
            0.1 * k * factor.ln() + 1.0
        }
    };
    (m(num("mscale", 1.0)) / m(num("mscale_all_dim", 0.0))) as f32
}

/// Inverse RoPE frequencies for `dims` rotated features, honouring `rope_scaling`
/// (`default`, `linear`, `llama3`, `yarn`), with the semantics of mlx-lm's
/// `initialize_rope`. YaRN also scales the rotated features: see [`rope_mscale`].
pub fn rope_inv_freq(
    dims: usize,
    base: f32,
    scaling: Option<&Value>,
) -> Result<Vec<f32>, LoadError> {
    let plain = moestream_kernels::rope::inv_freq(dims, base);
    let Some(Value::Object(s)) = scaling else {
        return Ok(plain);
    };
    let num = |k: &str, d: f64| s.get(k).and_then(Value::as_f64).unwrap_or(d);
    match rope_type(s) {
        kind if YARN.contains(&kind) => {
            // mlx-lm's YarnRoPE: periods base^(2i/dims) (f32) kept below the correction
            // range (high-frequency pairs), stretched by `factor` above it, a linear ramp
            // between; the range comes from beta_fast / beta_slow rotations over the
            // original context (f64, as Python computes it).
            let factor = num("factor", 1.0) as f32;
            let old_ctx = num("original_max_position_embeddings", 4096.0);
            let (fast, slow) = (num("beta_fast", 32.0), num("beta_slow", 1.0));
            let correction = |rotations: f64| {
                dims as f64 * (old_ctx / (rotations * 2.0 * std::f64::consts::PI)).ln()
                    / (2.0 * (base as f64).ln())
            };
            let low = correction(fast).floor().max(0.0) as f32;
            let mut high = correction(slow).ceil().min(dims as f64 - 1.0) as f32;
            if low == high {
                high += 0.001;
            }
            Ok((0..dims / 2)
                .map(|i| {
                    let extra = base.powf((2 * i) as f32 / dims as f32);
                    let inter = factor * extra;
                    let ramp = ((i as f32 - low) / (high - low)).clamp(0.0, 1.0);
                    let mask = 1.0 - ramp;
                    let period = (inter * extra) / (inter * mask + extra * (1.0 - mask));
                    1.0 / period
                })
                .collect())
        }
        "default" | "mrope" => Ok(plain),
        "linear" => {
            let factor = num("factor", 1.0) as f32;
            Ok(plain.iter().map(|f| f / factor).collect())
        }
        "llama3" => {
            // Periods p_i = base^(2i/dims); long wavelengths are stretched by `factor`, a
            // middle band is interpolated smoothly (Llama 3.1 rope scaling).
            let factor = num("factor", 1.0);
            let low = num("low_freq_factor", 1.0);
            let high = num("high_freq_factor", 4.0);
            let old_ctx = num("original_max_position_embeddings", 8192.0);
            let (low_wl, high_wl) = (old_ctx / low, old_ctx / high);
            Ok((0..dims / 2)
                .map(|i| {
                    let period = (base as f64).powf(2.0 * i as f64 / dims as f64);
                    let wavelen = 2.0 * std::f64::consts::PI * period;
                    let mut p = if wavelen > low_wl {
                        period * factor
                    } else {
                        period
                    };
                    if wavelen > high_wl && wavelen < low_wl {
                        let smooth = (old_ctx / wavelen - low) / (high - low);
                        p = period / ((1.0 - smooth) / factor + smooth);
                    }
                    (1.0 / p) as f32
                })
                .collect())
        }
        other => Err(LoadError::Config(format!(
            "rope_scaling type {other:?} is not supported yet"
        ))),
    }
}

impl Heads {
    /// Head counts from config fields, with the usual defaults (`num_key_value_heads` =
    /// `num_attention_heads`, `head_dim` = `hidden_size / num_attention_heads`), checked.
    pub fn resolve(
        hidden: usize,
        n_heads: usize,
        n_kv: Option<usize>,
        head_dim: Option<usize>,
    ) -> Result<Heads, LoadError> {
        let heads = Heads {
            n_heads,
            n_kv: n_kv.unwrap_or(n_heads),
            head_dim: head_dim.unwrap_or(hidden / n_heads.max(1)),
        };
        check_heads(hidden, heads)?;
        Ok(heads)
    }
}

/// Checks head counts and sizes shared by all attention configs.
fn check_heads(hidden: usize, heads: Heads) -> Result<(), LoadError> {
    let Heads {
        n_heads,
        n_kv,
        head_dim,
    } = heads;
    if hidden == 0 || n_heads == 0 || n_kv == 0 || head_dim == 0 {
        return Err(LoadError::Config(
            "hidden_size, head counts and head_dim must be positive".into(),
        ));
    }
    if !n_heads.is_multiple_of(n_kv) {
        return Err(LoadError::Config(format!(
            "num_attention_heads ({n_heads}) is not a multiple of num_key_value_heads ({n_kv})"
        )));
    }
    if !head_dim.is_multiple_of(2) {
        return Err(LoadError::Config(format!(
            "head_dim ({head_dim}) must be even for RoPE"
        )));
    }
    Ok(())
}

/// The router of a routed-expert block at `module` (`{module}.gate`) and its shape, checked.
pub fn moe_block(
    w: &WeightLoader,
    module: &str,
    hidden: usize,
    n_experts: usize,
    top_k: usize,
    expert_inter: usize,
    kind: moestream_kernels::router::RouterKind,
) -> Result<super::ffn::MoeBlock, LoadError> {
    check_top_k(n_experts, top_k)?;
    Ok(super::ffn::MoeBlock {
        router: w.linear(&format!("{module}.gate"), n_experts, hidden, false)?,
        kind,
        n_experts,
        top_k,
        expert_inter,
        shared: None,
        selection_bias: None,
    })
}

/// `1 <= num_experts_per_tok <= num_experts`.
pub fn check_top_k(n_experts: usize, top_k: usize) -> Result<(), LoadError> {
    if top_k == 0 || top_k > n_experts {
        return Err(LoadError::Config(format!(
            "num_experts_per_tok ({top_k}) must be between 1 and the number of experts ({n_experts})"
        )));
    }
    Ok(())
}
