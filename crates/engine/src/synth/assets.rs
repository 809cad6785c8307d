//! The small non-weight files of a synthetic model: the repository's test tokenizer (480
//! tokens, ChatML template) embedded in the binary so `synth` works from any directory,
//! and a README that says the weights are random.

use super::error::SynthError;
use std::path::{Path, PathBuf};

macro_rules! tiny_model_file {
    ($name:literal) => {
        (
            $name,
            include_bytes!(concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/../../models/tiny-qwen3-moe/",
                $name
            ))
            .as_slice(),
        )
    };
}

/// Tokenizer and generation files, copied as they are.
pub const TOKENIZER_FILES: &[(&str, &[u8])] = &[
    tiny_model_file!("tokenizer.json"),
    tiny_model_file!("tokenizer_config.json"),
    tiny_model_file!("special_tokens_map.json"),
    tiny_model_file!("generation_config.json"),
];

/// What the README of a synthetic model says about how it was made.
pub struct ReadmeFacts<'a> {
    pub source: &'a str,
    pub model_type: &'a str,
    pub quantization: String,
    pub seed: u64,
    pub total_bytes: u64,
    pub parameters: u64,
}

pub fn readme(f: &ReadmeFacts<'_>) -> String {
    format!(
        "# Synthetic {source} ({model_type})\n\n\
         **The weights are random.** This directory was written by `moestream synth` to\n\
         exercise and benchmark the engine at the real model's shapes without downloading\n\
         it. Its text is noise.\n\n\
         | field | value |\n|---|---|\n\
         | source | {source} |\n\
         | model_type | {model_type} |\n\
         | quantization | {quant} |\n\
         | seed | {seed} |\n\
         | tensor bytes | {bytes} |\n\
         | parameters | {params} |\n\n\
         The tokenizer is the repository's 480-token test tokenizer; ids past it decode to\n\
         nothing.\n",
        source = f.source,
        model_type = f.model_type,
        quant = f.quantization,
        seed = f.seed,
        bytes = f.total_bytes,
        params = f.parameters,
    )
}

/// Writes the tokenizer files and the README into `dir`; returns their paths.
pub fn write(dir: &Path, readme_text: &str) -> Result<Vec<PathBuf>, SynthError> {
    let files = TOKENIZER_FILES
        .iter()
        .copied()
        .chain([("README.md", readme_text.as_bytes())]);
    let mut written = Vec::new();
    for (name, bytes) in files {
        let p = dir.join(name);
        std::fs::write(&p, bytes).map_err(|e| SynthError::io(&p, e))?;
        written.push(p);
    }
    Ok(written)
}

/// Bytes of the files [`write`] creates (for the free-space check).
pub fn bytes(readme_text: &str) -> u64 {
    TOKENIZER_FILES
        .iter()
        .map(|(_, b)| b.len() as u64)
        .sum::<u64>()
        + readme_text.len() as u64
}
