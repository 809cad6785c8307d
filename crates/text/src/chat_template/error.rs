//! Errors of chat template loading and rendering; each names the template it came from.

use std::path::PathBuf;

use crate::json_file::JsonFileError;
use crate::tokenizer_config::TokenizerConfigError;

#[derive(Debug, thiserror::Error)]
pub enum TemplateError {
    #[error(transparent)]
    Config(#[from] TokenizerConfigError),
    #[error(transparent)]
    File(#[from] JsonFileError),
    #[error("{path}: field `chat_template` {reason}")]
    BadConfigField { path: PathBuf, reason: String },
    #[error("chat template {origin} does not compile: {source}")]
    Syntax {
        origin: String,
        #[source]
        source: minijinja::Error,
    },
    /// The template called `raise_exception(message)`: usually a conversation the model
    /// does not support (roles out of order, an unknown role). `message` is the
    /// template's own text, fit to show to the client.
    #[error("chat template {origin} rejected the conversation: {message}")]
    Raised { origin: String, message: String },
    #[error("chat template {origin} failed to render: {source}")]
    Render {
        origin: String,
        #[source]
        source: minijinja::Error,
    },
    #[error("message {index} is not a JSON object")]
    MessageNotObject { index: usize },
    #[error("template variable `{key}` is set by the renderer and cannot be passed as an extra")]
    ReservedVariable { key: String },
    #[error("no chat template named `{name}` (available: {available})")]
    UnknownTemplate { name: String, available: String },
    #[error("several chat templates ({available}) and none named `default`: name one")]
    NoDefault { available: String },
}
