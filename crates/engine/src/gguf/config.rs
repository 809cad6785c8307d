//! The `config.json` (as the architecture's loader reads it) that a GGUF file's metadata
//! stands for.
//!
//! Keys: llama.cpp `src/llama-arch.cpp` (`LLM_KV_*`), read in `llama_model_base::load_hparams`
//! (`src/llama-model.cpp`) and each architecture's `load_arch_hparams`
//! (`src/models/<arch>.cpp`); which HF field each comes from: `convert_hf_to_gguf.py`'s
//! `set_gguf_parameters` methods. Settings llama.cpp hard-codes instead of reading (whether
//! qwen3moe renormalises its top-k weights, Qwen3-Next's always-renormalised router) are the
//! arguments of each architecture's `build_moe_ffn` call.

use super::arch::Arch;
use moestream_gguf::{Gguf, GgufError};
use serde_json::{json, Map, Value};

/// Reads `{arch}.{key}` metadata.
struct Meta<'a> {
    g: &'a Gguf,
    arch: &'static str,
}

impl Meta<'_> {
    fn key(&self, k: &str) -> String {
        format!("{}.{k}", self.arch)
    }
    fn u64(&self, k: &str) -> Result<u64, GgufError> {
        self.g.require_u64(&self.key(k))
    }
    fn opt_u64(&self, k: &str) -> Option<u64> {
        self.g.get(&self.key(k)).and_then(|v| v.as_u64())
    }
    fn opt_f64(&self, k: &str) -> Option<f64> {
        self.g.get(&self.key(k)).and_then(|v| v.as_f64())
    }
    fn opt_bool(&self, k: &str) -> Option<bool> {
        self.g.get(&self.key(k)).and_then(|v| v.as_bool())
    }
    fn error(&self, k: &str, problem: impl std::fmt::Display) -> GgufError {
        self.g.error(format!("{}: {problem}", self.key(k)))
    }
}

/// What the tensors say that the metadata does not (presence of optional tensors).
pub struct Tensors<'a> {
    pub has: &'a dyn Fn(&str) -> bool,
    /// Rows of `token_embd` (the vocabulary size).
    pub vocab: usize,
}

/// The decoder layers: `block_count` less the multi-token-prediction layers llama.cpp's
/// converter appends (`nextn_predict_layers`; mlx-lm's sanitize drops them too).
pub fn decoder_layers(g: &Gguf, arch: &Arch) -> Result<usize, GgufError> {
    let m = Meta { g, arch: arch.gguf };
    let all = m.u64("block_count")?;
    let mtp = m.opt_u64("nextn_predict_layers").unwrap_or(0);
    if mtp >= all {
        return Err(m.error(
            "nextn_predict_layers",
            format!("{mtp} prediction layers of {all} blocks leave no decoder"),
        ));
    }
    Ok((all - mtp) as usize)
}

