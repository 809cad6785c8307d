//! Routed experts of a GGUF model re-laid once into a file of affine triples, so that
//! `--stream-experts` reads them from disk like an MLX model's (positional and direct reads,
//! slot re-lay, bounded memory) instead of converting them all into memory.
//!
//! The directory holds `experts.bin` (every part at a 4 KiB-aligned offset) and
//! `experts.json` (name, dtype, shape, offset and length of each part, and the GGUF file's
//! size and modification time). Both are written under temporary names and renamed into
//! place, the index last: a directory without it, or whose index names another file or other
//! tensors, is rewritten.

use super::convert::{convert, Job, Part};
use crate::error::LoadError;
use crate::weights::bytes::{Backing, Bytes};
use crate::weights::safetensors::{Dtype, Tensor};
use serde_json::{json, Value};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;

const VERSION: u64 = 1;
const ALIGN: u64 = 4096;

/// Where the re-laid experts of `gguf` go: `$MOESTREAM_GGUF_CACHE`, else
/// `$XDG_CACHE_HOME/moestream/gguf`, else `~/.cache/moestream/gguf`; one directory per file,
/// named by its stem, size and modification time.
pub fn dir_for(gguf: &Path) -> Result<PathBuf, LoadError> {
    let root = std::env::var_os("MOESTREAM_GGUF_CACHE")
        .map(PathBuf::from)
        .or_else(|| {
            std::env::var_os("XDG_CACHE_HOME").map(|d| PathBuf::from(d).join("moestream/gguf"))
        })
        .or_else(|| {
            std::env::var_os("HOME").map(|d| PathBuf::from(d).join(".cache/moestream/gguf"))
        })
        .ok_or_else(|| {
            LoadError::Config(
                "--stream-experts on a GGUF file needs a cache directory: set MOESTREAM_GGUF_CACHE"
                    .into(),
            )
        })?;
    let (size, mtime) = identity(gguf)?;
    let stem = gguf.file_stem().and_then(|s| s.to_str()).unwrap_or("model");
    Ok(root.join(format!("{stem}-{size:x}-{mtime:x}")))
}

/// The GGUF file's size and modification time (seconds): what the cache is valid for.
fn identity(gguf: &Path) -> Result<(u64, u64), LoadError> {
    let m = std::fs::metadata(gguf).map_err(|e| LoadError::io(gguf, e))?;
    let mtime = m
        .modified()
        .ok()
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map_or(0, |d| d.as_secs());
    Ok((m.len(), mtime))
}

/// The experts of `jobs` as tensors mapped from `dir`, written there first unless an earlier
/// run did. `progress(done, total)` counts tensors.
pub fn load_or_write(
    dir: &Path,
    jobs: &[Job],
    progress: &mut dyn FnMut(usize, usize),
) -> Result<Vec<(String, Tensor)>, LoadError> {
    let index_path = dir.join("experts.json");
    let data_path = dir.join("experts.bin");
    let index = match read_index(&index_path, jobs) {
        Some(index) => index,
        None => {
            eprintln!(
                "re-laying the GGUF experts for streaming into {} (once; later runs reuse it)",
                dir.display()
            );
            write(dir, &data_path, &index_path, jobs, progress)?
        }
    };
    let file = std::fs::File::open(&data_path).map_err(|e| LoadError::io(&data_path, e))?;
    // SAFETY: read-only mapping of a file this process wrote and no one else writes.
    let map = unsafe { memmap2::Mmap::map(&file) }.map_err(|e| LoadError::io(&data_path, e))?;
    let mapped_len = map.len() as u64;
    let backing = Arc::new(Backing::Mapped {
        map,
        file,
        path: data_path.clone(),
    });
    let mut out = Vec::new();
    for e in index["tensors"].as_array().into_iter().flatten() {
        let entry = Entry::from_json(e).ok_or_else(|| bad_index(&index_path))?;
        if entry.offset + entry.len > mapped_len {
            return Err(LoadError::Truncated {
                path: data_path.clone(),
                tensor: entry.name,
                start: entry.offset as usize,
                end: (entry.offset + entry.len) as usize,
                have: mapped_len as usize,
            });
        }
        let file = jobs
            .iter()
            .find(|j| j.info.name == entry.source)
            .map(|j| Arc::new(j.file().to_path_buf()))
            .ok_or_else(|| bad_index(&index_path))?;
        out.push((
            entry.name,
            Tensor {
                name: entry.source,
                dtype: entry.dtype,
                shape: entry.shape,
                bytes: Bytes::new(
                    Arc::clone(&backing),
                    entry.offset as usize,
                    entry.len as usize,
                ),
                file,
            },
        ));
    }
    Ok(out)
}

fn bad_index(path: &Path) -> LoadError {
    LoadError::BadSafetensors {
        path: path.to_path_buf(),
        reason: "malformed expert cache index (delete the directory to rebuild it)".into(),
    }
}

/// One part in the data file.
struct Entry {
    name: String,
    source: String,
    dtype: Dtype,
    shape: Vec<usize>,
    offset: u64,
    len: u64,
}

