//! How a GGUF architecture maps onto the engine's: the `config.json` its metadata stands
//! for, and the Hugging Face/MLX name of each of its tensors.
//!
//! Metadata keys and tensor names: llama.cpp `src/llama-arch.cpp` (`LLM_KV_*`, `LLM_TENSOR_*`
//! names) and `gguf-py/gguf/tensor_mapping.py` (which HF names `convert_hf_to_gguf.py` maps
//! onto them). Whether the top-k expert weights are renormalised is the `norm_w` argument of
//! each architecture's `build_moe_ffn` call in `src/models/*.cpp`.

use moestream_gguf::{Gguf, GgufError};
use serde_json::{json, Map, Value};

/// One GGUF architecture moestream runs.
pub struct Arch {
    /// `general.architecture`.
    pub gguf: &'static str,
    /// Whether llama.cpp's converter permuted the q/k rows for its interleaved RoPE
    /// (`LlamaModel.permute` in `convert_hf_to_gguf.py`): undone at load.
    pub permuted_qk: bool,
    /// The MoE module under each layer (`mlp`, Mixtral's `block_sparse_moe`).
    pub moe_module: &'static str,
}

/// The architectures, by `general.architecture`.
pub const ARCHES: &[Arch] = &[
    Arch {
        gguf: "llama",
        permuted_qk: true,
        moe_module: "block_sparse_moe",
    },
    Arch {
        gguf: "qwen3",
        permuted_qk: false,
        moe_module: "mlp",
    },
    Arch {
        gguf: "qwen3moe",
        permuted_qk: false,
        moe_module: "mlp",
    },
    Arch {
        gguf: "olmoe",
        permuted_qk: false,
        moe_module: "mlp",
    },
];

pub fn find(gguf: &Gguf) -> Result<&'static Arch, GgufError> {
    let name = gguf.architecture()?;
    ARCHES.iter().find(|a| a.gguf == name).ok_or_else(|| {
        let known: Vec<&str> = ARCHES.iter().map(|a| a.gguf).collect();
        gguf.error(format!(
            "architecture {name:?} is not supported for GGUF files (supported: {})",
            known.join(", ")
        ))
    })
}

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
}

/// The `config.json` (as the architecture's loader reads it) that `g`'s metadata stands for.
/// `vocab` is the row count of `token_embd`; `tied` whether the file has no `output` tensor.
pub fn config(g: &Gguf, arch: &Arch, vocab: usize, tied: bool) -> Result<Value, GgufError> {
    let m = Meta { g, arch: arch.gguf };
    let hidden = m.u64("embedding_length")?;
    let heads = m.u64("attention.head_count")?;
    let mut c = Map::new();
    let mut put = |k: &str, v: Value| {
        c.insert(k.to_string(), v);
    };
    put("hidden_size", json!(hidden));
    put("num_hidden_layers", json!(m.u64("block_count")?));
    put("num_attention_heads", json!(heads));
    put(
        "num_key_value_heads",
        json!(m.opt_u64("attention.head_count_kv").unwrap_or(heads)),
    );
    if let Some(hd) = m.opt_u64("attention.key_length") {
        put("head_dim", json!(hd));
    }
    put("vocab_size", json!(vocab));
    put("tie_word_embeddings", json!(tied));
    if let Some(ctx) = m.opt_u64("context_length") {
        put("max_position_embeddings", json!(ctx));
    }
    if let Some(eps) = m.opt_f64("attention.layer_norm_rms_epsilon") {
        put("rms_norm_eps", json!(eps as f32));
    }
    if let Some(theta) = m.opt_f64("rope.freq_base") {
        put("rope_theta", json!(theta as f32));
    }
    if let Some(ff) = m.opt_u64("feed_forward_length") {
        put("intermediate_size", json!(ff));
    }
    match g.get(&m.key("rope.scaling.type")).and_then(|v| v.as_str()) {
        None | Some("none") => {}
        Some("linear") => {
            let factor = m.opt_f64("rope.scaling.factor").unwrap_or(1.0);
            put("rope_scaling", json!({"type": "linear", "factor": factor}));
        }
        Some(other) => {
            return Err(g.error(format!(
                "{}: RoPE scaling {other:?} is not supported for GGUF files yet",
                m.key("rope.scaling.type")
            )))
        }
    }
    let experts = m.opt_u64("expert_count").unwrap_or(0);
    let used = m.opt_u64("expert_used_count").unwrap_or(0);
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
            if let Some(ff) = m.opt_u64("expert_feed_forward_length") {
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
        other => unreachable!("{other} is in ARCHES"),
    };
    put("model_type", json!(model_type));
    Ok(Value::Object(c))
}

