//! Finding a model directory's chat templates, with transformers' precedence.

use std::path::Path;

use serde_json::Value;

use super::TemplateError;
use crate::json_file;
use crate::tokenizer_config::TokenizerConfig;

/// One template's text and where it came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TemplateSource {
    /// `default`, or the name it is selected by (e.g. `tool_use`).
    pub name: String,
    /// A human-readable origin for errors, e.g. `dir/chat_template.jinja`.
    pub origin: String,
    pub source: String,
}

const TEMPLATE_FILE: &str = "chat_template.jinja";
const TEMPLATE_DIR: &str = "additional_chat_templates";

/// The templates of `dir`. As in transformers, template files (`chat_template.jinja` as
/// `default`, `additional_chat_templates/<name>.jinja` by name) replace the
/// `chat_template` entry of `tokenizer_config.json` entirely when any exists; that entry
/// is either one template string (`default`) or a list of `{name, template}`.
pub fn find_templates(
    dir: &Path,
    config: &TokenizerConfig,
) -> Result<Vec<TemplateSource>, TemplateError> {
    let files = template_files(dir)?;
    if !files.is_empty() {
        return Ok(files);
    }
    config_templates(config)
}

/// The templates of `config`'s `chat_template` entry alone, without looking for template
/// files (a GGUF file's config, which has no directory of its own).
pub fn config_templates(config: &TokenizerConfig) -> Result<Vec<TemplateSource>, TemplateError> {
    match (&config.chat_template, &config.path) {
        (Some(entry), Some(path)) => templates_from_config(path, entry),
        _ => Ok(Vec::new()),
    }
}

fn template_files(dir: &Path) -> Result<Vec<TemplateSource>, TemplateError> {
    let mut found = Vec::new();
    let main = dir.join(TEMPLATE_FILE);
    if let Some(source) = json_file::read_optional_text(&main)? {
        found.push(TemplateSource {
            name: "default".to_string(),
            origin: main.display().to_string(),
            source,
        });
    }
    let extra_dir = dir.join(TEMPLATE_DIR);
    let entries = match std::fs::read_dir(&extra_dir) {
        Ok(entries) => entries,
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Ok(found),
        Err(source) => {
            return Err(json_file::JsonFileError::Io {
                path: extra_dir,
                source,
            }
            .into())
        }
    };
    let mut extra = Vec::new();
    for entry in entries {
        let path = entry
            .map_err(|source| json_file::JsonFileError::Io {
                path: extra_dir.clone(),
                source,
            })?
            .path();
        let Some(name) = path
            .file_name()
            .and_then(|n| n.to_str())
            .and_then(|n| n.strip_suffix(".jinja"))
        else {
            continue;
        };
        if let Some(source) = json_file::read_optional_text(&path)? {
            extra.push(TemplateSource {
                name: name.to_string(),
                origin: path.display().to_string(),
                source,
            });
        }
    }
    // Directory order is arbitrary; keep listings and errors stable.
    extra.sort_by(|a, b| a.name.cmp(&b.name));
    found.extend(extra);
    Ok(found)
}

fn templates_from_config(path: &Path, entry: &Value) -> Result<Vec<TemplateSource>, TemplateError> {
    let bad = |reason: String| TemplateError::BadConfigField {
        path: path.to_path_buf(),
        reason,
    };
    match entry {
        Value::String(source) => Ok(vec![TemplateSource {
            name: "default".to_string(),
            origin: format!("{} (chat_template)", path.display()),
            source: source.clone(),
        }]),
        Value::Array(items) => items
            .iter()
            .enumerate()
            .map(|(i, item)| {
                let name = item.get("name").and_then(Value::as_str);
                let source = item.get("template").and_then(Value::as_str);
                match (name, source) {
                    (Some(name), Some(source)) => Ok(TemplateSource {
                        name: name.to_string(),
                        origin: format!("{} (chat_template `{name}`)", path.display()),
                        source: source.to_string(),
                    }),
                    _ => Err(bad(format!(
                        "item {i} must be an object with string `name` and `template`"
                    ))),
                }
            })
            .collect(),
        _ => Err(bad(
            "must be a string or a list of {name, template}".to_string()
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_util::TempDir;

    fn names(found: &[TemplateSource]) -> Vec<&str> {
        found.iter().map(|t| t.name.as_str()).collect()
    }

    #[test]
    fn files_replace_config_templates() {
        let dir = TempDir::with_files(&[
            ("tokenizer_config.json", r#"{"chat_template": "inline"}"#),
            ("chat_template.jinja", "file"),
            ("additional_chat_templates/tool_use.jinja", "tools"),
            ("additional_chat_templates/notes.txt", "ignored"),
        ]);
        let config = TokenizerConfig::from_model_dir(dir.path()).expect("config");
        let found = find_templates(dir.path(), &config).expect("templates");
        assert_eq!(names(&found), ["default", "tool_use"]);
        assert_eq!(found[0].source, "file");
    }

    #[test]
    fn config_list_gives_named_templates() {
        let dir = TempDir::with_files(&[(
            "tokenizer_config.json",
            r#"{"chat_template": [{"name": "default", "template": "a"}, {"name": "rag", "template": "b"}]}"#,
        )]);
        let config = TokenizerConfig::from_model_dir(dir.path()).expect("config");
        let found = find_templates(dir.path(), &config).expect("templates");
        assert_eq!(names(&found), ["default", "rag"]);
        assert!(found[1].origin.contains("tokenizer_config.json"));
    }

    #[test]
    fn malformed_list_item_names_the_file() {
        let dir = TempDir::with_files(&[(
            "tokenizer_config.json",
            r#"{"chat_template": [{"name": "default"}]}"#,
        )]);
        let config = TokenizerConfig::from_model_dir(dir.path()).expect("config");
        let err = find_templates(dir.path(), &config).expect_err("must fail");
        assert!(err.to_string().contains("tokenizer_config.json"), "{err}");
    }

    #[test]
    fn no_template_anywhere_is_empty() {
        let dir = TempDir::with_files(&[("tokenizer_config.json", r#"{"eos_token": "x"}"#)]);
        let config = TokenizerConfig::from_model_dir(dir.path()).expect("config");
        assert!(find_templates(dir.path(), &config)
            .expect("templates")
            .is_empty());
    }
}
