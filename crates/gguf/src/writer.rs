//! Writes GGUF files: test fixtures and the engine's synthetic GGUF models.

use crate::ggml_type::GgmlType;
use crate::value::Value;
use std::io::Write;
use std::path::Path;

/// Type ids of the non-unsupported types (the inverse of [`GgmlType::from_id`]).
fn type_id(ty: GgmlType) -> u32 {
    match ty {
        GgmlType::F32 => 0,
        GgmlType::F16 => 1,
        GgmlType::Q4_0 => 2,
        GgmlType::Q4_1 => 3,
        GgmlType::Q5_0 => 6,
        GgmlType::Q5_1 => 7,
        GgmlType::Q8_0 => 8,
        GgmlType::Q2K => 10,
        GgmlType::Q3K => 11,
        GgmlType::Q4K => 12,
        GgmlType::Q5K => 13,
        GgmlType::Q6K => 14,
        GgmlType::Bf16 => 30,
        GgmlType::Unsupported(id) => id,
    }
}

/// A GGUF file being assembled in memory.
#[derive(Clone, Default)]
pub struct GgufWriter {
    metadata: Vec<(String, Value)>,
    /// (name, shape slowest-first, type, bytes)
    tensors: Vec<(String, Vec<usize>, GgmlType, Vec<u8>)>,
}

impl GgufWriter {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn meta(&mut self, key: &str, v: Value) -> &mut Self {
        self.metadata.push((key.to_string(), v));
        self
    }

    /// Adds a tensor of `shape` (slowest dimension first, as [`crate::TensorInfo::shape`]).
    pub fn tensor(
        &mut self,
        name: &str,
        shape: &[usize],
        ty: GgmlType,
        bytes: Vec<u8>,
    ) -> &mut Self {
        self.tensors
            .push((name.to_string(), shape.to_vec(), ty, bytes));
        self
    }

    /// The file's bytes (version 3, alignment 32).
    pub fn to_bytes(&self) -> Vec<u8> {
        const ALIGN: usize = 32;
        let mut out = Vec::new();
        out.extend_from_slice(b"GGUF");
        out.extend_from_slice(&3u32.to_le_bytes());
        out.extend_from_slice(&(self.tensors.len() as u64).to_le_bytes());
        out.extend_from_slice(&(self.metadata.len() as u64).to_le_bytes());
        for (k, v) in &self.metadata {
            put_str(&mut out, k);
            out.extend_from_slice(&value_type(v).to_le_bytes());
            put_value(&mut out, v);
        }
        let mut offset = 0usize;
        for (name, shape, ty, bytes) in &self.tensors {
            put_str(&mut out, name);
            out.extend_from_slice(&(shape.len() as u32).to_le_bytes());
            for &d in shape.iter().rev() {
                out.extend_from_slice(&(d as u64).to_le_bytes());
            }
            out.extend_from_slice(&type_id(*ty).to_le_bytes());
            out.extend_from_slice(&(offset as u64).to_le_bytes());
            offset = (offset + bytes.len()).div_ceil(ALIGN) * ALIGN;
        }
        out.resize(out.len().div_ceil(ALIGN) * ALIGN, 0);
        for (_, _, _, bytes) in &self.tensors {
            out.extend_from_slice(bytes);
            out.resize(out.len().div_ceil(ALIGN) * ALIGN, 0);
        }
        out
    }

    pub fn write(&self, path: &Path) -> std::io::Result<()> {
        let mut f = std::io::BufWriter::new(std::fs::File::create(path)?);
        f.write_all(&self.to_bytes())?;
        f.flush()
    }
}

fn put_str(out: &mut Vec<u8>, s: &str) {
    out.extend_from_slice(&(s.len() as u64).to_le_bytes());
    out.extend_from_slice(s.as_bytes());
}

fn value_type(v: &Value) -> u32 {
    match v {
        Value::U8(_) => 0,
        Value::I8(_) => 1,
        Value::U16(_) => 2,
        Value::I16(_) => 3,
        Value::U32(_) => 4,
        Value::I32(_) => 5,
        Value::F32(_) => 6,
        Value::Bool(_) => 7,
        Value::String(_) => 8,
        Value::Array(_) => 9,
        Value::U64(_) => 10,
        Value::I64(_) => 11,
        Value::F64(_) => 12,
    }
}

fn put_value(out: &mut Vec<u8>, v: &Value) {
    match v {
        Value::U8(x) => out.push(*x),
        Value::I8(x) => out.push(*x as u8),
        Value::U16(x) => out.extend_from_slice(&x.to_le_bytes()),
        Value::I16(x) => out.extend_from_slice(&x.to_le_bytes()),
        Value::U32(x) => out.extend_from_slice(&x.to_le_bytes()),
        Value::I32(x) => out.extend_from_slice(&x.to_le_bytes()),
        Value::U64(x) => out.extend_from_slice(&x.to_le_bytes()),
        Value::I64(x) => out.extend_from_slice(&x.to_le_bytes()),
        Value::F32(x) => out.extend_from_slice(&x.to_le_bytes()),
        Value::F64(x) => out.extend_from_slice(&x.to_le_bytes()),
        Value::Bool(x) => out.push(*x as u8),
        Value::String(s) => put_str(out, s),
        Value::Array(items) => {
            let ety = items.first().map_or(4, value_type);
            out.extend_from_slice(&ety.to_le_bytes());
            out.extend_from_slice(&(items.len() as u64).to_le_bytes());
            for i in items {
                put_value(out, i);
            }
        }
    }
}

