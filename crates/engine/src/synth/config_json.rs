//! The config.json a synthetic model ships: the preset's fields, the layer-count override,
//! `torch_dtype`, and the `quantization` block (copied to `quantization_config`, as mlx-lm's
//! `save_config` does).

use super::error::SynthError;
use super::plan::Plan;
use super::presets::layer_types;
use serde_json::{json, Map, Value};

/// Sets `num_hidden_layers` to `n` (in `text_config` when there is one) and keeps the
/// fields derived from it consistent.
pub fn set_layers(cfg: &mut Value, n: usize) -> Result<(), SynthError> {
    if n == 0 {
        return Err(SynthError::BadOption("--layers must be at least 1".into()));
    }
    let text = match cfg.get_mut("text_config") {
        Some(t) if t.is_object() => t,
        _ => cfg,
    };
    let obj = text
        .as_object_mut()
        .ok_or_else(|| SynthError::Config("config is not a JSON object".into()))?;
    obj.insert("num_hidden_layers".into(), json!(n));
    if obj.contains_key("max_window_layers") {
        obj.insert("max_window_layers".into(), json!(n));
    }
    if obj.contains_key("layer_types") {
        let interval = obj
            .get("full_attention_interval")
            .and_then(Value::as_u64)
            .unwrap_or(4) as usize;
        obj.insert("layer_types".into(), layer_types(n, interval));
    }
    Ok(())
}

/// Drops what a synthetic model must not inherit from a source config (an old
/// quantization block, the vision tower mlx-lm drops for text models).
pub fn strip(cfg: &mut Value) {
    if let Some(obj) = cfg.as_object_mut() {
        for k in ["quantization", "quantization_config", "vision_config"] {
            obj.remove(k);
        }
    }
}

/// Adds `torch_dtype` and the quantization blocks the plan implies.
pub fn finish(mut cfg: Value, plan: &Plan) -> Value {
    let Some(obj) = cfg.as_object_mut() else {
        return cfg;
    };
    obj.insert("torch_dtype".into(), json!(plan.float.torch_name()));
    if let Some(q) = plan.quant {
        let mut block = Map::new();
        block.insert("group_size".into(), json!(q.group_size));
        block.insert("bits".into(), json!(q.bits));
        block.insert("mode".into(), json!("affine"));
        for (path, p) in &plan.overrides {
            block.insert(
                path.clone(),
                json!({"group_size": p.group_size, "bits": p.bits}),
            );
        }
        obj.insert("quantization".into(), Value::Object(block.clone()));
        obj.insert("quantization_config".into(), Value::Object(block));
    }
    cfg
}

/// JSON indented by 4 spaces, as Python's `json.dump(..., indent=4)` writes it.
pub fn pretty(v: &Value) -> Vec<u8> {
    use serde::Serialize;
    let mut out = Vec::new();
    let fmt = serde_json::ser::PrettyFormatter::with_indent(b"    ");
    let mut ser = serde_json::Serializer::with_formatter(&mut out, fmt);
    // Serializing a Value into a Vec cannot fail.
    let _ = v.serialize(&mut ser);
    out.push(b'\n');
    out
}
