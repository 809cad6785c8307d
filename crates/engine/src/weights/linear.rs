//! Typed weights built from the store, checked against the shapes the architecture expects.
//!
//! A module path `p` is quantized when config.json's quantization block names it (an
//! override), or else when `p.scales` exists; bits and group size are derived from the tensor
//! shapes (mlx-lm's rule: the top-level bits/group are not consulted), and an override that
//! disagrees with the shapes is an error.

use super::bytes::Bytes;
use super::safetensors::{Dtype, Tensor};
use super::store::WeightStore;
use crate::config::QuantConfig;
use crate::error::LoadError;
use crate::experts::io::AfterRead;
use half::{bf16, f16};
use moestream_kernels::{DenseMatrix, FloatSlice, Matrix, QuantMatrix};

/// A float vector or matrix in its stored dtype.
#[derive(Clone)]
pub struct Floats {
    pub dtype: Dtype,
    pub bytes: Bytes,
}

impl Floats {
    pub fn view(&self) -> FloatSlice<'_> {
        let b = self.bytes.as_slice();
        match self.dtype {
            Dtype::F32 => FloatSlice::F32(bytemuck::cast_slice(b)),
            Dtype::F16 => FloatSlice::F16(bytemuck::cast_slice::<u8, f16>(b)),
            Dtype::Bf16 => FloatSlice::Bf16(bytemuck::cast_slice::<u8, bf16>(b)),
            other => unreachable!("Floats built from non-float dtype {other:?}"),
        }
    }

    pub fn to_vec(&self) -> Vec<f32> {
        self.view().to_vec()
    }
}

/// Storage of a weight matrix `[rows = out, cols = in]`.
#[derive(Clone)]
pub enum WeightData {
    Dense(Floats),
    Quant {
        packed: Bytes,
        scales: Floats,
        biases: Floats,
        bits: u32,
        group_size: usize,
        /// In the 16-row interleaved order of `moestream_kernels::interleave` (a resident
        /// copy made at load) rather than the file's row-major order.
        interleaved: bool,
    },
}

/// A weight matrix (plus an optional float bias), used as `y = x @ W.T + b`.
#[derive(Clone)]
pub struct Linear {
    pub data: WeightData,
    pub rows: usize,
    pub cols: usize,
    pub bias: Option<Floats>,
}

