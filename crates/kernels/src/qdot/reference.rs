//! The scalar int8 reference ([`dot_reference`], the spec of every int8 kernel) and the
//! per-row parameter widening the 8-bit kernels share with it.

use super::format::{group_index, QuantizedRow, BLOCK};
use crate::matrix::QuantMatrix;

/// Row `r`'s parameters widened to f32 once, shared by every activation row it meets:
/// the scale of every block (`s_g` repeated per block of the group) and the group biases
/// and scales (the 8-bit kernel and the reference; the 4-bit kernel widens in registers).
pub(super) struct RowParams<'a> {
    pub block_scales: &'a [f32],
    pub scales: &'a [f32],
    pub groups: usize,
    pub biases: &'a [f32],
    /// Index into the activation rows' per-group sums.
    pub k: usize,
    /// `2^(bits-1)`, the middle of the quantized range.
    pub mid: f32,
}

impl<'a> RowParams<'a> {
    /// Widens row `r`'s scales and biases into `scratch`.
    pub fn new(w: &QuantMatrix, r: usize, scratch: &'a mut Vec<f32>) -> Self {
        let (groups, blocks) = (w.groups_per_row(), w.cols / BLOCK);
        let bpg = w.group_size / BLOCK;
        // Groups of one block (32) use the group scales as block scales: no copy.
        let need = 2 * groups + if bpg == 1 { 0 } else { blocks };
        if scratch.len() < need {
            scratch.resize(need, 0.0);
        }
        let (scales, rest) = scratch.split_at_mut(groups);
        let (biases, rest) = rest.split_at_mut(groups);
        if w.interleaved {
            for (g, (s, b)) in scales.iter_mut().zip(biases.iter_mut()).enumerate() {
                let at = w.param_index(r, g);
                (*s, *b) = (w.scales.get(at), w.biases.get(at));
            }
        } else {
            w.scales.read_into(r * groups, scales);
            w.biases.read_into(r * groups, biases);
        }
        let (scales, block_scales): (&[f32], &[f32]) = if bpg == 1 {
            (scales, scales)
        } else {
            let block_scales = &mut rest[..blocks];
            for (blocks, &s) in block_scales.chunks_exact_mut(bpg).zip(scales.iter()) {
                blocks.fill(s);
            }
            (scales, block_scales)
        };
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
    pub fn exact_part(&self, x: &QuantizedRow) -> f32 {
        crate::simd::dot(self.biases, &x.group_sum[self.k])
            + self.mid * crate::simd::dot(&self.scales[..self.groups], &x.group_resid[self.k])
    }
}

/// Scalar reference: row `r` of `w` dotted with the quantized row:
/// `Σ_b s_g(b) d_b Σ_{i∈b} q_i qx_i + exact_part`.
pub fn dot_reference(w: &QuantMatrix, r: usize, x: &QuantizedRow) -> f32 {
    let row: Vec<u32> = (0..w.words_per_row()).map(|c| w.word(r, c)).collect();
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
