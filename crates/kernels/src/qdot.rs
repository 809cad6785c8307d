//! Quantized-activation dot products: MLX affine weights against int8 activations.
//!
//! Decode is bound by memory bandwidth only if the arithmetic keeps up; widening every 4-bit
//! weight to f32 does not on a 2-core machine. Instead each activation row is quantized once
//! per kernel call to int8 in blocks of 32 (`x ≈ d_b * qx`, `d_b = max|x| / 127`), and a
//! group's contribution becomes
//!
//! `Σ_i (s q_i + b) x_i  =  s Σ_b d_b Σ_{i∈b} q_i qx_i  +  b Σ_i x_i`
//!
//! where the inner sums are exact integer dot products (u8 weights × s8 activations: one
//! AVX-512 VNNI instruction per 64 pairs) and the bias term uses the exact f32 sums of `x`.
//! The only approximation is the int8 rounding of activations (relative error ~0.4% per
//! element, the same order as the bf16 activations mlx itself uses), which is why this path
//! is [`Precision::Fast`] and the plain f32 path stays available as [`Precision::Exact`].

use crate::matrix::{FloatSlice, QuantMatrix};

/// Activation block length (divides every MLX group size: 32, 64, 128).
pub const BLOCK: usize = 32;

/// Which arithmetic the quantized matmuls use.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Precision {
    /// f32 activations, dequantized weights: matches mlx's float32 results to rounding.
    Exact,
    /// int8 activations with integer dot products where the weight format has a kernel
    /// (4- and 8-bit); other widths fall back to `Exact`.
    #[default]
    Fast,
}

/// One activation row quantized to int8 blocks.
#[derive(Clone, Debug, Default)]
pub struct QuantizedRow {
    /// Values in natural order (for 8-bit weights).
    pub natural: Vec<i8>,
    /// Values reordered per 128-value chunk as [even indices | odd indices], matching the
    /// low/high nibbles of 4-bit words (for 4-bit weights).
    pub nibble_order: Vec<i8>,
    /// Block scales `d_b`.
    pub scale: Vec<f32>,
    /// Exact f32 sums of each block of `x`.
    pub sum: Vec<f32>,
    /// `sum_b - d_b * Σ qx`: what rounding lost of each block's sum (see [`bias_term`]).
    pub resid: Vec<f32>,
}

impl QuantizedRow {
    /// Quantizes `x` (length a multiple of [`BLOCK`]) into `self`, reusing its buffers.
    pub fn quantize(&mut self, x: &[f32]) {
        let n = x.len();
        debug_assert_eq!(n % BLOCK, 0);
        self.natural.resize(n, 0);
        self.nibble_order.resize(n, 0);
        self.scale.resize(n / BLOCK, 0.0);
        self.sum.resize(n / BLOCK, 0.0);
        self.resid.resize(n / BLOCK, 0.0);
        for (b, xb) in x.chunks_exact(BLOCK).enumerate() {
            let amax = xb.iter().fold(0f32, |m, v| m.max(v.abs()));
            let d = amax / 127.0;
            let inv = if d > 0.0 { 1.0 / d } else { 0.0 };
            self.scale[b] = d;
            self.sum[b] = xb.iter().sum();
            let mut qsum = 0i32;
            for (q, &v) in self.natural[b * BLOCK..(b + 1) * BLOCK].iter_mut().zip(xb) {
                *q = (v * inv).round() as i8;
                qsum += *q as i32;
            }
            self.resid[b] = self.sum[b] - d * qsum as f32;
        }
        // Within each chunk of 128 values, even positions first, then odd ones. A tail chunk
        // shorter than 128 (n not a multiple of 128) uses the same rule over its length.
        for (src, dst) in self
            .natural
            .chunks(128)
            .zip(self.nibble_order.chunks_mut(128))
        {
            let half = src.len() / 2;
            for i in 0..half {
                dst[i] = src[2 * i];
                dst[half + i] = src[2 * i + 1];
            }
        }
    }
}

/// Whether `w` has an int8-activation kernel on this machine.
pub fn supported(w: &QuantMatrix) -> bool {
    let shape_ok = match w.bits {
        4 => w.cols.is_multiple_of(128),
        8 => w.cols.is_multiple_of(64),
        _ => false,
    };
    shape_ok && crate::simd::has_vnni()
}

