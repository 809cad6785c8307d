//! Presets: the config.json of real Mixture-of-Experts models (shapes and hyper-parameters
//! as published, tokens ids changed to those of the bundled tokenizer) plus `tiny`.
//!
//! `bos/eos/pad` ids follow the tokenizer `synth` writes (the repository's 480-token test
//! tokenizer: 471 `<|endoftext|>`, 473 `<|im_end|>`), so generation stops where the
//! tokenizer says it should; ids past the tokenizer decode to nothing.

use serde_json::{json, Value};

pub struct Preset {
    pub name: &'static str,
    pub about: &'static str,
    pub config: fn() -> Value,
}

pub const PRESETS: &[Preset] = &[
    Preset {
        name: "tiny",
        about: "small qwen3_moe for quick runs (H 256, 4 layers, 16 experts, top-4)",
        config: tiny,
    },
    Preset {
        name: "qwen3-30b-a3b",
        about: "Qwen3-30B-A3B (qwen3_moe, 48 layers, 128 experts, top-8)",
        config: qwen3_30b_a3b,
    },
    Preset {
        name: "qwen3-coder-30b-a3b",
        about: "Qwen3-Coder-30B-A3B-Instruct (qwen3_moe, 256K context)",
        config: qwen3_coder_30b_a3b,
    },
    Preset {
        name: "qwen3-235b-a22b",
        about: "Qwen3-235B-A22B (qwen3_moe, 94 layers, 128 experts, top-8)",
        config: qwen3_235b_a22b,
    },
    Preset {
        name: "qwen3-next-80b-a3b",
        about: "Qwen3-Next-80B-A3B (qwen3_next: 36 GDN + 12 gated-attention layers, 512 experts, top-10)",
        config: qwen3_next_80b_a3b,
    },
    Preset {
        name: "qwen3.5-35b-a3b",
        about: "Qwen3.5-35B-A3B (qwen3_5_moe: 30 GDN + 10 attention layers, 256 experts, top-8)",
        config: qwen3_5_35b_a3b,
    },
    Preset {
        name: "qwen3.5-122b-a10b",
        about: "Qwen3.5-122B-A10B (qwen3_5_moe: 36 GDN + 12 attention layers, 256 experts, top-8)",
        config: qwen3_5_122b_a10b,
    },
    Preset {
        name: "glm-4.7-flash",
        about: "GLM-4.7-Flash (glm4_moe_lite: MLA, 64 experts + 1 shared, top-4)",
        config: glm_4_7_flash,
    },
    Preset {
        name: "glm-4.5-air",
        about: "GLM-4.5-Air (glm4_moe: 46 layers, 128 experts + 1 shared, top-8)",
        config: glm_4_5_air,
    },
    Preset {
        name: "olmoe-1b-7b",
        about: "OLMoE-1B-7B-0924 (olmoe, 16 layers, 64 experts, top-8)",
        config: olmoe_1b_7b,
    },
    Preset {
        name: "mixtral-8x7b",
        about: "Mixtral-8x7B-v0.1 (mixtral, 32 layers, 8 experts, top-2)",
        config: mixtral_8x7b,
    },
];

pub fn find(name: &str) -> Option<&'static Preset> {
    PRESETS.iter().find(|p| p.name == name)
}

pub fn names() -> String {
    PRESETS
        .iter()
        .map(|p| p.name)
        .collect::<Vec<_>>()
        .join(", ")
}

/// Fields every Qwen3-MoE config.json carries; the presets differ in sizes only.
#[allow(clippy::too_many_arguments)]
fn qwen3_moe(
    hidden: usize,
    layers: usize,
    heads: usize,
    intermediate: usize,
    moe_intermediate: usize,
    experts: usize,
    top_k: usize,
    vocab: usize,
    rope_theta: f64,
    max_positions: usize,
) -> Value {
    json!({
        "architectures": ["Qwen3MoeForCausalLM"],
        "attention_bias": false,
        "attention_dropout": 0.0,
        "bos_token_id": 471,
        "decoder_sparse_step": 1,
        "eos_token_id": 473,
        "head_dim": 128,
        "hidden_act": "silu",
        "hidden_size": hidden,
        "initializer_range": 0.02,
        "intermediate_size": intermediate,
        "max_position_embeddings": max_positions,
        "max_window_layers": layers,
        "mlp_only_layers": [],
        "model_type": "qwen3_moe",
        "moe_intermediate_size": moe_intermediate,
        "norm_topk_prob": true,
        "num_attention_heads": heads,
        "num_experts": experts,
        "num_experts_per_tok": top_k,
        "num_hidden_layers": layers,
        "num_key_value_heads": 4,
        "output_router_logits": false,
        "rms_norm_eps": 1e-6,
        "rope_scaling": null,
        "rope_theta": rope_theta,
        "router_aux_loss_coef": 0.001,
        "sliding_window": null,
        "tie_word_embeddings": false,
        "torch_dtype": "bfloat16",
        "use_cache": true,
        "use_sliding_window": false,
        "vocab_size": vocab
    })
}

