//! GGUF files as a model: the metadata becomes the architecture's config, the tensors are
//! renamed to the Hugging Face/MLX names the loaders know, and block-quantized tensors are
//! re-laid as MLX affine `weight`/`scales`/`biases` triples (exactly: see
//! `moestream_gguf::affine`), so every architecture loader and kernel runs them unchanged.
//! Float tensors stay views into the mapped file.

mod arch;
mod config;
mod convert;
mod disk_cache;
mod layout;

use crate::config::ModelConfig;
use crate::error::LoadError;
use crate::weights::WeightStore;
use moestream_gguf::Gguf;
use std::path::Path;

/// Whether `path` names a GGUF file (rather than a model directory).
pub fn is_gguf(path: &Path) -> bool {
    path.extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("gguf"))
        && !path.is_dir()
}

/// A GGUF model opened for loading.
pub struct GgufModel {
    pub config: ModelConfig,
    pub store: WeightStore,
    /// How its tensor names map (for errors about a tensor a loader wanted).
    pub names: TensorNames,
}

/// The architecture's tensor-name map, kept to name a missing tensor as the file does.
pub struct TensorNames(&'static arch::Arch);

impl TensorNames {
    /// `e` with a missing HF tensor named by its GGUF name and `path`.
    pub fn explain(&self, path: &Path, e: LoadError) -> LoadError {
        match e {
            LoadError::MissingTensor { tensor, needed_by } => {
                let gguf = arch::gguf_name(self.0, &tensor).unwrap_or(tensor);
                LoadError::MissingTensor {
                    tensor: format!("{gguf} in {}", path.display()),
                    needed_by,
                }
            }
            other => other,
        }
    }
}

/// Maps and parses every file of the model at `path`, checks the architecture and converts
/// the tensors; with `stream_experts`, the routed experts go to a file on disk (see
/// `disk_cache`). `progress(done, total)` counts tensors.
pub fn open(
    path: &Path,
    stream_experts: bool,
    progress: &mut dyn FnMut(usize, usize),
) -> Result<GgufModel, LoadError> {
    if !path.is_file() {
        return Err(LoadError::NoModelDir(path.to_path_buf()));
    }
    let files = moestream_gguf::split::files_of(path)?;
    let mut parsed = Vec::with_capacity(files.len());
    for f in &files {
        parsed.push(convert::map_file(f)?);
    }
    let first: &Gguf = &parsed[0].1;
    let arch = arch::find(first)?;
    let all = || parsed.iter().flat_map(|(_, g)| g.tensors.iter());
    let vocab = all()
        .find(|t| t.name == "token_embd.weight")
        .ok_or_else(|| first.error("tensor token_embd.weight is missing"))?
        .shape[0];
    let names: std::collections::HashSet<&str> = all().map(|t| t.name.as_str()).collect();
    let has = |n: &str| names.contains(n);
    let raw = config::config(first, arch, &config::Tensors { has: &has, vocab })?;
    let config = ModelConfig::from_value(raw)?;
    let cache = if stream_experts {
        Some(disk_cache::dir_for(path)?)
    } else {
        None
    };
    let store = store(&parsed, arch, &config, &has, cache.as_deref(), progress)?;
    Ok(GgufModel {
        config,
        store,
        names: TensorNames(arch),
    })
}

/// The weight store of a parsed (possibly split) GGUF model. With `experts_on_disk` (a
/// cache directory), the routed experts are re-laid into a file there (or found there from an
/// earlier run) and mapped from it, so `--stream-experts` reads them from disk; everything
/// else is converted in memory.
fn store(
    parsed: &[(std::sync::Arc<crate::weights::bytes::Backing>, Gguf)],
    arch: &arch::Arch,
    config: &ModelConfig,
    has: &dyn Fn(&str) -> bool,
    experts_on_disk: Option<&Path>,
    progress: &mut dyn FnMut(usize, usize),
) -> Result<WeightStore, LoadError> {
    let jobs = convert::jobs(parsed, arch, config, has)?;
    // Streamed experts must come from a file: they are re-laid into one on disk, once.
    let (on_disk, in_memory): (Vec<_>, Vec<_>) = jobs
        .into_iter()
        .partition(|j| experts_on_disk.is_some() && convert::is_expert(&j.info.name));
    let mut tensors = std::collections::BTreeMap::new();
    for part in convert::convert_in_memory(&in_memory, progress)? {
        let (name, t) = part.into_tensor();
        tensors.insert(name, t);
    }
    if let Some(dir) = experts_on_disk {
        for (name, t) in disk_cache::load_or_write(dir, &on_disk, progress)? {
            tensors.insert(name, t);
        }
    }
    let files = parsed.iter().map(|(_, g)| g.path.clone()).collect();
    Ok(WeightStore::from_parts(tensors, files))
}
