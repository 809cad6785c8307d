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
            let (d, sum, qsum) = quantize_block(xb, &mut self.natural[b * BLOCK..(b + 1) * BLOCK]);
            self.scale[b] = d;
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

/// Quantizes one block of [`BLOCK`] values to int8 (`q = round_half_even(x / d)`,
/// `d = max|x| / 127`); returns `(d, Σx, Σq)`. The AVX-512 path rounds the same way (the
/// default MXCSR mode); only the order of the f32 sum differs from the scalar loop.
#[inline]
fn quantize_block(xb: &[f32], q: &mut [i8]) -> (f32, f32, i32) {
    #[cfg(target_arch = "x86_64")]
    if crate::simd::isa() == crate::simd::Isa::Avx512 {
        // SAFETY: AVX-512F (and BW, which every AVX-512 server part has and `has_vnni`
        // requires before any kernel reads `q`) is present; both slices hold BLOCK values.
        return unsafe { x86::quantize_block(xb, q) };
    }
    quantize_block_scalar(xb, q)
}

/// The scalar reference of [`quantize_block`].
fn quantize_block_scalar(xb: &[f32], q: &mut [i8]) -> (f32, f32, i32) {
    let amax = xb.iter().fold(0f32, |m, v| m.max(v.abs()));
    let d = amax / 127.0;
    let inv = if d > 0.0 { 1.0 / d } else { 0.0 };
    let mut qsum = 0i32;
    for (q, &v) in q.iter_mut().zip(xb) {
        *q = (v * inv).round_ties_even() as i8;
        qsum += *q as i32;
    }
    (d, xb.iter().sum(), qsum)
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

/// Row `r`'s parameters widened to f32 once, shared by every activation row it meets:
/// the scale of every block (`s_g` repeated per block of the group) and the group biases
/// and scales (the 8-bit kernel and the reference; the 4-bit kernel widens in registers).
struct RowParams<'a> {
    block_scales: &'a [f32],
    scales: &'a [f32],
    groups: usize,
    biases: &'a [f32],
    /// Index into the activation rows' per-group sums.
    k: usize,
    /// `2^(bits-1)`, the middle of the quantized range.
    mid: f32,
}

