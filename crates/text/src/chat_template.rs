//! Hugging Face chat templates, rendered like transformers'
//! `apply_chat_template(..., tokenize=False)`.
//!
//! The jinja2 dialect is run by minijinja with transformers' settings (see
//! `environment.rs`); the inputs get transformers' normalization (see `conversation.rs`).
//! Parity is checked byte for byte against transformers by the fixtures in
//! `fixtures/chat_templates/`. Known differences, none seen in real chat templates:
//!
//! * Python tuples (from `|items`, `|dictsort`) print as lists: `['a', 1]`, not `('a', 1)`.
//! * `d.items` / `d.keys` / `d.values` / `d.get` without a call, on a dict that has a key
//!   of that name: jinja2 gives the dict method, minijinja the key's value.
//! * Python `str` methods are those of minijinja-contrib's `pycompat` (strip, split,
//!   startswith, replace, format, ...), not all of them.
//! * Integers wider than 64 bits in the JSON input are read as floats.
//! * `strftime_now` formats with jiff: `%Z` / `%z` print the local zone, where Python's
//!   naive `datetime.now()` prints nothing.
//! * `repr` of a string escapes non-printable characters by the Unicode tables of the
//!   `unicode_categories` crate, which predate Python's; unassigned code points count as
//!   printable.

mod conversation;
mod environment;
mod error;
mod loader;
mod preprocess;
mod pyjson;
mod pyrepr;

use std::path::Path;

use minijinja::Environment;
use serde_json::{Map, Value};

pub use error::TemplateError;
pub use loader::TemplateSource;

use crate::tokenizer_config::TokenizerConfig;

/// Variables the renderer sets itself; an extra of the same name would be ambiguous
/// (Python refuses it with "got multiple values for keyword argument").
const RESERVED_VARIABLES: [&str; 4] = ["messages", "tools", "documents", "add_generation_prompt"];

/// One rendering of a conversation.
#[derive(Debug, Clone, Copy)]
pub struct RenderRequest<'a> {
    /// OpenAI-style messages, passed through unchanged but for transformers'
    /// normalization (null fields dropped, reasoning aliased).
    pub messages: &'a [Value],
    /// Tool schemas; `None` renders as the template's `none`. Giving tools selects the
    /// `tool_use` template when the model has one.
    pub tools: Option<&'a [Value]>,
    /// Documents for retrieval-augmented templates; `None` renders as `none`.
    pub documents: Option<&'a [Value]>,
    pub add_generation_prompt: bool,
    /// Extra template variables (e.g. `enable_thinking`); they override special tokens.
    pub extra: &'a Map<String, Value>,
    /// A named template (e.g. `tool_use`) instead of the default selection.
    pub template_name: Option<&'a str>,
}

impl<'a> RenderRequest<'a> {
    /// A request with no tools, no documents, no generation prompt and the default template.
    pub fn new(messages: &'a [Value], extra: &'a Map<String, Value>) -> Self {
        Self {
            messages,
            tools: None,
            documents: None,
            add_generation_prompt: false,
            extra,
            template_name: None,
        }
    }
}

/// A model's chat template(s), compiled and ready to render.
pub struct ChatTemplate {
    env: Environment<'static>,
    /// Names and origins, in load order; the compiled templates live in `env` by name.
    templates: Vec<(String, String)>,
    /// Named special tokens (`bos_token`, ...) given to every rendering, as transformers does.
    special_tokens: Vec<(String, String)>,
}

impl std::fmt::Debug for ChatTemplate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChatTemplate")
            .field("templates", &self.templates)
            .field("special_tokens", &self.special_tokens)
            .finish_non_exhaustive()
    }
}

impl ChatTemplate {
    /// Loads the chat template(s) of a model directory; `None` when it has none.
    pub fn from_model_dir(dir: impl AsRef<Path>) -> Result<Option<Self>, TemplateError> {
        let dir = dir.as_ref();
        let config = TokenizerConfig::from_model_dir(dir)?;
        Self::from_config(dir, &config)
    }

    /// Like [`from_model_dir`](Self::from_model_dir), with `tokenizer_config.json` already read.
    pub fn from_config(
        dir: &Path,
        config: &TokenizerConfig,
    ) -> Result<Option<Self>, TemplateError> {
        let sources = loader::find_templates(dir, config)?;
        Self::from_found(sources, config)
    }

    /// The template(s) of `config`'s `chat_template` entry alone, named after
    /// `config.path` in errors: for a config that stands for no model directory, such as
    /// the one built from a GGUF file's metadata.
    pub fn from_config_entry(config: &TokenizerConfig) -> Result<Option<Self>, TemplateError> {
        let sources = loader::config_templates(config)?;
        Self::from_found(sources, config)
    }

