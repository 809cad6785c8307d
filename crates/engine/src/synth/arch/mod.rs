//! Tensor lists per architecture (`model_type`), read from a config.json.

mod common;
mod glm4_moe;
mod glm4_moe_lite;
mod hybrid;
mod mixtral;
mod olmoe;
mod qwen3_5;
mod qwen3_moe;
mod qwen3_next;

use super::error::SynthError;
use super::plan::Plan;
use serde_json::Value;

/// Architectures `synth` can write.
pub const MODEL_TYPES: &[&str] = &[
    "qwen3_moe",
    "qwen3_next",
    "qwen3_5",
    "qwen3_5_moe",
    "glm4_moe_lite",
    "glm4_moe",
    "olmoe",
    "mixtral",
];

/// Adds every tensor of the model `config` describes to `plan`, in save order.
pub fn plan(config: &Value, plan: &mut Plan) -> Result<(), SynthError> {
    let model_type = config
        .get("model_type")
        .and_then(Value::as_str)
        .ok_or_else(|| SynthError::Config("no \"model_type\" string".into()))?;
    match model_type {
        "qwen3_moe" => qwen3_moe::plan(config, plan),
        "qwen3_next" => qwen3_next::plan(config, plan),
        "qwen3_5" | "qwen3_5_moe" => qwen3_5::plan(config, plan),
        "glm4_moe_lite" => glm4_moe_lite::plan(config, plan),
        "glm4_moe" => glm4_moe::plan(config, plan),
        "olmoe" => olmoe::plan(config, plan),
        "mixtral" => mixtral::plan(config, plan),
        other => Err(SynthError::Config(format!(
            "model_type {other:?} is not supported by synth (supported: {})",
            MODEL_TYPES.join(", ")
        ))),
    }
}
