//! Errors of `synth`. Each names the option, preset, file or directory at fault, because the
//! user fixes a failed run by changing exactly that.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum SynthError {
    #[error("unknown preset {0:?} (presets: {1})")]
    UnknownPreset(String, String),
    #[error("{0}")]
    BadOption(String),
    #[error("preset config: {0}")]
    Config(String),
    #[error("{0} already holds a model (config.json); pass --force to overwrite it")]
    ExistingModel(PathBuf),
    #[error("{path} is not a directory")]
    NotADirectory { path: PathBuf },
    #[error(
        "not enough free space in {path}: the model needs {need} bytes ({need_gib:.1} GiB), \
         {have} bytes ({have_gib:.1} GiB) are free",
        need_gib = *need as f64 / (1u64 << 30) as f64,
        have_gib = *have as f64 / (1u64 << 30) as f64
    )]
    NoSpace { path: PathBuf, need: u64, have: u64 },
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

impl SynthError {
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        SynthError::Io {
            path: path.into(),
            source,
        }
    }
}
