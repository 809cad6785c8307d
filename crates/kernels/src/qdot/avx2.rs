//! The 256-bit int8 kernels: AVX2 (`vpmaddubsw` + `vpmaddwd`, what AMD Zen 2/3 and every
//! x86-64 since Haswell has) and AVX-VNNI (`vpdpbusd` on 256 bits: Alder Lake and later,
//! Zen 5). One body serves both (the `VNNI` const parameter); the two entry points differ
//! only in the target features they compile under.
//!
//! The 4-bit kernel runs over the 16-row interleaved layout of [`crate::interleave`]: a
//! 64-byte code word of a row group is two 256-bit halves of 8 rows, each lane a row, so
//! there is no horizontal reduction and an activation word is one broadcast for both halves.
//!
//! Without VNNI the products of a 32-value block are summed in 16-bit lanes: `vpmaddubsw`
//! of a 4-bit code (0..15) and an int8 activation (-127..127) adds two products (at most
//! 3,810), and a block adds eight of those per lane (at most 30,480 < 2^15), so neither the
//! instruction's saturation nor the 16-bit sums ever clip; one `vpmaddwd` per block widens
//! to 32 bits. The integer sums are therefore exact, as the reference's are.

// Index loops address several register arrays (tiles, halves or quarters) by the same index.
#![allow(clippy::needless_range_loop)]

use super::format::{QuantizedRow, RowPtrs, BLOCK};
use super::params::{dot_q8_entry, row_group_entry, size_of, BF16, F16};
use super::prefetch_bytes;
use crate::matrix::QuantMatrix;
use crate::simd::x86::hsum_avx as hsum;
use std::arch::x86_64::*;

/// [`super::format::quantize_block_scalar`] on 32 values in four registers.
#[target_feature(enable = "avx2,fma")]
pub unsafe fn quantize_block(xb: &[f32], q: &mut [i8]) -> (f32, f32, i32) {
    let p = xb.as_ptr();
    let v = [
        _mm256_loadu_ps(p),
        _mm256_loadu_ps(p.add(8)),
        _mm256_loadu_ps(p.add(16)),
        _mm256_loadu_ps(p.add(24)),
    ];
    let abs = _mm256_castsi256_ps(_mm256_set1_epi32(0x7FFF_FFFF));
    let m = _mm256_max_ps(
        _mm256_max_ps(_mm256_and_ps(v[0], abs), _mm256_and_ps(v[1], abs)),
        _mm256_max_ps(_mm256_and_ps(v[2], abs), _mm256_and_ps(v[3], abs)),
    );
    let amax = hmax(m);
    let d = amax / 127.0;
    let inv = _mm256_set1_ps(if d > 0.0 { 1.0 / d } else { 0.0 });
    let qi: [__m256i; 4] = std::array::from_fn(|i| _mm256_cvtps_epi32(_mm256_mul_ps(v[i], inv)));
    // Pack 32 i32 to 32 i8 (values are within -127..127, so the saturation never acts);
    // packs work per 128-bit lane, the permute restores the order.
    let w01 = _mm256_packs_epi32(qi[0], qi[1]);
    let w23 = _mm256_packs_epi32(qi[2], qi[3]);
    let b = _mm256_packs_epi16(w01, w23);
    let b = _mm256_permutevar8x32_epi32(b, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7));
    _mm256_storeu_si256(q.as_mut_ptr() as *mut __m256i, b);
    let qs = _mm256_add_epi32(
        _mm256_add_epi32(qi[0], qi[1]),
        _mm256_add_epi32(qi[2], qi[3]),
    );
    let sum = _mm256_add_ps(_mm256_add_ps(v[0], v[1]), _mm256_add_ps(v[2], v[3]));
    (d, hsum(sum), hsum_epi32(qs))
}

#[inline(always)]
unsafe fn hmax(v: __m256) -> f32 {
    let s4 = _mm_max_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    let s2 = _mm_max_ps(s4, _mm_movehl_ps(s4, s4));
    _mm_cvtss_f32(_mm_max_ss(s2, _mm_shuffle_ps(s2, s2, 1)))
}

#[inline(always)]
unsafe fn hsum_epi32(v: __m256i) -> i32 {
    let s4 = _mm_add_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256(v, 1));
    let s2 = _mm_add_epi32(s4, _mm_shuffle_epi32(s4, 0b01_00_11_10));
    _mm_cvtsi128_si32(_mm_add_epi32(s2, _mm_shuffle_epi32(s2, 0b10_11_00_01)))
}

/// Loads 8 scales or biases of dtype `DT` from `p` as f32.
#[inline(always)]
unsafe fn load<const DT: u8>(p: *const u8) -> __m256 {
    match DT {
        // bf16 is the top half of an f32: widening is a shift.
        BF16 => _mm256_castsi256_ps(_mm256_slli_epi32(
            _mm256_cvtepu16_epi32(_mm_loadu_si128(p as *const _)),
            16,
        )),
        F16 => _mm256_cvtph_ps(_mm_loadu_si128(p as *const _)),
        _ => _mm256_loadu_ps(p as *const f32),
    }
}

