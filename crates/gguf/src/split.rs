//! Models split over several files (`llama-gguf-split`): `NAME-00001-of-00003.gguf` ... Each
//! file has its own header and tensor directory; the first also carries the model's
//! metadata, and every file says `split.count` and its `split.no`.

use crate::header::GgufError;
use std::path::{Path, PathBuf};

/// The files of the model `path` names: every part when `path` is any part of a split model
/// (all must exist), else `path` alone.
pub fn files_of(path: &Path) -> Result<Vec<PathBuf>, GgufError> {
    let Some((prefix, count)) = split_name(path) else {
        return Ok(vec![path.to_path_buf()]);
    };
    let dir = path.parent().unwrap_or(Path::new(""));
    let files: Vec<PathBuf> = (1..=count)
        .map(|i| dir.join(format!("{prefix}-{i:05}-of-{count:05}.gguf")))
        .collect();
    if let Some(missing) = files.iter().find(|f| !f.is_file()) {
        return Err(GgufError {
            path: path.to_path_buf(),
            message: format!(
                "part of a model split into {count} files, but {} is missing",
                missing.display()
            ),
        });
    }
    Ok(files)
}

/// (`NAME`, N) of a file named `NAME-0000K-of-0000N.gguf`.
fn split_name(path: &Path) -> Option<(String, usize)> {
    let name = path.file_name()?.to_str()?;
    let stem = name.strip_suffix(".gguf")?;
    let (rest, count) = stem.rsplit_once("-of-")?;
    let (prefix, index) = rest.rsplit_once('-')?;
    let five_digits = |s: &str| s.len() == 5 && s.bytes().all(|b| b.is_ascii_digit());
    if !five_digits(index) || !five_digits(count) {
        return None;
    }
    let count: usize = count.parse().ok()?;
    (count >= 1).then(|| (prefix.to_string(), count))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn split_names_are_recognised_and_single_files_pass_through() {
        assert_eq!(
            split_name(Path::new("m/Qwen3-30B-Q4_K-00002-of-00003.gguf")),
            Some(("Qwen3-30B-Q4_K".into(), 3))
        );
        assert_eq!(split_name(Path::new("model.gguf")), None);
        assert_eq!(split_name(Path::new("a-1-of-2.gguf")), None);
        assert_eq!(
            files_of(Path::new("plain.gguf")).unwrap(),
            vec![PathBuf::from("plain.gguf")]
        );
        let err = files_of(Path::new("/nonexistent/x-00001-of-00002.gguf")).unwrap_err();
        assert!(
            err.to_string().contains("x-00001-of-00002.gguf is missing"),
            "{err}"
        );
    }
}
