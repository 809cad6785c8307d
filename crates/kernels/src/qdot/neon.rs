//! The aarch64 int8 kernels: with the dotprod extension (`sdot`: 16 s8 x s8 products into
//! four 32-bit lanes per instruction; Apple M1 and later, Graviton 2+, Neoverse, Grace) and
//! on baseline Armv8 NEON (`smlal`: widening multiply-accumulate into 16-bit lanes; Cortex-A72,
//! Raspberry Pi 4). One body serves both (the `DOT` const parameter).
//!
//! The 4-bit kernel runs over the 16-row interleaved layout of [`crate::interleave`]: a
//! 64-byte code word of a row group is four 128-bit quarters of 4 rows, each 32-bit lane a
//! row. 4-bit codes (0..15) are valid signed bytes, so `sdot` takes them as they are.
//!
//! Baseline NEON sums a 32-value block's products in 16-bit lanes: each lane adds eight
//! products of a code (at most 15) and an activation (at most 127 in magnitude), at most
//! 15,240 < 2^15, then pairwise adds widen to one 32-bit sum per row. The integer sums are
//! exact, as the reference's are.
//!
//! `sdot` is written as inline assembly: its intrinsic (`vdotq_s32`) is not stable Rust yet.

// Index loops address several register arrays (tiles, halves or quarters) by the same index.
#![allow(clippy::needless_range_loop)]

use super::format::{QuantizedRow, RowPtrs, BLOCK};
use super::params::{dot_q8_entry, row_group_entry, size_of, BF16, F16};
use crate::matrix::QuantMatrix;
use std::arch::aarch64::*;
use std::arch::asm;

/// [`super::format::quantize_block_scalar`] on 32 values in eight registers.
#[target_feature(enable = "neon")]
pub unsafe fn quantize_block(xb: &[f32], q: &mut [i8]) -> (f32, f32, i32) {
    let p = xb.as_ptr();
    let v: [float32x4_t; 8] = std::array::from_fn(|i| vld1q_f32(p.add(4 * i)));
    let mut m = vabsq_f32(v[0]);
    for vi in &v[1..] {
        m = vmaxq_f32(m, vabsq_f32(*vi));
    }
    let amax = vmaxvq_f32(m);
    let d = amax / 127.0;
    let inv = vdupq_n_f32(if d > 0.0 { 1.0 / d } else { 0.0 });
    // fcvtns: round to nearest, ties to even (the scalar reference's rounding).
    let qi: [int32x4_t; 8] = std::array::from_fn(|i| vcvtnq_s32_f32(vmulq_f32(v[i], inv)));
    let mut qs = vdupq_n_s32(0);
    let mut sum = vdupq_n_f32(0.0);
    for i in 0..8 {
        qs = vaddq_s32(qs, qi[i]);
        sum = vaddq_f32(sum, v[i]);
    }
    // Values are within -127..127: plain narrowing keeps them.
    for half in 0..2 {
        let a = vcombine_s16(vmovn_s32(qi[4 * half]), vmovn_s32(qi[4 * half + 1]));
        let b = vcombine_s16(vmovn_s32(qi[4 * half + 2]), vmovn_s32(qi[4 * half + 3]));
        vst1q_s8(
            q.as_mut_ptr().add(16 * half),
            vcombine_s8(vmovn_s16(a), vmovn_s16(b)),
        );
    }
    (d, vaddvq_f32(sum), vaddvq_s32(qs))
}

/// `acc += a . b` per 32-bit lane over 4 s8 pairs (`sdot`).
#[inline(always)]
unsafe fn sdot(mut acc: int32x4_t, a: int8x16_t, b: int8x16_t) -> int32x4_t {
    asm!(
        "sdot {acc:v}.4s, {a:v}.16b, {b:v}.16b",
        acc = inout(vreg) acc,
        a = in(vreg) a,
        b = in(vreg) b,
        options(pure, nomem, nostack, preserves_flags)
    );
    acc
}