/// The exactly computed part of row `r`'s dot product: `Σ_g b_g Σ_{i∈g} x_i`, plus a
/// centring correction. Writing `q = (q - m) + m` with `m = 2^(bits-1)` (the middle of the
/// range), the integer part's rounding error is carried by `q - m` (half the magnitude of `q`),
/// and the `m` part uses the exact block sums: `s_g m Σ_b (sum_b - d_b Σ qx_b)` is the
/// difference, added here.
#[inline]
fn bias_term(w: &QuantMatrix, r: usize, x: &QuantizedRow) -> f32 {
    let blocks_per_group = w.group_size / BLOCK;
    let base = r * w.groups_per_row();
    let mid = (1u32 << (w.bits - 1)) as f32;
    let mut acc = 0f32;
    for (g, (sums, resid)) in x
        .sum
        .chunks_exact(blocks_per_group)
        .zip(x.resid.chunks_exact(blocks_per_group))
        .enumerate()
    {
        acc += w.biases.get(base + g) * sums.iter().sum::<f32>();
        acc += w.scales.get(base + g) * mid * resid.iter().sum::<f32>();
    }
    acc
}

/// Per-block factors `s_g * d_b` of row `r` into `out` (one per activation block).
#[inline]
fn block_factors(w: &QuantMatrix, r: usize, x: &QuantizedRow, out: &mut [f32]) {
    let blocks_per_group = w.group_size / BLOCK;
    let base = r * w.groups_per_row();
    match w.scales {
        FloatSlice::F32(s) => {
            for (b, o) in out.iter_mut().enumerate() {
                *o = s[base + b / blocks_per_group] * x.scale[b];
            }
        }
        _ => {
            for (b, o) in out.iter_mut().enumerate() {
                *o = w.scales.get(base + b / blocks_per_group) * x.scale[b];
            }
        }
    }
}

/// Scalar reference: row `r` of `w` dotted with the quantized row, by the formula above.
pub fn dot_reference(w: &QuantMatrix, r: usize, x: &QuantizedRow) -> f32 {
    let row = w.packed_row(r);
    let mut factors = vec![0f32; w.cols / BLOCK];
    block_factors(w, r, x, &mut factors);
    let mut acc = 0f32;
    for (b, f) in factors.iter().enumerate() {
        let mut isum = 0i32;
        for i in b * BLOCK..(b + 1) * BLOCK {
            isum += crate::quant::get_q(row, w.bits, i) as i32 * x.natural[i] as i32;
        }
        acc += f * isum as f32;
    }
    acc + bias_term(w, r, x)
}

/// Most activation blocks a row may have (cols up to 32768).
const MAX_BLOCKS: usize = 1024;

