//! Text layer: tokenizer.json, Hugging Face chat templates, streaming detokenization,
//! stop strings.

pub mod chat_template;
mod json_file;
pub mod tokenizer;
pub mod tokenizer_config;

#[cfg(test)]
mod test_util;

pub use chat_template::{ChatTemplate, RenderRequest, TemplateError, TemplateSource};
pub use json_file::JsonFileError;
pub use tokenizer::{Tokenizer, TokenizerError};
pub use tokenizer_config::{TokenizerConfig, TokenizerConfigError};
