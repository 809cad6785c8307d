//! GGUF tensors into the engine's weight store: renamed, q/k rows un-permuted where the
//! converter permuted them, block types re-laid as MLX affine triples (in parallel over
//! tensors), float tensors kept as views into the mapping.

use super::arch::Arch;
use super::layout::{self, Dims, Target};
use crate::config::ModelConfig;
use crate::error::LoadError;
use crate::weights::bytes::{Backing, Bytes};
use crate::weights::safetensors::{Dtype, Tensor};
use moestream_gguf::affine::affine_params;
use moestream_gguf::{affine_len, fit_f16, to_affine_into, GgmlType, Gguf, TensorInfo};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

/// Maps `path` and parses its header.
pub fn map_file(path: &Path) -> Result<(Arc<Backing>, Gguf), LoadError> {
    let file = std::fs::File::open(path).map_err(|e| LoadError::io(path, e))?;
    // SAFETY: read-only mapping; see `weights::safetensors::read_file`.
    let map = unsafe { memmap2::Mmap::map(&file) }.map_err(|e| LoadError::io(path, e))?;
    let gguf = Gguf::parse(&map, path)?;
    Ok((
        Arc::new(Backing::Mapped {
            map,
            file,
            path: path.to_path_buf(),
        }),
        gguf,
    ))
}

/// One tensor to convert, with where its bytes live.
pub(super) struct Job<'a> {
    pub info: &'a TensorInfo,
    backing: &'a Arc<Backing>,
    file: Arc<PathBuf>,
    /// What the tensor becomes (name, moves undoing the converter's).
    target: Target,
}

impl Job<'_> {
    /// The GGUF file the tensor is in.
    pub fn file(&self) -> &Path {
        &self.file
    }
}

/// Every tensor of a parsed (possibly split) GGUF model as the conversions that make the
/// loader's tensors of it (none for tensors the model does not use, such as
/// multi-token-prediction layers); an unsupported type is refused here, naming the tensor.
/// `has` tells whether the model holds a tensor.
pub fn jobs<'a>(
    parsed: &'a [(Arc<Backing>, Gguf)],
    arch: &Arch,
    config: &ModelConfig,
    has: &dyn Fn(&str) -> bool,
) -> Result<Vec<Job<'a>>, LoadError> {
    let dims = Dims::from_config(&config.raw);
    let mut jobs = Vec::new();
    for (backing, g) in parsed {
        let file = Arc::new(g.path.clone());
        for info in &g.tensors {
            if let GgmlType::Unsupported(_) = info.ty {
                return Err(LoadError::BadTensor {
                    tensor: info.name.clone(),
                    file: g.path.clone(),
                    problem: format!(
                        "type {} is not supported (supported: F32, F16, BF16, Q4_0, Q4_1, Q5_0, \
                         Q5_1, Q8_0, Q2_K, Q3_K, Q4_K, Q5_K, Q6_K)",
                        info.ty.name()
                    ),
                });
            }
            for target in layout::targets(arch, &dims, &info.name, &info.shape, has) {
                jobs.push(Job {
                    info,
                    backing,
                    file: Arc::clone(&file),
                    target,
                });
            }
        }
    }
    Ok(jobs)
}

/// Stacked routed-expert tensors (`blk.N.ffn_{gate,up,down}_exps.weight`).
pub(super) fn is_expert(gguf_name: &str) -> bool {
    gguf_name.contains("_exps.")
}