/// The `config.json` that `g`'s metadata stands for.
pub fn config(g: &Gguf, arch: &Arch, t: &Tensors) -> Result<Value, GgufError> {
    let m = Meta { g, arch: arch.gguf };
    let hidden = m.u64("embedding_length")?;
    let heads = m.u64("attention.head_count")?;
    let layers = decoder_layers(g, arch)?;
    let mut c = Map::new();
    let mut put = |k: &str, v: Value| {
        c.insert(k.to_string(), v);
    };
    put("hidden_size", json!(hidden));
    put("num_hidden_layers", json!(layers));
    put("num_attention_heads", json!(heads));
    put(
        "num_key_value_heads",
        json!(m.opt_u64("attention.head_count_kv").unwrap_or(heads)),
    );
    let head_dim = m
        .opt_u64("attention.key_length")
        .unwrap_or(hidden / heads.max(1));
    if m.opt_u64("attention.key_length").is_some() {
        put("head_dim", json!(head_dim));
    }
    put("vocab_size", json!(t.vocab));
    put("tie_word_embeddings", json!(!(t.has)("output.weight")));
    if let Some(ctx) = m.opt_u64("context_length") {
        put("max_position_embeddings", json!(ctx));
    }
    if let Some(eps) = m.opt_f64("attention.layer_norm_rms_epsilon") {
        put("rms_norm_eps", json!(eps as f32));
    }
    if let Some(theta) = m.opt_f64("rope.freq_base") {
        put("rope_theta", json!(theta as f32));
    }
    put(
        "intermediate_size",
        json!(m.opt_u64("feed_forward_length").unwrap_or(0)),
    );
    if let Some(s) = rope_scaling(&m)? {
        put("rope_scaling", s);
    }
    let experts = m.opt_u64("expert_count").unwrap_or(0);
    let used = m.opt_u64("expert_used_count").unwrap_or(0);
    let moe_inter = m.opt_u64("expert_feed_forward_length");
    // The rotated share of each head (GLM and the Qwen hybrids turn only part of it).
    let rotary = |dim: u64| -> Result<f32, GgufError> {
        let rot = m.opt_u64("rope.dimension_count").unwrap_or(dim);
        partial_rotary_factor(rot, dim).ok_or_else(|| {
            m.error(
                "rope.dimension_count",
                format!("{rot} rotated features of a {dim}-wide head"),
            )
        })
    };
    let model_type = match arch.gguf {
        // llama.cpp's `llama` carries Mixtral too: the same layout plus stacked experts.
        "llama" if experts > 0 => {
            put("num_local_experts", json!(experts));
            put("num_experts_per_tok", json!(used));
            "mixtral"
        }
        "llama" => "llama",
        "qwen3" => "qwen3",
        "qwen3moe" | "olmoe" => {
            put("num_experts", json!(experts));
            put("num_experts_per_tok", json!(used));
            if let Some(ff) = moe_inter {
                put("moe_intermediate_size", json!(ff));
            }
            // `norm_w` of build_moe_ffn: true in qwen3moe.cpp, false in olmoe.cpp.
            put("norm_topk_prob", json!(arch.gguf == "qwen3moe"));
            if arch.gguf == "qwen3moe" {
                "qwen3_moe"
            } else {
                "olmoe"
            }
        }
        "glm4moe" | "deepseek2" => {
            glm_router(&m, t, layers, experts, used, &mut put)?;
            put("moe_intermediate_size", json!(moe_inter.unwrap_or(0)));
            if arch.gguf == "glm4moe" {
                refuse_mrope(&m)?;
                put("partial_rotary_factor", json!(rotary(head_dim)?));
                put("use_qk_norm", json!((t.has)("blk.0.attn_q_norm.weight")));
                put("attention_bias", json!((t.has)("blk.0.attn_q.bias")));
                "glm4_moe"
            } else {
                mla(&m, t, heads, &mut put)?;
                "glm4_moe_lite"
            }
        }
        "qwen3next" | "qwen35moe" => {
            let interval = m.opt_u64("full_attention_interval").unwrap_or(4);
            check_recurrent_layers(&m, layers, interval)?;
            put("full_attention_interval", json!(interval));
            delta_net_dims(&m, &mut put)?;
            put("num_experts", json!(experts));
            put("num_experts_per_tok", json!(used));
            put("moe_intermediate_size", json!(moe_inter.unwrap_or(0)));
            put(
                "shared_expert_intermediate_size",
                json!(m
                    .opt_u64("expert_shared_feed_forward_length")
                    .or(m.opt_u64("feed_forward_length"))
                    .unwrap_or(0)),
            );
            // build_layer_ffn renormalises unconditionally (`norm_w = true`).
            put("norm_topk_prob", json!(true));
            let first_attention = interval.saturating_sub(1);
            put(
                "attention_bias",
                json!((t.has)(&format!("blk.{first_attention}.attn_q.bias"))),
            );
            let factor = rotary(head_dim)?;
            if arch.gguf == "qwen3next" {
                put("partial_rotary_factor", json!(factor));
                put("decoder_sparse_step", json!(1));
                put("mlp_only_layers", json!([]));
                "qwen3_next"
            } else {
                check_text_mrope(&m, head_dim)?;
                let theta = m.opt_f64("rope.freq_base").unwrap_or(10000.0);
                put(
                    "rope_parameters",
                    json!({"type": "default", "rope_theta": theta, "partial_rotary_factor": factor}),
                );
                "qwen3_5_moe"
            }
        }
        other => unreachable!("{other} is in ARCHES"),
    };
    put("model_type", json!(model_type));
    Ok(Value::Object(c))
}

