//! Zero-copy reading of one safetensors file.
//!
//! Layout: an 8-byte little-endian header length `n`, `n` bytes of JSON mapping tensor names
//! to `{dtype, shape, data_offsets: [start, end]}` (offsets relative to the data section), then
//! the data section. Everything is validated before any tensor is handed out: a bad header,
//! overlapping or out-of-range offsets, or a size that disagrees with dtype x shape is an error
//! naming the file and the tensor.

use super::bytes::{Backing, Bytes};
use crate::error::LoadError;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Dtype {
    F32,
    F16,
    Bf16,
    F64,
    U32,
    I32,
    I64,
    U8,
    I8,
    Bool,
}

impl Dtype {
    pub fn parse(s: &str) -> Option<Dtype> {
        Some(match s {
            "F32" => Dtype::F32,
            "F16" => Dtype::F16,
            "BF16" => Dtype::Bf16,
            "F64" => Dtype::F64,
            "U32" => Dtype::U32,
            "I32" => Dtype::I32,
            "I64" => Dtype::I64,
            "U8" => Dtype::U8,
            "I8" => Dtype::I8,
            "BOOL" => Dtype::Bool,
            _ => return None,
        })
    }

    /// The safetensors name of the dtype.
    pub fn as_str(self) -> &'static str {
        match self {
            Dtype::F32 => "F32",
            Dtype::F16 => "F16",
            Dtype::Bf16 => "BF16",
            Dtype::F64 => "F64",
            Dtype::U32 => "U32",
            Dtype::I32 => "I32",
            Dtype::I64 => "I64",
            Dtype::U8 => "U8",
            Dtype::I8 => "I8",
            Dtype::Bool => "BOOL",
        }
    }

    pub fn size(self) -> usize {
        match self {
            Dtype::F64 | Dtype::I64 => 8,
            Dtype::F32 | Dtype::U32 | Dtype::I32 => 4,
            Dtype::F16 | Dtype::Bf16 => 2,
            Dtype::U8 | Dtype::I8 | Dtype::Bool => 1,
        }
    }

    pub fn is_float(self) -> bool {
        matches!(self, Dtype::F32 | Dtype::F16 | Dtype::Bf16)
    }
}

/// One tensor of a file: its dtype, shape and bytes (a view into the mapping).
#[derive(Clone)]
pub struct Tensor {
    pub name: String,
    pub dtype: Dtype,
    pub shape: Vec<usize>,
    pub bytes: Bytes,
    pub file: Arc<PathBuf>,
}

impl Tensor {
    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }
}

impl std::fmt::Debug for Tensor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {:?}{:?}", self.name, self.dtype, self.shape)
    }
}

/// Largest header we accept (the format's own limit is 100 MB).
const MAX_HEADER: u64 = 100 << 20;

