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

use crate::matrix::QuantMatrix;

/// Activation block length (divides every MLX group size: 32, 64, 128).
pub const BLOCK: usize = 32;

/// Group sizes whose per-group activation sums are precomputed (`GROUP_SIZES[k] = 32 << k`).
const GROUP_SIZES: [usize; 3] = [32, 64, 128];

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

/// One activation row quantized to int8 blocks, with the exact sums the bias terms need.
#[derive(Clone, Debug, Default)]
pub struct QuantizedRow {
    /// Values in natural order (for 8-bit weights).
    pub natural: Vec<i8>,
    /// Values reordered per 128-value chunk as [even indices | odd indices], matching the
    /// low/high nibbles of 4-bit words (for 4-bit weights).
    pub nibble_order: Vec<i8>,
    /// Block scales `d_b`.
    pub scale: Vec<f32>,
    /// Block scales laid out as the 4-bit kernel's lanes: per 128-value chunk, 16 lanes where
    /// lanes 4j..4j+3 hold `d` of the chunk's block j.
    pub d_spread: Vec<f32>,
    /// Per group size (index k for `32 << k`): exact f32 sums of `x` over each group.
    pub group_sum: [Vec<f32>; 3],
    /// Per group size: `Σ_{b∈g} (sum_b - d_b Σ qx_b)`, what int8 rounding lost of each
    /// group's sum (see [`dot_reference`] for how it is used).
    pub group_resid: [Vec<f32>; 3],
}

impl QuantizedRow {
    /// Quantizes `x` (length a multiple of [`BLOCK`]) into `self`, reusing its buffers.
    pub fn quantize(&mut self, x: &[f32]) {
        let n = x.len();
        debug_assert_eq!(n % BLOCK, 0);
        self.natural.resize(n, 0);
        self.nibble_order.resize(n, 0);
        self.scale.resize(n / BLOCK, 0.0);
        for ((g, sums), resids) in GROUP_SIZES
            .iter()
            .zip(&mut self.group_sum)
            .zip(&mut self.group_resid)
        {
            sums.clear();
            sums.resize(n / g, 0.0);
            resids.clear();
            resids.resize(n / g, 0.0);
        }
        for (b, xb) in x.chunks_exact(BLOCK).enumerate() {
            let amax = xb.iter().fold(0f32, |m, v| m.max(v.abs()));
            let d = amax / 127.0;
            let inv = if d > 0.0 { 1.0 / d } else { 0.0 };
            self.scale[b] = d;
            let sum: f32 = xb.iter().sum();
            let mut qsum = 0i32;
            for (q, &v) in self.natural[b * BLOCK..(b + 1) * BLOCK].iter_mut().zip(xb) {
                *q = (v * inv).round() as i8;
                qsum += *q as i32;
            }
            let resid = sum - d * qsum as f32;
            for ((gs, sums), resids) in GROUP_SIZES
                .iter()
                .zip(&mut self.group_sum)
                .zip(&mut self.group_resid)
            {
                let g = b * BLOCK / gs;
                if let (Some(s), Some(r)) = (sums.get_mut(g), resids.get_mut(g)) {
                    *s += sum;
                    *r += resid;
                }
            }
        }
        self.d_spread.clear();
        self.d_spread
            .extend(self.scale.iter().flat_map(|&d| [d; 4]));
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

fn group_index(group_size: usize) -> Option<usize> {
    GROUP_SIZES.iter().position(|&g| g == group_size)
}

/// Whether `w` has an int8-activation kernel on this machine.
pub fn supported(w: &QuantMatrix) -> bool {
    let shape_ok = match w.bits {
        4 => w.cols.is_multiple_of(128),
        8 => w.cols.is_multiple_of(64),
        _ => false,
    };
    shape_ok && group_index(w.group_size).is_some() && crate::simd::has_vnni()
}

/// Padding after a row's scales, so 16-wide windows never read past them.
const SCALE_PAD: usize = 16;

/// Row `r`'s parameters widened to f32 once, shared by every activation row it meets:
/// the scale of every block (`s_g` repeated per block of the group) and the group biases
/// and scales.
struct RowParams<'a> {
    block_scales: &'a [f32],
    /// Group scales plus [`SCALE_PAD`] padding values.
    scales: &'a [f32],
    groups: usize,
    group_size: usize,
    biases: &'a [f32],
    /// Index into the activation rows' per-group sums.
    k: usize,
    /// `2^(bits-1)`, the middle of the quantized range.
    mid: f32,
}

impl<'a> RowParams<'a> {
    /// Widens row `r`'s scales and biases into `scratch`. The scales are followed by 16
    /// padding values (the 4-bit kernel loads 16-wide windows of them); per-block scales are
    /// filled only for the kernels that use them (8-bit, and the reference).
    fn new(w: &QuantMatrix, r: usize, scratch: &'a mut Vec<f32>, with_block_scales: bool) -> Self {
        let (groups, blocks) = (
            w.groups_per_row(),
            if with_block_scales { w.cols / BLOCK } else { 0 },
        );
        let need = groups + SCALE_PAD + groups + blocks;
        if scratch.len() < need {
            scratch.resize(need, 0.0);
        }
        let (scales, rest) = scratch.split_at_mut(groups + SCALE_PAD);
        let (biases, rest) = rest.split_at_mut(groups);
        let block_scales = &mut rest[..blocks];
        w.scales.read_into(r * groups, &mut scales[..groups]);
        w.biases.read_into(r * groups, biases);
        let bpg = w.group_size / BLOCK;
        for (blocks, &s) in block_scales.chunks_exact_mut(bpg).zip(scales.iter()) {
            blocks.fill(s);
        }
        RowParams {
            block_scales,
            scales,
            groups,
            group_size: w.group_size,
            biases,
            k: group_index(w.group_size).expect("supported() checked the group size"),
            mid: (1u32 << (w.bits - 1)) as f32,
        }
    }