impl<'a> RowParams<'a> {
    /// Widens row `r`'s scales and biases into `scratch`.
    fn new(w: &QuantMatrix, r: usize, scratch: &'a mut Vec<f32>) -> Self {
        let (groups, blocks) = (w.groups_per_row(), w.cols / BLOCK);
        let need = 2 * groups + blocks;
        if scratch.len() < need {
            scratch.resize(need, 0.0);
        }
        let (scales, rest) = scratch.split_at_mut(groups);
        let (biases, rest) = rest.split_at_mut(groups);
        let block_scales = &mut rest[..blocks];
        if w.interleaved {
            for (g, (s, b)) in scales.iter_mut().zip(biases.iter_mut()).enumerate() {
                let at = crate::interleave::param_index(w, r, g);
                (*s, *b) = (w.scales.get(at), w.biases.get(at));
            }
        } else {
            w.scales.read_into(r * groups, scales);
            w.biases.read_into(r * groups, biases);
        }
        let bpg = w.group_size / BLOCK;
        for (blocks, &s) in block_scales.chunks_exact_mut(bpg).zip(scales.iter()) {
            blocks.fill(s);
        }
        RowParams {
            block_scales,
            scales,
            groups,
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
    let row: Vec<u32> = (0..w.words_per_row())
        .map(|c| crate::interleave::word(w, r, c))
        .collect();
    let mut scratch = Vec::new();
    let params = RowParams::new(w, r, &mut scratch);
    let mut acc = 0f32;
    for (b, s) in params.block_scales.iter().enumerate() {
        let mut isum = 0i32;
        for i in b * BLOCK..(b + 1) * BLOCK {
            isum += crate::quant::get_q(&row, w.bits, i) as i32 * x.natural[i] as i32;
        }
        acc += s * x.scale[b] * isum as f32;
    }
    acc + params.exact_part(x)
}

/// Rows `r0..r1` of `w` dotted with the quantized rows `q[x_rows[i]]`; `write(r, i, value)`
/// receives each result. 4-bit rows go through [`crate::qdot4`] (several weight and
/// activation rows per pass); 8-bit rows widen their parameters once per row into `scratch`
/// (the caller's reusable buffer). Requires [`supported`]`(w)`.
#[inline]
pub fn dot_rows(
    w: &QuantMatrix,
    rows: std::ops::Range<usize>,
    q: &[QuantizedRow],
    x_rows: &[u32],
    scratch: &mut Vec<f32>,
    mut write: impl FnMut(usize, usize, f32),
) {
    if w.interleaved {
        let k = group_index(w.group_size).expect("supported() checked the group size");
        let n = crate::interleave::ROWS;
        debug_assert!(rows.start.is_multiple_of(n) && rows.end.is_multiple_of(n));
        for rg in rows.start / n..rows.end / n {
            let mut first = 0;
            first = group_tiles::<8, _>(w, rg, q, x_rows, k, first, &mut write);
            first = group_tiles::<4, _>(w, rg, q, x_rows, k, first, &mut write);
            first = group_tiles::<2, _>(w, rg, q, x_rows, k, first, &mut write);
            group_tiles::<1, _>(w, rg, q, x_rows, k, first, &mut write);
        }
        return;
    }
    if w.bits == 4 {
        let k = group_index(w.group_size).expect("supported() checked the group size");
        let mut r = rows.start;
        if x_rows.len() == 1 {
            while r + crate::qdot4::ROWS_DECODE <= rows.end {
                r = row_block::<{ crate::qdot4::ROWS_DECODE }, _>(w, r, q, x_rows, k, &mut write);
            }
        } else {
            while r + crate::qdot4::ROWS_TILE <= rows.end {
                r = row_block::<{ crate::qdot4::ROWS_TILE }, _>(w, r, q, x_rows, k, &mut write);
            }
        }
        while r < rows.end {
            r = row_block::<1, _>(w, r, q, x_rows, k, &mut write);
        }
        return;
    }
    for r in rows {
        let params = RowParams::new(w, r, scratch);
        let row = w.packed_row(r);
        for (i, &xr) in x_rows.iter().enumerate() {
            let x = &q[xr as usize];
            // SAFETY: `supported` checked the CPU features and shapes.
            let main = unsafe { x86::dot_q8(row, &x.natural, params.block_scales, &x.scale) };
            write(r, i, main + params.exact_part_fast(x));
        }
    }
}

/// Serves `x_rows[first..]` in tiles of `N` for row group `rg` of an interleaved matrix;
/// returns the first index not served.
#[inline]
fn group_tiles<const N: usize, W: FnMut(usize, usize, f32)>(
    w: &QuantMatrix,
    rg: usize,
    q: &[QuantizedRow],
    x_rows: &[u32],
    k: usize,
    mut first: usize,
    write: &mut W,
) -> usize {
    while first + N <= x_rows.len() {
        let xs: [&QuantizedRow; N] = std::array::from_fn(|t| &q[x_rows[first + t] as usize]);
        // SAFETY: callers checked `supported` (CPU features and shapes) and the row group.
        let dots = unsafe { crate::qdot4::dot_row_group::<N>(w, rg, xs, k) };
        for (t, lanes) in dots.iter().enumerate() {
            for (i, &v) in lanes.iter().enumerate() {
                write(rg * crate::interleave::ROWS + i, first + t, v);
            }
        }
        first += N;
    }
    first
}

/// Weight rows `r..r + R` against every activation row, in tiles of 4, 2 and 1 activation
/// rows; returns the next row.
#[inline]
fn row_block<const R: usize, W: FnMut(usize, usize, f32)>(
    w: &QuantMatrix,
    r: usize,
    q: &[QuantizedRow],
    x_rows: &[u32],
    k: usize,
    write: &mut W,
) -> usize {
    let mut first = 0;
    first = x_tiles::<R, 4, W>(w, r, q, x_rows, k, first, write);
    first = x_tiles::<R, 2, W>(w, r, q, x_rows, k, first, write);
    x_tiles::<R, 1, W>(w, r, q, x_rows, k, first, write);
    r + R
}

/// Serves `x_rows[first..]` in tiles of `N` for weight rows `r..r + R`; returns the first
/// index not served.
#[inline]
fn x_tiles<const R: usize, const N: usize, W: FnMut(usize, usize, f32)>(
    w: &QuantMatrix,
    r: usize,
    q: &[QuantizedRow],
    x_rows: &[u32],
    k: usize,
    mut first: usize,
    write: &mut W,
) -> usize {
    while first + N <= x_rows.len() {
        let xs: [&QuantizedRow; N] = std::array::from_fn(|t| &q[x_rows[first + t] as usize]);
        // SAFETY: callers checked `supported` (CPU features and shapes); r + R <= rows.
        let dots = unsafe { crate::qdot4::dot_block::<R, N>(w, r, xs, k) };
        for (j, row) in dots.iter().enumerate() {
            for (t, &v) in row.iter().enumerate() {
                write(r + j, first + t, v);
            }
        }
        first += N;
    }
    first
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::*;

    /// See [`super::quantize_block`]: 32 values in two registers.
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
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::matrix::FloatSlice;
    use crate::quant::quantize_row;
    use crate::rng::Rng;

    /// A random `rows x cols` matrix quantized at `bits`/`g`, with scales and biases in
    /// every dtype MLX writes.
    struct Random {
        packed: Vec<u32>,
        scales: Vec<f32>,
        biases: Vec<f32>,
        sb: Vec<half::bf16>,
        bb: Vec<half::bf16>,
        sh: Vec<half::f16>,
        bh: Vec<half::f16>,
    }

    impl Random {
        fn new(rng: &mut Rng, rows: usize, cols: usize, bits: u32, g: usize) -> Self {
            let (mut packed, mut scales, mut biases) = (vec![], vec![], vec![]);
            for _ in 0..rows {
                let w: Vec<f32> = (0..cols).map(|_| rng.normal()).collect();
                let (p, s, b) = quantize_row(&w, bits, g);
                packed.extend(p);
                scales.extend(s);
                biases.extend(b);
            }
            Random {
                sb: scales.iter().map(|&v| half::bf16::from_f32(v)).collect(),
                bb: biases.iter().map(|&v| half::bf16::from_f32(v)).collect(),
                sh: scales.iter().map(|&v| half::f16::from_f32(v)).collect(),
                bh: biases.iter().map(|&v| half::f16::from_f32(v)).collect(),
                packed,
                scales,
                biases,
            }
        }

        /// The same matrix in the interleaved layout.
        fn interleaved(&self, cols: usize, bits: u32, g: usize) -> Self {
            use crate::interleave::interleave_in_place;
            let (wpr, gpr) = (cols * bits as usize / 32, cols / g);
            let mut m = Random {
                packed: self.packed.clone(),
                scales: self.scales.clone(),
                biases: self.biases.clone(),
                sb: self.sb.clone(),
                bb: self.bb.clone(),
                sh: self.sh.clone(),
                bh: self.bh.clone(),
            };
            interleave_in_place(&mut m.packed, wpr, &mut Vec::new());
            interleave_in_place(&mut m.scales, gpr, &mut Vec::new());
            interleave_in_place(&mut m.biases, gpr, &mut Vec::new());
            interleave_in_place(&mut m.sb, gpr, &mut Vec::new());
            interleave_in_place(&mut m.bb, gpr, &mut Vec::new());
            interleave_in_place(&mut m.sh, gpr, &mut Vec::new());
            interleave_in_place(&mut m.bh, gpr, &mut Vec::new());
            m
        }

        /// Views with f32, bf16 and f16 parameters.
        fn views(&self, rows: usize, cols: usize, bits: u32, g: usize) -> [QuantMatrix<'_>; 3] {
            self.views_in(rows, cols, bits, g, false)
        }

        fn views_in(
            &self,
            rows: usize,
            cols: usize,
            bits: u32,
            g: usize,
            interleaved: bool,
        ) -> [QuantMatrix<'_>; 3] {
            let v = |scales, biases| QuantMatrix {
                packed: &self.packed,
                scales,
                biases,
                rows,
                cols,
                bits,
                group_size: g,
                interleaved,
            };
            [
                v(FloatSlice::F32(&self.scales), FloatSlice::F32(&self.biases)),
                v(FloatSlice::Bf16(&self.sb), FloatSlice::Bf16(&self.bb)),
                v(FloatSlice::F16(&self.sh), FloatSlice::F16(&self.bh)),
            ]
        }
    }

    /// `n` random activation rows of `cols` values, and their int8 forms.
    fn random_rows(rng: &mut Rng, n: usize, cols: usize) -> (Vec<Vec<f32>>, Vec<QuantizedRow>) {
        let xs: Vec<Vec<f32>> = (0..n)
            .map(|_| (0..cols).map(|_| rng.normal()).collect())
            .collect();
        let q = xs
            .iter()
            .map(|x| {
                let mut qx = QuantizedRow::default();
                qx.quantize(x);
                qx
            })
            .collect();
        (xs, q)
    }

    #[test]
    fn simd_block_quantization_matches_the_scalar_reference() {
        let mut rng = Rng::new(5);
        for scale in [1e-3f32, 1.0, 300.0] {
            for _ in 0..200 {
                let mut x: Vec<f32> = (0..BLOCK).map(|_| rng.normal() * scale).collect();
                // Values on a rounding midpoint: both paths round half to even.
                x[3] = x.iter().fold(0f32, |m, v| m.max(v.abs())) / 127.0 * 2.5;
                let (mut a, mut b) = ([0i8; BLOCK], [0i8; BLOCK]);
                let (da, sa, qa) = quantize_block(&x, &mut a);
                let (db, sb, qb) = quantize_block_scalar(&x, &mut b);
                assert_eq!((a, da.to_bits(), qa), (b, db.to_bits(), qb));
                assert!((sa - sb).abs() <= 1e-5 * scale * BLOCK as f32);
            }
        }
        let (mut q, zero) = ([1i8; BLOCK], [0f32; BLOCK]);
        assert_eq!(quantize_block(&zero, &mut q), (0.0, 0.0, 0));
        assert_eq!(q, [0i8; BLOCK]);
    }

    #[test]
    fn vnni_kernels_match_the_int8_reference_and_stay_close_to_f32() {
        if !crate::simd::has_vnni() {
            eprintln!("skipped: this CPU has no AVX-512 VNNI");
            return;
        }
        let mut rng = Rng::new(31);
        // 9 rows: blocks of 4 (decode) or 2 (tiles) plus a single tail row; 7 activation
        // rows: tiles of 4, 2 and 1.
        let (rows, n_x) = (9usize, 7usize);
        for (bits, cols, g) in [
            (4u32, 128usize, 32usize),
            (4, 256, 64),
            (4, 384, 128),
            (4, 2048, 64),
            (8, 64, 32),
            (8, 192, 64),
            (8, 256, 128),
        ] {
            let m = Random::new(&mut rng, rows, cols, bits, g);
            for w in m.views(rows, cols, bits, g) {
                assert!(supported(&w));
                let (xs, q) = random_rows(&mut rng, n_x, cols);
                let all: Vec<u32> = (0..n_x as u32).collect();
                let mut tiled = vec![0f32; rows * n_x];
                dot_rows(&w, 0..rows, &q, &all, &mut Vec::new(), |r, i, v| {
                    tiled[r * n_x + i] = v
                });
                for r in 0..rows {
                    for (i, x) in xs.iter().enumerate() {
                        // Alone (decode: one activation row, one weight row) the result is
                        // bit-identical to the tiled one: batch invariance.
                        let mut alone = f32::NAN;
                        dot_rows(&w, r..r + 1, &q, &[i as u32], &mut Vec::new(), |_, _, v| {
                            alone = v
                        });
                        let fast = tiled[r * n_x + i];
                        assert_eq!(fast.to_bits(), alone.to_bits(), "bits {bits} row {r} x {i}");
                        let want = dot_reference(&w, r, &q[i]);
                        assert!(
                            (fast - want).abs() <= 1e-4 * (1.0 + want.abs()),
                            "bits {bits} cols {cols}: {fast} vs {want}"
                        );
                        let mut exact = 0f32;
                        for (c, xv) in x.iter().enumerate() {
                            exact +=
                                crate::reference::weight_at(&crate::Matrix::Quant(w), r, c) * xv;
                        }
                        // int8 activations: error well under the row's magnitude (a bug is of its order).
                        let scale: f32 = x.iter().map(|v| v.abs()).sum::<f32>() * 0.1;
                        assert!(
                            (want - exact).abs() < 0.04 * scale,
                            "bits {bits}: {want} vs exact {exact}"
                        );
                    }
                }
                // Decode over a range of rows (blocks of 4 weight rows) matches too.
                let mut decode = vec![0f32; rows];
                dot_rows(&w, 0..rows, &q, &[3], &mut Vec::new(), |r, _, v| {
                    decode[r] = v
                });
                for r in 0..rows {
                    assert_eq!(decode[r].to_bits(), tiled[r * n_x + 3].to_bits());
                }
            }
        }
    }

    #[test]
    fn interleaved_layout_matches_row_major_and_the_reference() {
        if !crate::simd::has_vnni() {
            eprintln!("skipped: this CPU has no AVX-512 VNNI");
            return;
        }
        let mut rng = Rng::new(41);
        let (rows, n_x) = (48usize, 15usize); // tiles of 8, 4, 2 and 1
        for (cols, g) in [(128usize, 32usize), (256, 64), (384, 128), (2048, 64)] {
            let m = Random::new(&mut rng, rows, cols, 4, g);
            let il = m.interleaved(cols, 4, g);
            for (w, wi) in m
                .views(rows, cols, 4, g)
                .into_iter()
                .zip(il.views_in(rows, cols, 4, g, true))
            {
                assert!(supported(&wi));
                let (_, q) = random_rows(&mut rng, n_x, cols);
                // Dequantized rows are the same values in either layout.
                let (mut a, mut b) = (vec![0f32; cols], vec![0f32; cols]);
                for r in 0..rows {
                    crate::Matrix::Quant(w).row_into(r, &mut a);
                    crate::Matrix::Quant(wi).row_into(r, &mut b);
                    assert_eq!(a, b, "row {r}");
                }
                let all: Vec<u32> = (0..n_x as u32).collect();
                let mut tiled = vec![0f32; rows * n_x];
                dot_rows(&wi, 0..rows, &q, &all, &mut Vec::new(), |r, i, v| {
                    tiled[r * n_x + i] = v
                });
                for i in 0..n_x {
                    let mut alone = vec![f32::NAN; rows];
                    dot_rows(
                        &wi,
                        16..rows,
                        &q,
                        &[i as u32],
                        &mut Vec::new(),
                        |r, _, v| alone[r] = v,
                    );
                    dot_rows(&wi, 0..16, &q, &[i as u32], &mut Vec::new(), |r, _, v| {
                        alone[r] = v
                    });
                    for r in 0..rows {
                        let fast = tiled[r * n_x + i];
                        assert_eq!(fast.to_bits(), alone[r].to_bits(), "row {r} x {i}");
                        let want = dot_reference(&w, r, &q[i]);
                        assert_eq!(want, dot_reference(&wi, r, &q[i]));
                        assert!(
                            (fast - want).abs() <= 1e-4 * (1.0 + want.abs()),
                            "cols {cols} g {g} row {r}: {fast} vs {want}"
                        );
                    }
                }
            }
        }
    }
}