/// Maps `path` and returns its tensors by name.
pub fn read_file(path: &Path) -> Result<BTreeMap<String, Tensor>, LoadError> {
    let file = std::fs::File::open(path).map_err(|e| LoadError::io(path, e))?;
    // SAFETY: the mapping is read-only; a file truncated under us after validation would
    // fault on access, which is the accepted risk of every mmap-based loader.
    let map = unsafe { memmap2::Mmap::map(&file) }.map_err(|e| LoadError::io(path, e))?;
    let bad = |reason: String| LoadError::BadSafetensors {
        path: path.to_path_buf(),
        reason,
    };
    if map.len() < 8 {
        return Err(bad(format!(
            "file is {} bytes, shorter than the 8-byte header length",
            map.len()
        )));
    }
    let n = u64::from_le_bytes(map[..8].try_into().expect("8 bytes"));
    if n > MAX_HEADER || 8 + n > map.len() as u64 {
        return Err(bad(format!(
            "header length {n} does not fit in a {}-byte file",
            map.len()
        )));
    }
    let header_end = 8 + n as usize;
    let header: serde_json::Map<String, serde_json::Value> =
        serde_json::from_slice(&map[8..header_end])
            .map_err(|e| bad(format!("header is not a JSON object: {e}")))?;
    let data_len = map.len() - header_end;
    let backing = Arc::new(Backing::Mapped {
        map,
        file,
        path: path.to_path_buf(),
    });
    let file_name = Arc::new(path.to_path_buf());
    let mut tensors = BTreeMap::new();
    let mut ranges = Vec::with_capacity(header.len());
    for (name, info) in &header {
        if name == "__metadata__" {
            continue;
        }
        let field = |k: &str| {
            info.get(k)
                .ok_or_else(|| bad(format!("tensor {name}: no {k:?} field")))
        };
        let dtype_s = field("dtype")?.as_str().unwrap_or("");
        let dtype = Dtype::parse(dtype_s)
            .ok_or_else(|| bad(format!("tensor {name}: unsupported dtype {dtype_s:?}")))?;
        let shape = field("shape")?
            .as_array()
            .and_then(|a| {
                a.iter()
                    .map(|d| d.as_u64().map(|v| v as usize))
                    .collect::<Option<Vec<_>>>()
            })
            .ok_or_else(|| bad(format!("tensor {name}: shape is not a list of integers")))?;
        let offs = field("data_offsets")?
            .as_array()
            .filter(|a| a.len() == 2)
            .and_then(|a| Some((a[0].as_u64()? as usize, a[1].as_u64()? as usize)))
            .ok_or_else(|| bad(format!("tensor {name}: data_offsets is not [start, end]")))?;
        let (start, end) = offs;
        let numel = shape.iter().try_fold(1usize, |acc, &d| acc.checked_mul(d));
        let want = numel.and_then(|n| n.checked_mul(dtype.size()));
        if start > end || Some(end - start) != want {
            return Err(bad(format!(
                "tensor {name}: data_offsets [{start}, {end}] do not hold {dtype_s} x {shape:?}"
            )));
        }
        if end > data_len {
            return Err(LoadError::Truncated {
                path: path.to_path_buf(),
                tensor: name.clone(),
                start,
                end,
                have: data_len,
            });
        }
        ranges.push((start, end, name.clone()));
        // mlx writes headers without padding, so a tensor's data may be misaligned for its
        // dtype; the range is kept as is and the weight loader copies it when (and only when)
        // it needs a typed view of it.
        let bytes = Bytes::new(Arc::clone(&backing), header_end + start, end - start);
        tensors.insert(
            name.clone(),
            Tensor {
                name: name.clone(),
                dtype,
                shape,
                bytes,
                file: Arc::clone(&file_name),
            },
        );
    }
    ranges.sort();
    for w in ranges.windows(2) {
        if w[1].0 < w[0].1 {
            return Err(bad(format!("tensors {} and {} overlap", w[0].2, w[1].2)));
        }
    }
    Ok(tensors)
}

/// Writes tensors to a safetensors file (used by tests and `synth`). `tensors` are
/// `(name, dtype, shape, bytes)`; the header is padded to 8 bytes so data stays aligned.
pub fn write_file(
    path: &Path,
    tensors: &[(String, Dtype, Vec<usize>, Vec<u8>)],
    metadata: &[(&str, &str)],
) -> std::io::Result<()> {
    use std::io::Write;
    let mut header = serde_json::Map::new();
    if !metadata.is_empty() {
        let m: serde_json::Map<String, serde_json::Value> = metadata
            .iter()
            .map(|(k, v)| (k.to_string(), serde_json::Value::from(*v)))
            .collect();
        header.insert("__metadata__".into(), m.into());
    }
    let mut offset = 0usize;
    for (name, dtype, shape, bytes) in tensors {
        let d = dtype.as_str();
        header.insert(
            name.clone(),
            serde_json::json!({"dtype": d, "shape": shape, "data_offsets": [offset, offset + bytes.len()]}),
        );
        offset += bytes.len();
    }
    let mut h = serde_json::to_vec(&header)?;
    while h.len() % 8 != 0 {
        h.push(b' ');
    }
    let mut f = std::io::BufWriter::new(std::fs::File::create(path)?);
    f.write_all(&(h.len() as u64).to_le_bytes())?;
    f.write_all(&h)?;
    for (_, _, _, bytes) in tensors {
        f.write_all(bytes)?;
    }
    f.flush()
}
