//! The AVX-512 VNNI int8 kernels (512-bit `vpdpbusd`, 64 u8 x s8 products per instruction):
//! activation block quantization, the 8-bit row kernel, and both 4-bit kernels: over the
//! interleaved layout ([`row_group`], resident weights, one lane per row) and over MLX's
//! row-major layout ([`block`], streamed slots when they are not re-laid).

use super::format::QuantizedRow;
use super::params::{size_of, BF16, F16};
use super::prefetch_bytes;
use crate::matrix::QuantMatrix;
use std::arch::x86_64::*;

/// [`super::format::quantize_block_scalar`] on 32 values in two registers.
#[target_feature(enable = "avx512f,avx512bw")]
pub unsafe fn quantize_block(xb: &[f32], q: &mut [i8]) -> (f32, f32, i32) {
    let v0 = _mm512_loadu_ps(xb.as_ptr());
    let v1 = _mm512_loadu_ps(xb.as_ptr().add(16));
    let amax = _mm512_reduce_max_ps(_mm512_max_ps(_mm512_abs_ps(v0), _mm512_abs_ps(v1)));
    let d = amax / 127.0;
    let inv = _mm512_set1_ps(if d > 0.0 { 1.0 / d } else { 0.0 });
    let q0 = _mm512_cvtps_epi32(_mm512_mul_ps(v0, inv));
    let q1 = _mm512_cvtps_epi32(_mm512_mul_ps(v1, inv));
    _mm_storeu_si128(q.as_mut_ptr() as *mut _, _mm512_cvtepi32_epi8(q0));
    _mm_storeu_si128(q.as_mut_ptr().add(16) as *mut _, _mm512_cvtepi32_epi8(q1));
    let sum = _mm512_reduce_add_ps(_mm512_add_ps(v0, v1));
    let qsum = _mm512_reduce_add_epi32(_mm512_add_epi32(q0, q1));
    (d, sum, qsum)
}

/// `dot(a1, b1) + m * dot(a2, b2)` over equal-length slices (the exact part).
#[target_feature(enable = "avx512f")]
pub unsafe fn dot2(a1: &[f32], b1: &[f32], a2: &[f32], b2: &[f32], m: f32) -> f32 {
    let n = a1.len();
    let (mut s1, mut s2) = (_mm512_setzero_ps(), _mm512_setzero_ps());
    let mut i = 0;
    while i < n {
        let k: __mmask16 = if n - i >= 16 {
            0xFFFF
        } else {
            ((1u32 << (n - i)) - 1) as u16
        };
        s1 = _mm512_fmadd_ps(
            _mm512_maskz_loadu_ps(k, a1.as_ptr().add(i)),
            _mm512_maskz_loadu_ps(k, b1.as_ptr().add(i)),
            s1,
        );
        s2 = _mm512_fmadd_ps(
            _mm512_maskz_loadu_ps(k, a2.as_ptr().add(i)),
            _mm512_maskz_loadu_ps(k, b2.as_ptr().add(i)),
            s2,
        );
        i += 16;
    }
    _mm512_reduce_add_ps(_mm512_fmadd_ps(s2, _mm512_set1_ps(m), s1))
}

/// 8-bit row (`cols % 64 == 0`) against natural-order int8 activations: 64 values per
/// step, lanes 8j..8j+7 hold block j.
#[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
pub unsafe fn dot_q8(row: &[u32], qx: &[i8], s: &[f32], d: &[f32]) -> f32 {
    let steps = qx.len() / 64;
    let pw = row.as_ptr() as *const u8;
    let px = qx.as_ptr();
    let idx = _mm512_set_epi32(1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0, 0, 0, 0, 0, 0);
    let mut acc = _mm512_setzero_ps();
    for st in 0..steps {
        let w = _mm512_loadu_si512(pw.add(st * 64) as *const _);
        let x = _mm512_loadu_si512(px.add(st * 64) as *const _);
        let isum = _mm512_dpbusd_epi32(_mm512_setzero_si512(), w, x);
        let sd = [
            *s.get_unchecked(2 * st) * *d.get_unchecked(2 * st),
            *s.get_unchecked(2 * st + 1) * *d.get_unchecked(2 * st + 1),
        ];
        let f2 = _mm512_castps128_ps512(_mm_castpd_ps(_mm_load_sd(sd.as_ptr() as *const f64)));
        let f = _mm512_permutexvar_ps(idx, f2);
        acc = _mm512_fmadd_ps(_mm512_cvtepi32_ps(isum), f, acc);
    }
    _mm512_reduce_add_ps(acc)
}