impl Linear {
    pub fn matrix(&self) -> Matrix<'_> {
        match &self.data {
            WeightData::Dense(f) => Matrix::Dense(DenseMatrix {
                data: f.view(),
                rows: self.rows,
                cols: self.cols,
            }),
            WeightData::Quant {
                packed,
                scales,
                biases,
                bits,
                group_size,
                interleaved,
            } => Matrix::Quant(QuantMatrix {
                packed: bytemuck::cast_slice(packed.as_slice()),
                scales: scales.view(),
                biases: biases.view(),
                rows: self.rows,
                cols: self.cols,
                bits: *bits,
                group_size: *group_size,
                interleaved: *interleaved,
            }),
        }
    }

    /// The byte ranges holding the weight: `[data]`, or `[packed, scales, biases]`.
    pub fn parts(&self) -> Vec<&Bytes> {
        match &self.data {
            WeightData::Dense(f) => vec![&f.bytes],
            WeightData::Quant {
                packed,
                scales,
                biases,
                ..
            } => vec![packed, &scales.bytes, &biases.bytes],
        }
    }

    /// Whether this matrix is 4-bit of a shape the interleaved layout serves (and still in
    /// the file's row-major order).
    pub fn can_interleave(&self) -> bool {
        match &self.data {
            WeightData::Quant {
                bits,
                group_size,
                interleaved: false,
                ..
            } => moestream_kernels::interleave::can_interleave(
                *bits,
                self.rows,
                self.cols,
                *group_size,
            ),
            _ => false,
        }
    }

    /// How to re-lay a copy of each of [`Linear::parts`] (`[packed, scales, biases]`, an
    /// expert slot) in place into the interleaved order: a function of the part's bytes and
    /// its items per row, for each part. Requires [`Linear::can_interleave`].
    pub fn interleave_steps(&self) -> [AfterRead; 3] {
        let WeightData::Quant {
            scales, group_size, ..
        } = &self.data
        else {
            unreachable!("interleave_steps on a dense matrix")
        };
        let groups = self.cols / group_size;
        let params: AfterRead = match scales.dtype.size() {
            4 => (relay_bytes::<[u8; 4]>, groups),
            _ => (relay_bytes::<[u8; 2]>, groups),
        };
        return [(relay_bytes::<[u8; 4]>, self.cols * 4 / 32), params, params];

        /// Items as byte arrays: any alignment, one code path for every element size.
        fn relay_bytes<T: bytemuck::Pod + Default>(data: &mut [u8], per_row: usize) {
            let items = bytemuck::cast_slice_mut::<u8, T>(data);
            moestream_kernels::interleave::interleave_in_place(items, per_row, &mut Vec::new());
        }
    }

    /// The same matrix over other memory holding copies of [`Linear::parts`] (an expert
    /// slot), re-laid into the interleaved order if `relaid` (see
    /// [`Linear::interleave_steps`]). Each part must be aligned for its element type.
    pub fn matrix_over<'a>(&self, parts: &[&'a [u8]], relaid: bool) -> Matrix<'a> {
        fn floats<'b>(dtype: Dtype, b: &'b [u8]) -> FloatSlice<'b> {
            match dtype {
                Dtype::F32 => FloatSlice::F32(bytemuck::cast_slice(b)),
                Dtype::F16 => FloatSlice::F16(bytemuck::cast_slice::<u8, f16>(b)),
                _ => FloatSlice::Bf16(bytemuck::cast_slice::<u8, bf16>(b)),
            }
        }
        match &self.data {
            WeightData::Dense(f) => Matrix::Dense(DenseMatrix {
                data: floats(f.dtype, parts[0]),
                rows: self.rows,
                cols: self.cols,
            }),
            WeightData::Quant {
                scales,
                biases,
                bits,
                group_size,
                interleaved,
                ..
            } => Matrix::Quant(QuantMatrix {
                packed: bytemuck::cast_slice(parts[0]),
                scales: floats(scales.dtype, parts[1]),
                biases: floats(biases.dtype, parts[2]),
                rows: self.rows,
                cols: self.cols,
                bits: *bits,
                group_size: *group_size,
                interleaved: *interleaved || relaid,
            }),
        }
    }

    pub fn is_quantized(&self) -> bool {
        matches!(self.data, WeightData::Quant { .. })
    }

    /// Bytes one full pass over the weights reads.
    pub fn bytes(&self) -> usize {
        self.matrix().bytes()
    }

    /// Splits a stacked `[n, rows, cols]` weight into `n` views (no copy).
    fn split(&self, n: usize) -> Vec<Linear> {
        let rows = self.rows / n;
        let part = |b: &Bytes, i: usize| {
            let len = b.len() / n;
            b.sub(i * len, len)
        };
        (0..n)
            .map(|i| {
                let data = match &self.data {
                    WeightData::Dense(f) => WeightData::Dense(Floats {
                        dtype: f.dtype,
                        bytes: part(&f.bytes, i),
                    }),
                    WeightData::Quant {
                        packed,
                        scales,
                        biases,
                        bits,
                        group_size,
                        interleaved,
                    } => WeightData::Quant {
                        packed: part(packed, i),
                        scales: Floats {
                            dtype: scales.dtype,
                            bytes: part(&scales.bytes, i),
                        },
                        biases: Floats {
                            dtype: biases.dtype,
                            bytes: part(&biases.bytes, i),
                        },
                        bits: *bits,
                        group_size: *group_size,
                        interleaved: *interleaved,
                    },
                };
                let bias = self.bias.as_ref().map(|b| Floats {
                    dtype: b.dtype,
                    bytes: part(&b.bytes, i),
                });
                Linear {
                    data,
                    rows,
                    cols: self.cols,
                    bias,
                }
            })
            .collect()
    }
}

/// One weight an architecture loader asked for, as [`WeightLoader::recording`] notes it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Request {
    /// A linear layer at `module` with weight `[lead.., out, inp]` (`lead` = `[E]` for stacked
    /// experts), plus `module.bias` `[lead.., out]` when `bias`.
    Linear {
        module: String,
        lead: Vec<usize>,
        out: usize,
        inp: usize,
        bias: bool,
    },
    /// A float tensor of exactly this shape (norm weights, biases, conv weights, ...).
    Floats { name: String, shape: Vec<usize> },
}

