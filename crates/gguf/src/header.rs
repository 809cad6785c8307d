//! The header, metadata and tensor directory of one GGUF file, validated before anything is
//! handed out: every tensor's extent lies inside the file, tensors do not overlap, and a
//! truncated or malformed file is an error naming the file and what is wrong.
//!
//! Layout (llama.cpp `ggml/src/gguf.cpp`, `docs/gguf.md`): magic `GGUF`, version u32 (2 or
//! 3; version 1 used 32-bit counts and is refused), tensor count u64, metadata count u64;
//! the metadata `(key string, value type u32, value)`; the tensor directory `(name string,
//! n_dims u32, dims u64 x n_dims with the fastest-varying first, type u32, offset u64)`;
//! padding to `general.alignment` (default 32); the data section, where each tensor's
//! offset is relative to the data section's start. Strings are a u64 length and UTF-8 bytes.

use crate::ggml_type::GgmlType;
use crate::value::Value;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// A malformed, truncated or unsupported file: names the file and the problem.
#[derive(Debug, thiserror::Error)]
#[error("{}: {message}", path.display())]
pub struct GgufError {
    pub path: PathBuf,
    pub message: String,
}

/// One entry of the tensor directory.
#[derive(Clone, Debug)]
pub struct TensorInfo {
    pub name: String,
    /// Dimensions as PyTorch/safetensors order them (slowest first): GGUF's `ne` reversed.
    pub shape: Vec<usize>,
    pub ty: GgmlType,
    /// Offset of the data in the file (absolute).
    pub offset: usize,
    /// Bytes of data (`ty`'s blocks over the element count).
    pub len: usize,
}

impl TensorInfo {
    /// Elements per row (the fastest-varying dimension).
    pub fn cols(&self) -> usize {
        self.shape.last().copied().unwrap_or(1)
    }

    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }
}

/// A parsed GGUF file (without its data).
#[derive(Clone, Debug)]
pub struct Gguf {
    pub path: PathBuf,
    pub version: u32,
    pub metadata: BTreeMap<String, Value>,
    /// In directory order.
    pub tensors: Vec<TensorInfo>,
    /// Where the data section starts.
    pub data_start: usize,
}

/// Most dimensions a tensor may have (ggml's `GGML_MAX_DIMS` is 4; a corrupt count must not
/// make us read a directory of garbage).
const MAX_DIMS: u32 = 8;