/// Widens 4 f16 values to f32 (`fcvtl`; the f16 vector types are not stable Rust yet).
#[inline(always)]
unsafe fn f16x4_to_f32(bits: uint16x4_t) -> float32x4_t {
    let out: float32x4_t;
    asm!(
        "fcvtl {out:v}.4s, {inp:v}.4h",
        out = lateout(vreg) out,
        inp = in(vreg) bits,
        options(pure, nomem, nostack, preserves_flags)
    );
    out
}

/// Loads 4 scales or biases of dtype `DT` from `p` as f32.
#[inline(always)]
unsafe fn load<const DT: u8>(p: *const u8) -> float32x4_t {
    match DT {
        // bf16 is the top half of an f32: widening is a shift.
        BF16 => vreinterpretq_f32_u32(vshll_n_u16::<16>(vld1_u16(p as *const u16))),
        F16 => f16x4_to_f32(vld1_u16(p as *const u16)),
        _ => vld1q_f32(p as *const f32),
    }
}

/// A block's running integer sums for one quarter (4 rows) and one activation row: 32-bit
/// lanes with `sdot`, two 16-bit accumulators (rows 0-1, rows 2-3) without.
#[derive(Clone, Copy)]
struct BlockSum {
    dot: int32x4_t,
    lo: int16x8_t,
    hi: int16x8_t,
}

impl BlockSum {
    #[inline(always)]
    unsafe fn zero() -> Self {
        BlockSum {
            dot: vdupq_n_s32(0),
            lo: vdupq_n_s16(0),
            hi: vdupq_n_s16(0),
        }
    }

    /// Adds the products of 4 rows' 4 codes (`w`, a row per 32-bit lane) with the same 4
    /// activations broadcast to every lane (`x`).
    #[inline(always)]
    unsafe fn add<const DOT: bool>(&mut self, w: int8x16_t, x: int8x16_t) {
        if DOT {
            self.dot = sdot(self.dot, w, x);
        } else {
            self.lo = vmlal_s8(self.lo, vget_low_s8(w), vget_low_s8(x));
            self.hi = vmlal_high_s8(self.hi, w, x);
        }
    }

    /// One 32-bit sum per row.
    #[inline(always)]
    unsafe fn rows<const DOT: bool>(self) -> int32x4_t {
        if DOT {
            self.dot
        } else {
            vpaddq_s32(vpaddlq_s16(self.lo), vpaddlq_s16(self.hi))
        }
    }
}

row_group_entry!(
    /// `out[t][i]` = row `16 rg + i` of the interleaved 4-bit `w` dotted with `x[t]`.
    ///
    /// # Safety
    /// `DOT` needs the dotprod extension; `w.interleaved`, 4-bit, `w.cols % 128 == 0`, group size
    /// 32, 64 or 128, `16 (rg + 1) <= w.rows`, `N <= 4`, every `x[t]` quantized from a row
    /// of `w.cols` values; `scales`/`biases` point at the row group's first group, of dtype `DT`.
    row_group,
    "neon",
    row_group_body::<false>
);

row_group_entry!(
    /// [`row_group`] with `sdot`.
    ///
    /// # Safety
    /// As [`row_group`], and the CPU has dotprod.
    row_group_dot,
    "neon,dotprod",
    row_group_body::<true>
);

/// [`row_group`] with `smmla` for pairs of activation rows (an odd tile takes `sdot`):
/// the same integer sums, the same float operations in the same order per lane, so the
/// results are bit-identical to [`row_group_dot`]'s however rows are tiled.
///
/// # Safety
/// As [`row_group`], and the CPU has dotprod and i8mm.
#[target_feature(enable = "neon,dotprod,i8mm")]
pub unsafe fn row_group_i8mm<const N: usize, const DT: u8>(
    w: &QuantMatrix,
    rg: usize,
    scales: *const u8,
    biases: *const u8,
    x: [&QuantizedRow; N],
    k: usize,
) -> [[f32; 16]; N] {
    if !N.is_multiple_of(2) {
        return row_group_body::<N, DT, true>(w, rg, scales, biases, x, k);
    }
    let mut out = [[0f32; 16]; N];
    for q0 in 0..4 {
        pass_mmla::<N, DT>(w, rg, scales, biases, &x, k, q0, &mut out);
    }
    out
}