/// Builds typed weights from a store, checking names, dtypes and shapes.
pub struct WeightLoader<'a> {
    pub store: &'a WeightStore,
    pub quant: &'a QuantConfig,
    used: std::cell::RefCell<std::collections::BTreeSet<String>>,
    /// Copy dense (non-expert) weights into memory instead of viewing the mapping: with
    /// streamed experts the dense weights must stay resident whatever happens to the files.
    own_dense: bool,
    /// Set while loading routed experts (never copied: the expert store reads them).
    in_experts: std::cell::Cell<bool>,
    /// Bytes copied into memory so far.
    owned: std::cell::Cell<usize>,
    /// Re-lay 4-bit matrices that are not streamed into the interleaved order (a resident
    /// copy) so the decode kernel runs at memory speed.
    interleave: bool,
    /// Bytes re-laid into the interleaved order so far.
    interleaved: std::cell::Cell<usize>,
    /// Recording mode: every request is noted here and answered with zeros (see
    /// [`WeightLoader::recording`]).
    record: Option<std::cell::RefCell<Vec<Request>>>,
}

impl<'a> WeightLoader<'a> {
    pub fn new(store: &'a WeightStore, quant: &'a QuantConfig) -> Self {
        WeightLoader {
            store,
            quant,
            used: Default::default(),
            own_dense: false,
            in_experts: Default::default(),
            owned: Default::default(),
            interleave: false,
            interleaved: Default::default(),
            record: None,
        }
    }

    /// A loader that serves no file: it notes every weight an architecture loader asks for
    /// (what the model needs, in the loader's own words) and answers with zeros, float
    /// tensors at their size and matrices empty (only their shape is kept). No layout is
    /// found in it (`has` is false), so a loader takes the MLX layout. `store` and `quant`
    /// are empty ones the caller keeps.
    pub fn recording(store: &'a WeightStore, quant: &'a QuantConfig) -> Self {
        WeightLoader {
            record: Some(Default::default()),
            ..WeightLoader::new(store, quant)
        }
    }

    /// What a [`WeightLoader::recording`] loader was asked for, in order.
    pub fn requests(&self) -> Vec<Request> {
        self.record
            .as_ref()
            .map(|r| r.borrow().clone())
            .unwrap_or_default()
    }

    /// In recording mode: notes a float tensor and gives zeros of its size.
    fn recorded_floats(&self, name: &str, shape: &[usize]) -> Option<Floats> {
        let record = self.record.as_ref()?;
        record.borrow_mut().push(Request::Floats {
            name: name.into(),
            shape: shape.to_vec(),
        });
        let n: usize = shape.iter().product();
        Some(Floats {
            dtype: Dtype::F32,
            bytes: Bytes::copied(&vec![0u8; n * 4]),
        })
    }

    /// Bytes of weights this loader re-laid into the interleaved order.
    pub fn interleaved_bytes(&self) -> usize {
        self.interleaved.get()
    }

    /// Interleaves resident 4-bit matrices (see the field).
    pub fn interleaving(mut self, on: bool) -> Self {
        self.interleave = on;
        self
    }

    /// A resident copy of a row-major `[rows, per_row]` array of `elem`-byte items in the
    /// interleaved order (one pass when the source is aligned for its items, as in files
    /// `moestream synth` writes; mlx's unpadded headers need a copy first).
    fn interleaved_copy(&self, b: &Bytes, per_row: usize, elem: usize) -> Bytes {
        use moestream_kernels::interleave::{interleave_in_place, interleave_into};
        fn relay<T: bytemuck::Pod + Default + Send + Sync>(
            src: &[u8],
            dst: &mut [u8],
            per_row: usize,
        ) {
            let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
            let dst = bytemuck::cast_slice_mut::<u8, T>(dst);
            match bytemuck::try_cast_slice::<u8, T>(src) {
                Ok(src) => interleave_into(src, dst, per_row, threads),
                Err(_) => {
                    bytemuck::cast_slice_mut::<T, u8>(dst).copy_from_slice(src);
                    interleave_in_place(dst, per_row, &mut Vec::new());
                }
            }
        }
        self.owned.set(self.owned.get() + b.len());
        self.interleaved.set(self.interleaved.get() + b.len());
        Bytes::filled_with(b.len(), |dst| match elem {
            4 => relay::<u32>(b.as_slice(), dst, per_row),
            _ => relay::<u16>(b.as_slice(), dst, per_row),
        })
    }

    /// Copies dense weights into memory (see the field).
    pub fn owning_dense(mut self, own: bool) -> Self {
        self.own_dense = own;
        self
    }

