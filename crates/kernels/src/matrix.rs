//! Borrowed weight views: what kernels consume. Model code builds these from mapped files.

use half::{bf16, f16};

/// A run of floats stored as f32, f16 or bf16 (weights, scales and biases keep the dtype they
/// have on disk; kernels widen to f32 as they read).
#[derive(Clone, Copy, Debug)]
pub enum FloatSlice<'a> {
    F32(&'a [f32]),
    F16(&'a [f16]),
    Bf16(&'a [bf16]),
}

impl<'a> FloatSlice<'a> {
    #[inline]
    pub fn len(&self) -> usize {
        match self {
            FloatSlice::F32(s) => s.len(),
            FloatSlice::F16(s) => s.len(),
            FloatSlice::Bf16(s) => s.len(),
        }
    }

    #[inline]
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    #[inline]
    pub fn get(&self, i: usize) -> f32 {
        match self {
            FloatSlice::F32(s) => s[i],
            FloatSlice::F16(s) => s[i].to_f32(),
            FloatSlice::Bf16(s) => s[i].to_f32(),
        }
    }

    #[inline]
    pub fn slice(&self, start: usize, len: usize) -> FloatSlice<'a> {
        match *self {
            FloatSlice::F32(s) => FloatSlice::F32(&s[start..start + len]),
            FloatSlice::F16(s) => FloatSlice::F16(&s[start..start + len]),
            FloatSlice::Bf16(s) => FloatSlice::Bf16(&s[start..start + len]),
        }
    }

    /// Widens `out.len()` values starting at `start` into `out`.
    #[inline]
    pub fn read_into(&self, start: usize, out: &mut [f32]) {
        match self {
            FloatSlice::F32(s) => out.copy_from_slice(&s[start..start + out.len()]),
            // The half crate's slice conversion uses F16C / NEON fp16 where the CPU has it.
            FloatSlice::F16(s) => {
                use half::slice::HalfFloatSliceExt;
                s[start..start + out.len()].convert_to_f32_slice(out)
            }
            // bf16 is the top half of an f32: widening is a shift (vectorizes; no
            // special cases for NaN or subnormals are needed).
            FloatSlice::Bf16(s) => crate::simd::widen_bf16(&s[start..start + out.len()], out),
        }
    }

    pub fn to_vec(&self) -> Vec<f32> {
        let mut v = vec![0.0; self.len()];
        self.read_into(0, &mut v);
        v
    }
}

/// A row-major `[rows, cols]` float matrix.
#[derive(Clone, Copy, Debug)]
pub struct DenseMatrix<'a> {
    pub data: FloatSlice<'a>,
    pub rows: usize,
    pub cols: usize,
}

/// An MLX affine-quantized `[rows, cols]` matrix: `packed` holds `rows * cols * bits / 32`
/// words, `scales`/`biases` hold `rows * cols / group_size` values each.
#[derive(Clone, Copy, Debug)]
pub struct QuantMatrix<'a> {
    pub packed: &'a [u32],
    pub scales: FloatSlice<'a>,
    pub biases: FloatSlice<'a>,
    pub rows: usize,
    pub cols: usize,
    pub bits: u32,
    pub group_size: usize,
    /// Codes, scales and biases in the 16-row interleaved order of [`crate::interleave`]
    /// (4-bit only) instead of MLX's row-major order.
    pub interleaved: bool,
}

impl<'a> QuantMatrix<'a> {
    #[inline]
    pub fn words_per_row(&self) -> usize {
        self.cols * self.bits as usize / 32
    }

    #[inline]
    pub fn groups_per_row(&self) -> usize {
        self.cols / self.group_size
    }

    /// Row `r`'s code word `c` (either layout).
    #[inline]
    pub fn word(&self, r: usize, c: usize) -> u32 {
        let wpr = self.words_per_row();
        if self.interleaved {
            self.packed[crate::interleave::index(r, c, wpr)]
        } else {
            self.packed[r * wpr + c]
        }
    }

    /// Where row `r`'s scale and bias of group `g` are (either layout).
    #[inline]
    pub fn param_index(&self, r: usize, g: usize) -> usize {
        let gpr = self.groups_per_row();
        if self.interleaved {
            crate::interleave::index(r, g, gpr)
        } else {
            r * gpr + g
        }
    }

    /// Row `r`'s code words (row-major layout only).
    #[inline]
    pub fn packed_row(&self, r: usize) -> &'a [u32] {
        debug_assert!(
            !self.interleaved,
            "an interleaved matrix has no contiguous rows"
        );
        let w = self.words_per_row();
        &self.packed[r * w..(r + 1) * w]
    }
}

/// A weight matrix `W[rows = out, cols = in]` used as `y = x @ W.T`.
#[derive(Clone, Copy, Debug)]
pub enum Matrix<'a> {
    Dense(DenseMatrix<'a>),
    Quant(QuantMatrix<'a>),
}

impl<'a> Matrix<'a> {
    #[inline]
    pub fn rows(&self) -> usize {
        match self {
            Matrix::Dense(m) => m.rows,
            Matrix::Quant(m) => m.rows,
        }
    }

    #[inline]
    pub fn cols(&self) -> usize {
        match self {
            Matrix::Dense(m) => m.cols,
            Matrix::Quant(m) => m.cols,
        }
    }

    /// Bytes of weight data (including scales and biases) one full pass reads.
    pub fn bytes(&self) -> usize {
        fn fbytes(s: &FloatSlice) -> usize {
            match s {
                FloatSlice::F32(v) => v.len() * 4,
                FloatSlice::F16(v) => v.len() * 2,
                FloatSlice::Bf16(v) => v.len() * 2,
            }
        }
        match self {
            Matrix::Dense(m) => fbytes(&m.data),
            Matrix::Quant(m) => m.packed.len() * 4 + fbytes(&m.scales) + fbytes(&m.biases),
        }
    }

    /// Dequantizes (or widens) row `r` into `out` (`out.len() == cols`).
    pub fn row_into(&self, r: usize, out: &mut [f32]) {
        match self {
            Matrix::Dense(m) => m.data.read_into(r * m.cols, out),
            Matrix::Quant(m) if m.interleaved => {
                // 4-bit: 8 values per word, word c in group 8c / group_size.
                for (c, vals) in out.chunks_exact_mut(8).enumerate() {
                    let word = m.word(r, c);
                    let at = m.param_index(r, c * 8 / m.group_size);
                    let (s, b) = (m.scales.get(at), m.biases.get(at));
                    for (k, v) in vals.iter_mut().enumerate() {
                        *v = s * ((word >> (4 * k)) & 0xF) as f32 + b;
                    }
                }
            }
            Matrix::Quant(m) => {
                let row = m.packed_row(r);
                let g = m.group_size;
                let base = r * m.groups_per_row();
                for (gi, chunk) in out.chunks_exact_mut(g).enumerate() {
                    crate::quant::unpack_to_f32(row, m.bits, gi * g, chunk);
                    let s = m.scales.get(base + gi);
                    let b = m.biases.get(base + gi);
                    for v in chunk.iter_mut() {
                        *v = s * *v + b;
                    }
                }
            }
        }
    }
}
