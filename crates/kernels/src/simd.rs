//! Vector primitives with runtime CPU dispatch.
//!
//! The CPU features are probed once ([`crate::isa`]); every call then goes straight to the
//! widest implementation available (AVX-512F, AVX2+FMA, NEON, or portable scalar code). A
//! default build therefore never silently runs scalar code on a machine that has wide vectors.

pub use crate::isa::{isa, Isa};

/// Dot product of two equal-length f32 slices.
#[inline]
pub fn dot(a: &[f32], b: &[f32]) -> f32 {
    debug_assert_eq!(a.len(), b.len());
    match isa() {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: isa() only reports features the CPU has.
        Isa::Avx512 => unsafe { x86::dot_avx512(a, b) },
        #[cfg(target_arch = "x86_64")]
        // SAFETY: as above.
        Isa::Avx2 => unsafe { x86::dot_avx2(a, b) },
        #[cfg(target_arch = "aarch64")]
        // SAFETY: NEON is part of the aarch64 base ISA.
        Isa::Neon => unsafe { neon::dot(a, b) },
        _ => dot_scalar(a, b),
    }
}

/// `y += a * x`.
#[inline]
pub fn axpy(a: f32, x: &[f32], y: &mut [f32]) {
    debug_assert_eq!(x.len(), y.len());
    match isa() {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: isa() only reports features the CPU has.
        Isa::Avx512 | Isa::Avx2 => unsafe { x86::axpy_avx2(a, x, y) },
        #[cfg(target_arch = "aarch64")]
        // SAFETY: NEON is part of the aarch64 base ISA.
        Isa::Neon => unsafe { neon::axpy(a, x, y) },
        _ => {
            for (yi, xi) in y.iter_mut().zip(x) {
                *yi += a * xi;
            }
        }
    }
}

/// Widens bf16 values to f32 (`dst.len() == src.len()`): bf16 is the top half of an f32,
/// so this is a shift, 16 values per AVX-512 step.
#[inline]
pub fn widen_bf16(src: &[half::bf16], dst: &mut [f32]) {
    debug_assert_eq!(src.len(), dst.len());
    #[cfg(target_arch = "x86_64")]
    if isa() == Isa::Avx512 {
        // SAFETY: AVX-512F is present; lengths are equal.
        return unsafe { x86::widen_bf16_avx512(src, dst) };
    }
    #[cfg(target_arch = "x86_64")]
    if isa() == Isa::Avx2 {
        // SAFETY: AVX2 is present; lengths are equal.
        return unsafe { x86::widen_bf16_avx2(src, dst) };
    }
    for (o, v) in dst.iter_mut().zip(src) {
        *o = f32::from_bits((v.to_bits() as u32) << 16);
    }
}

/// Portable dot product with four independent accumulators.
pub fn dot_scalar(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0f32; 4];
    let chunks = a.len() / 4;
    for i in 0..chunks {
        for k in 0..4 {
            acc[k] += a[4 * i + k] * b[4 * i + k];
        }
    }
    let mut s = (acc[0] + acc[1]) + (acc[2] + acc[3]);
    for i in chunks * 4..a.len() {
        s += a[i] * b[i];
    }
    s
}

#[cfg(target_arch = "x86_64")]
pub(crate) mod x86 {
    use std::arch::x86_64::*;