/// Adds the u8 x s8 products of `w` and `x` to the 32-bit lanes of `acc` (VNNI) or to the
/// 16-bit lanes (AVX2: two products per 16-bit lane, see the module doc for the bounds).
#[inline(always)]
unsafe fn madd<const VNNI: bool>(acc: __m256i, w: __m256i, x: __m256i) -> __m256i {
    if VNNI {
        _mm256_dpbusd_avx_epi32(acc, w, x)
    } else {
        _mm256_add_epi16(acc, _mm256_maddubs_epi16(w, x))
    }
}

/// A block's integer sums as 32-bit lanes.
#[inline(always)]
unsafe fn widen<const VNNI: bool>(isum: __m256i) -> __m256i {
    if VNNI {
        isum
    } else {
        _mm256_madd_epi16(isum, _mm256_set1_epi16(1))
    }
}

row_group_entry!(
    /// `out[t][i]` = row `16 rg + i` of the interleaved 4-bit `w` dotted with `x[t]` (AVX2).
    ///
    /// # Safety
    /// Needs AVX2, FMA and F16C; `w.interleaved`, 4-bit, `w.cols % 128 == 0`, group size 32, 64
    /// or 128, `16 (rg + 1) <= w.rows`, `N <= 4`, every `x[t]` quantized from a row of
    /// `w.cols` values; `scales`/`biases` point at the row group's first group, of dtype `DT`.
    row_group,
    "avx2,fma,f16c",
    row_group_body::<false>
);

row_group_entry!(
    /// [`row_group`] with 256-bit `vpdpbusd`.
    ///
    /// # Safety
    /// As [`row_group`], and the CPU has AVX-VNNI.
    row_group_vnni,
    "avx2,fma,f16c,avxvnni",
    row_group_body::<true>
);

/// One activation row takes both halves of the row group in one pass (decode: every code
/// byte is read once, in order); a tile of several takes one half per pass so its
/// accumulators stay in registers (the row group's codes are in L1 for the second pass).
#[inline(always)]
unsafe fn row_group_body<const N: usize, const DT: u8, const VNNI: bool>(
    w: &QuantMatrix,
    rg: usize,
    scales: *const u8,
    biases: *const u8,
    x: [&QuantizedRow; N],
    k: usize,
) -> [[f32; 16]; N] {
    let mut out = [[0f32; 16]; N];
    if N == 1 {
        pass::<N, 2, DT, VNNI>(w, rg, scales, biases, &x, k, 0, &mut out);
    } else {
        pass::<N, 1, DT, VNNI>(w, rg, scales, biases, &x, k, 0, &mut out);
        pass::<N, 1, DT, VNNI>(w, rg, scales, biases, &x, k, 1, &mut out);
    }
    out
}