/// `rope.scaling.*` as an HF `rope_scaling`: linear, and YaRN the way llama.cpp's converter
/// writes it (`conversion/base.py`: type, factor, original context, beta_fast/slow; for
/// `deepseek2`, `yarn_log_multiplier = 0.1 * mscale_all_dim` (`conversion/deepseek.py`),
/// which DeepSeek and GLM configs set equal to `mscale`). Other types are refused.
fn rope_scaling(m: &Meta) -> Result<Option<Value>, GgufError> {
    match m
        .g
        .get(&m.key("rope.scaling.type"))
        .and_then(|v| v.as_str())
    {
        None | Some("none") => Ok(None),
        Some("linear") => {
            let factor = m.opt_f64("rope.scaling.factor").unwrap_or(1.0);
            Ok(Some(json!({"type": "linear", "factor": factor})))
        }
        Some("yarn") => {
            let mut s = serde_json::Map::new();
            s.insert("type".into(), json!("yarn"));
            let factor = m.opt_f64("rope.scaling.factor").unwrap_or(1.0);
            s.insert("factor".into(), json!(factor));
            let ctx = m.opt_u64("rope.scaling.original_context_length");
            let ctx = ctx.ok_or_else(|| {
                m.error("rope.scaling.original_context_length", "missing for YaRN")
            })?;
            s.insert("original_max_position_embeddings".into(), json!(ctx));
            for (gguf, hf) in [
                ("yarn_beta_fast", "beta_fast"),
                ("yarn_beta_slow", "beta_slow"),
            ] {
                if let Some(v) = m.opt_f64(&format!("rope.scaling.{gguf}")) {
                    s.insert(hf.into(), json!(v));
                }
            }
            if let Some(log_mul) = m.opt_f64("rope.scaling.yarn_log_multiplier") {
                let all_dim = log_mul / 0.1;
                s.insert("mscale".into(), json!(all_dim));
                s.insert("mscale_all_dim".into(), json!(all_dim));
            }
            Ok(Some(Value::Object(s)))
        }
        Some(other) => Err(m.error(
            "rope.scaling.type",
            format!("RoPE scaling {other:?} is not supported for GGUF files yet"),
        )),
    }
}

/// `rot / dim` as the f32 the loaders multiply back (`int(head_dim * factor)`), nudged up an
/// ulp where f32 rounding would land just below `rot`.
fn partial_rotary_factor(rot: u64, dim: u64) -> Option<f32> {
    if dim == 0 || rot > dim {
        return None;
    }
    let mut f = rot as f32 / dim as f32;
    if ((dim as f32 * f) as u64) < rot {
        f = f32::from_bits(f.to_bits() + 1);
    }
    ((dim as f32 * f) as u64 == rot).then_some(f)
}