    #[target_feature(enable = "avx512f")]
    pub unsafe fn dot_avx512(a: &[f32], b: &[f32]) -> f32 {
        let n = a.len();
        let (pa, pb) = (a.as_ptr(), b.as_ptr());
        let mut acc0 = _mm512_setzero_ps();
        let mut acc1 = _mm512_setzero_ps();
        let mut i = 0;
        while i + 32 <= n {
            acc0 = _mm512_fmadd_ps(_mm512_loadu_ps(pa.add(i)), _mm512_loadu_ps(pb.add(i)), acc0);
            acc1 = _mm512_fmadd_ps(
                _mm512_loadu_ps(pa.add(i + 16)),
                _mm512_loadu_ps(pb.add(i + 16)),
                acc1,
            );
            i += 32;
        }
        if i + 16 <= n {
            acc0 = _mm512_fmadd_ps(_mm512_loadu_ps(pa.add(i)), _mm512_loadu_ps(pb.add(i)), acc0);
            i += 16;
        }
        if i < n {
            let mask: __mmask16 = (1u32 << (n - i)) as u16 - 1;
            let va = _mm512_maskz_loadu_ps(mask, pa.add(i));
            let vb = _mm512_maskz_loadu_ps(mask, pb.add(i));
            acc1 = _mm512_fmadd_ps(va, vb, acc1);
        }
        _mm512_reduce_add_ps(_mm512_add_ps(acc0, acc1))
    }

    /// The sum of `v`'s eight lanes: the two halves, then pairs, then the last two. Every
    /// 256-bit reduction here uses it, so kernels that keep `dot_avx2`'s accumulators keep
    /// its bits.
    ///
    /// # Safety
    /// Needs AVX (call it from a function compiled with AVX2).
    #[inline(always)]
    pub unsafe fn hsum_avx(v: __m256) -> f32 {
        let s4 = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
        let s2 = _mm_add_ps(s4, _mm_movehl_ps(s4, s4));
        _mm_cvtss_f32(_mm_add_ss(s2, _mm_shuffle_ps(s2, s2, 1)))
    }

    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn dot_avx2(a: &[f32], b: &[f32]) -> f32 {
        let n = a.len();
        let (pa, pb) = (a.as_ptr(), b.as_ptr());
        let mut acc0 = _mm256_setzero_ps();
        let mut acc1 = _mm256_setzero_ps();
        let mut i = 0;
        while i + 16 <= n {
            acc0 = _mm256_fmadd_ps(_mm256_loadu_ps(pa.add(i)), _mm256_loadu_ps(pb.add(i)), acc0);
            acc1 = _mm256_fmadd_ps(
                _mm256_loadu_ps(pa.add(i + 8)),
                _mm256_loadu_ps(pb.add(i + 8)),
                acc1,
            );
            i += 16;
        }
        let mut s = hsum_avx(_mm256_add_ps(acc0, acc1));
        while i < n {
            s += *pa.add(i) * *pb.add(i);
            i += 1;
        }
        s
    }

    #[target_feature(enable = "avx512f")]
    pub unsafe fn widen_bf16_avx512(src: &[half::bf16], dst: &mut [f32]) {
        let n = src.len();
        let (ps, pd) = (src.as_ptr() as *const u16, dst.as_mut_ptr());
        let mut i = 0;
        while i + 16 <= n {
            let v = _mm256_loadu_si256(ps.add(i) as *const __m256i);
            let wide = _mm512_slli_epi32(_mm512_cvtepu16_epi32(v), 16);
            _mm512_storeu_ps(pd.add(i), _mm512_castsi512_ps(wide));
            i += 16;
        }
        while i < n {
            *pd.add(i) = f32::from_bits((*ps.add(i) as u32) << 16);
            i += 1;
        }
    }

    #[target_feature(enable = "avx2")]
    pub unsafe fn widen_bf16_avx2(src: &[half::bf16], dst: &mut [f32]) {
        let n = src.len();
        let (ps, pd) = (src.as_ptr() as *const u16, dst.as_mut_ptr());
        let mut i = 0;
        while i + 8 <= n {
            let v = _mm_loadu_si128(ps.add(i) as *const __m128i);
            let wide = _mm256_slli_epi32(_mm256_cvtepu16_epi32(v), 16);
            _mm256_storeu_ps(pd.add(i), _mm256_castsi256_ps(wide));
            i += 8;
        }
        while i < n {
            *pd.add(i) = f32::from_bits((*ps.add(i) as u32) << 16);
            i += 1;
        }
    }

    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn axpy_avx2(a: f32, x: &[f32], y: &mut [f32]) {
        let n = x.len();
        let va = _mm256_set1_ps(a);
        let (px, py) = (x.as_ptr(), y.as_mut_ptr());
        let mut i = 0;
        while i + 8 <= n {
            let r = _mm256_fmadd_ps(va, _mm256_loadu_ps(px.add(i)), _mm256_loadu_ps(py.add(i)));
            _mm256_storeu_ps(py.add(i), r);
            i += 8;
        }
        while i < n {
            *py.add(i) += a * *px.add(i);
            i += 1;
        }
    }
}