    /// The exactly computed part of the dot product with `x`:
    /// `Σ_g b_g Σ_{i∈g} x_i` plus a centring correction. Writing `q = (q - m) + m` with
    /// `m = 2^(bits-1)`, the integer product's rounding error is carried by `q - m` (half
    /// the magnitude of `q`), and the `m` part uses the exact group sums instead:
    /// `s_g m (Σx - Σ d_b qx)` is the difference, added here.
    #[inline]
    fn exact_part(&self, x: &QuantizedRow) -> f32 {
        crate::simd::dot(self.biases, &x.group_sum[self.k])
            + self.mid * crate::simd::dot(&self.scales[..self.groups], &x.group_resid[self.k])
    }

    /// [`RowParams::exact_part`] in one AVX-512 pass (the hot path).
    #[inline]
    fn exact_part_fast(&self, x: &QuantizedRow) -> f32 {
        // SAFETY: only reached after `supported` (AVX-512 present); equal lengths.
        unsafe {
            x86::dot2(
                self.biases,
                &x.group_sum[self.k],
                self.scales,
                &x.group_resid[self.k],
                self.mid,
            )
        }
    }
}

/// Scalar reference: row `r` of `w` dotted with the quantized row:
/// `Σ_b s_g(b) d_b Σ_{i∈b} q_i qx_i + exact_part`.
pub fn dot_reference(w: &QuantMatrix, r: usize, x: &QuantizedRow) -> f32 {
    let row = w.packed_row(r);
    let mut scratch = Vec::new();
    let params = RowParams::new(w, r, &mut scratch, true);
    let mut acc = 0f32;
    for (b, s) in params.block_scales.iter().enumerate() {
        let mut isum = 0i32;
        for i in b * BLOCK..(b + 1) * BLOCK {
            isum += crate::quant::get_q(row, w.bits, i) as i32 * x.natural[i] as i32;
        }
        acc += s * x.scale[b] * isum as f32;
    }
    acc + params.exact_part(x)
}

/// Row `r` of `w` dotted with the quantized rows `q[x_rows[i]]`; `write(i, value)` receives
/// each result. The row's parameters are widened once for all of them into `scratch` (the
/// caller's reusable buffer). Requires [`supported`]`(w)`.
#[inline]
pub fn dot_rows(
    w: &QuantMatrix,
    r: usize,
    q: &[QuantizedRow],
    x_rows: &[u32],
    scratch: &mut Vec<f32>,
    mut write: impl FnMut(usize, f32),
) {
    let params = RowParams::new(w, r, scratch, w.bits != 4);
    let row = w.packed_row(r);
    // 4-bit rows meet activation rows in tiles of 4 (then 2): the nibbles are unpacked once
    // per tile.
    let mut first = 0;
    if w.bits == 4 {
        first = tiles::<4, _>(row, q, x_rows, first, &params, &mut write);
        first = tiles::<2, _>(row, q, x_rows, first, &params, &mut write);
    }
    for (i, &xr) in x_rows.iter().enumerate().skip(first) {
        let x = &q[xr as usize];
        // SAFETY: `supported` checked the CPU features and shapes.
        let main = unsafe {
            match w.bits {
                4 => x86::dot_q4_tile::<1>(
                    row,
                    [&x.nibble_order],
                    params.scales,
                    params.group_size,
                    [&x.d_spread],
                )[0],
                _ => x86::dot_q8(row, &x.natural, params.block_scales, &x.scale),
            }
        };
        write(i, main + params.exact_part_fast(x));
    }
}

/// Serves `x_rows[first..]` in tiles of `N` with [`x86::dot_q4_tile`]; returns the first
/// index not served.
#[inline]
fn tiles<const N: usize, W: FnMut(usize, f32)>(
    row: &[u32],
    q: &[QuantizedRow],
    x_rows: &[u32],
    mut first: usize,
    params: &RowParams,
    write: &mut W,
) -> usize {
    while first + N <= x_rows.len() {
        let xs: [&QuantizedRow; N] = std::array::from_fn(|t| &q[x_rows[first + t] as usize]);
        // SAFETY: callers checked `supported` (CPU features and shapes).
        let dots = unsafe {
            x86::dot_q4_tile::<N>(
                row,
                std::array::from_fn(|t| xs[t].nibble_order.as_slice()),
                params.scales,
                params.group_size,
                std::array::from_fn(|t| xs[t].d_spread.as_slice()),
            )
        };
        for t in 0..N {
            write(first + t, dots[t] + params.exact_part_fast(xs[t]));
        }
        first += N;
    }
    first
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::*;

    /// 4-bit row (`cols % 128 == 0`) against `N` nibble-ordered int8 activation rows at once
    /// (one for decode, a tile for prefill), sharing the unpacked nibbles and the row's scale
    /// lanes. After the two `vpdpbusd`, lanes 4j..4j+3 of a chunk hold block j's integer
    /// sums; each lane is scaled by its group's scale (`scales`, 16-wide windows picked by a
    /// permutation that depends only on the group size) times its block's `d` (`d_spread`).
    #[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
    pub unsafe fn dot_q4_tile<const N: usize>(
        row: &[u32],
        q: [&[i8]; N],
        scales: &[f32],
        group_size: usize,
        d_spread: [&[f32]; N],
    ) -> [f32; N] {
        let chunks = q[0].len() / 128;
        let pw = row.as_ptr() as *const u8;
        let mask = _mm512_set1_epi8(0x0F);
        // Lane l covers block l/4 of the chunk, i.e. group (l/4 * 32) / group_size of the window
        // that starts at the chunk's first group.
        let idx = match group_size {
            32 => _mm512_set_epi32(3, 3, 3, 3, 2, 2, 2, 2, 1, 1, 1, 1, 0, 0, 0, 0),
            64 => _mm512_set_epi32(1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0, 0, 0, 0, 0, 0),
            _ => _mm512_setzero_si512(),
        };
        let groups_per_chunk = 128 / group_size;
        let mut acc = [_mm512_setzero_ps(); N];
        for c in 0..chunks {
            let packed = _mm512_loadu_si512(pw.add(c * 64) as *const _);
            let lo = _mm512_and_si512(packed, mask);
            let hi = _mm512_and_si512(_mm512_srli_epi16(packed, 4), mask);
            let sv = _mm512_permutexvar_ps(
                idx,
                _mm512_loadu_ps(scales.as_ptr().add(c * groups_per_chunk)),
            );
            for t in 0..N {
                let px = q[t].as_ptr().add(c * 128);
                let xe = _mm512_loadu_si512(px as *const _);
                let xo = _mm512_loadu_si512(px.add(64) as *const _);
                let isum = _mm512_dpbusd_epi32(
                    _mm512_dpbusd_epi32(_mm512_setzero_si512(), lo, xe),
                    hi,
                    xo,
                );
                let f = _mm512_mul_ps(sv, _mm512_loadu_ps(d_spread[t].as_ptr().add(c * 16)));
                acc[t] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(isum), f, acc[t]);
            }
        }
        let mut out = [0f32; N];
        for t in 0..N {
            out[t] = _mm512_reduce_add_ps(acc[t]);
        }
        out
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
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::matrix::FloatSlice;
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
                // Three copies: the pair kernel serves the first two, the single one the third.
                let q = [qx.clone(), qx.clone(), qx.clone()];
                for r in 0..rows {
                    let mut three = [0f32; 3];
                    dot_rows(&w, r, &q, &[0, 1, 2], &mut Vec::new(), |i, v| three[i] = v);
                    assert!(
                        three[0] == three[1]
                            && (three[0] - three[2]).abs() <= 1e-5 * (1.0 + three[0].abs())
                    );
                    let fast = [three[0]];
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
