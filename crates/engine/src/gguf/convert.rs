//! GGUF tensors into the engine's weight store: renamed, q/k rows un-permuted where the
//! converter permuted them, block types re-laid as MLX affine triples (in parallel over
//! tensors), float tensors kept as views into the mapping.

use super::arch::{self, Arch};
use crate::config::ModelConfig;
use crate::error::LoadError;
use crate::weights::bytes::{Backing, Bytes};
use crate::weights::safetensors::{Dtype, Tensor};
use crate::weights::WeightStore;
use moestream_gguf::affine::affine_params;
use moestream_gguf::{to_affine, GgmlType, Gguf, TensorInfo};
use std::collections::BTreeMap;
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
struct Job<'a> {
    info: &'a TensorInfo,
    backing: &'a Arc<Backing>,
    file: Arc<PathBuf>,
    /// The HF name (`None`: kept under its GGUF name, reported as unused).
    hf: Option<String>,
    /// Rows to un-permute: the head count of llama.cpp's q/k permutation.
    unpermute_heads: Option<usize>,
}

/// The named tensors one GGUF tensor becomes.
type Converted = Vec<(String, Tensor)>;

/// The weight store of a parsed (possibly split) GGUF model.
pub fn store(
    parsed: &[(Arc<Backing>, Gguf)],
    arch: &Arch,
    config: &ModelConfig,
    progress: &mut dyn FnMut(usize, usize),
) -> Result<WeightStore, LoadError> {
    let heads = |k: &str| {
        config
            .raw
            .get(k)
            .and_then(|v| v.as_u64())
            .map(|v| v as usize)
    };
    let (n_heads, n_kv) = (heads("num_attention_heads"), heads("num_key_value_heads"));
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
            let unpermute_heads = if !arch.permuted_qk {
                None
            } else if info.name.ends_with(".attn_q.weight") || info.name.ends_with(".attn_q.bias") {
                n_heads
            } else if info.name.ends_with(".attn_k.weight") || info.name.ends_with(".attn_k.bias") {
                n_kv
            } else {
                None
            };
            jobs.push(Job {
                info,
                backing,
                file: Arc::clone(&file),
                hf: arch::hf_name(arch, &info.name),
                unpermute_heads,
            });
        }
    }
    let total = jobs.len();
    let next = AtomicUsize::new(0);
    let done = AtomicUsize::new(0);
    let out: Mutex<Vec<Result<Converted, LoadError>>> = Mutex::new(Vec::new());
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
    let mut tensors = BTreeMap::new();
    for r in out.into_inner().unwrap_or_else(|e| e.into_inner()) {
        for (name, t) in r? {
            tensors.insert(name, t);
        }
    }
    let files = parsed.iter().map(|(_, g)| g.path.clone()).collect();
    Ok(WeightStore::from_parts(tensors, files))
}

fn float_dtype(ty: GgmlType) -> Dtype {
    match ty {
        GgmlType::F32 => Dtype::F32,
        GgmlType::F16 => Dtype::F16,
        _ => Dtype::Bf16,
    }
}

/// The tensors one GGUF tensor becomes: itself (float), or `weight`/`scales`/`biases`.
fn convert(job: &Job) -> Result<Converted, LoadError> {
    let info = job.info;
    let mapped = Bytes::new(Arc::clone(job.backing), info.offset, info.len);
    let rows = info.numel() / info.cols();
    let bad = |problem: String| LoadError::BadTensor {
        tensor: info.name.clone(),
        file: job.file.as_ref().clone(),
        problem,
    };
    let bytes = match job.unpermute_heads {
        Some(heads) => {
            if heads == 0 || !rows.is_multiple_of(2 * heads) {
                return Err(bad(format!(
                    "{rows} rows cannot be {heads} heads of rotary pairs"
                )));
            }
            Bytes::filled_with(info.len, |dst| {
                unpermute(mapped.as_slice(), rows, heads, dst)
            })
        }
        None => mapped,
    };
    let name = job.hf.clone().unwrap_or_else(|| info.name.clone());
    let tensor = |dtype, shape: Vec<usize>, bytes| Tensor {
        name: info.name.clone(),
        dtype,
        shape,
        bytes,
        file: Arc::clone(&job.file),
    };
    if info.ty.is_float() {
        return Ok(vec![(
            name,
            tensor(float_dtype(info.ty), info.shape.clone(), bytes),
        )]);
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
    let a = to_affine(info.ty, bytes.as_slice(), cols);
    let lead = &info.shape[..info.shape.len() - 1];
    let shaped = |last: usize| [lead, &[last]].concat();
    let words: &[u8] = bytemuck::cast_slice(&a.codes);
    let params = |v: &[f32], f16: bool| -> Bytes {
        if f16 {
            let h: Vec<half::f16> = v.iter().map(|&x| half::f16::from_f32(x)).collect();
            Bytes::copied(bytemuck::cast_slice(&h))
        } else {
            Bytes::copied(bytemuck::cast_slice(v))
        }
    };
    let f16 = a.params_fit_f16();
    let pdtype = if f16 { Dtype::F16 } else { Dtype::F32 };
    Ok(vec![
        (
            format!("{module}.weight"),
            tensor(
                Dtype::U32,
                shaped(cols * bits as usize / 32),
                Bytes::copied(words),
            ),
        ),
        (
            format!("{module}.scales"),
            tensor(pdtype, shaped(cols / group), params(&a.scales, f16)),
        ),
        (
            format!("{module}.biases"),
            tensor(pdtype, shaped(cols / group), params(&a.biases, f16)),
        ),
    ])
}

/// Undoes `LlamaModel.permute` of llama.cpp's `convert_hf_to_gguf.py`, which stores each
/// head's rows in rotary-pair order: GGUF row `2i + a` of a head is HF row `a * d/2 + i`
/// (`d` rows per head). Rows are moved whole, whatever their type.
fn unpermute(src: &[u8], rows: usize, heads: usize, dst: &mut [u8]) {
    let row_bytes = src.len() / rows;
    let d = rows / heads;
    for h in 0..heads {
        for a in 0..2 {
            for i in 0..d / 2 {
                let from = (h * d + 2 * i + a) * row_bytes;
                let to = (h * d + a * d / 2 + i) * row_bytes;
                dst[to..to + row_bytes].copy_from_slice(&src[from..from + row_bytes]);
            }
        }
    }
}