/// Halves `h0..h0 + H` (8 rows each) of row group `rg` against the `N` activation rows.
/// Each (row, activation row) pair accumulates in its own lane in the same order whatever
/// `N` and `H` are, so results are bit-identical however rows are tiled.
#[allow(clippy::too_many_arguments)]
#[inline(always)]
unsafe fn pass<const N: usize, const H: usize, const DT: u8, const VNNI: bool>(
    w: &QuantMatrix,
    rg: usize,
    scales: *const u8,
    biases: *const u8,
    x: &[&QuantizedRow; N],
    k: usize,
    h0: usize,
    out: &mut [[f32; 16]; N],
) {
    let (groups, words) = (w.groups_per_row(), w.words_per_row());
    let blocks_per_group = w.group_size / BLOCK;
    let esz = size_of::<DT>();
    let mid = _mm256_set1_ps(8.0); // 2^(bits-1)
    let nib = _mm256_set1_epi8(0x0F);
    let codes = (w.packed[rg * 16 * words..].as_ptr() as *const u8).add(32 * h0);
    let ahead = prefetch_bytes();
    let mut acc = [[_mm256_setzero_ps(); H]; N];
    let xp = RowPtrs::new(x, k);
    for g in 0..groups {
        let mut s = [_mm256_setzero_ps(); H];
        for h in 0..H {
            let at = (g * 16 + 8 * (h0 + h)) * esz;
            s[h] = load::<DT>(scales.add(at));
            let b = load::<DT>(biases.add(at));
            // The exactly computed part: b_g Σx_g + m s_g resid_g.
            let sm = _mm256_mul_ps(s[h], mid);
            for t in 0..N {
                let gs = _mm256_set1_ps(*xp.sum[t].add(g));
                let gr = _mm256_set1_ps(*xp.resid[t].add(g));
                acc[t][h] = _mm256_fmadd_ps(b, gs, acc[t][h]);
                acc[t][h] = _mm256_fmadd_ps(sm, gr, acc[t][h]);
            }
        }
        for blk in g * blocks_per_group..(g + 1) * blocks_per_group {
            let mut isum = [[_mm256_setzero_si256(); H]; N];
            // The block's 4 words lie in one 128-value chunk: even values at `at`, odd ones
            // 64 bytes on (see `QuantizedRow::nibble_order`).
            let chunk_at = (blk / 4) * 128 + (blk % 4) * 16;
            for word in 0..4 {
                let c = blk * 4 + word;
                if ahead > 0 {
                    _mm_prefetch::<_MM_HINT_T1>(codes.add(c * 64 + ahead) as *const i8);
                }
                let mut lo = [_mm256_setzero_si256(); H];
                let mut hi = [_mm256_setzero_si256(); H];
                for h in 0..H {
                    let v = _mm256_loadu_si256(codes.add(c * 64 + 32 * h) as *const _);
                    lo[h] = _mm256_and_si256(v, nib);
                    hi[h] = _mm256_and_si256(_mm256_srli_epi16(v, 4), nib);
                }
                let at = chunk_at + 4 * word;
                for t in 0..N {
                    let px = xp.q[t].add(at);
                    let even = _mm256_set1_epi32((px as *const i32).read_unaligned());
                    let odd = _mm256_set1_epi32((px.add(64) as *const i32).read_unaligned());
                    for h in 0..H {
                        isum[t][h] = madd::<VNNI>(isum[t][h], lo[h], even);
                        isum[t][h] = madd::<VNNI>(isum[t][h], hi[h], odd);
                    }
                }
            }
            for t in 0..N {
                let d = _mm256_set1_ps(*xp.d[t].add(blk));
                for h in 0..H {
                    let sd = _mm256_mul_ps(s[h], d);
                    let i32s = widen::<VNNI>(isum[t][h]);
                    acc[t][h] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(i32s), sd, acc[t][h]);
                }
            }
        }
    }
    for t in 0..N {
        for h in 0..H {
            _mm256_storeu_ps(out[t].as_mut_ptr().add(8 * (h0 + h)), acc[t][h]);
        }
    }
}

dot_q8_entry!(
    /// 8-bit row (`cols % 32 == 0`) against natural-order int8 activations, one 32-value block
    /// per step: `Σ_b s_g(b) d_b Σ_{i∈b} q_i qx_i` (AVX2).
    ///
    /// `vpmaddubsw` takes an unsigned and a signed operand and saturates pairs at 2^15, which
    /// u8 codes up to 255 against activations up to 127 would exceed. So the codes run as
    /// signed `q - 128` (the sign moved onto the activation: `|q - 128|` times `±qx` keeps each
    /// pair within 2 x 128 x 127 = 32,512) and `128 Σ qx_b` is added back to one lane, in
    /// integers: the block sum stays exact.
    ///
    /// # Safety
    /// Needs AVX2 and FMA; `qx`, `qsum`, `s` (per block) and `d` cover `row`'s values.
    dot_q8,
    "avx2,fma",
    dot_q8_body::<false>
);

dot_q8_entry!(
    /// [`dot_q8`] with 256-bit `vpdpbusd` (u8 x s8 into 32-bit lanes, no offset needed).
    ///
    /// # Safety
    /// As [`dot_q8`], and the CPU has AVX-VNNI.
    dot_q8_vnni,
    "avx2,fma,avxvnni",
    dot_q8_body::<true>
);

#[inline(always)]
unsafe fn dot_q8_body<const VNNI: bool>(
    row: &[u32],
    qx: &[i8],
    qsum: &[i32],
    s: &[f32],
    d: &[f32],
) -> f32 {
    let pw = row.as_ptr() as *const u8;
    let px = qx.as_ptr();
    let flip = _mm256_set1_epi8(-128);
    let ones = _mm256_set1_epi16(1);
    let mut acc = _mm256_setzero_ps();
    for b in 0..qx.len() / BLOCK {
        let w = _mm256_loadu_si256(pw.add(b * BLOCK) as *const _);
        let x = _mm256_loadu_si256(px.add(b * BLOCK) as *const _);
        let isum = if VNNI {
            _mm256_dpbusd_avx_epi32(_mm256_setzero_si256(), w, x)
        } else {
            let ws = _mm256_xor_si256(w, flip); // q - 128 as i8
            let pairs = _mm256_maddubs_epi16(_mm256_abs_epi8(ws), _mm256_sign_epi8(x, ws));
            let offset = _mm256_setr_epi32(128 * *qsum.get_unchecked(b), 0, 0, 0, 0, 0, 0, 0);
            _mm256_add_epi32(_mm256_madd_epi16(pairs, ones), offset)
        };
        let sd = _mm256_set1_ps(*s.get_unchecked(b) * *d.get_unchecked(b));
        acc = _mm256_fmadd_ps(_mm256_cvtepi32_ps(isum), sd, acc);
    }
    hsum(acc)
}
