//! All tensors of a model directory, across shards, by name.

use super::safetensors::{read_file, Tensor};
use crate::error::LoadError;
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

pub struct WeightStore {
    tensors: BTreeMap<String, Tensor>,
    files: Vec<PathBuf>,
}

impl WeightStore {
    /// Maps every weight file of `dir`: the shards listed by `model.safetensors.index.json`
    /// if present (checking that each listed tensor is where the index says), else every
    /// `model*.safetensors` (mlx-lm globs the same way). `progress(done, total)` counts files.
    pub fn open(dir: &Path, progress: &mut dyn FnMut(usize, usize)) -> Result<Self, LoadError> {
        let index_path = dir.join("model.safetensors.index.json");
        let (files, index) = if index_path.is_file() {
            let text =
                std::fs::read_to_string(&index_path).map_err(|e| LoadError::io(&index_path, e))?;
            let v: serde_json::Value =
                serde_json::from_str(&text).map_err(|source| LoadError::Json {
                    path: index_path.clone(),
                    source,
                })?;
            let map = v
                .get("weight_map")
                .and_then(|m| m.as_object())
                .ok_or_else(|| LoadError::BadSafetensors {
                    path: index_path.clone(),
                    reason: "no \"weight_map\" object".into(),
                })?;
            let mut index: BTreeMap<String, String> = BTreeMap::new();
            for (k, f) in map {
                let f = f.as_str().ok_or_else(|| LoadError::BadSafetensors {
                    path: index_path.clone(),
                    reason: format!("weight_map entry for {k} is not a file name"),
                })?;
                index.insert(k.clone(), f.to_string());
            }
            let names: BTreeSet<&String> = index.values().collect();
            (
                names.into_iter().map(|f| dir.join(f)).collect::<Vec<_>>(),
                Some(index),
            )
        } else {
            let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
                .map_err(|e| LoadError::io(dir, e))?
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| {
                    let name = p.file_name().and_then(|n| n.to_str()).unwrap_or("");
                    name.starts_with("model") && name.ends_with(".safetensors")
                })
                .collect();
            files.sort();
            (files, None)
        };
        if files.is_empty() {
            return Err(LoadError::NoWeights(dir.to_path_buf()));
        }
        let mut tensors = BTreeMap::new();
        for (i, f) in files.iter().enumerate() {
            for (name, t) in read_file(f)? {
                if let Some(prev) = tensors.insert(name.clone(), t) {
                    return Err(LoadError::BadSafetensors {
                        path: f.clone(),
                        reason: format!("tensor {name} also appears in {}", prev.file.display()),
                    });
                }
            }
            progress(i + 1, files.len());
        }
        if let Some(index) = index {
            for (name, file) in index {
                if !tensors.contains_key(&name) {
                    return Err(LoadError::IndexMismatch {
                        index: index_path.clone(),
                        file: dir.join(file),
                        tensor: name,
                    });
                }
            }
        }
        Ok(WeightStore { tensors, files })
    }

    /// A store over tensors built in memory (tests).
    pub fn from_tensors(tensors: BTreeMap<String, Tensor>) -> Self {
        Self::from_parts(tensors, Vec::new())
    }

    /// A store over tensors another reader made (GGUF), from `files`.
    pub fn from_parts(tensors: BTreeMap<String, Tensor>, files: Vec<PathBuf>) -> Self {
        WeightStore { tensors, files }
    }

    pub fn get(&self, name: &str) -> Option<&Tensor> {
        self.tensors.get(name)
    }

    pub fn contains(&self, name: &str) -> bool {
        self.tensors.contains_key(name)
    }

    pub fn names(&self) -> impl Iterator<Item = &String> {
        self.tensors.keys()
    }

    pub fn files(&self) -> &[PathBuf] {
        &self.files
    }

    /// Total bytes of tensor data.
    pub fn total_bytes(&self) -> usize {
        self.tensors.values().map(|t| t.bytes.len()).sum()
    }

    pub fn remove(&mut self, name: &str) -> Option<Tensor> {
        self.tensors.remove(name)
    }

    pub fn insert(&mut self, name: String, t: Tensor) {
        self.tensors.insert(name, t);
    }

    /// Reads every page of every tensor once, so the first token does not pay for page
    /// faults. `progress(done_bytes, total_bytes)` is called as it goes.
    pub fn warm(&self, progress: &mut dyn FnMut(usize, usize)) {
        let total = self.total_bytes();
        let mut done = 0usize;
        let mut sink = 0u8;
        for t in self.tensors.values() {
            let b = t.bytes.as_slice();
            for chunk in b.chunks(1 << 20) {
                for page in chunk.chunks(4096) {
                    sink ^= page[0];
                }
                done += chunk.len();
                progress(done, total);
            }
        }
        std::hint::black_box(sink);
    }
}
