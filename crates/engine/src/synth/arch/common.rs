//! Module groups several architectures share, and the initialisation gains.
//!
//! Why these gains: with one small scale on every matrix a random MoE routes almost every
//! token to the same few experts (`scripts/peers/routing_spread.py` measures the spread).
//! What keeps routing spread is a residual stream that stays dominated by the token's own
//! embedding: embeddings of RMS ~1, projections that *read* the normalised stream sized for
//! outputs of RMS ~1, and the projections that *write* into the residual stream (attention
//! output, expert down, GDN output) sized for small outputs, so 48 layers of random updates
//! do not wash the token identity out. `synth/tests.rs` measures the resulting spread.

use super::super::error::SynthError;
use super::super::plan::{Init, Plan};
use serde::de::DeserializeOwned;
use serde_json::Value;

/// Std of the embedding entries: the residual stream starts at RMS ~1.
pub const EMBED: Init = Init::Std(1.0);
/// Projections reading the normalised residual stream (q/k/v, gate/up, in_proj, routers,
/// lm_head): outputs of RMS ~1.
pub const READ: Init = Init::Gain(1.0);
/// Projections writing into the residual stream (o_proj, down_proj, out_proj): outputs of
/// RMS ~0.1, small next to the embedding.
pub const WRITE: Init = Init::Gain(0.1);

/// Deserializes an architecture's config fields, naming the architecture on failure.
pub fn parse<T: DeserializeOwned>(cfg: &Value, arch: &str) -> Result<T, SynthError> {
    serde_json::from_value(cfg.clone()).map_err(|e| SynthError::Config(format!("{arch}: {e}")))
}

/// Fails with `msg` unless `ok`.
pub fn require(ok: bool, arch: &str, msg: &str) -> Result<(), SynthError> {
    if ok {
        Ok(())
    } else {
        Err(SynthError::Config(format!("{arch}: {msg}")))
    }
}

/// `{model}embed_tokens`, quantized like a Linear `[vocab, hidden]`.
pub fn embedding(plan: &mut Plan, model: &str, vocab: usize, hidden: usize) {
    plan.linear(&format!("{model}embed_tokens"), vocab, hidden, EMBED);
}

/// `{model}norm` and, unless the head is tied to the embedding, the `lm_head` at `head`.
pub fn final_norm_and_head(
    plan: &mut Plan,
    model: &str,
    head: Option<&str>,
    vocab: usize,
    hidden: usize,
) {
    plan.norm(&format!("{model}norm"), hidden);
    if let Some(h) = head {
        plan.linear(h, vocab, hidden, READ);
    }
}

/// The two pre-norms of a decoder layer.
pub fn layer_norms(plan: &mut Plan, layer: &str, hidden: usize) {
    plan.norm(&format!("{layer}.input_layernorm"), hidden);
    plan.norm(&format!("{layer}.post_attention_layernorm"), hidden);
}

/// How q/k are normalised before RoPE.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum QkNorm {
    None,
    /// Qwen: RMSNorm over each head (`[head_dim]`).
    PerHead,
    /// OLMoE: RMSNorm over the whole projection (`[heads * head_dim]`).
    AllHeads,
}

/// Sizes of a GQA attention block.
pub struct AttnDims {
    pub hidden: usize,
    pub heads: usize,
    pub kv_heads: usize,
    pub head_dim: usize,
}

/// `{layer}.self_attn.*`: q/k/v/o projections (q doubled for the output gate when
/// `gated`, as in qwen3_next and qwen3_5) and the q/k norms.
pub fn attention(plan: &mut Plan, layer: &str, d: &AttnDims, qk: QkNorm, gated: bool) {
    let a = format!("{layer}.self_attn");
    let q_out = d.heads * d.head_dim * if gated { 2 } else { 1 };
    let kv_out = d.kv_heads * d.head_dim;
    plan.linear(&format!("{a}.q_proj"), q_out, d.hidden, READ);
    plan.linear(&format!("{a}.k_proj"), kv_out, d.hidden, READ);
    plan.linear(&format!("{a}.v_proj"), kv_out, d.hidden, READ);
    plan.linear(
        &format!("{a}.o_proj"),
        d.hidden,
        d.heads * d.head_dim,
        WRITE,
    );
    match qk {
        QkNorm::None => {}
        QkNorm::PerHead => {
            plan.norm(&format!("{a}.q_norm"), d.head_dim);
            plan.norm(&format!("{a}.k_norm"), d.head_dim);
        }
        QkNorm::AllHeads => {
            plan.norm(&format!("{a}.q_norm"), d.heads * d.head_dim);
            plan.norm(&format!("{a}.k_norm"), kv_out);
        }
    }
}

/// A SwiGLU MLP at `path` (`gate_proj`, `up_proj`, `down_proj`).
pub fn swiglu(plan: &mut Plan, path: &str, hidden: usize, inter: usize) {
    plan.linear(&format!("{path}.gate_proj"), inter, hidden, READ);
    plan.linear(&format!("{path}.up_proj"), inter, hidden, READ);
    plan.linear(&format!("{path}.down_proj"), hidden, inter, WRITE);
}

/// Stacked routed experts `{moe}.switch_mlp.{gate,up,down}_proj` (`[E, out, in]`).
pub fn experts(plan: &mut Plan, moe: &str, hidden: usize, n: usize, inter: usize) {
    let s = format!("{moe}.switch_mlp");
    plan.stacked(&format!("{s}.gate_proj"), n, inter, hidden, READ);
    plan.stacked(&format!("{s}.up_proj"), n, inter, hidden, READ);
    plan.stacked(&format!("{s}.down_proj"), n, hidden, inter, WRITE);
}
