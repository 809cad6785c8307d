//! `qwen3_moe` tensors (Qwen3-30B-A3B, Qwen3-235B-A22B, Qwen3-Coder-30B-A3B).

use super::common::{
    attention, embedding, experts, final_norm_and_head, layer_norms, parse, require, swiglu,
    AttnDims, QkNorm, READ,
};
use crate::synth::error::SynthError;
use crate::synth::plan::Plan;
use serde::Deserialize;
use serde_json::Value;

#[derive(Deserialize)]
struct Cfg {
    hidden_size: usize,
    num_hidden_layers: usize,
    #[serde(default)]
    intermediate_size: usize,
    num_attention_heads: usize,
    num_key_value_heads: Option<usize>,
    head_dim: Option<usize>,
    #[serde(default)]
    num_experts: usize,
    #[serde(default)]
    num_experts_per_tok: usize,
    #[serde(default = "one")]
    decoder_sparse_step: usize,
    #[serde(default)]
    mlp_only_layers: Vec<usize>,
    #[serde(default)]
    moe_intermediate_size: usize,
    vocab_size: usize,
    #[serde(default)]
    tie_word_embeddings: bool,
}

fn one() -> usize {
    1
}

pub fn plan(cfg: &Value, plan: &mut Plan) -> Result<(), SynthError> {
    const ARCH: &str = "qwen3_moe";
    let c: Cfg = parse(cfg, ARCH)?;
    let kv = c.num_key_value_heads.unwrap_or(c.num_attention_heads);
    let d = AttnDims {
        hidden: c.hidden_size,
        heads: c.num_attention_heads,
        kv_heads: kv,
        head_dim: c
            .head_dim
            .unwrap_or(c.hidden_size / c.num_attention_heads.max(1)),
    };
    require(
        d.heads > 0 && kv > 0 && d.heads.is_multiple_of(kv),
        ARCH,
        "num_attention_heads must be a positive multiple of num_key_value_heads",
    )?;
    require(c.decoder_sparse_step > 0, ARCH, "decoder_sparse_step is 0")?;
    require(
        c.num_experts == 0 || (1..=c.num_experts).contains(&c.num_experts_per_tok),
        ARCH,
        "num_experts_per_tok must be 1..=num_experts",
    )?;
    embedding(plan, "model.", c.vocab_size, c.hidden_size);
    for i in 0..c.num_hidden_layers {
        let l = format!("model.layers.{i}");
        attention(plan, &l, &d, QkNorm::PerHead, false);
        let moe = !c.mlp_only_layers.contains(&i)
            && c.num_experts > 0
            && (i + 1) % c.decoder_sparse_step == 0;
        if moe {
            let m = format!("{l}.mlp");
            plan.router(
                &format!("{m}.gate"),
                c.num_experts,
                c.hidden_size,
                READ,
                true,
            );
            experts(
                plan,
                &m,
                c.hidden_size,
                c.num_experts,
                c.moe_intermediate_size,
            );
        } else {
            swiglu(
                plan,
                &format!("{l}.mlp"),
                c.hidden_size,
                c.intermediate_size,
            );
        }
        layer_norms(plan, &l, c.hidden_size);
    }
    let head = (!c.tie_word_embeddings).then_some("lm_head");
    final_norm_and_head(plan, "model.", head, c.vocab_size, c.hidden_size);
    Ok(())
}