/// Row `r` of `w` dotted with each quantized row in `xs`, written to `out[i]`.
/// Requires [`supported`]`(w)`.
pub fn dot_rows(w: &QuantMatrix, r: usize, xs: &[&QuantizedRow], out: &mut [f32]) {
    let nb = w.cols / BLOCK;
    assert!(
        nb <= MAX_BLOCKS,
        "row of {} values is too long for the int8 kernel",
        w.cols
    );
    let mut factors = [0f32; MAX_BLOCKS];
    let row = w.packed_row(r);
    for (x, o) in xs.iter().zip(out.iter_mut()) {
        block_factors(w, r, x, &mut factors[..nb]);
        // SAFETY: `supported` checked the CPU features and shapes.
        let main = unsafe {
            match w.bits {
                4 => x86::dot_q4(row, &x.nibble_order, &factors[..nb]),
                _ => x86::dot_q8(row, &x.natural, &factors[..nb]),
            }
        };
        *o = main + bias_term(w, r, x);
    }
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::*;

    /// Factors of 4 consecutive blocks spread over 16 lanes, 4 lanes each (the lane layout
    /// `vpdpbusd` leaves for 4-bit chunks: lanes 4j..4j+3 hold block j).
    #[inline]
    #[target_feature(enable = "avx512f")]
    unsafe fn spread4(f: *const f32) -> __m512 {
        let v = _mm512_castps128_ps512(_mm_loadu_ps(f));
        let idx = _mm512_set_epi32(3, 3, 3, 3, 2, 2, 2, 2, 1, 1, 1, 1, 0, 0, 0, 0);
        _mm512_permutexvar_ps(idx, v)
    }

    /// 4-bit row (`cols % 128 == 0`) against nibble-ordered int8 activations.
    #[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
    pub unsafe fn dot_q4(row: &[u32], qx: &[i8], factors: &[f32]) -> f32 {
        let chunks = qx.len() / 128;
        let pw = row.as_ptr() as *const u8;
        let px = qx.as_ptr();
        let mask = _mm512_set1_epi8(0x0F);
        let mut acc0 = _mm512_setzero_ps();
        let mut acc1 = _mm512_setzero_ps();
        let mut c = 0;
        while c < chunks {
            let packed = _mm512_loadu_si512(pw.add(c * 64) as *const _);
            let lo = _mm512_and_si512(packed, mask);
            let hi = _mm512_and_si512(_mm512_srli_epi16(packed, 4), mask);
            let xe = _mm512_loadu_si512(px.add(c * 128) as *const _);
            let xo = _mm512_loadu_si512(px.add(c * 128 + 64) as *const _);
            let isum =
                _mm512_dpbusd_epi32(_mm512_dpbusd_epi32(_mm512_setzero_si512(), lo, xe), hi, xo);
            let f = spread4(factors.as_ptr().add(c * 4));
            if c & 1 == 0 {
                acc0 = _mm512_fmadd_ps(_mm512_cvtepi32_ps(isum), f, acc0);
            } else {
                acc1 = _mm512_fmadd_ps(_mm512_cvtepi32_ps(isum), f, acc1);
            }
            c += 1;
        }
        _mm512_reduce_add_ps(_mm512_add_ps(acc0, acc1))
    }

    /// 8-bit row (`cols % 64 == 0`) against natural-order int8 activations: 64 values per
    /// step, lanes 8j..8j+7 hold block j.
    #[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
    pub unsafe fn dot_q8(row: &[u32], qx: &[i8], factors: &[f32]) -> f32 {
        let steps = qx.len() / 64;
        let pw = row.as_ptr() as *const u8;
        let px = qx.as_ptr();
        let idx = _mm512_set_epi32(1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0, 0, 0, 0, 0, 0);
        let mut acc = _mm512_setzero_ps();
        for s in 0..steps {
            let w = _mm512_loadu_si512(pw.add(s * 64) as *const _);
            let x = _mm512_loadu_si512(px.add(s * 64) as *const _);
            let isum = _mm512_dpbusd_epi32(_mm512_setzero_si512(), w, x);
            let f2 = _mm512_castps128_ps512(_mm_castpd_ps(_mm_load_sd(
                factors.as_ptr().add(2 * s) as *const f64,
            )));
            let f = _mm512_permutexvar_ps(idx, f2);
            acc = _mm512_fmadd_ps(_mm512_cvtepi32_ps(isum), f, acc);
        }
        _mm512_reduce_add_ps(acc)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::quant::quantize_row;
    use crate::rng::Rng;

    #[test]
    fn vnni_kernels_match_the_int8_reference_and_stay_close_to_f32() {
        if !crate::simd::has_vnni() {
            eprintln!("skipped: this CPU has no AVX-512 VNNI");
            return;
        }
        let mut rng = Rng::new(31);
        for (bits, cols, g) in [
            (4u32, 128usize, 32usize),
            (4, 256, 64),
            (4, 384, 128),
            (8, 64, 32),
            (8, 192, 64),
            (8, 256, 128),
        ] {
            let rows = 5;
            let (mut packed, mut scales, mut biases) = (vec![], vec![], vec![]);
            for _ in 0..rows {
                let w: Vec<f32> = (0..cols).map(|_| rng.normal()).collect();
                let (p, s, b) = quantize_row(&w, bits, g);
                packed.extend(p);
                scales.extend(s);
                biases.extend(b);
            }
            let sb: Vec<half::bf16> = scales.iter().map(|&v| half::bf16::from_f32(v)).collect();
            let bb: Vec<half::bf16> = biases.iter().map(|&v| half::bf16::from_f32(v)).collect();
            for bf in [false, true] {
                let (s, b) = if bf {
                    (FloatSlice::Bf16(&sb), FloatSlice::Bf16(&bb))
                } else {
                    (FloatSlice::F32(&scales), FloatSlice::F32(&biases))
                };
                let w = QuantMatrix {
                    packed: &packed,
                    scales: s,
                    biases: b,
                    rows,
                    cols,
                    bits,
                    group_size: g,
                };
                assert!(supported(&w));
                let x: Vec<f32> = (0..cols).map(|_| rng.normal()).collect();
                let mut qx = QuantizedRow::default();
                qx.quantize(&x);
                for r in 0..rows {
                    let mut fast = [0f32];
                    dot_rows(&w, r, &[&qx], &mut fast);
                    let want = dot_reference(&w, r, &qx);
                    assert!(
                        (fast[0] - want).abs() <= 1e-4 * (1.0 + want.abs()),
                        "bits {bits} cols {cols}: {} vs {want}",
                        fast[0]
                    );
                    let mut exact = 0f32;
                    for (c, xv) in x.iter().enumerate() {
                        exact += crate::reference::weight_at(&crate::Matrix::Quant(w), r, c) * xv;
                    }
                    // int8 activations: error well under 1% of the row's magnitude.
                    let scale: f32 = x.iter().map(|v| v.abs()).sum::<f32>() * 0.1;
                    assert!(
                        (want - exact).abs() < 0.02 * scale,
                        "bits {bits}: {want} vs exact {exact}"
                    );
                }
            }
        }
    }
}
