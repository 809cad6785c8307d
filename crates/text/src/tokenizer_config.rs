//! `tokenizer_config.json` (plus the legacy `special_tokens_map.json`): the named special
//! tokens and the raw `chat_template` entry.

use std::path::{Path, PathBuf};

use serde_json::{Map, Value};

use crate::json_file::{self, JsonFileError};

/// The named special-token attributes transformers passes to chat templates, in its order
/// (`SPECIAL_TOKENS_ATTRIBUTES`).
pub const SPECIAL_TOKEN_NAMES: [&str; 7] = [
    "bos_token",
    "eos_token",
    "unk_token",
    "sep_token",
    "pad_token",
    "cls_token",
    "mask_token",
];

/// Errors reading `tokenizer_config.json` or `special_tokens_map.json`.
#[derive(Debug, thiserror::Error)]
pub enum TokenizerConfigError {
    #[error(transparent)]
    File(#[from] JsonFileError),
    #[error("{path}: field `{field}` {reason}")]
    Field {
        path: PathBuf,
        field: String,
        reason: String,
    },
}

/// The parts of `tokenizer_config.json` this crate uses.
#[derive(Debug, Clone, Default)]
pub struct TokenizerConfig {
    /// Where it was read from (`None` when the directory has no config).
    pub path: Option<PathBuf>,
    /// Named special tokens that are set, e.g. `("eos_token", "<|im_end|>")`, in
    /// [`SPECIAL_TOKEN_NAMES`] order.
    pub special_tokens: Vec<(String, String)>,
    /// The raw `chat_template` entry: a string or a list of `{name, template}`.
    pub chat_template: Option<Value>,
}

impl TokenizerConfig {
    /// Reads `tokenizer_config.json` from `dir`; a missing file counts as an empty one.
    pub fn from_model_dir(dir: &Path) -> Result<Self, TokenizerConfigError> {
        let config_path = dir.join("tokenizer_config.json");
        let found = json_file::read_optional_object(&config_path)?;
        let path = found.is_some().then_some(config_path);
        let config = found.unwrap_or_default();
        let mut special = match &path {
            Some(path) => read_special_tokens(path, &config)?,
            None => NamedTokens::new(),
        };

        // Like transformers: the legacy special_tokens_map.json is only consulted when the
        // config has no `added_tokens_decoder`, and then its entries win.
        if !config.contains_key("added_tokens_decoder") {
            let legacy_path = dir.join("special_tokens_map.json");
            if let Some(legacy) = json_file::read_optional_object(&legacy_path)? {
                for (name, value) in read_special_tokens(&legacy_path, &legacy)? {
                    set_token(&mut special, &name, value);
                }
            }
        }
        let special_tokens = SPECIAL_TOKEN_NAMES
            .iter()
            .filter_map(|name| {
                let value = special.iter().find(|(n, _)| n == name)?.1.clone()?;
                Some((name.to_string(), value))
            })
            .collect();

        let chat_template = config
            .get("chat_template")
            .filter(|v| !v.is_null())
            .cloned();
        Ok(Self {
            path,
            special_tokens,
            chat_template,
        })
    }

    /// The content of a named special token, e.g. `special_token("eos_token")`.
    pub fn special_token(&self, name: &str) -> Option<&str> {
        self.special_tokens
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

type NamedTokens = Vec<(String, Option<String>)>;

fn set_token(tokens: &mut NamedTokens, name: &str, value: Option<String>) {
    match tokens.iter_mut().find(|(n, _)| n == name) {
        Some(slot) => slot.1 = value,
        None => tokens.push((name.to_string(), value)),
    }
}

/// Reads every named special token present in `object`; an explicit `null` is kept as
/// `None` so that it can override a value from another file.
fn read_special_tokens(
    path: &Path,
    object: &Map<String, Value>,
) -> Result<NamedTokens, TokenizerConfigError> {
    let mut tokens = NamedTokens::new();
    for name in SPECIAL_TOKEN_NAMES {
        if let Some(value) = object.get(name) {
            tokens.push((name.to_string(), token_content(path, name, value)?));
        }
    }
    Ok(tokens)
}

/// A special token is written either as a string or as an AddedToken object
/// `{"content": "...", ...}`.
fn token_content(
    path: &Path,
    field: &str,
    value: &Value,
) -> Result<Option<String>, TokenizerConfigError> {
    let bad = |reason: &str| TokenizerConfigError::Field {
        path: path.to_path_buf(),
        field: field.to_string(),
        reason: reason.to_string(),
    };
    match value {
        Value::Null => Ok(None),
        Value::String(s) => Ok(Some(s.clone())),
        Value::Object(obj) => match obj.get("content") {
            Some(Value::String(s)) => Ok(Some(s.clone())),
            _ => Err(bad("is an object without a string `content`")),
        },
        _ => Err(bad("must be a string or an object with `content`")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_util::TempDir;

    #[test]
    fn reads_string_and_object_tokens() {
        let dir = TempDir::with_files(&[(
            "tokenizer_config.json",
            r#"{"eos_token": {"content": "</s>", "lstrip": false}, "bos_token": "<s>",
                "pad_token": null, "chat_template": "{{ x }}"}"#,
        )]);
        let config = TokenizerConfig::from_model_dir(dir.path()).expect("config");
        assert_eq!(
            config.special_tokens,
            vec![
                ("bos_token".to_string(), "<s>".to_string()),
                ("eos_token".to_string(), "</s>".to_string())
            ]
        );
        assert_eq!(config.chat_template, Some(Value::from("{{ x }}")));
    }

    #[test]
    fn legacy_map_overrides_only_without_added_tokens_decoder() {
        let legacy = ("special_tokens_map.json", r#"{"eos_token": "<legacy>"}"#);
        let dir = TempDir::with_files(&[
            ("tokenizer_config.json", r#"{"eos_token": "</s>"}"#),
            legacy,
        ]);
        let config = TokenizerConfig::from_model_dir(dir.path()).expect("config");
        assert_eq!(config.special_token("eos_token"), Some("<legacy>"));

        let dir = TempDir::with_files(&[
            (
                "tokenizer_config.json",
                r#"{"eos_token": "</s>", "added_tokens_decoder": {}}"#,
            ),
            legacy,
        ]);
        let config = TokenizerConfig::from_model_dir(dir.path()).expect("config");
        assert_eq!(config.special_token("eos_token"), Some("</s>"));
    }

    #[test]
    fn bad_token_type_names_file_and_field() {
        let dir = TempDir::with_files(&[("tokenizer_config.json", r#"{"eos_token": 7}"#)]);
        let err = TokenizerConfig::from_model_dir(dir.path()).expect_err("must fail");
        let msg = err.to_string();
        assert!(
            msg.contains("tokenizer_config.json") && msg.contains("eos_token"),
            "{msg}"
        );
    }

    #[test]
    fn legacy_map_alone_still_gives_tokens() {
        let dir = TempDir::with_files(&[(
            "special_tokens_map.json",
            r#"{"eos_token": {"content": "</s>"}}"#,
        )]);
        let config = TokenizerConfig::from_model_dir(dir.path()).expect("config");
        assert_eq!(config.special_token("eos_token"), Some("</s>"));
        assert!(config.path.is_none());
    }

    #[test]
    fn missing_config_is_empty() {
        let dir = TempDir::new();
        let config = TokenizerConfig::from_model_dir(dir.path()).expect("config");
        assert!(config.path.is_none() && config.special_tokens.is_empty());
    }
}
