//! Reading the small JSON files of a model directory, with errors that name the file.

use std::path::{Path, PathBuf};

use serde_json::{Map, Value};

#[derive(Debug, thiserror::Error)]
pub enum JsonFileError {
    #[error("cannot read {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path} is not valid JSON: {source}")]
    Parse {
        path: PathBuf,
        source: serde_json::Error,
    },
    #[error("{path} must hold a JSON object at the top level")]
    NotObject { path: PathBuf },
}

/// Reads a JSON object from `path`, or `None` when the file does not exist.
pub fn read_optional_object(path: &Path) -> Result<Option<Map<String, Value>>, JsonFileError> {
    let text = match std::fs::read_to_string(path) {
        Ok(text) => text,
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(source) => {
            return Err(JsonFileError::Io {
                path: path.to_path_buf(),
                source,
            })
        }
    };
    match serde_json::from_str(&text) {
        Ok(Value::Object(map)) => Ok(Some(map)),
        Ok(_) => Err(JsonFileError::NotObject {
            path: path.to_path_buf(),
        }),
        Err(source) => Err(JsonFileError::Parse {
            path: path.to_path_buf(),
            source,
        }),
    }
}

/// Reads a UTF-8 text file, or `None` when it does not exist.
pub fn read_optional_text(path: &Path) -> Result<Option<String>, JsonFileError> {
    match std::fs::read_to_string(path) {
        Ok(text) => Ok(Some(text)),
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(JsonFileError::Io {
            path: path.to_path_buf(),
            source,
        }),
    }
}