impl Entry {
    fn to_json(&self) -> Value {
        json!({"name": self.name, "source": self.source, "dtype": self.dtype.as_str(),
               "shape": self.shape, "offset": self.offset, "len": self.len})
    }

    fn from_json(v: &Value) -> Option<Entry> {
        Some(Entry {
            name: v["name"].as_str()?.to_string(),
            source: v["source"].as_str()?.to_string(),
            dtype: Dtype::parse(v["dtype"].as_str()?)?,
            shape: v["shape"]
                .as_array()?
                .iter()
                .map(|d| d.as_u64().map(|d| d as usize))
                .collect::<Option<_>>()?,
            offset: v["offset"].as_u64()?,
            len: v["len"].as_u64()?,
        })
    }
}

/// What the index must say for the cache to serve `jobs`: the version, and each source GGUF
/// file with its size and modification time.
fn sources(jobs: &[Job]) -> Value {
    let mut files: Vec<&Path> = jobs.iter().map(|j| j.file()).collect();
    files.sort();
    files.dedup();
    let list: Vec<Value> = files
        .iter()
        .map(|f| {
            let (size, mtime) = identity(f).unwrap_or((0, 0));
            json!({"file": f.to_string_lossy(), "size": size, "mtime": mtime})
        })
        .collect();
    json!({"version": VERSION, "files": list})
}

/// The index at `path` if it is complete and made from the same files and tensors.
fn read_index(path: &Path, jobs: &[Job]) -> Option<Value> {
    let v: Value = serde_json::from_str(&std::fs::read_to_string(path).ok()?).ok()?;
    if v["sources"] != sources(jobs) {
        return None;
    }
    let mut have: Vec<&str> = v["tensors"]
        .as_array()?
        .iter()
        .filter_map(|e| e["source"].as_str())
        .collect();
    have.sort();
    have.dedup();
    let mut want: Vec<&str> = jobs.iter().map(|j| j.info.name.as_str()).collect();
    want.sort();
    (have == want).then_some(v)
}

/// Converts every job, one tensor at a time (memory stays one tensor's worth), appending its
/// parts to `data_path`; then writes the index.
fn write(
    dir: &Path,
    data_path: &Path,
    index_path: &Path,
    jobs: &[Job],
    progress: &mut dyn FnMut(usize, usize),
) -> Result<Value, LoadError> {
    std::fs::create_dir_all(dir).map_err(|e| LoadError::io(dir, e))?;
    // Both files are written under names of this process and renamed into place, data first:
    // a process that has the old data mapped keeps it, two processes filling the same cache
    // at once each rename a complete (identical) copy, and a failed write leaves no index.
    let tmp = |p: &Path| {
        let mut name = p.file_name().unwrap_or_default().to_os_string();
        name.push(format!(".{}.tmp", std::process::id()));
        p.with_file_name(name)
    };
    let (data_tmp, index_tmp) = (tmp(data_path), tmp(index_path));
    let result = write_files(&data_tmp, &index_tmp, jobs, progress).and_then(|index| {
        std::fs::rename(&data_tmp, data_path).map_err(|e| LoadError::io(data_path, e))?;
        std::fs::rename(&index_tmp, index_path).map_err(|e| LoadError::io(index_path, e))?;
        Ok(index)
    });
    if result.is_err() {
        let _ = std::fs::remove_file(&data_tmp);
        let _ = std::fs::remove_file(&index_tmp);
    }
    result
}

/// Converts every job into `data_path` and writes the index to `index_path`.
fn write_files(
    data_path: &Path,
    index_path: &Path,
    jobs: &[Job],
    progress: &mut dyn FnMut(usize, usize),
) -> Result<Value, LoadError> {
    let io = |e| LoadError::io(data_path, e);
    let mut f = std::io::BufWriter::new(std::fs::File::create(data_path).map_err(io)?);
    let mut offset = 0u64;
    let mut entries = Vec::new();
    for (i, job) in jobs.iter().enumerate() {
        for Part {
            name,
            dtype,
            shape,
            data,
            source,
            ..
        } in convert(job)?
        {
            let pad = offset.next_multiple_of(ALIGN) - offset;
            f.write_all(&vec![0u8; pad as usize]).map_err(io)?;
            offset += pad;
            let bytes = data.as_slice();
            f.write_all(bytes).map_err(io)?;
            entries.push(Entry {
                name,
                source,
                dtype,
                shape,
                offset,
                len: bytes.len() as u64,
            });
            offset += bytes.len() as u64;
        }
        progress(i + 1, jobs.len());
    }
    f.flush().map_err(io)?;
    f.get_ref().sync_all().map_err(io)?;
    let index = json!({
        "sources": sources(jobs),
        "tensors": entries.iter().map(Entry::to_json).collect::<Vec<_>>(),
    });
    std::fs::write(index_path, serde_json::to_vec(&index).expect("JSON"))
        .map_err(|e| LoadError::io(index_path, e))?;
    Ok(index)
}