impl Gguf {
    /// Parses `bytes`, the whole file at `path` (named in errors).
    pub fn parse(bytes: &[u8], path: &Path) -> Result<Gguf, GgufError> {
        let mut r = Reader {
            bytes,
            pos: 0,
            path,
        };
        let magic = r.take(4, "the magic")?;
        if magic != b"GGUF" {
            let hint = if magic == b"FUGG" {
                " (a big-endian GGUF, which is not supported)"
            } else {
                ""
            };
            return Err(r.err(format!(
                "not a GGUF file: the magic is {magic:?}, expected \"GGUF\"{hint}"
            )));
        }
        let version = r.u32("the version")?;
        if !(2..=3).contains(&version) {
            return Err(r.err(format!(
                "GGUF version {version} is not supported (only versions 2 and 3)"
            )));
        }
        let n_tensors = r.u64("the tensor count")?;
        let n_kv = r.u64("the metadata count")?;
        // Every entry takes at least 8 bytes: a count beyond that is corrupt, not large.
        for (n, what) in [(n_tensors, "tensor"), (n_kv, "metadata")] {
            if n > (bytes.len() / 8) as u64 {
                return Err(r.err(format!(
                    "truncated or corrupt: the {what} count {n} cannot fit in a {}-byte file",
                    bytes.len()
                )));
            }
        }
        let mut metadata = BTreeMap::new();
        for i in 0..n_kv {
            let key = r.string(&format!("the key of metadata entry {i}"))?;
            let ty = r.u32(&format!("the type of metadata {key}"))?;
            let v = r.value(ty, &key, 0)?;
            metadata.insert(key, v);
        }
        let alignment = match metadata.get("general.alignment") {
            None => 32,
            Some(v) => match v.as_u64() {
                Some(a) if a > 0 && a.is_power_of_two() && a <= 1 << 20 => a as usize,
                _ => {
                    return Err(r.err(format!(
                        "general.alignment is {v:?}, not a power of two of at most 1 MiB"
                    )))
                }
            },
        };
        let mut raw = Vec::with_capacity(n_tensors as usize);
        for i in 0..n_tensors {
            let name = r.string(&format!("the name of tensor {i}"))?;
            let n_dims = r.u32(&format!("the dimension count of tensor {name}"))?;
            if n_dims == 0 || n_dims > MAX_DIMS {
                return Err(r.err(format!("tensor {name}: {n_dims} dimensions")));
            }
            let mut ne = Vec::with_capacity(n_dims as usize);
            for _ in 0..n_dims {
                ne.push(r.u64(&format!("the dimensions of tensor {name}"))?);
            }
            let ty = r.u32(&format!("the type of tensor {name}"))?;
            let offset = r.u64(&format!("the offset of tensor {name}"))?;
            raw.push((name, ne, GgmlType::from_id(ty), offset));
        }
        let data_start = r.pos.div_ceil(alignment) * alignment;
        let data_len = bytes.len().saturating_sub(data_start) as u64;
        let mut tensors = Vec::with_capacity(raw.len());
        let mut seen = BTreeMap::new();
        for (name, ne, ty, offset) in raw {
            let numel = ne.iter().try_fold(1u64, |a, &d| a.checked_mul(d));
            let len = numel.and_then(|n| ty.bytes_for(n)).ok_or_else(|| {
                r.err(format!(
                    "tensor {name}: {} elements of {ne:?} are not whole {} blocks",
                    numel.map_or("too many".to_string(), |n| n.to_string()),
                    ty.name()
                ))
            })?;
            if ty.block().is_some_and(|(e, _)| ne[0] % e as u64 != 0) {
                return Err(r.err(format!(
                    "tensor {name}: rows of {} elements are not whole {} blocks",
                    ne[0],
                    ty.name()
                )));
            }
            if offset % alignment as u64 != 0 {
                return Err(r.err(format!(
                    "tensor {name}: offset {offset} is not a multiple of the alignment {alignment}"
                )));
            }
            let end = offset.saturating_add(len);
            if end > data_len {
                return Err(r.err(format!(
                    "truncated: tensor {name} ({} bytes of {}) ends at byte {end} of the data \
                     section, which holds {data_len} bytes",
                    len,
                    ty.name()
                )));
            }
            if seen.insert(name.clone(), ()).is_some() {
                return Err(r.err(format!("tensor {name} appears twice")));
            }
            tensors.push(TensorInfo {
                name,
                shape: ne.iter().rev().map(|&d| d as usize).collect(),
                ty,
                offset: data_start + offset as usize,
                len: len as usize,
            });
        }
        let mut ranges: Vec<(usize, usize, &str)> = tensors
            .iter()
            .map(|t| (t.offset, t.offset + t.len, t.name.as_str()))
            .collect();
        ranges.sort();
        for w in ranges.windows(2) {
            if w[1].0 < w[0].1 {
                return Err(r.err(format!("tensors {} and {} overlap", w[0].2, w[1].2)));
            }
        }
        Ok(Gguf {
            path: path.to_path_buf(),
            version,
            metadata,
            tensors,
            data_start,
        })
    }

    pub fn get(&self, key: &str) -> Option<&Value> {
        self.metadata.get(key)
    }

    /// An error about this file.
    pub fn error(&self, message: impl Into<String>) -> GgufError {
        GgufError {
            path: self.path.clone(),
            message: message.into(),
        }
    }

    /// A required metadata value, or an error naming the key.
    pub fn require(&self, key: &str) -> Result<&Value, GgufError> {
        self.get(key)
            .ok_or_else(|| self.error(format!("metadata {key} is missing")))
    }