fn tiny() -> Value {
    let mut c = qwen3_moe(256, 4, 4, 768, 256, 16, 4, 4096, 1e6, 40960);
    c["head_dim"] = json!(64);
    c["num_key_value_heads"] = json!(2);
    c
}

fn qwen3_30b_a3b() -> Value {
    qwen3_moe(2048, 48, 32, 6144, 768, 128, 8, 151936, 1e6, 40960)
}

fn qwen3_coder_30b_a3b() -> Value {
    qwen3_moe(2048, 48, 32, 6144, 768, 128, 8, 151936, 1e7, 262144)
}

fn qwen3_235b_a22b() -> Value {
    qwen3_moe(4096, 94, 64, 12288, 1536, 128, 8, 151936, 1e6, 40960)
}

fn qwen3_next_80b_a3b() -> Value {
    json!({
        "architectures": ["Qwen3NextForCausalLM"],
        "attention_bias": false,
        "attention_dropout": 0.0,
        "bos_token_id": 471,
        "decoder_sparse_step": 1,
        "eos_token_id": 473,
        "full_attention_interval": 4,
        "head_dim": 256,
        "hidden_act": "silu",
        "hidden_size": 2048,
        "initializer_range": 0.02,
        "intermediate_size": 5120,
        "linear_conv_kernel_dim": 4,
        "linear_key_head_dim": 128,
        "linear_num_key_heads": 16,
        "linear_num_value_heads": 32,
        "linear_value_head_dim": 128,
        "max_position_embeddings": 262144,
        "mlp_only_layers": [],
        "model_type": "qwen3_next",
        "moe_intermediate_size": 512,
        "norm_topk_prob": true,
        "num_attention_heads": 16,
        "num_experts": 512,
        "num_experts_per_tok": 10,
        "num_hidden_layers": 48,
        "num_key_value_heads": 2,
        "output_router_logits": false,
        "partial_rotary_factor": 0.25,
        "rms_norm_eps": 1e-6,
        "rope_scaling": null,
        "rope_theta": 10000000,
        "router_aux_loss_coef": 0.001,
        "shared_expert_intermediate_size": 512,
        "tie_word_embeddings": false,
        "torch_dtype": "bfloat16",
        "use_cache": true,
        "use_sliding_window": false,
        "vocab_size": 151936
    })
}

/// The Qwen3.5 vision-language wrapper around a MoE text config (mlx-lm drops
/// `vision_config` for text conversions).
fn qwen3_5_moe(
    hidden: usize,
    layers: usize,
    heads: usize,
    value_heads: usize,
    experts: usize,
    moe_intermediate: usize,
) -> Value {
    json!({
        "architectures": ["Qwen3_5MoeForConditionalGeneration"],
        "image_token_id": 248056,
        "model_type": "qwen3_5_moe",
        "text_config": {
            "attention_bias": false,
            "attention_dropout": 0.0,
            "attn_output_gate": true,
            "bos_token_id": 471,
            "eos_token_id": 473,
            "full_attention_interval": 4,
            "head_dim": 256,
            "hidden_act": "silu",
            "hidden_size": hidden,
            "initializer_range": 0.02,
            "layer_types": layer_types(layers, 4),
            "linear_conv_kernel_dim": 4,
            "linear_key_head_dim": 128,
            "linear_num_key_heads": 16,
            "linear_num_value_heads": value_heads,
            "linear_value_head_dim": 128,
            "max_position_embeddings": 262144,
            "model_type": "qwen3_5_moe_text",
            "moe_intermediate_size": moe_intermediate,
            "mtp_num_hidden_layers": 1,
            "mtp_use_dedicated_embeddings": false,
            "norm_topk_prob": true,
            "num_attention_heads": heads,
            "num_experts": experts,
            "num_experts_per_tok": 8,
            "num_hidden_layers": layers,
            "num_key_value_heads": 2,
            "rms_norm_eps": 1e-6,
            "rope_parameters": {
                "mrope_interleaved": true,
                "mrope_section": [11, 11, 10],
                "partial_rotary_factor": 0.25,
                "rope_theta": 10000000,
                "rope_type": "default"
            },
            "shared_expert_intermediate_size": moe_intermediate,
            "tie_word_embeddings": false,
            "use_cache": true,
            "vocab_size": 248320
        },
        "tie_word_embeddings": false,
        "torch_dtype": "bfloat16"
    })
}

/// `layer_types` of a hybrid model: every `interval`-th layer is full attention.
pub fn layer_types(layers: usize, interval: usize) -> Value {
    (0..layers)
        .map(|i| {
            if (i + 1) % interval.max(1) == 0 {
                "full_attention"
            } else {
                "linear_attention"
            }
        })
        .collect()
}

fn qwen3_5_35b_a3b() -> Value {
    qwen3_5_moe(2048, 40, 16, 32, 256, 512)
}

fn qwen3_5_122b_a10b() -> Value {
    qwen3_5_moe(3072, 48, 32, 64, 256, 1024)
}

