//! Text layer: `tokenizer.json`, Hugging Face chat templates, streaming detokenization,
//! stop strings.
//!
//! [`TokenizerBundle::from_model_dir`] loads what a model directory provides and
//! [`TokenizerBundle::from_gguf`] what a GGUF file's metadata does; the chat
//! template renders like transformers' `apply_chat_template(..., tokenize=False)`;
//! [`StreamDecoder`] and [`StopMatcher`] turn generated ids into the text a client sees.

mod bundle;
pub mod chat_template;
mod detokenize;
pub mod gguf_vocab;
mod json_file;
mod stop;
pub mod tokenizer;
pub mod tokenizer_config;

#[cfg(test)]
mod test_util;

pub use bundle::{BundleError, TokenizerBundle};
pub use chat_template::{ChatTemplate, RenderRequest, TemplateError, TemplateSource};
pub use detokenize::StreamDecoder;
pub use gguf_vocab::{GgufVocab, VocabModel};
pub use json_file::JsonFileError;
pub use stop::{StopMatcher, StopOutcome};
pub use tokenizer::{Tokenizer, TokenizerError};
pub use tokenizer_config::{TokenizerConfig, TokenizerConfigError};

#[cfg(test)]
mod thread_safety {
    /// The server shares one bundle across request tasks and moves decoders between them.
    #[test]
    fn shared_types_are_send_and_sync() {
        fn send_sync<T: Send + Sync>() {}
        send_sync::<super::TokenizerBundle>();
        send_sync::<super::ChatTemplate>();
        send_sync::<super::StreamDecoder>();
        send_sync::<super::StopMatcher>();
    }
}