/// Random blocks of `ty` (`n` of them) whose f16 fields (`d`, `dmin`/`m`) are finite and
/// small: every other byte pattern is a valid block. Deterministic in `seed`.
pub fn random_blocks(ty: GgmlType, n: usize, seed: u64) -> Vec<u8> {
    let mut state = seed | 1;
    let mut next = move || {
        // xorshift64*
        state ^= state >> 12;
        state ^= state << 25;
        state ^= state >> 27;
        state.wrapping_mul(0x2545_F491_4F6C_DD1D)
    };
    let Some((_, bytes)) = ty.block() else {
        return Vec::new();
    };
    let half_fields: &[usize] = match ty {
        GgmlType::Q4_0 | GgmlType::Q5_0 | GgmlType::Q8_0 | GgmlType::F16 => &[0],
        GgmlType::Q4_1 | GgmlType::Q5_1 | GgmlType::Q4K | GgmlType::Q5K => &[0, 2],
        GgmlType::Q2K => &[80, 82],
        GgmlType::Q3K => &[108],
        GgmlType::Q6K => &[208],
        _ => &[],
    };
    let mut out = vec![0u8; n * bytes];
    for b in out.chunks_exact_mut(bytes) {
        for x in b.iter_mut() {
            *x = next() as u8;
        }
        for &at in half_fields {
            let v = (next() % 2000) as f32 / 1000.0 - 1.0;
            b[at..at + 2].copy_from_slice(&half::f16::from_f32(v * 0.02).to_le_bytes());
        }
        match ty {
            GgmlType::F32 => {
                let v = (next() % 2000) as f32 / 1000.0 - 1.0;
                b.copy_from_slice(&(v * 0.05).to_le_bytes());
            }
            GgmlType::Bf16 => {
                let v = (next() % 2000) as f32 / 1000.0 - 1.0;
                b.copy_from_slice(&half::bf16::from_f32(v * 0.05).to_le_bytes());
            }
            _ => {}
        }
    }
    out
}

/// A tiny llama-architecture model (2 layers, hidden 256, 4 query and 2 KV heads of 64,
/// FFN 512, vocabulary 384, untied head) with every matrix in `ty` and F32 norms, as
/// llama.cpp would lay it out (q/k rows in its permuted order). No tokenizer metadata:
/// for loader tests and error cases.
pub fn tiny_llama(ty: GgmlType, seed: u64) -> GgufWriter {
    tiny("llama", ty, seed)
}

/// [`tiny_llama`]'s shapes as a `qwen3moe` model: per-head q/k norms and, in every layer,
/// 8 routed experts (2 per token, FFN 256) stacked in `ffn_{gate,up,down}_exps`, with an
/// F32 router.
pub fn tiny_qwen3moe(ty: GgmlType, seed: u64) -> GgufWriter {
    tiny("qwen3moe", ty, seed)
}