fn glm_4_5_air() -> Value {
    json!({
        "architectures": ["Glm4MoeForCausalLM"],
        "attention_bias": true,
        "attention_dropout": 0.0,
        "bos_token_id": 471,
        "eos_token_id": [473, 471],
        "first_k_dense_replace": 1,
        "head_dim": 128,
        "hidden_act": "silu",
        "hidden_size": 4096,
        "initializer_range": 0.02,
        "intermediate_size": 10944,
        "max_position_embeddings": 131072,
        "model_type": "glm4_moe",
        "moe_intermediate_size": 1408,
        "n_group": 1,
        "n_routed_experts": 128,
        "n_shared_experts": 1,
        "norm_topk_prob": true,
        "num_attention_heads": 96,
        "num_experts_per_tok": 8,
        "num_hidden_layers": 46,
        "num_key_value_heads": 8,
        "num_nextn_predict_layers": 1,
        "pad_token_id": 471,
        "partial_rotary_factor": 0.5,
        "rms_norm_eps": 1e-5,
        "rope_scaling": null,
        "rope_theta": 1000000.0,
        "routed_scaling_factor": 1.0,
        "tie_word_embeddings": false,
        "topk_group": 1,
        "torch_dtype": "bfloat16",
        "use_cache": true,
        "use_qk_norm": false,
        "vocab_size": 151552
    })
}

fn glm_4_7_flash() -> Value {
    json!({
        "architectures": ["Glm4MoeLiteForCausalLM"],
        "attention_bias": false,
        "attention_dropout": 0.0,
        "bos_token_id": 471,
        "eos_token_id": [473, 471],
        "first_k_dense_replace": 1,
        "hidden_act": "silu",
        "hidden_size": 2048,
        "initializer_range": 0.02,
        "intermediate_size": 10240,
        "kv_lora_rank": 512,
        "max_position_embeddings": 202752,
        "model_type": "glm4_moe_lite",
        "moe_intermediate_size": 1536,
        "moe_layer_freq": 1,
        "n_group": 1,
        "n_routed_experts": 64,
        "n_shared_experts": 1,
        "norm_topk_prob": true,
        "num_attention_heads": 20,
        "num_experts_per_tok": 4,
        "num_hidden_layers": 47,
        "num_key_value_heads": 20,
        "num_nextn_predict_layers": 1,
        "pad_token_id": 471,
        "partial_rotary_factor": 1.0,
        "q_lora_rank": 768,
        "qk_nope_head_dim": 192,
        "qk_rope_head_dim": 64,
        "rms_norm_eps": 1e-5,
        "rope_scaling": null,
        "rope_theta": 1000000.0,
        "routed_scaling_factor": 1.8,
        "scoring_func": "sigmoid",
        "tie_word_embeddings": false,
        "topk_group": 1,
        "topk_method": "noaux_tc",
        "torch_dtype": "bfloat16",
        "use_cache": true,
        "v_head_dim": 256,
        "vocab_size": 154880
    })
}

fn olmoe_1b_7b() -> Value {
    json!({
        "architectures": ["OlmoeForCausalLM"],
        "attention_bias": false,
        "attention_dropout": 0.0,
        "bos_token_id": null,
        "clip_qkv": null,
        "eos_token_id": 473,
        "hidden_act": "silu",
        "hidden_size": 2048,
        "initializer_range": 0.02,
        "intermediate_size": 1024,
        "max_position_embeddings": 4096,
        "model_type": "olmoe",
        "norm_topk_prob": false,
        "num_attention_heads": 16,
        "num_experts": 64,
        "num_experts_per_tok": 8,
        "num_hidden_layers": 16,
        "num_key_value_heads": 16,
        "output_router_logits": false,
        "pad_token_id": 471,
        "rms_norm_eps": 1e-5,
        "rope_scaling": null,
        "rope_theta": 10000.0,
        "router_aux_loss_coef": 0.01,
        "tie_word_embeddings": false,
        "torch_dtype": "bfloat16",
        "use_cache": true,
        "vocab_size": 50304
    })
}

fn mixtral_8x7b() -> Value {
    json!({
        "architectures": ["MixtralForCausalLM"],
        "attention_dropout": 0.0,
        "bos_token_id": 471,
        "eos_token_id": 473,
        "hidden_act": "silu",
        "hidden_size": 4096,
        "initializer_range": 0.02,
        "intermediate_size": 14336,
        "max_position_embeddings": 32768,
        "model_type": "mixtral",
        "num_attention_heads": 32,
        "num_experts_per_tok": 2,
        "num_hidden_layers": 32,
        "num_key_value_heads": 8,
        "num_local_experts": 8,
        "output_router_logits": false,
        "rms_norm_eps": 1e-5,
        "rope_theta": 1000000.0,
        "router_aux_loss_coef": 0.02,
        "sliding_window": null,
        "tie_word_embeddings": false,
        "torch_dtype": "bfloat16",
        "use_cache": true,
        "vocab_size": 32000
    })
}
