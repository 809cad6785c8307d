//! A model loaded for the CPU, copied into device memory: every matrix, norm weight and
//! routed expert, the blocks rebuilt over the copies.

use super::buffer::DevBuf;
use super::Cuda;
use crate::backend::{Cpu, WeightSet};
use crate::experts::ExpertWeights;
use crate::models::attention::Attention;
use crate::models::delta_net::{DeltaIn, DeltaNet};
use crate::models::ffn::{DenseMlp, FeedForward, MoeBlock, SharedExpert};
use crate::models::mla::{Mla, QueryProj};
use crate::models::transformer::{Layer, Mixer};
use crate::models::Transformer;
use crate::weights::{Floats, Linear};
use cudarc::driver::{CudaStream, DeviceRepr, ValidAsZeroBits};
use moestream_kernels::Matrix;
use std::sync::Arc;

/// A matrix as the kernels take it (`struct Mat` of kernels.cu): device addresses of the
/// codes, scales and biases (affine, kind 0) or of the f32 values (dense, kind 1), and of
/// the bias (0: none).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct MatArg {
    pub codes: u64,
    pub scales: u64,
    pub biases: u64,
    pub dense: u64,
    pub bias: u64,
    pub kind: i32,
    pub rows: i32,
    pub cols: i32,
    pub bits: i32,
    pub group: i32,
}

// SAFETY: plain old data laid out as kernels.cu's `struct Mat`; all zeros is a valid value.
unsafe impl DeviceRepr for MatArg {}
unsafe impl ValidAsZeroBits for MatArg {}

/// A matrix in device memory: its kernel argument and the allocations it points into.
pub struct DevMat {
    pub arg: MatArg,
    _codes: DevBuf<u32>,
    _floats: [DevBuf<f32>; 4],
}

/// The CUDA backend's weight types.
pub struct CudaWeights;

impl WeightSet for CudaWeights {
    type Matrix = DevMat;
    type Vector = DevBuf<f32>;
    /// The router's selection bias, read by the router kernel.
    type Values = DevBuf<f32>;
}

/// Every routed expert of every MoE layer, resident in device memory.
pub struct CudaExperts {
    layers: Vec<Option<Vec<[DevMat; 3]>>>,
    /// Per MoE layer, its experts' kernel arguments `[gate, up, down]` in expert order, on
    /// the device: the direct expert kernels look a slot's matrices up there.
    tables: Vec<DevBuf<MatArg>>,
    pub(super) bytes: Vec<usize>,
    /// Activations per expert, counted by the expert kernels: one array over all layers,
    /// layer `l`'s experts from `usage_at[l]`.
    pub(super) dev_usage: DevBuf<u32>,
    usage_at: Vec<usize>,
    stream: Arc<CudaStream>,
}

impl CudaExperts {
    pub(super) fn layer(&self, layer: usize) -> Option<&[[DevMat; 3]]> {
        self.layers.get(layer).and_then(Option::as_deref)
    }

    /// Layer `layer`'s table of expert matrices (see `tables`).
    pub(super) fn mat_table(&self, layer: usize) -> &DevBuf<MatArg> {
        &self.tables[layer]
    }

    /// Where layer `layer`'s counters start in `dev_usage`.
    pub(super) fn usage_counters(&self, layer: usize) -> usize {
        self.usage_at[layer]
    }

    /// Activations per expert, per layer (empty for dense layers), copied from the device.
    pub(super) fn snapshot(&self) -> Vec<Vec<u64>> {
        let on_device = match &self.dev_usage.slice {
            Some(s) => self.stream.memcpy_dtov(s).unwrap_or_default(),
            None => Vec::new(),
        };
        self.layers
            .iter()
            .zip(&self.usage_at)
            .map(|(l, &at)| {
                let n = l.as_ref().map_or(0, Vec::len);
                (at..at + n)
                    .map(|i| on_device.get(i).copied().unwrap_or(0) as u64)
                    .collect()
            })
            .collect()
    }
}

impl Cuda {
    fn vector(&self, f: &Floats) -> DevBuf<f32> {
        self.uploaded(&f.to_vec())
    }

