//! The output directory: refusing to overwrite a model, clearing stale shards under
//! `--force`, and checking free space before the first byte is written.

use super::error::SynthError;
use std::ffi::CString;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

/// Bytes an unprivileged user may still write on the filesystem holding `path` (or its
/// nearest existing ancestor, as `path` may not exist yet).
pub fn free_bytes(path: &Path) -> io::Result<u64> {
    let p = path
        .ancestors()
        .find(|p| !p.as_os_str().is_empty() && p.exists())
        .unwrap_or(Path::new("."));
    let c = CString::new(p.as_os_str().as_bytes())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "path contains a NUL byte"))?;
    // SAFETY: `c` is a valid NUL-terminated path and `st` a properly sized out-parameter
    // that statvfs fully initialises on success.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    if unsafe { libc::statvfs(c.as_ptr(), &mut st) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(st.f_bavail as u64 * st.f_frsize as u64)
}

/// Checks that `out` can receive a model: not a file, and not already a model unless
/// `force` (a real model's config.json is the thing we must not clobber by accident).
pub fn check_target(out: &Path, force: bool) -> Result<(), SynthError> {
    if out.exists() && !out.is_dir() {
        return Err(SynthError::NotADirectory {
            path: out.to_path_buf(),
        });
    }
    if out.join("config.json").exists() && !force {
        return Err(SynthError::ExistingModel(out.to_path_buf()));
    }
    Ok(())
}

/// Is `name` one of the weight files a model directory may hold (`model.safetensors`,
/// `model-NNNNN-of-NNNNN.safetensors`, the index)?
fn is_weight_file(name: &str) -> bool {
    if name == "model.safetensors" || name == "model.safetensors.index.json" {
        return true;
    }
    let Some(core) = name
        .strip_prefix("model-")
        .and_then(|n| n.strip_suffix(".safetensors"))
    else {
        return false;
    };
    let mut parts = core.split("-of-");
    let digits =
        |s: Option<&str>| s.is_some_and(|s| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()));
    digits(parts.next()) && digits(parts.next()) && parts.next().is_none()
}

/// Weight files in `out` that this run would not overwrite. Left in place they would be
/// loaded together with the new shards (mlx-lm globs `model*.safetensors`), so an
/// overwrite removes them.
pub fn stale_weight_files(out: &Path, written: &[&str]) -> Vec<PathBuf> {
    let Ok(dir) = std::fs::read_dir(out) else {
        return Vec::new();
    };
    let mut stale: Vec<PathBuf> = dir
        .filter_map(|e| e.ok())
        .filter(|e| {
            let name = e.file_name();
            let name = name.to_string_lossy();
            is_weight_file(&name) && !written.contains(&name.as_ref())
        })
        .map(|e| e.path())
        .collect();
    stale.sort();
    stale
}

/// Total size of those of `paths` that exist (space the run gets back).
pub fn existing_bytes<'a>(paths: impl IntoIterator<Item = &'a Path>) -> u64 {
    paths
        .into_iter()
        .filter_map(|p| std::fs::metadata(p).ok())
        .filter(|m| m.is_file())
        .map(|m| m.len())
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn weight_file_names() {
        assert!(is_weight_file("model.safetensors"));
        assert!(is_weight_file("model-00001-of-00004.safetensors"));
        assert!(is_weight_file("model.safetensors.index.json"));
        assert!(!is_weight_file("model-x-of-00004.safetensors"));
        assert!(!is_weight_file("my-model.safetensors"));
        assert!(!is_weight_file("adapters.safetensors"));
    }

    #[test]
    fn free_space_of_a_missing_path_uses_its_parent() {
        let p = std::env::temp_dir().join("moestream-synth-no-such-dir/deeper");
        assert!(free_bytes(&p).unwrap() > 0);
    }
}
