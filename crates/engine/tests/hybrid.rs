//! Hybrid (Gated DeltaNet) models: the recurrent state rolls back only through checkpoints,
//! and bad configs fail at load with the field at fault named.

mod common;

use common::*;
use moestream_engine::speculative::rollback::restore;
use moestream_engine::{load_model, LoadOptions};
use moestream_kernels::Precision;

fn opts() -> LoadOptions {
    LoadOptions {
        threads: Some(2),
        warm: false,
        precision: Precision::Exact,
        stream: None,
        ..Default::default()
    }
}

#[test]
fn checkpoint_restore_rewinds_recurrent_state() {
    for name in ["qwen3_next_q4_g32_f32", "qwen3_5_moe_f32"] {
        let m = load_model(&fixture(name), &opts(), &mut |_| {})
            .unwrap()
            .model;
        let prompt = ids(&expected(name)["prompt_ids"]);
        let (a, b) = ([5u32, 77, 300, 12], [9u32, 41, 2, 460, 33]);
        let mut logits = Vec::new();
        let mut cache = m.new_cache();
        assert!(!cache.is_trimmable(), "{name}: GDN state cannot be trimmed");
        m.forward(&prompt, &mut cache, false, &mut logits).unwrap();
        let cp = cache.checkpoint();
        m.forward(&a, &mut cache, false, &mut logits).unwrap();
        let after_a = logits.clone();
        // Back to the checkpoint, then another continuation: as if `a` never happened.
        restore(&m.dev, &mut cache, &cp);
        m.forward(&b, &mut cache, false, &mut logits).unwrap();
        let mut fresh = m.new_cache();
        let mut want = Vec::new();
        m.forward(&prompt, &mut fresh, false, &mut want).unwrap();
        m.forward(&b, &mut fresh, false, &mut want).unwrap();
        assert_eq!(logits, want, "{name}: restore then b == prompt then b");
        assert_eq!(cache.recurrent, fresh.recurrent);
        // And `a` again gives exactly the first result.
        restore(&m.dev, &mut cache, &cp);
        m.forward(&a, &mut cache, false, &mut logits).unwrap();
        assert_eq!(logits, after_a, "{name}: replay after restore");
    }
    let m = load_model(&fixture("qwen3_moe_f32"), &opts(), &mut |_| {})
        .unwrap()
        .model;
    assert!(m.new_cache().is_trimmable());
}

/// A copy of fixture `name` with its config.json edited by `edit`.
#[test]
fn bad_hybrid_configs_are_clear_errors() {
    type Edit = fn(&mut serde_json::Value);
    let cases: &[(&str, &str, Edit, &[&str])] = &[
        (
            "qwen3_next_f32",
            "no-linear",
            |c| {
                c.as_object_mut().unwrap().remove("linear_num_value_heads");
            },
            &["linear_num_value_heads", "missing"],
        ),
        (
            "qwen3_next_f32",
            "hv-hk",
            |c| c["linear_num_value_heads"] = 3.into(),
            &["linear_num_value_heads (3)", "linear_num_key_heads (2)"],
        ),
        (
            "qwen3_next_f32",
            "nh-nkv",
            |c| c["num_key_value_heads"] = 3.into(),
            &["num_attention_heads (4)", "num_key_value_heads (3)"],
        ),
        (
            "qwen3_next_f32",
            "rotary",
            |c| c["partial_rotary_factor"] = 0.1875.into(),
            &["partial_rotary_factor", "3 rotated features"],
        ),
        (
            "qwen3_next_f32",
            "dv-shape",
            |c| c["linear_value_head_dim"] = 8.into(),
            &["model.layers.0.linear_attn.in_proj_qkvz", "shape"],
        ),
        (
            "qwen3_5_moe_f32",
            "no-linear-35",
            |c| {
                c["text_config"]
                    .as_object_mut()
                    .unwrap()
                    .remove("linear_key_head_dim");
            },
            &["linear_key_head_dim", "missing"],
        ),
        (
            "qwen3_5_moe_f32",
            "hv-hk-35",
            |c| c["text_config"]["linear_num_key_heads"] = 3.into(),
            &["linear_num_value_heads (4)", "linear_num_key_heads (3)"],
        ),
    ];
    for (name, tag, edit, needles) in cases {
        let msg = load_error(&edited(name, tag, *edit));
        for n in *needles {
            assert!(
                msg.contains(n),
                "{name}/{tag}: {msg:?} should mention {n:?}"
            );
        }
    }
}