    /// Bytes this loader has copied into memory (resident dense weights).
    pub fn owned_bytes(&self) -> usize {
        self.owned.get()
    }

    /// Runs `f` with expert loading marked (its weights stay views of the files).
    pub fn experts<T>(&self, f: impl FnOnce() -> T) -> T {
        self.in_experts.set(true);
        let out = f();
        self.in_experts.set(false);
        out
    }

    /// The tensor's bytes as this loader keeps them: a view of the mapping, or a resident,
    /// aligned copy. Copied: dense weights when experts are streamed (they must stay resident
    /// whatever happens to the files), and any range misaligned for its element size (mlx's
    /// unpadded headers) that will be viewed as typed data. Streamed experts are never viewed
    /// through the mapping (they are read into aligned slots), so they are never copied.
    fn keep(&self, b: &Bytes, align: usize) -> Bytes {
        let streamed_expert = self.own_dense && self.in_experts.get();
        let dense_to_own = self.own_dense && !self.in_experts.get();
        if !streamed_expert && (dense_to_own || !b.offset().is_multiple_of(align)) {
            self.owned.set(self.owned.get() + b.len());
            Bytes::copied(b.as_slice())
        } else {
            b.clone()
        }
    }

    fn tensor(&self, name: &str, needed_by: &str) -> Result<&'a Tensor, LoadError> {
        let t = self
            .store
            .get(name)
            .ok_or_else(|| LoadError::MissingTensor {
                tensor: name.into(),
                needed_by: needed_by.into(),
            })?;
        self.used.borrow_mut().insert(name.to_string());
        Ok(t)
    }

    fn bad(t: &Tensor, problem: String) -> LoadError {
        LoadError::BadTensor {
            tensor: t.name.clone(),
            file: t.file.as_ref().clone(),
            problem,
        }
    }

    fn floats(&self, t: &Tensor, shape: &[usize]) -> Result<Floats, LoadError> {
        Self::check_floats(t, shape)?;
        Ok(Floats {
            dtype: t.dtype,
            bytes: self.keep(&t.bytes, t.dtype.size()),
        })
    }

    fn check_floats(t: &Tensor, shape: &[usize]) -> Result<(), LoadError> {
        if !t.dtype.is_float() {
            return Err(Self::bad(
                t,
                format!("dtype {:?}, expected F32, F16 or BF16", t.dtype),
            ));
        }
        if t.shape != shape {
            return Err(Self::bad(
                t,
                format!("shape {:?}, expected {:?}", t.shape, shape),
            ));
        }
        Ok(())
    }

    /// A 1-D float parameter `name` of length `n` (norm weights, biases).
    pub fn vector(&self, name: &str, n: usize) -> Result<Floats, LoadError> {
        if let Some(f) = self.recorded_floats(name, &[n]) {
            return Ok(f);
        }
        let t = self.tensor(name, name)?;
        self.floats(t, &[n])
    }

    /// A float tensor `name` of exactly `shape` (e.g. a conv weight).
    pub fn array(&self, name: &str, shape: &[usize]) -> Result<Floats, LoadError> {
        if let Some(f) = self.recorded_floats(name, shape) {
            return Ok(f);
        }
        let t = self.tensor(name, name)?;
        self.floats(t, shape)
    }

    /// Whether `module.weight` exists.
    pub fn has(&self, module: &str) -> bool {
        self.store.contains(&format!("{module}.weight"))
    }

    /// The linear layer at `module` with weight `[lead.., out, inp]` (`lead` = `[E]` for
    /// stacked experts, `[]` otherwise).
    fn load(
        &self,
        module: &str,
        lead: &[usize],
        out: usize,
        inp: usize,
        bias: bool,
    ) -> Result<Linear, LoadError> {
        if let Some(record) = &self.record {
            record.borrow_mut().push(Request::Linear {
                module: module.into(),
                lead: lead.to_vec(),
                out,
                inp,
                bias,
            });
            let n: usize = lead.iter().product();
            let zeros = |len: usize| Floats {
                dtype: Dtype::F32,
                bytes: Bytes::copied(&vec![0u8; len * 4]),
            };
            return Ok(Linear {
                data: WeightData::Dense(zeros(0)),
                rows: out * n,
                cols: inp,
                bias: bias.then(|| zeros(out * n)),
            });
        }
        let wname = format!("{module}.weight");
        let w = self.tensor(&wname, module)?;
        let sname = format!("{module}.scales");
        let n: usize = lead.iter().product();
        let shape = |last: usize| [lead, &[out, last]].concat();
        let quantized = match self.quant.overrides.get(module) {
            Some(None) => false,
            Some(Some(_)) => true,
            None => self.store.contains(&sname),
        };
        let data = if quantized {
            if w.dtype != Dtype::U32 {
                return Err(Self::bad(
                    w,
                    format!("dtype {:?}, expected U32 packed quantized weights", w.dtype),
                ));
            }
            let s = self.tensor(&sname, module)?;
            let b = self.tensor(&format!("{module}.biases"), module)?;
            let groups = *s.shape.last().unwrap_or(&0);
            let packed_cols = *w.shape.last().unwrap_or(&0);
            if groups == 0 || !inp.is_multiple_of(groups) || !(packed_cols * 32).is_multiple_of(inp)
            {
                return Err(Self::bad(
                    w,
                    format!(
                        "shape {:?} with scales {:?} does not fit {inp} input features",
                        w.shape, s.shape
                    ),
                ));
            }
            let group_size = inp / groups;
            let bits = (packed_cols * 32 / inp) as u32;
            if !moestream_kernels::quant::SUPPORTED_BITS.contains(&bits)
                || bits == 1 && group_size == 0
            {
                return Err(Self::bad(
                    w,
                    format!("{bits}-bit quantization is not supported"),
                ));
            }
            if let Some(Some(p)) = self.quant.overrides.get(module) {
                if p.bits != bits || p.group_size != group_size {
                    return Err(Self::bad(
                        w,
                        format!(
                        "config says {}-bit group {}, the shapes say {bits}-bit group {group_size}",
                        p.bits, p.group_size
                    ),
                    ));
                }
            }
            if w.shape != shape(packed_cols) || !(inp * bits as usize).is_multiple_of(32) {
                return Err(Self::bad(
                    w,
                    format!(
                        "shape {:?}, expected {:?}",
                        w.shape,
                        shape(inp * bits as usize / 32)
                    ),
                ));
            }
            let streamed_expert = self.own_dense && self.in_experts.get();
            let interleaved = self.interleave
                && !streamed_expert
                && moestream_kernels::interleave::can_interleave(bits, out, inp, group_size);
            let (packed, scales, biases) = if interleaved {
                let params = |t: &Tensor| -> Result<Floats, LoadError> {
                    Self::check_floats(t, &shape(groups))?;
                    Ok(Floats {
                        dtype: t.dtype,
                        bytes: self.interleaved_copy(&t.bytes, groups, t.dtype.size()),
                    })
                };
                let (scales, biases) = (params(s)?, params(b)?);
                (
                    self.interleaved_copy(&w.bytes, packed_cols, 4),
                    scales,
                    biases,
                )
            } else {
                let scales = self.floats(s, &shape(groups))?;
                let biases = self.floats(b, &shape(groups))?;
                (self.keep(&w.bytes, 4), scales, biases)
            };
            WeightData::Quant {
                packed,
                scales,
                biases,
                bits,
                group_size,
                interleaved,
            }
        } else {
            WeightData::Dense(self.floats(w, &shape(inp))?)
        };
        let bias = if bias {
            let bname = format!("{module}.bias");
            let t = self.tensor(&bname, module)?;
            Some(self.floats(t, &[lead, &[out]].concat())?)
        } else {
            None
        };
        Ok(Linear {
            data,
            rows: out * n,
            cols: inp,
            bias,
        })
    }

    /// A linear layer `[out, inp]`.
    pub fn linear(
        &self,
        module: &str,
        out: usize,
        inp: usize,
        bias: bool,
    ) -> Result<Linear, LoadError> {
        self.load(module, &[], out, inp, bias)
    }

    /// Stacked experts `[n, out, inp]` (MLX `switch_mlp.*`), as one view per expert.
    pub fn stacked(
        &self,
        module: &str,
        n: usize,
        out: usize,
        inp: usize,
    ) -> Result<Vec<Linear>, LoadError> {
        Ok(self.load(module, &[n], out, inp, false)?.split(n))
    }

    /// Names in the store that no `linear`/`vector`/`stacked` call used.
    pub fn unused(&self) -> Vec<String> {
        let used = self.used.borrow();
        self.store
            .names()
            .filter(|n| !used.contains(*n))
            .cloned()
            .collect()
    }
}
