//! MLX affine quantization: bit packing and dequantization.
//!
//! Format (mlx 0.32, see the reference notes): a row of `cols` values is packed LSB-first into
//! a stream of little-endian `u32` words, `bits` bits per value. For 2/4/8 bits a value never
//! straddles a word; for 3/5/6 bits it may, and the stream simply continues into the next
//! word. Dequantization is `w = scale[j / group] * q[j] + bias[j / group]`.

/// Bit widths MLX affine quantization can store (1 is accepted by mlx but unused in practice).
pub const SUPPORTED_BITS: [u32; 7] = [1, 2, 3, 4, 5, 6, 8];

/// Group sizes mlx supports for affine quantization.
pub const SUPPORTED_GROUP_SIZES: [usize; 3] = [32, 64, 128];

/// Number of `u32` words holding one packed row of `cols` values.
pub fn packed_words(cols: usize, bits: u32) -> usize {
    cols * bits as usize / 32
}

/// Reads quantized value `j` of a packed row (the scalar reference unpacking).
#[inline]
pub fn get_q(row: &[u32], bits: u32, j: usize) -> u32 {
    let bit = j * bits as usize;
    let word = bit / 32;
    let off = (bit % 32) as u32;
    let mask = (1u32 << bits) - 1;
    let lo = row[word] >> off;
    if off + bits > 32 {
        (lo | (row[word + 1] << (32 - off))) & mask
    } else {
        lo & mask
    }
}

/// Unpacks `out.len()` values starting at value index `start` (which must be a multiple of 32
/// so that every bit width starts on a word boundary) into `out` as `f32`.
///
/// Fast paths for 4 and 8 bits work word by word; the others go value by value.
#[inline]
pub fn unpack_to_f32(row: &[u32], bits: u32, start: usize, out: &mut [f32]) {
    // Group starts are multiples of 16 (llama.cpp's K-quants use groups of 16): word-aligned
    // for 2, 4 and 8 bits; 3, 5 and 6 bits go value by value from the exact bit offset.
    debug_assert_eq!(start % 16, 0);
    let first_word = start * bits as usize / 32;
    match bits {
        4 => {
            for (chunk, &w) in out.chunks_exact_mut(8).zip(&row[first_word..]) {
                for (k, o) in chunk.iter_mut().enumerate() {
                    *o = ((w >> (4 * k)) & 0xF) as f32;
                }
            }
        }
        8 => {
            for (chunk, &w) in out.chunks_exact_mut(4).zip(&row[first_word..]) {
                for (k, o) in chunk.iter_mut().enumerate() {
                    *o = ((w >> (8 * k)) & 0xFF) as f32;
                }
            }
        }
        2 => {
            for (chunk, &w) in out.chunks_exact_mut(16).zip(&row[first_word..]) {
                for (k, o) in chunk.iter_mut().enumerate() {
                    *o = ((w >> (2 * k)) & 0x3) as f32;
                }
            }
        }
        _ => {
            for (j, o) in out.iter_mut().enumerate() {
                *o = get_q(row, bits, start + j) as f32;
            }
        }
    }
}

/// Packs quantized values (each `< 2^bits`) into MLX's layout. Used by tests and `synth`.
pub fn pack(values: &[u32], bits: u32) -> Vec<u32> {
    let total_bits = values.len() * bits as usize;
    let mut out = vec![0u32; total_bits.div_ceil(32)];
    for (j, &v) in values.iter().enumerate() {
        debug_assert!(v < (1u32 << bits) || bits == 32);
        let bit = j * bits as usize;
        let word = bit / 32;
        let off = (bit % 32) as u32;
        out[word] |= v << off;
        if off + bits > 32 {
            out[word + 1] |= v >> (32 - off);
        }
    }
    out
}

/// Affine quantization of one row exactly as `mx.quantize` does it (float32 arithmetic):
/// the bias is the group extreme of larger magnitude and the scale is nudged so that 0.0 is
/// exactly representable. Returns (packed words, scales, biases).
pub fn quantize_row(w: &[f32], bits: u32, group_size: usize) -> (Vec<u32>, Vec<f32>, Vec<f32>) {
    let nbins = ((1u32 << bits) - 1) as f32;
    let mut q = Vec::with_capacity(w.len());
    let mut scales = Vec::with_capacity(w.len() / group_size);
    let mut biases = Vec::with_capacity(w.len() / group_size);
    for g in w.chunks(group_size) {
        let wmax = g.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        let wmin = g.iter().copied().fold(f32::INFINITY, f32::min);
        let (scale, bias) = if bits == 1 {
            ((wmax - wmin).max(1e-7), wmin)
        } else {
            let mut scale = ((wmax - wmin) / nbins).max(1e-7);
            let edge = if wmin.abs() > wmax.abs() {
                wmin
            } else {
                scale = -scale;
                wmax
            };
            let q0 = (edge / scale).round_ties_even();
            if q0 != 0.0 {
                (edge / q0, edge)
            } else {
                (scale, 0.0)
            }
        };
        for &x in g {
            q.push(((x - bias) / scale).round_ties_even().clamp(0.0, nbins) as u32);
        }
        scales.push(scale);
        biases.push(bias);
    }
    (pack(&q, bits), scales, biases)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::Rng;

    #[test]
    fn pack_then_get_roundtrips_every_width() {
        let mut rng = Rng::new(7);
        for bits in SUPPORTED_BITS {
            let vals: Vec<u32> = (0..256)
                .map(|_| rng.next_u32() & ((1 << bits) - 1))
                .collect();
            let packed = pack(&vals, bits);
            assert_eq!(packed.len(), packed_words(256, bits));
            for (j, &v) in vals.iter().enumerate() {
                assert_eq!(get_q(&packed, bits, j), v, "bits {bits} value {j}");
            }
            let mut out = vec![0f32; 128];
            unpack_to_f32(&packed, bits, 64, &mut out);
            for (k, &o) in out.iter().enumerate() {
                assert_eq!(o, vals[64 + k] as f32, "bits {bits} unpack {k}");
            }
        }
    }

    #[test]
    fn four_bit_layout_is_lsb_first() {
        // Value 0 in bits 0-3, value 1 in bits 4-7 (reference notes, section 1.1).
        let packed = pack(&[1, 2, 3, 4, 5, 6, 7, 8], 4);
        assert_eq!(packed, vec![0x8765_4321]);
    }

    #[test]
    fn quantize_row_keeps_zero_exact_and_error_within_the_group_range() {
        let mut rng = Rng::new(3);
        for bits in [2u32, 3, 4, 5, 6, 8] {
            let w: Vec<f32> = (0..128).map(|_| rng.normal()).collect();
            let (packed, s, b) = quantize_row(&w, bits, 32);
            for (g, chunk) in w.chunks(32).enumerate() {
                // 0.0 is a grid point: -bias/scale is an integer.
                let z = -b[g] / s[g];
                assert!((z - z.round()).abs() < 1e-3, "bits {bits} group {g}: {z}");
                let range = chunk.iter().fold(0f32, |m, v| m.max(v.abs())) * 2.0;
                for (k, &x) in chunk.iter().enumerate() {
                    let deq = s[g] * get_q(&packed, bits, g * 32 + k) as f32 + b[g];
                    assert!((deq - x).abs() <= range / ((1 << bits) - 1) as f32 + 1e-5);
                }
            }
        }
    }
}