    fn from_found(
        sources: Vec<TemplateSource>,
        config: &TokenizerConfig,
    ) -> Result<Option<Self>, TemplateError> {
        if sources.is_empty() {
            return Ok(None);
        }
        Self::from_sources(sources, config.special_tokens.clone()).map(Some)
    }

    /// Compiles templates given directly. `special_tokens` are `(name, content)` pairs
    /// such as `("eos_token", "</s>")`.
    pub fn from_sources(
        sources: Vec<TemplateSource>,
        special_tokens: Vec<(String, String)>,
    ) -> Result<Self, TemplateError> {
        let mut env = environment::new_environment().map_err(|source| TemplateError::Syntax {
            origin: "(environment)".to_string(),
            source,
        })?;
        let mut templates = Vec::with_capacity(sources.len());
        for TemplateSource {
            name,
            origin,
            source,
        } in sources
        {
            let prepared = preprocess::prepare_source(&source);
            env.add_template_owned(name.clone(), prepared)
                .map_err(|source| TemplateError::Syntax {
                    origin: origin.clone(),
                    source,
                })?;
            templates.push((name, origin));
        }
        Ok(Self {
            env,
            templates,
            special_tokens,
        })
    }

    /// Names of the available templates (`default`, `tool_use`, ...).
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.templates.iter().map(|(name, _)| name.as_str())
    }

    /// The template transformers would pick: the named one if given; otherwise
    /// `tool_use` when tools are given and it exists, else `default`.
    pub fn select(&self, name: Option<&str>, has_tools: bool) -> Result<&str, TemplateError> {
        let find = |wanted: &str| self.names().find(|n| *n == wanted);
        let available = || self.names().collect::<Vec<_>>().join(", ");
        if let Some(wanted) = name {
            return find(wanted).ok_or_else(|| TemplateError::UnknownTemplate {
                name: wanted.to_string(),
                available: available(),
            });
        }
        let tool_use = if has_tools { find("tool_use") } else { None };
        tool_use
            .or_else(|| find("default"))
            .ok_or_else(|| TemplateError::NoDefault {
                available: available(),
            })
    }

    /// Renders a conversation to the prompt text.
    pub fn render(&self, request: &RenderRequest<'_>) -> Result<String, TemplateError> {
        let name = self.select(request.template_name, request.tools.is_some())?;
        let origin = self
            .templates
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, origin)| origin.clone())
            .unwrap_or_default();
        let context = self.context(request)?;
        let render_error = |source: minijinja::Error| match raised_message(&source) {
            Some(message) => TemplateError::Raised {
                origin: origin.clone(),
                message,
            },
            None => TemplateError::Render {
                origin: origin.clone(),
                source,
            },
        };
        let template = self.env.get_template(name).map_err(render_error)?;
        template
            .render(minijinja::Value::from(minijinja::value::Serde(&context)))
            .map_err(render_error)
    }

    /// The template's variables, in transformers' precedence: messages, tools, documents,
    /// add_generation_prompt, then special tokens, then extras (which may override them).
    fn context(&self, request: &RenderRequest<'_>) -> Result<Map<String, Value>, TemplateError> {
        let messages = conversation::normalize_messages(request.messages).map_err(
            |conversation::NotAnObject(index)| TemplateError::MessageNotObject { index },
        )?;
        let optional_list = |items: Option<&[Value]>| match items {
            Some(items) => Value::Array(items.to_vec()),
            None => Value::Null,
        };
        let mut context = Map::new();
        context.insert("messages".into(), Value::Array(messages));
        context.insert("tools".into(), optional_list(request.tools));
        context.insert("documents".into(), optional_list(request.documents));
        context.insert(
            "add_generation_prompt".into(),
            Value::Bool(request.add_generation_prompt),
        );
        for (name, content) in &self.special_tokens {
            context.insert(name.clone(), Value::String(content.clone()));
        }
        for (key, value) in request.extra {
            if RESERVED_VARIABLES.contains(&key.as_str()) {
                return Err(TemplateError::ReservedVariable { key: key.clone() });
            }
            context.insert(key.clone(), value.clone());
        }
        Ok(context)
    }
}

/// The message of a `raise_exception` call somewhere in the error's chain.
fn raised_message(err: &minijinja::Error) -> Option<String> {
    let mut current: Option<&(dyn std::error::Error + 'static)> = Some(err);
    while let Some(e) = current {
        if let Some(raised) = e.downcast_ref::<environment::RaisedByTemplate>() {
            return Some(raised.0.clone());
        }
        current = e.source();
    }
    None
}

#[cfg(test)]
mod tests;
