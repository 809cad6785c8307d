//! The 4-bit int8-activation kernels: [`dot_row_group`] over the interleaved layout of
//! [`crate::interleave`] (resident weights: the decode hot path), and [`dot_block`] over
//! MLX's row-major layout (streamed slots): several weight rows against several activation
//! rows in one pass, with the rows' scales and biases widened in registers.
//!
//! Decode reads every weight byte once per token, so the kernel must keep up with memory:
//! on a 2-core machine that leaves a few instructions per 64-byte chunk of codes. Earlier
//! versions widened each row's scales and biases into a scratch buffer and ran the bias part
//! as a second pass; for expert rows of 768 or 2048 values that per-row work cost as much as
//! the dot product itself. Here a row's group scales and biases are loaded 16 groups at a
//! time straight from the tensor (bf16, f16 or f32), the bias part is two FMAs per 16 groups,
//! and `R` weight rows share each load of the activations (`N` rows of them).
//!
//! Every (weight row, activation row) pair accumulates in its own register in the same
//! order whatever `R` and `N` are, so a result is bit-identical however rows are tiled:
//! the batch invariance the server relies on.
//!
//! The arithmetic is [`crate::qdot::dot_reference`]'s: per 32-value block
//! `s_g d_b Σ q_i qx_i`, plus `Σ_g b_g Σx_g + m Σ_g s_g resid_g` (see `qdot`).

use crate::matrix::{FloatSlice, QuantMatrix};
use crate::qdot::QuantizedRow;

/// Runs `$call` with the scale/bias dtype as a const `$dt` and byte pointers `$s`/`$b` at
/// item `$first` of `$w`'s scales and biases (`$len` items are used). Mixed dtypes (MLX
/// never writes them) go through f32 copies.
macro_rules! with_params {
    ($w:expr, $first:expr, $len:expr, |$dt:ident, $s:ident, $b:ident| $call:expr) => {{
        let first = $first;
        match ($w.scales, $w.biases) {
            (FloatSlice::Bf16(s), FloatSlice::Bf16(b)) => {
                const $dt: u8 = x86::BF16;
                let ($s, $b) = (
                    s[first..].as_ptr() as *const u8,
                    b[first..].as_ptr() as *const u8,
                );
                $call
            }
            (FloatSlice::F16(s), FloatSlice::F16(b)) => {
                const $dt: u8 = x86::F16;
                let ($s, $b) = (
                    s[first..].as_ptr() as *const u8,
                    b[first..].as_ptr() as *const u8,
                );
                $call
            }
            (FloatSlice::F32(s), FloatSlice::F32(b)) => {
                const $dt: u8 = x86::F32;
                let ($s, $b) = (
                    s[first..].as_ptr() as *const u8,
                    b[first..].as_ptr() as *const u8,
                );
                $call
            }
            (s, b) => {
                const $dt: u8 = x86::F32;
                let (mut sf, mut bf) = (vec![0f32; $len], vec![0f32; $len]);
                s.read_into(first, &mut sf);
                b.read_into(first, &mut bf);
                let ($s, $b) = (sf.as_ptr() as *const u8, bf.as_ptr() as *const u8);
                $call
            }
        }
    }};
}

/// Weight rows per pass when one activation row is served (decode).
pub const ROWS_DECODE: usize = 4;
/// Weight rows per pass for tiles of several activation rows.
pub const ROWS_TILE: usize = 2;

/// `out[j][t]` = row `r0 + j` of `w` dotted with `x[t]`, for `R` rows and `N` activation
/// rows. `k` indexes the activation rows' per-group sums for `w.group_size`.
///
/// # Safety
/// Needs AVX-512 F/BW/VNNI; `w.bits == 4`, `w.cols % 128 == 0`, group size 32, 64 or 128,
/// `r0 + R <= w.rows`, and every `x[t]` quantized from a row of `w.cols` values.
#[cfg(target_arch = "x86_64")]
#[inline]
pub unsafe fn dot_block<const R: usize, const N: usize>(
    w: &QuantMatrix,
    r0: usize,
    x: [&QuantizedRow; N],
    k: usize,
) -> [[f32; N]; R] {
    let n = R * w.groups_per_row();
    with_params!(w, r0 * w.groups_per_row(), n, |DT, s, b| {
        x86::block::<R, N, DT>(w, r0, s, b, x, k)
    })
}

/// `out[t][i]` = row `16 rg + i` of the interleaved matrix `w` dotted with `x[t]`: one row
/// group of [`crate::interleave`] against `N` activation rows.
///
/// # Safety
/// Needs AVX-512 F/BW/VNNI; `w.interleaved`, 4-bit, `w.cols % 128 == 0`, group size 32, 64
/// or 128, `16 (rg + 1) <= w.rows`, every `x[t]` quantized from a row of `w.cols` values.
#[cfg(target_arch = "x86_64")]
#[inline]
pub unsafe fn dot_row_group<const N: usize>(
    w: &QuantMatrix,
    rg: usize,
    x: [&QuantizedRow; N],
    k: usize,
) -> [[f32; crate::interleave::ROWS]; N] {
    let n = crate::interleave::ROWS * w.groups_per_row();
    with_params!(w, rg * n, n, |DT, s, b| {
        x86::row_group::<N, DT>(w, rg, s, b, x, k)
    })
}

/// Bytes ahead of the current code word that the interleaved kernel prefetches.
const PREFETCH_AHEAD: usize = 4096;

#[cfg(target_arch = "x86_64")]
mod x86 {
    use super::*;
    use std::arch::x86_64::*;

    /// The dtype of a row's scales and biases (a const parameter of [`block`], so the
    /// widening is chosen at compile time inside the target-feature function).
    pub const BF16: u8 = 0;
    pub const F16: u8 = 1;
    pub const F32: u8 = 2;

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

    /// See [`super::dot_block`]. `scales`/`biases` point at row `r0`'s first group.
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
                let at = (j * groups + g0) * if DT == F32 { 4 } else { 2 };
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
                        acc[j][t] = _mm512_fmadd_ps(
                            _mm512_cvtepi32_ps(isum),
                            _mm512_mul_ps(sv, d),
                            acc[j][t],
                        );
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

    /// See [`super::dot_row_group`]. `scales`/`biases` point at the row group's first group.
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
        let esz = if DT == F32 { 4 } else { 2 };
        let mid = _mm512_set1_ps(8.0); // 2^(bits-1)
        let nib = _mm512_set1_epi8(0x0F);
        let codes = w.packed[rg * 16 * words..].as_ptr() as *const u8;
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
                    _mm_prefetch::<_MM_HINT_T0>(codes.add(c * 64 + PREFETCH_AHEAD) as *const i8);
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
}