fn tiny(arch: &str, ty: GgmlType, seed: u64) -> GgufWriter {
    let (h, ff, vocab, heads, kv, hd) = (256usize, 512usize, 384usize, 4usize, 2usize, 64usize);
    let (experts, used, expert_ff) = (8usize, 2u32, 256usize);
    let moe = arch == "qwen3moe";
    let key = |k: &str| format!("{arch}.{k}");
    let mut w = GgufWriter::new();
    w.meta("general.architecture", Value::String(arch.into()))
        .meta(&key("block_count"), Value::U32(2))
        .meta(&key("context_length"), Value::U32(512))
        .meta(&key("embedding_length"), Value::U32(h as u32))
        .meta(&key("feed_forward_length"), Value::U32(ff as u32))
        .meta(&key("attention.head_count"), Value::U32(heads as u32))
        .meta(&key("attention.head_count_kv"), Value::U32(kv as u32))
        .meta(&key("attention.key_length"), Value::U32(hd as u32))
        .meta(&key("attention.layer_norm_rms_epsilon"), Value::F32(1e-5))
        .meta(&key("rope.freq_base"), Value::F32(10000.0))
        .meta(&key("rope.dimension_count"), Value::U32(hd as u32));
    if moe {
        w.meta(&key("expert_count"), Value::U32(experts as u32))
            .meta(&key("expert_used_count"), Value::U32(used))
            .meta(
                &key("expert_feed_forward_length"),
                Value::U32(expert_ff as u32),
            );
    }
    let mut seed = seed;
    let mut tensor = |w: &mut GgufWriter, name: &str, shape: &[usize], ty: GgmlType| {
        seed = seed.wrapping_add(0x9E37_79B9);
        let (elems, _) = ty.block().expect("a sized type");
        let n = shape.iter().product::<usize>() / elems;
        w.tensor(name, shape, ty, random_blocks(ty, n, seed));
    };
    let ones = |n: usize| (0..n).flat_map(|_| 1f32.to_le_bytes()).collect::<Vec<u8>>();
    tensor(&mut w, "token_embd.weight", &[vocab, h], ty);
    for l in 0..2 {
        let p = format!("blk.{l}");
        w.tensor(
            &format!("{p}.attn_norm.weight"),
            &[h],
            GgmlType::F32,
            ones(h),
        );
        tensor(&mut w, &format!("{p}.attn_q.weight"), &[heads * hd, h], ty);
        tensor(&mut w, &format!("{p}.attn_k.weight"), &[kv * hd, h], ty);
        tensor(&mut w, &format!("{p}.attn_v.weight"), &[kv * hd, h], ty);
        tensor(
            &mut w,
            &format!("{p}.attn_output.weight"),
            &[h, heads * hd],
            ty,
        );
        w.tensor(
            &format!("{p}.ffn_norm.weight"),
            &[h],
            GgmlType::F32,
            ones(h),
        );
        if moe {
            w.tensor(
                &format!("{p}.attn_q_norm.weight"),
                &[hd],
                GgmlType::F32,
                ones(hd),
            );
            w.tensor(
                &format!("{p}.attn_k_norm.weight"),
                &[hd],
                GgmlType::F32,
                ones(hd),
            );
            tensor(
                &mut w,
                &format!("{p}.ffn_gate_inp.weight"),
                &[experts, h],
                GgmlType::F32,
            );
            let up = [experts, expert_ff, h];
            tensor(&mut w, &format!("{p}.ffn_gate_exps.weight"), &up, ty);
            tensor(&mut w, &format!("{p}.ffn_up_exps.weight"), &up, ty);
            tensor(
                &mut w,
                &format!("{p}.ffn_down_exps.weight"),
                &[experts, h, expert_ff],
                ty,
            );
        } else {
            tensor(&mut w, &format!("{p}.ffn_gate.weight"), &[ff, h], ty);
            tensor(&mut w, &format!("{p}.ffn_up.weight"), &[ff, h], ty);
            tensor(&mut w, &format!("{p}.ffn_down.weight"), &[h, ff], ty);
        }
    }
    w.tensor("output_norm.weight", &[h], GgmlType::F32, ones(h));
    tensor(&mut w, "output.weight", &[vocab, h], ty);
    w
}

impl GgufWriter {
    /// The same file with every block-quantized tensor dequantized to F32 (llama.cpp's
    /// formulas, [`crate::reference`]): the reference a loader of `self` is compared with.
    pub fn dequantized(&self) -> GgufWriter {
        let mut out = GgufWriter {
            metadata: self.metadata.clone(),
            tensors: Vec::new(),
        };
        for (name, shape, ty, bytes) in &self.tensors {
            if ty.is_float() {
                out.tensors
                    .push((name.clone(), shape.clone(), *ty, bytes.clone()));
            } else {
                let v = crate::reference::dequantize(*ty, bytes);
                let b = v.iter().flat_map(|x| x.to_le_bytes()).collect();
                out.tensors
                    .push((name.clone(), shape.clone(), GgmlType::F32, b));
            }
        }
        out
    }

    /// The same model split over `n` files as `llama-gguf-split` writes it: the tensors in
    /// `n` runs, the first file carrying the metadata, every file its `split.no` and
    /// `split.count` (and the first `split.tensors.count`).
    pub fn split(&self, n: usize) -> Vec<GgufWriter> {
        let per = self.tensors.len().div_ceil(n);
        (0..n)
            .map(|k| {
                let mut w = GgufWriter::new();
                if k == 0 {
                    w.metadata = self.metadata.clone();
                    let count = Value::U16(self.tensors.len() as u16);
                    w.meta("split.tensors.count", count);
                }
                w.meta("split.no", Value::U16(k as u16))
                    .meta("split.count", Value::U16(n as u16));
                w.tensors = self
                    .tensors
                    .iter()
                    .skip(k * per)
                    .take(per)
                    .cloned()
                    .collect();
                w
            })
            .collect()
    }

    /// Drops the tensors `name` (for error tests).
    pub fn without(&mut self, name: &str) -> &mut Self {
        self.tensors.retain(|(n, _, _, _)| n != name);
        self
    }

    /// Sets metadata `key` (replacing it if present).
    pub fn set_meta(&mut self, key: &str, v: Value) -> &mut Self {
        self.metadata.retain(|(k, _)| k != key);
        self.metadata.push((key.to_string(), v));
        self
    }

    /// Changes the type id of tensor `name` without touching its bytes (for error tests:
    /// an unsupported type of the same block size).
    pub fn retype(&mut self, name: &str, ty: GgmlType) -> &mut Self {
        for t in self.tensors.iter_mut().filter(|t| t.0 == name) {
            t.2 = ty;
        }
        self
    }
}