    /// `lin` in device memory: 4- and 8-bit affine matrices as they are (row-major; the
    /// loader was asked for no interleave), anything else widened to f32.
    fn matrix(&self, lin: &Linear) -> Result<DevMat, String> {
        let m = lin.matrix();
        let mut arg = MatArg {
            rows: lin.rows as i32,
            cols: lin.cols as i32,
            ..Default::default()
        };
        let mut codes = DevBuf::default();
        let mut floats: [DevBuf<f32>; 4] = Default::default();
        match m {
            Matrix::Quant(q) if matches!(q.bits, 4 | 8) => {
                if q.interleaved {
                    return Err("a 4-bit matrix in the CPU's interleaved layout".into());
                }
                self.upload(&mut codes, q.packed);
                self.upload(&mut floats[0], &q.scales.to_vec());
                self.upload(&mut floats[1], &q.biases.to_vec());
                arg.kind = 0;
                arg.bits = q.bits as i32;
                arg.group = q.group_size as i32;
            }
            _ => {
                let mut dense = vec![0f32; lin.rows * lin.cols];
                for (r, row) in dense.chunks_exact_mut(lin.cols).enumerate() {
                    m.row_into(r, row);
                }
                self.upload(&mut floats[2], &dense);
                arg.kind = 1;
            }
        }
        if let Some(b) = &lin.bias {
            floats[3] = self.vector(b);
        }
        arg.codes = self.ptr(&codes);
        arg.scales = self.ptr(&floats[0]);
        arg.biases = self.ptr(&floats[1]);
        arg.dense = self.ptr(&floats[2]);
        arg.bias = self.ptr(&floats[3]);
        Ok(DevMat {
            arg,
            _codes: codes,
            _floats: floats,
        })
    }

    fn matrices(&self, ms: &[Linear]) -> Result<Vec<DevMat>, String> {
        ms.iter().map(|m| self.matrix(m)).collect()
    }

    fn mla(&self, m: &Mla) -> Result<Mla<CudaWeights>, String> {
        Ok(Mla {
            query: match &m.query {
                QueryProj::LowRank { a, norm, b } => QueryProj::LowRank {
                    a: self.matrix(a)?,
                    norm: self.vector(norm),
                    b: self.matrix(b)?,
                },
                QueryProj::Full(q) => QueryProj::Full(self.matrix(q)?),
            },
            kv_a: self.matrix(&m.kv_a)?,
            kv_norm: self.vector(&m.kv_norm),
            embed_q: self.matrices(&m.embed_q)?,
            unembed_out: self.matrices(&m.unembed_out)?,
            o_proj: self.matrix(&m.o_proj)?,
            dims: m.dims,
            inv_freq: m.inv_freq.clone(),
            rope_mscale: m.rope_mscale,
            scale: m.scale,
            eps: m.eps,
        })
    }

    fn delta_net(&self, d: &DeltaNet) -> Result<DeltaNet<CudaWeights>, String> {
        Ok(DeltaNet {
            input: match &d.input {
                DeltaIn::Fused { qkvz, ba } => DeltaIn::Fused {
                    qkvz: self.matrix(qkvz)?,
                    ba: self.matrix(ba)?,
                },
                DeltaIn::Split { qkv, z, b, a } => DeltaIn::Split {
                    qkv: self.matrix(qkv)?,
                    z: self.matrix(z)?,
                    b: self.matrix(b)?,
                    a: self.matrix(a)?,
                },
            },
            shape: d.shape,
            kernel: d.kernel,
            conv_w: self.uploaded(&d.conv_w),
            a_exp: self.uploaded(&d.a_exp),
            dt_bias: self.uploaded(&d.dt_bias),
            norm: self.vector(&d.norm),
            out_proj: self.matrix(&d.out_proj)?,
            eps: d.eps,
        })
    }

    fn dense_mlp(&self, d: &DenseMlp) -> Result<DenseMlp<CudaWeights>, String> {
        Ok(DenseMlp {
            gate_proj: self.matrix(&d.gate_proj)?,
            up_proj: self.matrix(&d.up_proj)?,
            down_proj: self.matrix(&d.down_proj)?,
        })
    }

