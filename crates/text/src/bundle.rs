//! Everything text-related a model directory or a GGUF file provides, loaded together.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use moestream_gguf::{Gguf, GgufError};
use serde_json::Value;

use crate::chat_template::{ChatTemplate, TemplateError};
use crate::detokenize::StreamDecoder;
use crate::gguf_vocab::GgufVocab;
use crate::json_file::{self, JsonFileError};
use crate::tokenizer::{Tokenizer, TokenizerError};
use crate::tokenizer_config::{TokenizerConfig, TokenizerConfigError};

#[derive(Debug, thiserror::Error)]
pub enum BundleError {
    #[error(transparent)]
    Tokenizer(#[from] TokenizerError),
    #[error(transparent)]
    Config(#[from] TokenizerConfigError),
    #[error(transparent)]
    Template(#[from] TemplateError),
    #[error(transparent)]
    File(#[from] JsonFileError),
    /// A GGUF file that cannot be read, or whose tokenizer metadata is missing or malformed.
    #[error(transparent)]
    Gguf(#[from] GgufError),
    #[error("{path}: field `eos_token_id` must be a token id or a list of token ids, got {found}")]
    BadEosField { path: PathBuf, found: String },
}

/// The tokenizer, chat template and end-of-sequence ids of one model directory.
#[derive(Debug)]
pub struct TokenizerBundle {
    pub tokenizer: Arc<Tokenizer>,
    /// `None` when the model has no chat template (a base model).
    pub chat_template: Option<ChatTemplate>,
    pub config: TokenizerConfig,
    /// Generation stops at any of these.
    pub eos_token_ids: BTreeSet<u32>,
}

impl TokenizerBundle {
    /// Loads `tokenizer.json` (required), `tokenizer_config.json` and the chat template
    /// (optional), and collects the EOS ids.
    pub fn from_model_dir(dir: impl AsRef<Path>) -> Result<Self, BundleError> {
        let dir = dir.as_ref();
        let tokenizer = Arc::new(Tokenizer::from_file(dir.join("tokenizer.json"))?);
        let config = TokenizerConfig::from_model_dir(dir)?;
        let chat_template = ChatTemplate::from_config(dir, &config)?;
        let eos_token_ids = eos_token_ids(dir, &tokenizer, &config)?;
        Ok(Self {
            tokenizer,
            chat_template,
            config,
            eos_token_ids,
        })
    }

    /// Loads the tokenizer, chat template and EOS ids from a GGUF file's metadata (the
    /// first file of a split model holds it). The file is memory-mapped: only the pages of
    /// its header are read.
    pub fn from_gguf(path: impl AsRef<Path>) -> Result<Self, BundleError> {
        let path = path.as_ref();
        let first = moestream_gguf::split::files_of(path)?.swap_remove(0);
        let io_error = |e: std::io::Error| GgufError {
            path: first.clone(),
            message: format!("cannot read: {e}"),
        };
        let file = std::fs::File::open(&first).map_err(io_error)?;
        // SAFETY: the map is read-only and dropped before returning; model files are not
        // modified while being loaded (the same assumption every mmap-based loader makes).
        let map = unsafe { memmap2::Mmap::map(&file) }.map_err(io_error)?;
        let gguf = Gguf::parse(&map, &first)?;
        Self::from_parsed_gguf(&gguf)
    }

    /// [`from_gguf`](Self::from_gguf) for a file already parsed.
    pub fn from_parsed_gguf(gguf: &Gguf) -> Result<Self, BundleError> {
        let vocab = GgufVocab::read(gguf)?;
        let json = serde_json::to_vec(vocab.tokenizer_json()).expect("a JSON value serializes");
        let tokenizer = Arc::new(Tokenizer::from_bytes(&json, &gguf.path)?);
        // The metadata stands in for tokenizer_config.json, so the chat template is built
        // the same way: from a config's `chat_template` entry and named special tokens.
        let config = TokenizerConfig {
            path: Some(gguf.path.clone()),
            special_tokens: vocab.special_tokens(),
            chat_template: vocab.chat_template.clone(),
        };
        let chat_template = ChatTemplate::from_config_entry(&config)?;
        Ok(Self {
            tokenizer,
            chat_template,
            config,
            eos_token_ids: vocab.eos_token_ids,
        })
    }

    pub fn is_eos(&self, id: u32) -> bool {
        self.eos_token_ids.contains(&id)
    }

    /// A fresh streaming decoder over this tokenizer (special tokens skipped).
    pub fn stream_decoder(&self) -> StreamDecoder {
        StreamDecoder::new(Arc::clone(&self.tokenizer))
    }
}

/// The union, as mlx-lm stops on any of them, of: the id of the tokenizer config's
/// `eos_token`, and `eos_token_id` (an id or a list) from `generation_config.json` and
/// from `config.json`.
fn eos_token_ids(
    dir: &Path,
    tokenizer: &Tokenizer,
    config: &TokenizerConfig,
) -> Result<BTreeSet<u32>, BundleError> {
    let mut ids = BTreeSet::new();
    // An eos_token missing from the vocabulary cannot be generated; nothing to stop on.
    if let Some(id) = config
        .special_token("eos_token")
        .and_then(|token| tokenizer.token_to_id(token))
    {
        ids.insert(id);
    }
    for file in ["generation_config.json", "config.json"] {
        let path = dir.join(file);
        if let Some(object) = json_file::read_optional_object(&path)? {
            if let Some(value) = object.get("eos_token_id") {
                ids.extend(parse_eos_field(&path, value)?);
            }
        }
    }
    Ok(ids)
}

fn parse_eos_field(path: &Path, value: &Value) -> Result<Vec<u32>, BundleError> {
    let bad = || BundleError::BadEosField {
        path: path.to_path_buf(),
        found: value.to_string(),
    };
    let id = |v: &Value| {
        v.as_u64()
            .and_then(|n| u32::try_from(n).ok())
            .ok_or_else(bad)
    };
    match value {
        Value::Null => Ok(Vec::new()),
        Value::Number(_) => Ok(vec![id(value)?]),
        Value::Array(items) => items.iter().map(id).collect(),
        _ => Err(bad()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_util::{byte_level_tokenizer_json, TempDir};

    fn model_dir(extra: &[(&str, &str)]) -> TempDir {
        let tokenizer = byte_level_tokenizer_json();
        let mut files = vec![("tokenizer.json", tokenizer.as_str())];
        files.extend_from_slice(extra);
        TempDir::with_files(&files)
    }

    #[test]
    fn eos_ids_are_the_union_of_all_sources() {
        let dir = model_dir(&[
            (
                "tokenizer_config.json",
                r#"{"eos_token": "<|end|>", "chat_template": "{{ eos_token }}"}"#,
            ),
            ("generation_config.json", r#"{"eos_token_id": [10, 11]}"#),
            ("config.json", r#"{"eos_token_id": 12}"#),
        ]);
        let bundle = TokenizerBundle::from_model_dir(dir.path()).expect("bundle");
        assert_eq!(bundle.eos_token_ids, BTreeSet::from([10, 11, 12, 256]));
        assert!(bundle.is_eos(256) && !bundle.is_eos(0));
        assert!(bundle.chat_template.is_some());
    }

    #[test]
    fn optional_files_may_be_missing() {
        let dir = model_dir(&[]);
        let bundle = TokenizerBundle::from_model_dir(dir.path()).expect("bundle");
        assert!(bundle.eos_token_ids.is_empty());
        assert!(bundle.chat_template.is_none());
    }

    #[test]
    fn missing_tokenizer_names_the_path() {
        let dir = TempDir::new();
        let err = TokenizerBundle::from_model_dir(dir.path()).expect_err("must fail");
        assert!(matches!(
            err,
            BundleError::Tokenizer(TokenizerError::NotFound { .. })
        ));
        let expected = dir.path().join("tokenizer.json");
        assert!(
            err.to_string().contains(&expected.display().to_string()),
            "{err}"
        );
    }

    #[test]
    fn bad_eos_field_names_file_and_field() {
        let dir = model_dir(&[("config.json", r#"{"eos_token_id": "</s>"}"#)]);
        let err = TokenizerBundle::from_model_dir(dir.path()).expect_err("must fail");
        let msg = err.to_string();
        assert!(
            msg.contains("config.json") && msg.contains("eos_token_id"),
            "{msg}"
        );
    }

    #[test]
    fn malformed_generation_config_names_the_file() {
        let dir = model_dir(&[("generation_config.json", "{not json")]);
        let err = TokenizerBundle::from_model_dir(dir.path()).expect_err("must fail");
        assert!(err.to_string().contains("generation_config.json"), "{err}");
    }
}