/// Converts `jobs` on every core (tensors are independent).
pub(super) fn convert_in_memory(
    jobs: &[Job],
    progress: &mut dyn FnMut(usize, usize),
) -> Result<Vec<Part>, LoadError> {
    let total = jobs.len();
    let next = AtomicUsize::new(0);
    let done = AtomicUsize::new(0);
    let out: Mutex<Vec<Result<Vec<Part>, LoadError>>> = Mutex::new(Vec::new());
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    std::thread::scope(|s| {
        for _ in 0..threads {
            s.spawn(|| loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                let Some(job) = jobs.get(i) else { break };
                let r = convert(job);
                done.fetch_add(1, Ordering::Relaxed);
                out.lock().unwrap_or_else(|e| e.into_inner()).push(r);
            });
        }
        // The caller's progress callback is not Send: report from this thread.
        loop {
            let d = done.load(Ordering::Relaxed);
            progress(d, total);
            if d == total {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
    });
    let mut parts = Vec::new();
    for r in out.into_inner().unwrap_or_else(|e| e.into_inner()) {
        parts.extend(r?);
    }
    Ok(parts)
}

fn float_dtype(ty: GgmlType) -> Dtype {
    match ty {
        GgmlType::F32 => Dtype::F32,
        GgmlType::F16 => Dtype::F16,
        _ => Dtype::Bf16,
    }
}

/// One tensor a conversion produced: a view of the mapped file (float tensors) or bytes made
/// here (re-laid block types, un-permuted rows), written straight into their final,
/// huge-page backed buffers (zeroing fresh pages is most of the cost of a load).
pub(super) struct Part {
    pub name: String,
    pub dtype: Dtype,
    pub shape: Vec<usize>,
    pub data: Bytes,
    /// The GGUF tensor it came from (named in errors) and its file.
    pub source: String,
    pub file: Arc<PathBuf>,
}

impl Part {
    /// The part as a store tensor, its bytes where they are.
    pub fn into_tensor(self) -> (String, Tensor) {
        (
            self.name,
            Tensor {
                name: self.source,
                dtype: self.dtype,
                shape: self.shape,
                bytes: self.data,
                file: self.file,
            },
        )
    }
}

/// The tensors one GGUF tensor becomes: itself (float), or `weight`/`scales`/`biases`.
pub(super) fn convert(job: &Job) -> Result<Vec<Part>, LoadError> {
    let info = job.info;
    let mapped = Bytes::new(Arc::clone(job.backing), info.offset, info.len);
    let rows_of = info.numel() / info.cols().max(1);
    let bad = |problem: String| LoadError::BadTensor {
        tensor: info.name.clone(),
        file: job.file.as_ref().clone(),
        problem,
    };
    let t = &job.target;
    let data = match &t.rows {
        Some(rows) => {
            // A vector's "rows" are its elements.
            let stored = if info.shape.len() == 1 {
                info.numel()
            } else {
                rows_of
            };
            if rows.len() > stored || rows.iter().any(|&r| r >= stored) {
                return Err(bad(format!(
                    "{stored} rows do not fit the model's head layout"
                )));
            }
            let row_bytes = info.len / stored;
            Bytes::filled_with(rows.len() * row_bytes, |dst| {
                gather_rows(mapped.as_slice(), row_bytes, rows, dst)
            })
        }
        None => mapped.clone(),
    };
    let name = t.hf.clone().unwrap_or_else(|| info.name.clone());
    let part = |name: String, dtype, shape: Vec<usize>, data| Part {
        name,
        dtype,
        shape,
        data,
        source: info.name.clone(),
        file: Arc::clone(&job.file),
    };
    let mut shape = t.shape.clone().unwrap_or_else(|| info.shape.clone());
    if let (Some(rows), true) = (&t.rows, shape.len() > 1) {
        shape[0] = rows.len();
    }
    if info.ty.is_float() {
        let (dtype, data) = if t.log_neg {
            (Dtype::F32, log_neg(info.ty, data.as_slice()))
        } else {
            (float_dtype(info.ty), data)
        };
        let data = match &t.col_blocks {
            Some(c) => {
                let elem = dtype.size();
                let (cols, width) = (info.cols() * elem, c.width * elem);
                Bytes::filled_with(data.len(), |dst| {
                    gather_cols(data.as_slice(), cols, width, &c.order, dst)
                })
            }
            None => data,
        };
        return Ok(vec![part(name, dtype, shape, data)]);
    }
    if t.log_neg {
        return Err(bad(format!(
            "expected a float tensor, not {}",
            info.ty.name()
        )));
    }
    let Some((bits, group)) = affine_params(info.ty) else {
        unreachable!("unsupported types are refused before conversion")
    };
    let Some(module) = name.strip_suffix(".weight") else {
        return Err(bad(format!(
            "a {} tensor that is not a weight matrix",
            info.ty.name()
        )));
    };
    let cols = info.cols();
    let bits = code_width(bits, group, cols);
    let (words, groups) = affine_len(info.ty, data.len(), bits);
    let (mut scales, mut biases) = (vec![0f32; groups], vec![0f32; groups]);
    let codes = Bytes::filled_with(words * 4, |dst| {
        let codes = bytemuck::cast_slice_mut(dst);
        let raw = data.as_slice();
        to_affine_into(info.ty, raw, cols, bits, codes, &mut scales, &mut biases);
    });
    // The blocks are not read again: keep them out of the resident set (a 30B model would
    // otherwise count twice, as blocks and as affine rows).
    mapped.release_pages();
    let lead = &shape[..shape.len() - 1];
    let shaped = |last: usize| [lead, &[last]].concat();
    // f16 where every value is exactly an f16 (the legacy types): half the bytes.
    let f16 = fit_f16(&scales) && fit_f16(&biases);
    let params = |v: &[f32]| -> Bytes {
        if f16 {
            Bytes::filled_with(v.len() * 2, |dst| {
                for (d, &x) in dst.chunks_exact_mut(2).zip(v) {
                    d.copy_from_slice(&half::f16::from_f32(x).to_le_bytes());
                }
            })
        } else {
            Bytes::copied(bytemuck::cast_slice(v))
        }
    };
    let pdtype = if f16 { Dtype::F16 } else { Dtype::F32 };
    let (codes, scales, biases) = match &t.col_blocks {
        None => (codes, scales, biases),
        Some(c) => {
            // Whole groups and whole code words move.
            if !c.width.is_multiple_of(group) || !(c.width * bits as usize).is_multiple_of(32) {
                return Err(bad(format!(
                    "column blocks of {} do not hold whole groups of {group}",
                    c.width
                )));
            }
            let word_row = cols * bits as usize / 8;
            let word_block = c.width * bits as usize / 8;
            let codes = Bytes::filled_with(codes.len(), |dst| {
                gather_cols(codes.as_slice(), word_row, word_block, &c.order, dst)
            });
            let per = |v: &[f32]| {
                let mut out = vec![0f32; v.len()];
                let (row, block) = (cols / group * 4, c.width / group * 4);
                gather_cols(
                    bytemuck::cast_slice(v),
                    row,
                    block,
                    &c.order,
                    bytemuck::cast_slice_mut(&mut out),
                );
                out
            };
            (codes, per(&scales), per(&biases))
        }
    };
    Ok(vec![
        part(
            format!("{module}.weight"),
            Dtype::U32,
            shaped(cols * bits as usize / 32),
            codes,
        ),
        part(
            format!("{module}.scales"),
            pdtype,
            shaped(cols / group),
            params(&scales),
        ),
        part(
            format!("{module}.biases"),
            pdtype,
            shaped(cols / group),
            params(&biases),
        ),
    ])
}

/// The width to pack `bits`-bit codes in for rows of `cols`: their own, except 4-bit rows
/// the int8 4-bit kernels cannot take (they work in 128-value chunks) but the 8-bit ones can
/// (64): those become 8-bit codes of the same values. Small models have such rows
/// (SmolLM2's 576), and the f32 path they would otherwise take is several times slower.
fn code_width(bits: u32, group: usize, cols: usize) -> u32 {
    let int8_group = matches!(group, 32 | 64 | 128);
    if bits == 4 && !cols.is_multiple_of(128) && cols.is_multiple_of(64) && int8_group {
        8
    } else {
        bits
    }
}

/// Row `i` of `dst` is row `rows[i]` of `src` (rows of equal size, moved whole whatever
/// their type).
fn gather_rows(src: &[u8], row_bytes: usize, rows: &[usize], dst: &mut [u8]) {
    for (to, &from) in rows.iter().enumerate() {
        let f = from * row_bytes;
        dst[to * row_bytes..(to + 1) * row_bytes].copy_from_slice(&src[f..f + row_bytes]);
    }
}

/// In every `row`-byte row, block `j` of `dst` (`block` bytes) is block `order[j]` of `src`.
fn gather_cols(src: &[u8], row: usize, block: usize, order: &[usize], dst: &mut [u8]) {
    for (s, d) in src.chunks_exact(row).zip(dst.chunks_exact_mut(row)) {
        for (j, &from) in order.iter().enumerate() {
            d[j * block..(j + 1) * block].copy_from_slice(&s[from * block..(from + 1) * block]);
        }
    }
}

/// `ln(-x)` of a float tensor as f32: Qwen3-Next's `A_log` from the `ssm_a = -exp(A_log)`
/// the converter stores.
fn log_neg(ty: GgmlType, raw: &[u8]) -> Bytes {
    let values: Vec<f32> = match ty {
        GgmlType::F32 => raw
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect(),
        GgmlType::F16 => raw
            .chunks_exact(2)
            .map(|b| half::f16::from_le_bytes([b[0], b[1]]).to_f32())
            .collect(),
        _ => raw
            .chunks_exact(2)
            .map(|b| half::bf16::from_le_bytes([b[0], b[1]]).to_f32())
            .collect(),
    };
    let out: Vec<f32> = values.iter().map(|&x| (-x).ln()).collect();
    Bytes::copied(bytemuck::cast_slice(&out))
}
