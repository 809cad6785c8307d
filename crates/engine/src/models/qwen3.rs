//! `qwen3` (dense Qwen3 0.6B-32B, useful as draft models): the llama block plus per-head
//! q/k RMSNorm, an explicit `head_dim`, untied head by default, no biases.

use super::llama::{build, LlamaConfig};
use super::transformer::Transformer;
use super::BuildContext;
use crate::config::ModelConfig;
use crate::error::LoadError;
use crate::weights::WeightLoader;

pub fn load(
    cfg: &ModelConfig,
    w: &WeightLoader,
    ctx: &BuildContext,
) -> Result<Transformer, LoadError> {
    let mut c: LlamaConfig = cfg.parse()?;
    // Qwen3 configs omit these when false; llama's defaults differ.
    let raw = &cfg.raw;
    c.tie_word_embeddings = raw
        .get("tie_word_embeddings")
        .and_then(|v| v.as_bool())
        .unwrap_or(false);
    c.attention_bias = raw
        .get("attention_bias")
        .and_then(|v| v.as_bool())
        .unwrap_or(false);
    build(cfg, &c, true, w, ctx)
}
