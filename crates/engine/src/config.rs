//! config.json: the raw JSON, the architecture name, and the quantization map.

use crate::error::LoadError;
use serde_json::{Map, Value};
use std::collections::HashMap;
use std::path::Path;

/// Quantization parameters of one module.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct QuantParams {
    pub group_size: usize,
    pub bits: u32,
}

/// The `quantization` (or `quantization_config`) block of config.json.
#[derive(Clone, Debug, Default)]
pub struct QuantConfig {
    /// Top-level defaults (informational: loading derives bits/group from shapes, as mlx-lm).
    pub default: Option<QuantParams>,
    /// Per-module overrides: `Some(params)`, or `None` for an explicitly unquantized module.
    pub overrides: HashMap<String, Option<QuantParams>>,
}

/// A parsed config.json. Architectures read their own fields from `raw` with serde; unknown
/// keys are ignored.
#[derive(Clone, Debug)]
pub struct ModelConfig {
    pub model_type: String,
    /// The text model's fields (`text_config` merged over the top level when present).
    pub raw: Value,
    pub quant: QuantConfig,
}

impl ModelConfig {
    pub fn load(dir: &Path) -> Result<Self, LoadError> {
        let path = dir.join("config.json");
        let text = std::fs::read_to_string(&path).map_err(|e| LoadError::io(&path, e))?;
        let raw: Value =
            serde_json::from_str(&text).map_err(|source| LoadError::Json { path, source })?;
        Self::from_value(raw)
    }

    pub fn from_value(raw: Value) -> Result<Self, LoadError> {
        let obj = raw
            .as_object()
            .ok_or_else(|| LoadError::Config("the top level is not a JSON object".into()))?;
        let model_type = obj
            .get("model_type")
            .and_then(Value::as_str)
            .ok_or_else(|| LoadError::Config("no \"model_type\" string".into()))?
            .to_string();
        let mut merged: Map<String, Value> = obj.clone();
        if let Some(Value::Object(text)) = obj.get("text_config") {
            for (k, v) in text {
                merged.insert(k.clone(), v.clone());
            }
        }
        let quant = match obj
            .get("quantization")
            .or_else(|| obj.get("quantization_config"))
        {
            Some(q) => parse_quant(q)?,
            None => QuantConfig::default(),
        };
        Ok(ModelConfig {
            model_type,
            raw: Value::Object(merged),
            quant,
        })
    }

    /// Deserializes the architecture's config struct, with the field at fault in the error.
    pub fn parse<T: serde::de::DeserializeOwned>(&self) -> Result<T, LoadError> {
        serde_json::from_value(self.raw.clone())
            .map_err(|e| LoadError::Config(format!("{} config: {e}", self.model_type)))
    }

    /// `eos_token_id` (int or list) from config.json.
    pub fn eos_token_ids(&self) -> Vec<u32> {
        ids_of(self.raw.get("eos_token_id"))
    }
}

/// An int or a list of ints (as `eos_token_id` appears in config and generation config).
pub fn ids_of(v: Option<&Value>) -> Vec<u32> {
    match v {
        Some(Value::Number(n)) => n.as_u64().map(|x| vec![x as u32]).unwrap_or_default(),
        Some(Value::Array(a)) => a
            .iter()
            .filter_map(|x| x.as_u64().map(|x| x as u32))
            .collect(),
        _ => Vec::new(),
    }
}

fn parse_params(v: &Map<String, Value>, what: &str) -> Result<QuantParams, LoadError> {
    let mode = v.get("mode").and_then(Value::as_str).unwrap_or("affine");
    if mode != "affine" {
        return Err(LoadError::Config(format!(
            "quantization of {what}: mode {mode:?} is not supported yet (only \"affine\")"
        )));
    }
    let num = |k: &str| v.get(k).and_then(Value::as_u64);
    match (num("group_size"), num("bits")) {
        (Some(g), Some(b)) => Ok(QuantParams {
            group_size: g as usize,
            bits: b as u32,
        }),
        _ => Err(LoadError::Config(format!(
            "quantization of {what}: needs integer group_size and bits"
        ))),
    }
}

fn parse_quant(q: &Value) -> Result<QuantConfig, LoadError> {
    let obj = q
        .as_object()
        .ok_or_else(|| LoadError::Config("\"quantization\" is not an object".into()))?;
    let mut cfg = QuantConfig::default();
    if obj.contains_key("bits") || obj.contains_key("group_size") {
        cfg.default = Some(parse_params(obj, "the model")?);
    }
    for (k, v) in obj {
        match v {
            Value::Object(m) => {
                cfg.overrides.insert(k.clone(), Some(parse_params(m, k)?));
            }
            Value::Bool(false) => {
                cfg.overrides.insert(k.clone(), None);
            }
            _ => {}
        }
    }
    Ok(cfg)
}
