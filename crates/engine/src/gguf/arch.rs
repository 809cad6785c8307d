//! How a GGUF architecture maps onto the engine's: which of its loaders runs it, and the
//! Hugging Face/MLX name of each tensor. (Its metadata becomes a `config.json` in
//! [`super::config`]; tensors whose values the converter changed are put back in
//! [`super::layout`].)
//!
//! Tensor names: llama.cpp `src/llama-arch.cpp` (`LLM_TENSOR_*` names) and
//! `gguf-py/gguf/tensor_mapping.py` (which HF names `convert_hf_to_gguf.py` maps onto them;
//! an architecture's `MODEL_TENSORS` list in `gguf-py/gguf/constants.py` decides between
//! candidates, e.g. `post_attention_layernorm` is `ffn_norm` for qwen3moe but
//! `post_attention_norm` for glm4moe).

use moestream_gguf::{Gguf, GgufError};

/// One GGUF architecture moestream runs.
pub struct Arch {
    /// `general.architecture`.
    pub gguf: &'static str,
    /// Whether llama.cpp's converter permuted the q/k rows for its interleaved RoPE
    /// (`LlamaModel.permute` in `convert_hf_to_gguf.py`): undone at load.
    pub permuted_qk: bool,
    /// The MoE module under each layer (`mlp`, Mixtral's `block_sparse_moe`).
    pub moe_module: &'static str,
    /// Where the decoder's tensors live (`model`; Qwen3.5's `language_model.model`).
    pub model: &'static str,
    /// The LM head module (`lm_head`; Qwen3.5's `language_model.lm_head`).
    pub lm_head: &'static str,
    /// Whether the loader always reads an LM head (GLM's never ties): a file without
    /// `output.weight` then gives `token_embd` to both, as llama.cpp does.
    pub untied_head: bool,
    /// Per-layer name tables of this architecture, looked up before [`LAYER_NAMES`]: (GGUF
    /// name after `blk.N.`, HF name after `layers.N.`). An entry with a parameter suffix
    /// (`exp_probs_b.bias`, `ssm_a`) maps that whole name; the others map a module.
    pub layer_names: &'static [Names],
}

/// A table of (GGUF name, HF name) pairs.
pub type Names = &'static [(&'static str, &'static str)];

/// glm4moe and the Qwen hybrids call the post-attention norm `post_attention_norm` (their
/// `MODEL_TENSORS` have no `ffn_norm`); deepseek2 keeps `ffn_norm`.
const POST_ATTENTION_NORM: Names = &[("post_attention_norm", "post_attention_layernorm")];

/// glm4moe and deepseek2 (GLM-4.7-Flash): GLM's router bias and shared experts, and
/// deepseek2's attention.
const GLM_NAMES: Names = &[
    ("exp_probs_b.bias", "mlp.gate.e_score_correction_bias"),
    ("ffn_gate_shexp", "mlp.shared_experts.gate_proj"),
    ("ffn_up_shexp", "mlp.shared_experts.up_proj"),
    ("ffn_down_shexp", "mlp.shared_experts.down_proj"),
    // deepseek2's multi-head latent attention (llama.cpp writes `kv_b_proj` already split
    // the way mlx-lm's sanitize splits it: `attn_k_b` is `embed_q`, `attn_v_b` is
    // `unembed_out`, element for element).
    ("attn_q_a", "self_attn.q_a_proj"),
    ("attn_q_a_norm", "self_attn.q_a_layernorm"),
    ("attn_q_b", "self_attn.q_b_proj"),
    ("attn_kv_a_mqa", "self_attn.kv_a_proj_with_mqa"),
    ("attn_kv_a_norm", "self_attn.kv_a_layernorm"),
    ("attn_k_b", "self_attn.embed_q"),
    ("attn_v_b", "self_attn.unembed_out"),
];

