//! `glm4_moe` tensors (GLM-4.5 / GLM-4.6): standard GQA attention with optional per-head
//! q/k norms and float q/k/v biases (`attention_bias`), the GLM router (raw weight plus a
//! float32 selection bias, see [`super::glm4_moe_lite`]) and shared experts. The first
//! `first_k_dense_replace` layers are dense; there is no MTP layer.

use super::common::{
    attention, embedding, experts, final_norm_and_head, layer_norms, parse, require, swiglu,
    AttnDims, QkNorm,
};
use super::glm4_moe_lite::router;
use crate::synth::error::SynthError;
use crate::synth::plan::{Fill, Plan};
use serde::Deserialize;
use serde_json::Value;

#[derive(Deserialize)]
struct Cfg {
    vocab_size: usize,
    hidden_size: usize,
    intermediate_size: usize,
    moe_intermediate_size: usize,
    num_hidden_layers: usize,
    num_attention_heads: usize,
    num_key_value_heads: usize,
    head_dim: usize,
    n_shared_experts: Option<usize>,
    n_routed_experts: Option<usize>,
    num_experts_per_tok: usize,
    first_k_dense_replace: usize,
    use_qk_norm: bool,
    attention_bias: bool,
}

pub fn plan(cfg: &Value, plan: &mut Plan) -> Result<(), SynthError> {
    const ARCH: &str = "glm4_moe";
    let c: Cfg = parse(cfg, ARCH)?;
    let d = AttnDims {
        hidden: c.hidden_size,
        heads: c.num_attention_heads,
        kv_heads: c.num_key_value_heads,
        head_dim: c.head_dim,
    };
    require(
        d.heads > 0 && d.kv_heads > 0 && d.heads.is_multiple_of(d.kv_heads),
        ARCH,
        "num_attention_heads must be a positive multiple of num_key_value_heads",
    )?;
    let routed = c.n_routed_experts.unwrap_or(0);
    require(
        routed == 0 || (1..=routed).contains(&c.num_experts_per_tok),
        ARCH,
        "num_experts_per_tok must be 1..=n_routed_experts",
    )?;
    let h = c.hidden_size;
    let qk = if c.use_qk_norm {
        QkNorm::PerHead
    } else {
        QkNorm::None
    };
    embedding(plan, "model.", c.vocab_size, h);
    for i in 0..c.num_hidden_layers {
        let l = format!("model.layers.{i}");
        attention(plan, &l, &d, qk, false);
        if c.attention_bias {
            let kv = d.kv_heads * d.head_dim;
            for (proj, out) in [
                ("q_proj", d.heads * d.head_dim),
                ("k_proj", kv),
                ("v_proj", kv),
            ] {
                let float = plan.float.dtype();
                let fill = Fill::Normal {
                    mean: 0.0,
                    std: 0.02,
                };
                plan.raw(
                    &format!("{l}.self_attn.{proj}.bias"),
                    float,
                    vec![out],
                    fill,
                );
            }
        }
        let m = format!("{l}.mlp");
        if routed > 0 && i >= c.first_k_dense_replace {
            router(plan, &format!("{m}.gate"), routed, h);
            experts(plan, &m, h, routed, c.moe_intermediate_size);
            if let Some(n) = c.n_shared_experts {
                let inter = c.moe_intermediate_size * n;
                swiglu(plan, &format!("{m}.shared_experts"), h, inter);
            }
        } else {
            swiglu(plan, &m, h, c.intermediate_size);
        }
        layer_norms(plan, &l, h);
    }
    final_norm_and_head(plan, "model.", Some("lm_head"), c.vocab_size, h);
    Ok(())
}