/// `acc += a . bᵀ` for `a`, `b` each two rows of 8 s8 values: `acc = [a0.b0, a0.b1, a1.b0,
/// a1.b1]` (`smmla`).
#[inline(always)]
unsafe fn smmla(mut acc: int32x4_t, a: int8x16_t, b: int8x16_t) -> int32x4_t {
    asm!(
        "smmla {acc:v}.4s, {a:v}.16b, {b:v}.16b",
        acc = inout(vreg) acc,
        a = in(vreg) a,
        b = in(vreg) b,
        options(pure, nomem, nostack, preserves_flags)
    );
    acc
}

/// Quarter `q0` (4 rows) of row group `rg` against `N` (even) activation rows, a pair at a
/// time. A row's 8 values of a code word are its 4 low nibbles then its 4 high ones (a
/// 32-bit zip of the two nibble vectors pairs rows 0-1 and rows 2-3), met by each activation
/// row's 4 even then 4 odd values of that word.
#[allow(clippy::too_many_arguments)]
#[inline(always)]
unsafe fn pass_mmla<const N: usize, const DT: u8>(
    w: &QuantMatrix,
    rg: usize,
    scales: *const u8,
    biases: *const u8,
    x: &[&QuantizedRow; N],
    k: usize,
    q0: usize,
    out: &mut [[f32; 16]; N],
) {
    let (groups, words) = (w.groups_per_row(), w.words_per_row());
    let blocks_per_group = w.group_size / BLOCK;
    let esz = size_of::<DT>();
    let mid = vdupq_n_f32(8.0); // 2^(bits-1)
    let nib = vdupq_n_u8(0x0F);
    let codes = (w.packed[rg * 16 * words..].as_ptr() as *const u8).add(16 * q0);
    let xp = RowPtrs::new(x, k);
    let mut acc = [vdupq_n_f32(0.0); N];
    for g in 0..groups {
        let at = (g * 16 + 4 * q0) * esz;
        let s = load::<DT>(scales.add(at));
        let b = load::<DT>(biases.add(at));
        // The exactly computed part: b_g Σx_g + m s_g resid_g.
        let sm = vmulq_f32(s, mid);
        for t in 0..N {
            acc[t] = vfmaq_f32(acc[t], b, vdupq_n_f32(*xp.sum[t].add(g)));
            acc[t] = vfmaq_f32(acc[t], sm, vdupq_n_f32(*xp.resid[t].add(g)));
        }
        for blk in g * blocks_per_group..(g + 1) * blocks_per_group {
            // Per pair of activation rows: rows 0-1 and rows 2-3 of the quarter.
            let mut isum = [[vdupq_n_s32(0); 2]; N];
            let chunk_at = (blk / 4) * 128 + (blk % 4) * 16;
            for word in 0..4 {
                let c = blk * 4 + word;
                let v = vld1q_u8(codes.add(c * 64));
                let lo = vreinterpretq_u32_u8(vandq_u8(v, nib));
                let hi = vreinterpretq_u32_u8(vshrq_n_u8::<4>(v));
                let r01 = vreinterpretq_s8_u32(vzip1q_u32(lo, hi));
                let r23 = vreinterpretq_s8_u32(vzip2q_u32(lo, hi));
                let at = chunk_at + 4 * word;
                for p in 0..N / 2 {
                    let word_of = |t: usize| {
                        let px = xp.q[t].add(at);
                        let even = (px as *const u32).read_unaligned() as u64;
                        let odd = (px.add(64) as *const u32).read_unaligned() as u64;
                        even | odd << 32
                    };
                    let xs = vreinterpretq_s8_u64(vcombine_u64(
                        vcreate_u64(word_of(2 * p)),
                        vcreate_u64(word_of(2 * p + 1)),
                    ));
                    isum[p][0] = smmla(isum[p][0], r01, xs);
                    isum[p][1] = smmla(isum[p][1], r23, xs);
                }
            }
            for p in 0..N / 2 {
                // [r0 t0, r0 t1, r1 t0, r1 t1] and the same for rows 2-3: one row vector per
                // activation row.
                let rows = [
                    vuzp1q_s32(isum[p][0], isum[p][1]),
                    vuzp2q_s32(isum[p][0], isum[p][1]),
                ];
                for (u, r) in rows.into_iter().enumerate() {
                    let t = 2 * p + u;
                    let sd = vmulq_f32(s, vdupq_n_f32(*xp.d[t].add(blk)));
                    acc[t] = vfmaq_f32(acc[t], vcvtq_f32_s32(r), sd);
                }
            }
        }
    }
    for t in 0..N {
        vst1q_f32(out[t].as_mut_ptr().add(4 * q0), acc[t]);
    }
}