/// Loads `mask`'s lanes of 16 scales or biases of dtype `DT` from `p` as f32.
#[inline(always)]
unsafe fn load<const DT: u8>(p: *const u8, mask: __mmask16) -> __m512 {
    match DT {
        // bf16 is the top half of an f32: widening is a shift.
        BF16 => _mm512_castsi512_ps(_mm512_slli_epi32(
            _mm512_cvtepu16_epi32(_mm256_maskz_loadu_epi16(mask, p as *const _)),
            16,
        )),
        F16 => _mm512_cvtph_ps(_mm256_maskz_loadu_epi16(mask, p as *const _)),
        _ => _mm512_maskz_loadu_ps(mask, p as *const f32),
    }
}

/// `out[j][t]` = row `r0 + j` of the row-major 4-bit `w` dotted with `x[t]`. `scales`/`biases` point at row `r0`'s first group.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,f16c")]
pub unsafe fn block<const R: usize, const N: usize, const DT: u8>(
    w: &QuantMatrix,
    r0: usize,
    scales: *const u8,
    biases: *const u8,
    x: [&QuantizedRow; N],
    k: usize,
) -> [[f32; N]; R] {
    let groups = w.groups_per_row();
    let gpc = 128 / w.group_size; // groups per 128-value chunk: 4, 2 or 1
    let gpc_shift = gpc.trailing_zeros();
    let words = w.words_per_row();
    let mid = _mm512_set1_ps(8.0); // 2^(bits-1)
    let nib = _mm512_set1_epi8(0x0F);
    // Lane l of a chunk covers values 8l..8l+7, i.e. block l/4, i.e. group
    // (l/4 * 32) / group_size of the chunk.
    let idx0 = match w.group_size {
        32 => _mm512_set_epi32(3, 3, 3, 3, 2, 2, 2, 2, 1, 1, 1, 1, 0, 0, 0, 0),
        64 => _mm512_set_epi32(1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0, 0, 0, 0, 0, 0),
        _ => _mm512_setzero_si512(),
    };
    let step = _mm512_set1_epi32(gpc as i32);
    let codes: [*const u8; R] =
        std::array::from_fn(|j| w.packed[(r0 + j) * words..].as_ptr() as *const u8);
    let mut acc = [[_mm512_setzero_ps(); N]; R];
    let mut g0 = 0;
    while g0 < groups {
        let n_g = (groups - g0).min(16);
        let mask: __mmask16 = if n_g == 16 {
            0xFFFF
        } else {
            ((1u32 << n_g) - 1) as u16
        };
        let mut s = [_mm512_setzero_ps(); R];
        for j in 0..R {
            let at = (j * groups + g0) * size_of::<DT>();
            s[j] = load::<DT>(scales.add(at), mask);
            let b = load::<DT>(biases.add(at), mask);
            // The exactly computed part: Σ_g b_g Σx_g + m Σ_g s_g resid_g.
            let sm = _mm512_mul_ps(s[j], mid);
            for t in 0..N {
                let gs = _mm512_maskz_loadu_ps(mask, x[t].group_sum[k].as_ptr().add(g0));
                let gr = _mm512_maskz_loadu_ps(mask, x[t].group_resid[k].as_ptr().add(g0));
                acc[j][t] = _mm512_fmadd_ps(b, gs, acc[j][t]);
                acc[j][t] = _mm512_fmadd_ps(sm, gr, acc[j][t]);
            }
        }
        let c0 = g0 >> gpc_shift;
        let mut idx = idx0;
        for c in c0..c0 + (n_g >> gpc_shift) {
            for j in 0..R {
                let packed = _mm512_loadu_si512(codes[j].add(c * 64) as *const _);
                let lo = _mm512_and_si512(packed, nib);
                let hi = _mm512_and_si512(_mm512_srli_epi16(packed, 4), nib);
                let sv = _mm512_permutexvar_ps(idx, s[j]);
                for t in 0..N {
                    let px = x[t].nibble_order.as_ptr().add(c * 128);
                    let xe = _mm512_loadu_si512(px as *const _);
                    let xo = _mm512_loadu_si512(px.add(64) as *const _);
                    let isum = _mm512_dpbusd_epi32(
                        _mm512_dpbusd_epi32(_mm512_setzero_si512(), lo, xe),
                        hi,
                        xo,
                    );
                    let d = _mm512_loadu_ps(x[t].d_spread.as_ptr().add(c * 16));
                    acc[j][t] =
                        _mm512_fmadd_ps(_mm512_cvtepi32_ps(isum), _mm512_mul_ps(sv, d), acc[j][t]);
                }
            }
            idx = _mm512_add_epi32(idx, step);
        }
        g0 += n_g;
    }
    let mut out = [[0f32; N]; R];
    for j in 0..R {
        for t in 0..N {
            out[j][t] = _mm512_reduce_add_ps(acc[j][t]);
        }
    }
    out
}

