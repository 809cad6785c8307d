//! Errors of the engine. Every variant names what was wrong and where (file, tensor, field),
//! because the user's only way to fix a bad model directory is to know which part is bad.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("model directory {0} does not exist or is not a directory")]
    NoModelDir(PathBuf),
    #[error("cannot read {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: invalid JSON: {source}")]
    Json {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    #[error("{path}: bad safetensors file: {reason}")]
    BadSafetensors { path: PathBuf, reason: String },
    #[error("{path}: tensor {tensor} needs bytes {start}..{end} but the file's data section holds {have} bytes (truncated file?)")]
    Truncated {
        path: PathBuf,
        tensor: String,
        start: usize,
        end: usize,
        have: usize,
    },
    #[error("no weight files: expected model.safetensors, model-*.safetensors or model.safetensors.index.json in {0}")]
    NoWeights(PathBuf),
    #[error("tensor {tensor} is listed in {index} but missing from {file}")]
    IndexMismatch {
        index: PathBuf,
        file: PathBuf,
        tensor: String,
    },
    #[error("missing tensor {tensor} (needed by {needed_by})")]
    MissingTensor { tensor: String, needed_by: String },
    #[error("tensor {tensor} in {file}: {problem}")]
    BadTensor {
        tensor: String,
        file: PathBuf,
        problem: String,
    },
    #[error("config.json: {0}")]
    Config(String),
    #[error("{0}")]
    Budget(String),
    #[error(
        "config.json names architecture {0:?}, which moestream does not support (supported: {1})"
    )]
    UnknownArchitecture(String, String),
    #[error("tokenizer or chat template: {0}")]
    Text(String),
    #[error("{0}")]
    DraftMismatch(String),
    /// A malformed, truncated or unsupported GGUF file (the message names the file).
    #[error(transparent)]
    Gguf(#[from] moestream_gguf::GgufError),
}

impl LoadError {
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        LoadError::Io {
            path: path.into(),
            source,
        }
    }
}

/// Errors while running a model (after a successful load).
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error("token id {id} is outside the vocabulary (size {vocab})")]
    TokenOutOfRange { id: u32, vocab: usize },
    #[error("the sequence would reach {len} tokens, beyond the model's context of {max}")]
    ContextFull { len: usize, max: usize },
    #[error("empty prompt: at least one token is needed")]
    EmptyPrompt,
    #[error("expert store: {0}")]
    Experts(String),
    #[error("text: {0}")]
    Text(String),
    /// The chat template failed on a conversation (kept whole: a server shows its clients
    /// only part of it).
    #[error("text: {0}")]
    Template(moestream_text::TemplateError),
    #[error(
        "layer {0}: the sequence cache has no recurrent state there (made for another model?)"
    )]
    CacheMismatch(usize),
    /// A device backend's failure (a kernel launch, a copy, out of device memory).
    #[error("device: {0}")]
    Device(String),
}