/// qwen3next and qwen35moe: the Gated DeltaNet (`ssm_*`, `attn_qkv`/`attn_gate`) and the
/// gated shared expert. `ssm_ba` (qwen3next) is split into `in_proj_b`/`in_proj_a` by
/// [`super::layout`].
const QWEN_NEXT_NAMES: Names = &[
    ("ffn_gate_inp_shexp", "mlp.shared_expert_gate"),
    ("ffn_gate_shexp", "mlp.shared_expert.gate_proj"),
    ("ffn_up_shexp", "mlp.shared_expert.up_proj"),
    ("ffn_down_shexp", "mlp.shared_expert.down_proj"),
    ("attn_qkv", "linear_attn.in_proj_qkv"),
    ("attn_gate", "linear_attn.in_proj_z"),
    ("ssm_in", "linear_attn.in_proj_qkvz"),
    ("ssm_ba", "linear_attn.in_proj_ba"),
    ("ssm_beta", "linear_attn.in_proj_b"),
    ("ssm_alpha", "linear_attn.in_proj_a"),
    ("ssm_conv1d", "linear_attn.conv1d"),
    ("ssm_dt.bias", "linear_attn.dt_bias"),
    ("ssm_a", "linear_attn.A_log"),
    ("ssm_norm", "linear_attn.norm"),
    ("ssm_out", "linear_attn.out_proj"),
];

const fn arch(gguf: &'static str, permuted_qk: bool, moe_module: &'static str) -> Arch {
    Arch {
        gguf,
        permuted_qk,
        moe_module,
        model: "model",
        lm_head: "lm_head",
        untied_head: false,
        layer_names: &[],
    }
}