    fn layer(&self, l: &Layer) -> Result<Layer<CudaWeights>, String> {
        let attn = match &l.attn {
            Mixer::Attention(a) => Mixer::Attention(Attention {
                q_proj: self.matrix(&a.q_proj)?,
                k_proj: self.matrix(&a.k_proj)?,
                v_proj: self.matrix(&a.v_proj)?,
                o_proj: self.matrix(&a.o_proj)?,
                q_norm: a.q_norm.as_ref().map(|w| self.vector(w)),
                k_norm: a.k_norm.as_ref().map(|w| self.vector(w)),
                output_gate: a.output_gate,
            }),
            Mixer::Mla(m) => Mixer::Mla(Box::new(self.mla(m)?)),
            Mixer::DeltaNet(d) => Mixer::DeltaNet(Box::new(self.delta_net(d)?)),
        };
        let ffn = match &l.ffn {
            FeedForward::Dense(d) => FeedForward::Dense(Box::new(self.dense_mlp(d)?)),
            FeedForward::Moe(m) => FeedForward::Moe(MoeBlock {
                router: self.matrix(&m.router)?,
                kind: m.kind.clone(),
                n_experts: m.n_experts,
                top_k: m.top_k,
                expert_inter: m.expert_inter,
                shared: match &m.shared {
                    Some(s) => Some(SharedExpert {
                        mlp: self.dense_mlp(&s.mlp)?,
                        gate: s.gate.as_ref().map(|g| self.matrix(g)).transpose()?,
                    }),
                    None => None,
                },
                selection_bias: m.selection_bias.as_ref().map(|b| self.uploaded(b)),
            }),
        };
        Ok(Layer {
            input_norm: self.vector(&l.input_norm),
            attn,
            post_norm: self.vector(&l.post_norm),
            ffn,
        })
    }

    fn experts(&self, layers: &[Option<Vec<ExpertWeights>>]) -> Result<CudaExperts, String> {
        let mut out = Vec::with_capacity(layers.len());
        let mut bytes = Vec::with_capacity(layers.len());
        for l in layers {
            bytes.push(
                l.as_ref()
                    .and_then(|e| e.first())
                    .map_or(0, |e| e.gate.bytes() + e.up.bytes() + e.down.bytes()),
            );
            out.push(match l {
                None => None,
                Some(experts) => Some(
                    experts
                        .iter()
                        .map(|e| {
                            Ok([
                                self.matrix(&e.gate)?,
                                self.matrix(&e.up)?,
                                self.matrix(&e.down)?,
                            ])
                        })
                        .collect::<Result<Vec<_>, String>>()?,
                ),
            });
        }
        let tables = out
            .iter()
            .map(|l| {
                let args: Vec<MatArg> = l.iter().flatten().flatten().map(|m| m.arg).collect();
                self.uploaded(&args)
            })
            .collect();
        let mut usage_at = Vec::with_capacity(layers.len());
        let mut total = 0;
        for l in layers {
            usage_at.push(total);
            total += l.as_ref().map_or(0, Vec::len);
        }
        Ok(CudaExperts {
            layers: out,
            tables,
            bytes,
            dev_usage: self.uploaded(&vec![0u32; total]),
            usage_at,
            stream: self.stream.clone(),
        })
    }
}

/// `model` (loaded for the CPU with `Precision::Exact`, so its weights are in the files'
/// row-major layout, and its experts resident) copied onto `dev`. Fails, naming the reason,
/// for what this version does not run: streamed experts.
pub fn to_cuda(model: &Transformer<Cpu>, dev: Cuda) -> Result<Transformer<Cuda>, String> {
    let experts = model
        .experts
        .resident()
        .ok_or("streamed experts are not on CUDA yet")?;
    let experts = dev.experts(experts)?;
    let layers = model
        .layers
        .iter()
        .map(|l| dev.layer(l))
        .collect::<Result<Vec<_>, _>>()?;
    let embed = dev.matrix(&model.embed)?;
    let norm = dev.vector(&model.norm);
    let lm_head = model.lm_head.as_ref().map(|h| dev.matrix(h)).transpose()?;
    if let Err(e) = crate::backend::Backend::check(&dev) {
        return Err(format!("copying the weights: {e}"));
    }
    Ok(Transformer {
        info: model.info.clone(),
        embed,
        layers,
        norm,
        lm_head,
        eps: model.eps,
        attn: model.attn.clone(),
        experts: Box::new(experts),
        dev,
        precision: model.precision,
        fused_swiglu: model.fused_swiglu,
        moe_top_k: model.moe_top_k,
        scratch: Default::default(),
    })
}