/// One activation row takes all four quarters in one pass (decode: every code byte read
/// once, in order); a tile of several takes one quarter per pass so its accumulators stay in
/// registers.
#[inline(always)]
unsafe fn row_group_body<const N: usize, const DT: u8, const DOT: bool>(
    w: &QuantMatrix,
    rg: usize,
    scales: *const u8,
    biases: *const u8,
    x: [&QuantizedRow; N],
    k: usize,
) -> [[f32; 16]; N] {
    let mut out = [[0f32; 16]; N];
    if N == 1 {
        pass::<N, 4, DT, DOT>(w, rg, scales, biases, &x, k, 0, &mut out);
    } else {
        for q0 in 0..4 {
            pass::<N, 1, DT, DOT>(w, rg, scales, biases, &x, k, q0, &mut out);
        }
    }
    out
}

/// Quarters `q0..q0 + Q` (4 rows each) of row group `rg` against the `N` activation rows.
/// Each (row, activation row) pair accumulates in its own lane in the same order whatever
/// `N` and `Q` are, so results are bit-identical however rows are tiled.
#[allow(clippy::too_many_arguments)]
#[inline(always)]
unsafe fn pass<const N: usize, const Q: usize, const DT: u8, const DOT: bool>(
    w: &QuantMatrix,
    rg: usize,
    scales: *const u8,
    biases: *const u8,
    x: &[&QuantizedRow; N],
    k: usize,
    q0: usize,
    out: &mut [[f32; 16]; N],
) {
    let (groups, words) = (w.groups_per_row(), w.words_per_row());
    let blocks_per_group = w.group_size / BLOCK;
    let esz = size_of::<DT>();
    let mid = vdupq_n_f32(8.0); // 2^(bits-1)
    let nib = vdupq_n_u8(0x0F);
    let codes = (w.packed[rg * 16 * words..].as_ptr() as *const u8).add(16 * q0);
    let mut acc = [[vdupq_n_f32(0.0); Q]; N];
    let xp = RowPtrs::new(x, k);
    for g in 0..groups {
        let mut s = [vdupq_n_f32(0.0); Q];
        for q in 0..Q {
            let at = (g * 16 + 4 * (q0 + q)) * esz;
            s[q] = load::<DT>(scales.add(at));
            let b = load::<DT>(biases.add(at));
            // The exactly computed part: b_g Σx_g + m s_g resid_g.
            let sm = vmulq_f32(s[q], mid);
            for t in 0..N {
                let gs = vdupq_n_f32(*xp.sum[t].add(g));
                let gr = vdupq_n_f32(*xp.resid[t].add(g));
                acc[t][q] = vfmaq_f32(acc[t][q], b, gs);
                acc[t][q] = vfmaq_f32(acc[t][q], sm, gr);
            }
        }
        for blk in g * blocks_per_group..(g + 1) * blocks_per_group {
            let mut isum = [[BlockSum::zero(); Q]; N];
            // The block's 4 words lie in one 128-value chunk: even values at `at`, odd ones
            // 64 bytes on (see `QuantizedRow::nibble_order`).
            let chunk_at = (blk / 4) * 128 + (blk % 4) * 16;
            for word in 0..4 {
                let c = blk * 4 + word;
                let mut lo = [vdupq_n_s8(0); Q];
                let mut hi = [vdupq_n_s8(0); Q];
                for q in 0..Q {
                    let v = vld1q_u8(codes.add(c * 64 + 16 * q));
                    lo[q] = vreinterpretq_s8_u8(vandq_u8(v, nib));
                    hi[q] = vreinterpretq_s8_u8(vshrq_n_u8::<4>(v));
                }
                let at = chunk_at + 4 * word;
                for t in 0..N {
                    let px = xp.q[t].add(at);
                    let even =
                        vreinterpretq_s8_s32(vdupq_n_s32((px as *const i32).read_unaligned()));
                    let odd = vreinterpretq_s8_s32(vdupq_n_s32(
                        (px.add(64) as *const i32).read_unaligned(),
                    ));
                    for q in 0..Q {
                        isum[t][q].add::<DOT>(lo[q], even);
                        isum[t][q].add::<DOT>(hi[q], odd);
                    }
                }
            }
            for t in 0..N {
                let d = vdupq_n_f32(*xp.d[t].add(blk));
                for q in 0..Q {
                    let sd = vmulq_f32(s[q], d);
                    let sums = vcvtq_f32_s32(isum[t][q].rows::<DOT>());
                    acc[t][q] = vfmaq_f32(acc[t][q], sums, sd);
                }
            }
        }
    }
    for t in 0..N {
        for q in 0..Q {
            vst1q_f32(out[t].as_mut_ptr().add(4 * (q0 + q)), acc[t][q]);
        }
    }
}