    /// A required unsigned integer.
    pub fn require_u64(&self, key: &str) -> Result<u64, GgufError> {
        let v = self.require(key)?;
        v.as_u64().ok_or_else(|| {
            self.error(format!(
                "metadata {key} is a {}, expected an unsigned integer",
                v.type_name()
            ))
        })
    }

    /// A required string.
    pub fn require_str(&self, key: &str) -> Result<&str, GgufError> {
        let v = self.require(key)?;
        v.as_str().ok_or_else(|| {
            self.error(format!(
                "metadata {key} is a {}, expected a string",
                v.type_name()
            ))
        })
    }

    /// `general.architecture`.
    pub fn architecture(&self) -> Result<&str, GgufError> {
        self.require_str("general.architecture")
    }
}

/// A cursor over the file's bytes whose every read is bounds-checked.
struct Reader<'a> {
    bytes: &'a [u8],
    pos: usize,
    path: &'a Path,
}

impl<'a> Reader<'a> {
    fn err(&self, message: String) -> GgufError {
        GgufError {
            path: self.path.to_path_buf(),
            message,
        }
    }

    fn take(&mut self, n: usize, what: &str) -> Result<&'a [u8], GgufError> {
        if n > self.bytes.len() - self.pos {
            return Err(self.err(format!(
                "truncated: {what} ({n} bytes at offset {}) runs past the end of the {}-byte file",
                self.pos,
                self.bytes.len()
            )));
        }
        let s = &self.bytes[self.pos..self.pos + n];
        self.pos += n;
        Ok(s)
    }

    fn array<const N: usize>(&mut self, what: &str) -> Result<[u8; N], GgufError> {
        Ok(self.take(N, what)?.try_into().expect("N bytes"))
    }

    fn u32(&mut self, what: &str) -> Result<u32, GgufError> {
        Ok(u32::from_le_bytes(self.array(what)?))
    }

    fn u64(&mut self, what: &str) -> Result<u64, GgufError> {
        Ok(u64::from_le_bytes(self.array(what)?))
    }

    fn string(&mut self, what: &str) -> Result<String, GgufError> {
        let n = self.u64(what)?;
        let n = usize::try_from(n).unwrap_or(usize::MAX);
        let b = self.take(n, what)?;
        String::from_utf8(b.to_vec()).map_err(|_| self.err(format!("{what} is not UTF-8")))
    }

    fn value(&mut self, ty: u32, key: &str, depth: u32) -> Result<Value, GgufError> {
        let what = format!("metadata {key}");
        Ok(match ty {
            0 => Value::U8(self.array::<1>(&what)?[0]),
            1 => Value::I8(self.array::<1>(&what)?[0] as i8),
            2 => Value::U16(u16::from_le_bytes(self.array(&what)?)),
            3 => Value::I16(i16::from_le_bytes(self.array(&what)?)),
            4 => Value::U32(self.u32(&what)?),
            5 => Value::I32(i32::from_le_bytes(self.array(&what)?)),
            6 => Value::F32(f32::from_le_bytes(self.array(&what)?)),
            7 => match self.array::<1>(&what)?[0] {
                0 => Value::Bool(false),
                1 => Value::Bool(true),
                b => return Err(self.err(format!("{what}: bool byte {b}"))),
            },
            8 => Value::String(self.string(&what)?),
            9 => {
                if depth > 0 {
                    return Err(self.err(format!("{what}: nested arrays are not supported")));
                }
                let ety = self.u32(&what)?;
                let n = self.u64(&what)?;
                if n > (self.bytes.len() - self.pos) as u64 {
                    return Err(self.err(format!(
                        "truncated: {what} claims {n} elements, more than the file's remaining bytes"
                    )));
                }
                let mut items = Vec::with_capacity(n as usize);
                for _ in 0..n {
                    items.push(self.value(ety, key, depth + 1)?);
                }
                Value::Array(items)
            }
            10 => Value::U64(self.u64(&what)?),
            11 => Value::I64(i64::from_le_bytes(self.array(&what)?)),
            12 => Value::F64(f64::from_le_bytes(self.array(&what)?)),
            other => return Err(self.err(format!("{what}: unknown value type {other}"))),
        })
    }
}
