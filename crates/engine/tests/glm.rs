//! GLM families. `glm4_moe_lite` (multi-head latent attention): the compressed cache rolls
//! back and hands out prefixes like a KV cache, and its bytes per token are what the memory
//! budget counts. Bad `glm4_moe_lite` / `glm4_moe` configs fail at load with the field or
//! tensor at fault named. (Parity with mlx-lm is in parity.rs.)

mod common;

use common::*;
use moestream_engine::load_model;
use moestream_engine::models::kv_bytes_per_token;

const NAME: &str = "glm4_moe_lite_q4_g32_f32";

/// Prefix copies and truncation of the latent cache continue exactly like a cache that
/// never went past that point (what the prompt cache and speculative rollback rely on).
#[test]
fn latent_cache_truncates_and_clones_prefixes() {
    let loaded = load_model(&fixture(NAME), &exact_options(), &mut |_| {}).unwrap();
    let m = &loaded.model;
    let prompt = ids(&expected(NAME)["prompt_ids"]);
    let vocab = m.info.vocab_size;
    let mut full = m.new_cache();
    let mut all = Vec::new();
    m.forward(&prompt, &mut full, true, &mut all).unwrap();
    let row = |i: usize| &all[i * vocab..(i + 1) * vocab];

    let mut prefix = full.clone_prefix(20);
    assert_eq!(prefix.offset, 20);
    let mut logits = Vec::new();
    for (i, &t) in prompt.iter().enumerate().skip(20) {
        m.forward(&[t], &mut prefix, false, &mut logits).unwrap();
        assert!(
            max_abs_diff(&logits, row(i)) < 1e-5,
            "clone_prefix, position {i}"
        );
    }

    assert!(full.is_trimmable());
    full.truncate(10);
    m.forward(&prompt[10..], &mut full, false, &mut logits)
        .unwrap();
    let last = prompt.len() - 1;
    assert!(
        max_abs_diff(&logits, row(last)) < 1e-5,
        "truncate then refill"
    );
}

/// One latent row (kv_lora_rank 32) and one rotary key (qk_rope_head_dim 16) per token and
/// layer, f32: what the cache holds and what the streaming budget reserves per token.
#[test]
fn latent_cache_bytes_are_rank_plus_rope_per_layer() {
    let loaded = load_model(&fixture(NAME), &exact_options(), &mut |_| {}).unwrap();
    let m = &loaded.model;
    let mut cache = m.new_cache();
    m.forward(&[1, 2, 3], &mut cache, false, &mut Vec::new())
        .unwrap();
    let layers = m.layers.len();
    assert_eq!(
        kv_bytes_per_token(&m.layers, &m.attn),
        (layers * (32 + 16) * 4) as u64
    );
    for kv in &cache.layers {
        assert_eq!((kv.n_kv, kv.head_dim, kv.v_dim), (1, 32, 16));
    }
    assert_eq!(
        cache.kv_bytes(),
        layers * cache.layers[0].cap * (32 + 16) * 4
    );
}

#[test]
fn bad_glm4_moe_lite_configs_are_clear_errors() {
    type Edit = fn(&mut serde_json::Value);
    let cases: &[(&str, Edit, &[&str])] = &[
        (
            "heads",
            |c| c["num_attention_heads"] = 2.into(),
            &["model.layers.0.self_attn.q_b_proj", "shape"],
        ),
        (
            "rank",
            |c| c["kv_lora_rank"] = 16.into(),
            &["model.layers.0.self_attn.kv_a_proj_with_mqa", "shape"],
        ),
        (
            "v-dim",
            |c| c["v_head_dim"] = 16.into(),
            &["model.layers.0.self_attn.unembed_out", "shape"],
        ),
        (
            "odd-rope",
            |c| c["qk_rope_head_dim"] = 15.into(),
            &["qk_rope_head_dim (15)", "even"],
        ),
        (
            "groups",
            |c| c["n_group"] = 3.into(),
            &["n_group (3)", "n_routed_experts (16)"],
        ),
        (
            "topk-group",
            |c| c["topk_group"] = 5.into(),
            &["topk_group (5)", "n_group (4)"],
        ),
        (
            "method",
            |c| c["topk_method"] = "greedy".into(),
            &["topk_method", "greedy", "noaux_tc"],
        ),
        (
            "top-k",
            |c| c["num_experts_per_tok"] = 17.into(),
            &["num_experts_per_tok (17)"],
        ),
        (
            "zero-heads",
            |c| c["num_attention_heads"] = 0.into(),
            &["num_attention_heads", "positive"],
        ),
    ];
    for (tag, edit, needles) in cases {
        let msg = load_error(&edited("glm4_moe_lite_f32", &format!("glm-{tag}"), *edit));
        for n in *needles {
            assert!(msg.contains(n), "{tag}: {msg:?} should mention {n:?}");
        }
    }
}

#[test]
fn bad_glm4_moe_configs_are_clear_errors() {
    type Edit = fn(&mut serde_json::Value);
    let cases: &[(&str, Edit, &[&str])] = &[
        (
            "nh-nkv",
            |c| c["num_key_value_heads"] = 3.into(),
            &["num_attention_heads (4)", "num_key_value_heads (3)"],
        ),
        (
            "rotary",
            |c| c["partial_rotary_factor"] = 0.1875.into(),
            &["partial_rotary_factor", "3 rotated features"],
        ),
        (
            "groups",
            |c| c["n_group"] = 32.into(),
            &["n_group (32)", "n_routed_experts (16)"],
        ),
        (
            "missing",
            |c| {
                c.as_object_mut().unwrap().remove("use_qk_norm");
            },
            &["use_qk_norm", "missing"],
        ),
        (
            "head-dim",
            |c| c["head_dim"] = 8.into(),
            &["model.layers.0.self_attn.q_proj", "shape"],
        ),
    ];
    for (tag, edit, needles) in cases {
        let msg = load_error(&edited("glm4_moe_f32", &format!("glm45-{tag}"), *edit));
        for n in *needles {
            assert!(msg.contains(n), "{tag}: {msg:?} should mention {n:?}");
        }
    }
}