/// The architectures, by `general.architecture`.
pub const ARCHES: &[Arch] = &[
    arch("llama", true, "block_sparse_moe"),
    arch("qwen3", false, "mlp"),
    arch("qwen3moe", false, "mlp"),
    arch("olmoe", false, "mlp"),
    Arch {
        untied_head: true,
        layer_names: &[POST_ATTENTION_NORM, GLM_NAMES],
        ..arch("glm4moe", false, "mlp")
    },
    Arch {
        untied_head: true,
        layer_names: &[GLM_NAMES],
        ..arch("deepseek2", false, "mlp")
    },
    Arch {
        layer_names: &[POST_ATTENTION_NORM, QWEN_NEXT_NAMES],
        ..arch("qwen3next", false, "mlp")
    },
    Arch {
        model: "language_model.model",
        lm_head: "language_model.lm_head",
        layer_names: &[POST_ATTENTION_NORM, QWEN_NEXT_NAMES],
        ..arch("qwen35moe", false, "mlp")
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

/// The layer index of a per-layer GGUF name (`blk.N.…`).
pub fn layer_of(name: &str) -> Option<usize> {
    name.strip_prefix("blk.")?.split_once('.')?.0.parse().ok()
}

/// Per-layer tensors: (GGUF name after `blk.N.`, HF name after `model.layers.N.`), with
/// `{moe}` standing for the architecture's MoE module.
const LAYER_NAMES: Names = &[
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

/// Whole-model tensors: (GGUF module, HF module under the decoder; `{head}` the LM head).
const MODEL_NAMES: Names = &[
    ("token_embd", "embed_tokens"),
    ("output_norm", "norm"),
    ("output", "{head}"),
];

/// The HF name of a whole-model module.
fn model_module(arch: &Arch, hf: &str) -> String {
    match hf {
        "{head}" => arch.lm_head.to_string(),
        m => format!("{}.{m}", arch.model),
    }
}

/// The architecture's own per-layer names.
fn own_names(arch: &Arch) -> impl Iterator<Item = &'static (&'static str, &'static str)> {
    arch.layer_names.iter().flat_map(|t| t.iter())
}

/// The HF name of per-layer GGUF name `suffix` (after `blk.N.`): a whole-name entry of the
/// architecture's own table, else its module in that table or [`LAYER_NAMES`].
fn layer_hf(arch: &Arch, suffix: &str) -> Option<String> {
    if let Some((_, hf)) = own_names(arch).find(|(g, _)| *g == suffix) {
        return Some(hf.to_string());
    }
    let (module, param) = suffix.rsplit_once('.')?;
    let (_, hf) = own_names(arch)
        .chain(LAYER_NAMES)
        .find(|(g, _)| *g == module)?;
    Some(format!("{}.{param}", hf.replace("{moe}", arch.moe_module)))
}

/// The HF name of GGUF tensor `name` (`MODULE.weight` / `MODULE.bias`, or a whole-name
/// entry), if it has one.
pub fn hf_name(arch: &Arch, name: &str) -> Option<String> {
    if let Some(rest) = name.strip_prefix("blk.") {
        let (layer, suffix) = rest.split_once('.')?;
        let layer: usize = layer.parse().ok()?;
        let hf = layer_hf(arch, suffix)?;
        return Some(format!("{}.layers.{layer}.{hf}", arch.model));
    }
    let (module, param) = name.rsplit_once('.')?;
    let (_, hf) = MODEL_NAMES.iter().find(|(g, _)| *g == module)?;
    Some(format!("{}.{param}", model_module(arch, hf)))
}

/// The GGUF name of HF tensor `name` (for error messages about a missing tensor).
pub fn gguf_name(arch: &Arch, name: &str) -> Option<String> {
    let layers = format!("{}.layers.", arch.model);
    if let Some(rest) = name.strip_prefix(&layers) {
        let (layer, suffix) = rest.split_once('.')?;
        if let Some((g, _)) = own_names(arch).find(|(_, hf)| *hf == suffix) {
            return Some(format!("blk.{layer}.{g}"));
        }
        let (module, param) = suffix.rsplit_once('.')?;
        let (g, _) = own_names(arch)
            .chain(LAYER_NAMES)
            .find(|(_, hf)| hf.replace("{moe}", arch.moe_module) == module)?;
        return Some(format!("blk.{layer}.{g}.{param}"));
    }
    let (module, param) = name.rsplit_once('.')?;
    let (g, _) = MODEL_NAMES
        .iter()
        .find(|(_, hf)| model_module(arch, hf) == module)?;
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

    #[test]
    fn architecture_tables_map_both_ways() {
        let by = |g: &str| ARCHES.iter().find(|a| a.gguf == g).unwrap();
        for (arch, g, hf) in [
            (
                "glm4moe",
                "blk.2.exp_probs_b.bias",
                "model.layers.2.mlp.gate.e_score_correction_bias",
            ),
            (
                "glm4moe",
                "blk.0.post_attention_norm.weight",
                "model.layers.0.post_attention_layernorm.weight",
            ),
            (
                "deepseek2",
                "blk.1.attn_k_b.weight",
                "model.layers.1.self_attn.embed_q.weight",
            ),
            (
                "qwen3next",
                "blk.0.ssm_a",
                "model.layers.0.linear_attn.A_log",
            ),
            (
                "qwen3next",
                "blk.0.ssm_dt.bias",
                "model.layers.0.linear_attn.dt_bias",
            ),
            (
                "qwen35moe",
                "blk.3.attn_gate.weight",
                "language_model.model.layers.3.linear_attn.in_proj_z.weight",
            ),
            (
                "qwen35moe",
                "output.weight",
                "language_model.lm_head.weight",
            ),
            (
                "qwen35moe",
                "token_embd.weight",
                "language_model.model.embed_tokens.weight",
            ),
            (
                "qwen35moe",
                "blk.3.post_attention_norm.weight",
                "language_model.model.layers.3.post_attention_layernorm.weight",
            ),
        ] {
            assert_eq!(hf_name(by(arch), g).as_deref(), Some(hf), "{arch} {g}");
            assert_eq!(gguf_name(by(arch), hf).as_deref(), Some(g), "{arch} {hf}");
        }
    }
}