/// GLM's sigmoid router with a selection bias, group top-k and scaling (glm4moe and
/// GLM-4.7-Flash's deepseek2), and which layers are MoE.
fn glm_router(
    m: &Meta,
    t: &Tensors,
    layers: usize,
    experts: u64,
    used: u64,
    put: &mut impl FnMut(&str, Value),
) -> Result<(), GgufError> {
    let dense = m.opt_u64("leading_dense_block_count").unwrap_or(0);
    // expert_gating_func: 1 softmax, 2 sigmoid (llama-hparams.h). deepseek2 files converted
    // before the key existed say nothing: GLM's bias (`exp_probs_b`) marks its sigmoid router.
    let sigmoid = match m.opt_u64("expert_gating_func") {
        Some(2) => true,
        Some(0) | None => {
            m.arch == "glm4moe"
                || (dense as usize) >= layers
                || (t.has)(&format!("blk.{dense}.exp_probs_b.bias"))
        }
        Some(_) => false,
    };
    if !sigmoid {
        return Err(m.error(
            "expert_gating_func",
            "only GLM's sigmoid router with a selection bias is supported (DeepSeek's \
             softmax-gated models are not)",
        ));
    }
    put("scoring_func", json!("sigmoid"));
    put("topk_method", json!("noaux_tc"));
    put("n_routed_experts", json!(experts));
    put("num_experts_per_tok", json!(used));
    let shared = m.opt_u64("expert_shared_count").unwrap_or(0);
    put(
        "n_shared_experts",
        if shared == 0 {
            Value::Null
        } else {
            json!(shared)
        },
    );
    put("first_k_dense_replace", json!(dense));
    // A group count of 0 (absent) is one group of every expert.
    put(
        "n_group",
        json!(m.opt_u64("expert_group_count").unwrap_or(0).max(1)),
    );
    put(
        "topk_group",
        json!(m.opt_u64("expert_group_used_count").unwrap_or(0).max(1)),
    );
    let scale = m.opt_f64("expert_weights_scale").unwrap_or(0.0);
    put(
        "routed_scaling_factor",
        json!(if scale == 0.0 { 1.0 } else { scale as f32 }),
    );
    put(
        "norm_topk_prob",
        json!(m.opt_bool("expert_weights_norm").unwrap_or(false)),
    );
    Ok(())
}

/// deepseek2's multi-head latent attention dimensions (GLM-4.7-Flash).
fn mla(
    m: &Meta,
    t: &Tensors,
    heads: u64,
    put: &mut impl FnMut(&str, Value),
) -> Result<(), GgufError> {
    let rope = m.u64("rope.dimension_count")?;
    let (Some(k_mla), Some(v_mla)) = (
        m.opt_u64("attention.key_length_mla"),
        m.opt_u64("attention.value_length_mla"),
    ) else {
        return Err(m.error(
            "attention.key_length_mla",
            "missing: the file has the old joint attn_kv_b layout; convert it again with a \
             current llama.cpp (which writes attn_k_b and attn_v_b)",
        ));
    };
    if k_mla <= rope {
        return Err(m.error(
            "attention.key_length_mla",
            format!("{k_mla} leaves no non-rotary features beside {rope} rotary ones"),
        ));
    }
    put("kv_lora_rank", json!(m.u64("attention.kv_lora_rank")?));
    put(
        "q_lora_rank",
        if (t.has)("blk.0.attn_q_a.weight") {
            json!(m.u64("attention.q_lora_rank")?)
        } else {
            Value::Null
        },
    );
    put("qk_rope_head_dim", json!(rope));
    put("qk_nope_head_dim", json!(k_mla - rope));
    put("v_head_dim", json!(v_mla));
    // llama.cpp has no `moe_layer_freq`: every layer past the dense ones is MoE.
    put("moe_layer_freq", json!(1));
    put("attention_bias", json!((t.has)("blk.0.attn_kv_a_mqa.bias")));
    // The converter forces head_count_kv to 1 ("MLA converts into MQA"); the loader's
    // field means the query heads.
    put("num_key_value_heads", json!(heads));
    Ok(())
}

