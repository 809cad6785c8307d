//! `tokenizer.json` through the Hugging Face `tokenizers` crate.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

/// The error type of the `tokenizers` crate.
type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Errors from loading or running a tokenizer; each names the tokenizer file.
#[derive(Debug, thiserror::Error)]
pub enum TokenizerError {
    #[error("tokenizer file {path} not found")]
    NotFound { path: PathBuf },
    #[error("cannot load tokenizer {path}: {source}")]
    Load {
        path: PathBuf,
        #[source]
        source: BoxError,
    },
    #[error("tokenizer {path}: encoding failed: {source}")]
    Encode {
        path: PathBuf,
        #[source]
        source: BoxError,
    },
    #[error("tokenizer {path}: decoding failed: {source}")]
    Decode {
        path: PathBuf,
        #[source]
        source: BoxError,
    },
}

/// A loaded `tokenizer.json`.
pub struct Tokenizer {
    inner: tokenizers::Tokenizer,
    /// Where it came from; named in every error.
    origin: PathBuf,
    /// Ids of the added tokens flagged `special` (skipped by `decode(.., true)`).
    special_ids: BTreeSet<u32>,
    /// Ids of every added token, special or not (e.g. Qwen's `<think>`).
    added_ids: BTreeSet<u32>,
}

impl std::fmt::Debug for Tokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tokenizer")
            .field("origin", &self.origin)
            .field("vocab_size", &self.vocab_size())
            .finish_non_exhaustive()
    }
}

impl Tokenizer {
    /// Loads a `tokenizer.json` file.
    pub fn from_file(path: impl AsRef<Path>) -> Result<Self, TokenizerError> {
        let path = path.as_ref();
        let bytes = match std::fs::read(path) {
            Ok(bytes) => bytes,
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => {
                return Err(TokenizerError::NotFound {
                    path: path.to_path_buf(),
                })
            }
            Err(err) => {
                return Err(TokenizerError::Load {
                    path: path.to_path_buf(),
                    source: Box::new(err),
                })
            }
        };
        Self::from_bytes(&bytes, path)
    }

    /// Parses `tokenizer.json` contents; `origin` is the name used in errors.
    pub fn from_bytes(bytes: &[u8], origin: impl Into<PathBuf>) -> Result<Self, TokenizerError> {
        let origin = origin.into();
        let inner =
            tokenizers::Tokenizer::from_bytes(bytes).map_err(|source| TokenizerError::Load {
                path: origin.clone(),
                source,
            })?;
        let added = inner.get_added_tokens_decoder();
        let special_ids = added
            .iter()
            .filter(|(_, token)| token.special)
            .map(|(id, _)| *id)
            .collect();
        let added_ids = added.keys().copied().collect();
        Ok(Self {
            inner,
            origin,
            special_ids,
            added_ids,
        })
    }

    /// Token ids of `text`; `add_special_tokens` runs the post-processor (e.g. adds BOS).
    pub fn encode(&self, text: &str, add_special_tokens: bool) -> Result<Vec<u32>, TokenizerError> {
        // encode_fast gives the same ids as encode; it only skips char-offset bookkeeping.
        let encoding = self
            .inner
            .encode_fast(text, add_special_tokens)
            .map_err(|source| TokenizerError::Encode {
                path: self.origin.clone(),
                source,
            })?;
        Ok(encoding.get_ids().to_vec())
    }

    /// Text of `ids`. Ids outside the vocabulary are ignored, as `tokenizers` does.
    pub fn decode(&self, ids: &[u32], skip_special_tokens: bool) -> Result<String, TokenizerError> {
        self.inner
            .decode(ids, skip_special_tokens)
            .map_err(|source| TokenizerError::Decode {
                path: self.origin.clone(),
                source,
            })
    }

    pub fn token_to_id(&self, token: &str) -> Option<u32> {
        self.inner.token_to_id(token)
    }

    /// The vocabulary entry of `id` (byte-level tokens come back in their mapped form, e.g. `Ġ`).
    pub fn id_to_token(&self, id: u32) -> Option<String> {
        self.inner.id_to_token(id)
    }

    /// Number of tokens, added tokens included. The model's embedding may be larger.
    pub fn vocab_size(&self) -> usize {
        self.inner.get_vocab_size(true)
    }

    /// Ids of the special added tokens (those `decode(.., true)` drops).
    pub fn special_token_ids(&self) -> &BTreeSet<u32> {
        &self.special_ids
    }

    /// Ids of all added tokens, special or not.
    pub fn added_token_ids(&self) -> &BTreeSet<u32> {
        &self.added_ids
    }

    pub fn is_special(&self, id: u32) -> bool {
        self.special_ids.contains(&id)
    }

    /// The file (or name) this tokenizer was loaded from.
    pub fn origin(&self) -> &Path {
        &self.origin
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_file_is_named() {
        let err = Tokenizer::from_file("no/such/dir/tokenizer.json").expect_err("must fail");
        assert!(matches!(err, TokenizerError::NotFound { .. }));
        assert!(err.to_string().contains("no/such/dir/tokenizer.json"));
    }

    #[test]
    fn malformed_json_is_named() {
        let err =
            Tokenizer::from_bytes(b"{\"model\": 3}", "bad/tokenizer.json").expect_err("must fail");
        assert!(matches!(err, TokenizerError::Load { .. }));
        assert!(err.to_string().contains("bad/tokenizer.json"), "{err}");
    }
}
