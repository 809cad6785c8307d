//! `mixtral` tensors: no q/k norms, experts under `block_sparse_moe`, the router at the
//! default bits (no quant_predicate).

use super::common::{
    attention, embedding, experts, final_norm_and_head, layer_norms, parse, require, AttnDims,
    QkNorm, READ,
};
use crate::synth::error::SynthError;
use crate::synth::plan::Plan;
use serde::Deserialize;
use serde_json::Value;

#[derive(Deserialize)]
struct Cfg {
    hidden_size: usize,
    num_hidden_layers: usize,
    intermediate_size: usize,
    num_attention_heads: usize,
    num_key_value_heads: Option<usize>,
    num_local_experts: usize,
    num_experts_per_tok: usize,
    vocab_size: usize,
    #[serde(default)]
    tie_word_embeddings: bool,
}

pub fn plan(cfg: &Value, plan: &mut Plan) -> Result<(), SynthError> {
    const ARCH: &str = "mixtral";
    let c: Cfg = parse(cfg, ARCH)?;
    let kv = c.num_key_value_heads.unwrap_or(c.num_attention_heads);
    require(
        c.num_attention_heads > 0 && kv > 0 && c.num_attention_heads.is_multiple_of(kv),
        ARCH,
        "num_attention_heads must be a positive multiple of num_key_value_heads",
    )?;
    require(
        (1..=c.num_local_experts).contains(&c.num_experts_per_tok),
        ARCH,
        "num_experts_per_tok must be 1..=num_local_experts",
    )?;
    let d = AttnDims {
        hidden: c.hidden_size,
        heads: c.num_attention_heads,
        kv_heads: kv,
        head_dim: c.hidden_size / c.num_attention_heads,
    };
    embedding(plan, "model.", c.vocab_size, c.hidden_size);
    for i in 0..c.num_hidden_layers {
        let l = format!("model.layers.{i}");
        attention(plan, &l, &d, QkNorm::None, false);
        let m = format!("{l}.block_sparse_moe");
        plan.router(
            &format!("{m}.gate"),
            c.num_local_experts,
            c.hidden_size,
            READ,
            false,
        );
        experts(
            plan,
            &m,
            c.hidden_size,
            c.num_local_experts,
            c.intermediate_size,
        );
        layer_norms(plan, &l, c.hidden_size);
    }
    let head = (!c.tie_word_embeddings).then_some("lm_head");
    final_norm_and_head(plan, "model.", head, c.vocab_size, c.hidden_size);
    Ok(())
}