#[cfg(target_arch = "aarch64")]
mod neon {
    use std::arch::aarch64::*;

    pub unsafe fn dot(a: &[f32], b: &[f32]) -> f32 {
        let n = a.len();
        let (pa, pb) = (a.as_ptr(), b.as_ptr());
        let mut acc = [vdupq_n_f32(0.0); 4];
        let mut i = 0;
        while i + 16 <= n {
            for (k, acc) in acc.iter_mut().enumerate() {
                *acc = vfmaq_f32(
                    *acc,
                    vld1q_f32(pa.add(i + 4 * k)),
                    vld1q_f32(pb.add(i + 4 * k)),
                );
            }
            i += 16;
        }
        while i + 4 <= n {
            acc[0] = vfmaq_f32(acc[0], vld1q_f32(pa.add(i)), vld1q_f32(pb.add(i)));
            i += 4;
        }
        let mut s = vaddvq_f32(vaddq_f32(
            vaddq_f32(acc[0], acc[1]),
            vaddq_f32(acc[2], acc[3]),
        ));
        while i < n {
            s += *pa.add(i) * *pb.add(i);
            i += 1;
        }
        s
    }

    pub unsafe fn axpy(a: f32, x: &[f32], y: &mut [f32]) {
        let n = x.len();
        let va = vdupq_n_f32(a);
        let (px, py) = (x.as_ptr(), y.as_mut_ptr());
        let mut i = 0;
        while i + 4 <= n {
            vst1q_f32(
                py.add(i),
                vfmaq_f32(vld1q_f32(py.add(i)), va, vld1q_f32(px.add(i))),
            );
            i += 4;
        }
        while i < n {
            *py.add(i) += a * *px.add(i);
            i += 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::Rng;

    #[test]
    fn fast_dot_and_axpy_match_scalar_on_odd_lengths() {
        let mut rng = Rng::new(11);
        for n in [0usize, 1, 3, 7, 15, 16, 17, 31, 33, 64, 100, 257] {
            let a: Vec<f32> = (0..n).map(|_| rng.normal()).collect();
            let b: Vec<f32> = (0..n).map(|_| rng.normal()).collect();
            let exact: f64 = a.iter().zip(&b).map(|(x, y)| *x as f64 * *y as f64).sum();
            assert!(
                (dot(&a, &b) as f64 - exact).abs() < 1e-4 * (n as f64 + 1.0),
                "n {n}"
            );
            assert!((dot_scalar(&a, &b) as f64 - exact).abs() < 1e-4 * (n as f64 + 1.0));
            let mut y1 = b.clone();
            let mut y2 = b.clone();
            let bf: Vec<half::bf16> = a.iter().map(|&v| half::bf16::from_f32(v)).collect();
            let mut wide = vec![0f32; n];
            widen_bf16(&bf, &mut wide);
            assert!(
                wide.iter().zip(&bf).all(|(w, b)| *w == b.to_f32()),
                "bf16 widening, n {n}"
            );
            axpy(0.37, &a, &mut y1);
            for (yi, xi) in y2.iter_mut().zip(&a) {
                *yi += 0.37 * xi;
            }
            for (p, q) in y1.iter().zip(&y2) {
                assert!((p - q).abs() < 1e-5);
            }
        }
    }
}