/// Per-layer tensors: (GGUF name after `blk.N.`, HF name after `model.layers.N.`), with
/// `{moe}` standing for the architecture's MoE module.
const LAYER_NAMES: &[(&str, &str)] = &[
    ("attn_norm", "input_layernorm"),
    ("attn_q", "self_attn.q_proj"),
    ("attn_k", "self_attn.k_proj"),
    ("attn_v", "self_attn.v_proj"),
    ("attn_output", "self_attn.o_proj"),
    ("attn_q_norm", "self_attn.q_norm"),
    ("attn_k_norm", "self_attn.k_norm"),
    ("ffn_norm", "post_attention_layernorm"),
    ("ffn_gate", "mlp.gate_proj"),
    ("ffn_up", "mlp.up_proj"),
    ("ffn_down", "mlp.down_proj"),
    ("ffn_gate_inp", "{moe}.gate"),
    ("ffn_gate_exps", "{moe}.switch_mlp.gate_proj"),
    ("ffn_up_exps", "{moe}.switch_mlp.up_proj"),
    ("ffn_down_exps", "{moe}.switch_mlp.down_proj"),
];

/// Whole-model tensors: (GGUF module, HF module).
const MODEL_NAMES: &[(&str, &str)] = &[
    ("token_embd", "model.embed_tokens"),
    ("output_norm", "model.norm"),
    ("output", "lm_head"),
];

/// The HF name of GGUF tensor `name` (`MODULE.weight` / `MODULE.bias`), if it has one.
pub fn hf_name(arch: &Arch, name: &str) -> Option<String> {
    let (module, param) = name.rsplit_once('.')?;
    if let Some(rest) = module.strip_prefix("blk.") {
        let (layer, suffix) = rest.split_once('.')?;
        let layer: usize = layer.parse().ok()?;
        let (_, hf) = LAYER_NAMES.iter().find(|(g, _)| *g == suffix)?;
        let hf = hf.replace("{moe}", arch.moe_module);
        return Some(format!("model.layers.{layer}.{hf}.{param}"));
    }
    let (_, hf) = MODEL_NAMES.iter().find(|(g, _)| *g == module)?;
    Some(format!("{hf}.{param}"))
}

/// The GGUF name of HF tensor `name` (for error messages about a missing tensor).
pub fn gguf_name(arch: &Arch, name: &str) -> Option<String> {
    let (module, param) = name.rsplit_once('.')?;
    if let Some(rest) = module.strip_prefix("model.layers.") {
        let (layer, suffix) = rest.split_once('.')?;
        let (g, _) = LAYER_NAMES
            .iter()
            .find(|(_, hf)| hf.replace("{moe}", arch.moe_module) == suffix)?;
        return Some(format!("blk.{layer}.{g}.{param}"));
    }
    let (g, _) = MODEL_NAMES.iter().find(|(_, hf)| *hf == module)?;
    Some(format!("{g}.{param}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_map_both_ways() {
        let llama = &ARCHES[0];
        for (g, hf) in [
            (
                "blk.3.attn_q.weight",
                "model.layers.3.self_attn.q_proj.weight",
            ),
            (
                "blk.0.ffn_gate_exps.weight",
                "model.layers.0.block_sparse_moe.switch_mlp.gate_proj.weight",
            ),
            ("token_embd.weight", "model.embed_tokens.weight"),
            ("output.weight", "lm_head.weight"),
        ] {
            assert_eq!(hf_name(llama, g).as_deref(), Some(hf));
            assert_eq!(gguf_name(llama, hf).as_deref(), Some(g));
        }
        assert_eq!(hf_name(llama, "rope_freqs.weight"), None);
    }
}
