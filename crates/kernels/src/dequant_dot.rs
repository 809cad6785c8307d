//! The exact (f32) dot of a quantized weight row with an f32 vector, dequantizing in
//! registers: what the router and `--exact` compute for every row, without writing the row
//! out as f32 first and reading it back.
//!
//! Its result has the bits of [`crate::matrix::Matrix::row_into`] followed by
//! [`crate::simd::dot`] on the same ISA: each weight is `s * q + b` (a multiply and an add,
//! two roundings, as `row_into` computes it) and the products accumulate in the same
//! registers in the same order as that ISA's dot. So the fast path changes no logit.

use crate::matrix::QuantMatrix;

/// Whether this ISA has a fused kernel for `w`'s layout (else the caller dequantizes the
/// row and calls [`crate::simd::dot`]).
#[inline]
pub fn fused(w: &QuantMatrix) -> bool {
    #[cfg(target_arch = "x86_64")]
    if crate::simd::isa() == crate::simd::Isa::Avx2 {
        return avx2::handles(w);
    }
    let _ = w;
    false
}

/// `write(r, row r of w (dequantized) · x)` for each row of `rows`. Needs [`fused`]`(w)`.
pub fn dot_rows(
    w: &QuantMatrix,
    rows: std::ops::Range<usize>,
    x: &[f32],
    write: impl FnMut(usize, f32),
) {
    assert!(
        fused(w),
        "no fused dequantizing dot for this layout on this CPU"
    );
    assert!(
        rows.end <= w.rows && x.len() == w.cols,
        "rows {rows:?} or {} values out of shape",
        x.len()
    );
    #[cfg(target_arch = "x86_64")]
    {
        let mut write = write;
        for r in rows {
            // SAFETY: `fused` holds only on AVX2 (so the CPU has AVX2 and FMA) for a layout
            // the kernel reads; the shapes are checked above.
            write(r, unsafe { avx2::dot_quant_row(w, r, x) });
        }
    }
    // Off x86-64 `fused` is false: the first assert has already stopped.
    #[cfg(not(target_arch = "x86_64"))]
    drop((rows, write));
}

#[cfg(target_arch = "x86_64")]
pub(crate) mod avx2 {
    use crate::matrix::QuantMatrix;
    use std::arch::x86_64::*;

    /// Row-major 4- or 8-bit rows of whole 16-value steps (MLX's group sizes, and the 16s and
    /// 32s of GGUF's K-quants, all are).
    pub fn handles(w: &QuantMatrix) -> bool {
        !w.interleaved
            && matches!(w.bits, 4 | 8)
            && w.group_size.is_multiple_of(16)
            && w.cols.is_multiple_of(w.group_size)
    }

    /// [`super::dot_quant_row`] on AVX2: `dot_avx2`'s two accumulators (values `16i..16i+8`
    /// into the first, `16i+8..16i+16` into the second) and its reduction.
    ///
    /// # Safety
    /// Needs AVX2 and FMA; `handles(w)`, `r < w.rows` and `x.len() == w.cols`.
    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn dot_quant_row(w: &QuantMatrix, r: usize, x: &[f32]) -> f32 {
        debug_assert!(handles(w) && r < w.rows && x.len() == w.cols);
        let bytes = w.packed_row(r).as_ptr() as *const u8;
        let groups = w.groups_per_row();
        let (mut acc0, mut acc1) = (_mm256_setzero_ps(), _mm256_setzero_ps());
        let nib = _mm_set1_epi8(0x0F);
        for g in 0..groups {
            let s = _mm256_set1_ps(w.scales.get(r * groups + g));
            let b = _mm256_set1_ps(w.biases.get(r * groups + g));
            for i in (g * w.group_size..(g + 1) * w.group_size).step_by(16) {
                // Sixteen codes as bytes, in value order.
                let codes = if w.bits == 8 {
                    _mm_loadu_si128(bytes.add(i) as *const _)
                } else {
                    // Value 2k is byte k's low nibble, value 2k + 1 its high one.
                    let v = _mm_loadl_epi64(bytes.add(i / 2) as *const _);
                    let lo = _mm_and_si128(v, nib);
                    let hi = _mm_and_si128(_mm_srli_epi16(v, 4), nib);
                    _mm_unpacklo_epi8(lo, hi)
                };
                let q0 = _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(codes));
                let q1 = _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(_mm_srli_si128(codes, 8)));
                let w0 = _mm256_add_ps(_mm256_mul_ps(s, q0), b);
                let w1 = _mm256_add_ps(_mm256_mul_ps(s, q1), b);
                acc0 = _mm256_fmadd_ps(w0, _mm256_loadu_ps(x.as_ptr().add(i)), acc0);
                acc1 = _mm256_fmadd_ps(w1, _mm256_loadu_ps(x.as_ptr().add(i + 8)), acc1);
            }
        }
        crate::simd::x86::hsum_avx(_mm256_add_ps(acc0, acc1))
    }
}

// Only x86-64 has a fused kernel; elsewhere `fused` is false and the matmul tests cover the
// dequantize-then-dot path.
#[cfg(all(test, target_arch = "x86_64"))]
mod tests {
    use crate::matrix::{FloatSlice, Matrix, QuantMatrix};
    use crate::rng::Rng;
    use half::bf16;

    /// The fused kernel gives the bits of `row_into` + the AVX2 dot, for both widths, every
    /// group size it takes, and scales in each float type.
    #[test]
    fn fused_dequant_dot_has_the_bits_of_dequantize_then_dot() {
        if !crate::isa::isa_available().contains(&crate::simd::Isa::Avx2) {
            eprintln!("skipped: this CPU has no AVX2 (the only fused kernel)");
            return;
        }
        let mut rng = Rng::new(31);
        for (bits, group, cols) in [
            (8u32, 64usize, 2048usize),
            (4, 64, 512),
            (4, 16, 96),
            (8, 32, 160),
        ] {
            let rows = 3;
            let packed: Vec<u32> = (0..rows * cols * bits as usize / 32)
                .map(|_| rng.next_u32())
                .collect();
            let n = rows * cols / group;
            let sf: Vec<f32> = (0..n).map(|_| rng.normal() * 0.02).collect();
            let bf: Vec<f32> = (0..n).map(|_| rng.normal() * 0.02).collect();
            let sb: Vec<bf16> = sf.iter().map(|&v| bf16::from_f32(v)).collect();
            let bb: Vec<bf16> = bf.iter().map(|&v| bf16::from_f32(v)).collect();
            let x: Vec<f32> = (0..cols).map(|_| rng.normal()).collect();
            for (scales, biases) in [
                (FloatSlice::F32(&sf), FloatSlice::F32(&bf)),
                (FloatSlice::Bf16(&sb), FloatSlice::Bf16(&bb)),
            ] {
                let q = QuantMatrix {
                    packed: &packed,
                    scales,
                    biases,
                    rows,
                    cols,
                    bits,
                    group_size: group,
                    interleaved: false,
                };
                assert!(super::avx2::handles(&q));
                let mut row = vec![0f32; cols];
                for r in 0..rows {
                    Matrix::Quant(q).row_into(r, &mut row);
                    // SAFETY: AVX2 and FMA are present (checked above); shapes match.
                    let (want, got) = unsafe {
                        (
                            crate::simd::x86::dot_avx2(&row, &x),
                            super::avx2::dot_quant_row(&q, r, &x),
                        )
                    };
                    assert_eq!(
                        got.to_bits(),
                        want.to_bits(),
                        "bits {bits} group {group} row {r}: {got} vs {want}"
                    );
                }
            }
        }
    }
}