/// The Gated DeltaNet's head counts and sizes (`ssm.*`). llama.cpp sizes the value heads
/// by `ssm.state_size` too, so the file's key and value head dims are equal.
fn delta_net_dims(m: &Meta, put: &mut impl FnMut(&str, Value)) -> Result<(), GgufError> {
    let dk = m.u64("ssm.state_size")?;
    let hk = m.u64("ssm.group_count")?;
    let hv = m.u64("ssm.time_step_rank")?;
    let inner = m.u64("ssm.inner_size")?;
    if hv == 0 || !inner.is_multiple_of(hv) {
        return Err(m.error(
            "ssm.inner_size",
            format!("{inner} is not {hv} value heads (ssm.time_step_rank) of equal size"),
        ));
    }
    put("linear_num_key_heads", json!(hk));
    put("linear_key_head_dim", json!(dk));
    put("linear_num_value_heads", json!(hv));
    put("linear_value_head_dim", json!(inner / hv));
    put("linear_conv_kernel_dim", json!(m.u64("ssm.conv_kernel")?));
    Ok(())
}

/// `attention.recurrent_layers` (when written) must be the pattern the interval gives:
/// the loaders place the attention layers by `full_attention_interval`.
fn check_recurrent_layers(m: &Meta, layers: usize, interval: u64) -> Result<(), GgufError> {
    let Some(flags) =
        m.g.get(&m.key("attention.recurrent_layers"))
            .and_then(|v| v.as_array())
    else {
        return Ok(());
    };
    for (i, f) in flags.iter().take(layers).enumerate() {
        let recurrent = !(i as u64 + 1).is_multiple_of(interval.max(1));
        if f.as_bool() != Some(recurrent) {
            return Err(m.error(
                "attention.recurrent_layers",
                format!(
                    "layer {i} does not follow full_attention_interval {interval} (only that \
                     regular pattern is supported)"
                ),
            ));
        }
    }
    Ok(())
}

/// GLM-4.5V's M-RoPE (vision positions): not a text model's RoPE.
fn refuse_mrope(m: &Meta) -> Result<(), GgufError> {
    let sections =
        m.g.get(&m.key("rope.dimension_sections"))
            .and_then(|v| v.as_array());
    if let Some(s) = sections {
        let s: Vec<u64> = s.iter().map(|v| v.as_u64().unwrap_or(0)).collect();
        if s.len() >= 2 && s[0] > 0 && s[1] > 0 {
            return Err(m.error(
                "rope.dimension_sections",
                "multimodal RoPE is not supported (text models only)",
            ));
        }
    }
    Ok(())
}

/// Qwen3.5's interleaved M-RoPE: for text, llama.cpp feeds positions `[p, p, p, 0]`, and
/// rotary pair `i` takes sector `i % Σsections`, turning by `p` iff that sector belongs to
/// one of the first three sections (`ggml_mrope_cache_init`, imrope branch). When every
/// sector does, that is plain RoPE, which is what the loader runs; otherwise refuse.
fn check_text_mrope(m: &Meta, head_dim: u64) -> Result<(), GgufError> {
    let key = "rope.dimension_sections";
    let Some(s) = m.g.get(&m.key(key)).and_then(|v| v.as_array()) else {
        return Err(m.error(key, "missing (required for qwen35moe)"));
    };
    let s: Vec<u64> = s.iter().map(|v| v.as_u64().unwrap_or(0)).collect();
    let sec = |i: usize| s.get(i).copied().unwrap_or(0);
    let total: u64 = s.iter().sum();
    let rot = m.opt_u64("rope.dimension_count").unwrap_or(head_dim);
    let plain = total > 0
        && (0..rot / 2).all(|i| {
            let x = i % total;
            x < 3 * sec((x % 3) as usize)
        });
    if !plain {
        return Err(m.error(
            key,
            format!("sections {s:?} rotate some text features by position 0 (unsupported)"),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rotary_factor_gives_back_the_rotated_count() {
        for dim in [64u64, 80, 96, 128, 192, 256] {
            for rot in (0..=dim).step_by(2) {
                let f = partial_rotary_factor(rot, dim).unwrap();
                assert_eq!((dim as f32 * f) as u64, rot, "{rot}/{dim}");
            }
        }
        assert_eq!(partial_rotary_factor(130, 128), None);
    }
}