dot_q8_entry!(
    /// 8-bit row (`cols % 32 == 0`) against natural-order int8 activations, one 32-value block
    /// per step: `Σ_b s_g(b) d_b Σ_{i∈b} q_i qx_i`.
    ///
    /// The codes run as signed `q - 128` (a flip of the top bit) so that `sdot`/`smull` take
    /// them, and `128 Σ qx_b` is added back to one lane, in integers: the block sum stays exact.
    ///
    /// # Safety
    /// `DOT` needs dotprod; `qx`, `qsum`, `s` (per block) and `d` cover `row`'s values.
    dot_q8,
    "neon",
    dot_q8_body::<false>
);

dot_q8_entry!(
    /// [`dot_q8`] with `sdot`.
    ///
    /// # Safety
    /// As [`dot_q8`], and the CPU has dotprod.
    dot_q8_dot,
    "neon,dotprod",
    dot_q8_body::<true>
);

#[inline(always)]
unsafe fn dot_q8_body<const DOT: bool>(
    row: &[u32],
    qx: &[i8],
    qsum: &[i32],
    s: &[f32],
    d: &[f32],
) -> f32 {
    let pw = row.as_ptr() as *const u8;
    let px = qx.as_ptr();
    let flip = vdupq_n_u8(0x80);
    let mut acc = vdupq_n_f32(0.0);
    for b in 0..qx.len() / BLOCK {
        let mut isum = vsetq_lane_s32::<0>(128 * *qsum.get_unchecked(b), vdupq_n_s32(0));
        for half in 0..2 {
            let w = vreinterpretq_s8_u8(veorq_u8(vld1q_u8(pw.add(b * BLOCK + 16 * half)), flip));
            let x = vld1q_s8(px.add(b * BLOCK + 16 * half));
            if DOT {
                isum = sdot(isum, w, x);
            } else {
                // |(q - 128) qx| <= 128 x 127 fits a 16-bit lane; pairs widen to 32 bits.
                isum = vpadalq_s16(isum, vmull_s8(vget_low_s8(w), vget_low_s8(x)));
                isum = vpadalq_s16(isum, vmull_high_s8(w, x));
            }
        }
        let sd = vdupq_n_f32(*s.get_unchecked(b) * *d.get_unchecked(b));
        acc = vfmaq_f32(acc, vcvtq_f32_s32(isum), sd);
    }
    vaddvq_f32(acc)
}