/// `out[t][i]` = row `16 rg + i` of the interleaved 4-bit `w` dotted with `x[t]`. `scales`/`biases` point at the row group's first group.
/// Lane `i` of every register is row `16 rg + i`: a code word's 4 low nibbles (values
/// 0, 2, 4, 6 of its 8) meet the activation's 4 even values of that word, broadcast to
/// every lane, and the high nibbles the odd ones (`nibble_order` keeps both runs).
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,f16c")]
pub unsafe fn row_group<const N: usize, const DT: u8>(
    w: &QuantMatrix,
    rg: usize,
    scales: *const u8,
    biases: *const u8,
    x: [&QuantizedRow; N],
    k: usize,
) -> [[f32; 16]; N] {
    let (groups, words) = (w.groups_per_row(), w.words_per_row());
    let blocks_per_group = w.group_size / 32;
    let esz = size_of::<DT>();
    let mid = _mm512_set1_ps(8.0); // 2^(bits-1)
    let nib = _mm512_set1_epi8(0x0F);
    let codes = w.packed[rg * 16 * words..].as_ptr() as *const u8;
    let ahead = prefetch_bytes();
    let mut acc = [_mm512_setzero_ps(); N];
    for g in 0..groups {
        let s = load::<DT>(scales.add(g * 16 * esz), 0xFFFF);
        let b = load::<DT>(biases.add(g * 16 * esz), 0xFFFF);
        // The exactly computed part: b_g Σx_g + m s_g resid_g.
        let sm = _mm512_mul_ps(s, mid);
        for t in 0..N {
            let gs = _mm512_set1_ps(*x[t].group_sum[k].get_unchecked(g));
            let gr = _mm512_set1_ps(*x[t].group_resid[k].get_unchecked(g));
            acc[t] = _mm512_fmadd_ps(b, gs, acc[t]);
            acc[t] = _mm512_fmadd_ps(sm, gr, acc[t]);
        }
        for blk in g * blocks_per_group..(g + 1) * blocks_per_group {
            let mut isum = [_mm512_setzero_si512(); N];
            for c in blk * 4..blk * 4 + 4 {
                // Ahead of the hardware prefetcher, which restarts on every row group.
                if ahead > 0 {
                    _mm_prefetch::<_MM_HINT_T1>(codes.add(c * 64 + ahead) as *const i8);
                }
                let v = _mm512_loadu_si512(codes.add(c * 64) as *const _);
                let lo = _mm512_and_si512(v, nib);
                let hi = _mm512_and_si512(_mm512_srli_epi16(v, 4), nib);
                // Word c is word c % 16 of 128-value chunk c / 16.
                let at = (c / 16) * 128 + (c % 16) * 4;
                for t in 0..N {
                    let px = x[t].nibble_order.as_ptr().add(at);
                    let even = _mm512_set1_epi32((px as *const i32).read_unaligned());
                    let odd = _mm512_set1_epi32((px.add(64) as *const i32).read_unaligned());
                    isum[t] = _mm512_dpbusd_epi32(isum[t], lo, even);
                    isum[t] = _mm512_dpbusd_epi32(isum[t], hi, odd);
                }
            }
            for t in 0..N {
                let sd = _mm512_mul_ps(s, _mm512_set1_ps(*x[t].scale.get_unchecked(blk)));
                acc[t] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(isum[t]), sd, acc[t]);
            }
        }
    }
    let mut out = [[0f32; 16]; N];
    for t in 0..N {
        _mm512_storeu_ps(out[t].as_mut_ptr(), acc[t]);
    }
    out
}
