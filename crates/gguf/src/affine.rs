//! llama.cpp's block quant types as MLX affine rows.
//!
//! Every type moestream runs is, per sub-block, an affine map of unsigned codes: one scale
//! and one offset for 16 or 32 weights. So each maps exactly (up to how f32 rounds the
//! product) onto `w = scale * q + bias` with `bits` and `group` below, where `q` is the
//! type's unsigned code and the bias absorbs the type's zero point:
//!
//! | type | bits | group | scale | bias |
//! |---|---|---|---|---|
//! | Q4_0 | 4 | 32 | d | -8 d |
//! | Q4_1 | 4 | 32 | d | m |
//! | Q5_0 | 5 | 32 | d | -16 d |
//! | Q5_1 | 5 | 32 | d | m |
//! | Q8_0 | 8 | 32 | d | -128 d (codes stored as `q + 128`) |
//! | Q2_K | 2 | 16 | d sc | -dmin m |
//! | Q3_K | 3 | 16 | d (sc - 32) | -4 d (sc - 32) |
//! | Q4_K | 4 | 32 | d sc | -dmin m |
//! | Q5_K | 5 | 32 | d sc | -dmin m |
//! | Q6_K | 6 | 16 | d sc | -32 d sc |
//!
//! Block layouts: llama.cpp `ggml/src/ggml-common.h` (`block_q4_0` ...) and the
//! `dequantize_row_*` functions of `ggml/src/ggml-quants.c`, which [`crate::reference`]
//! restates and the tests hold this file to.

use crate::ggml_type::GgmlType;
use half::f16;

/// Rows of one tensor in MLX's affine format: `codes` packed `bits` per value, least
/// significant first, into u32 words (a row is `cols * bits / 32` words), and one f32 scale
/// and bias per `group` values.
#[derive(Clone, Debug, PartialEq)]
pub struct AffineRows {
    pub bits: u32,
    pub group: usize,
    pub codes: Vec<u32>,
    pub scales: Vec<f32>,
    pub biases: Vec<f32>,
}

impl AffineRows {
    /// Whether every scale and bias is exactly an f16 (then half the bytes carry them).
    pub fn params_fit_f16(&self) -> bool {
        fit_f16(&self.scales) && fit_f16(&self.biases)
    }
}

/// Whether every value is exactly an f16 (true for the legacy types' scales and biases, not
/// for the K-quants', whose `d * sc` needs up to 17 significant bits).
pub fn fit_f16(values: &[f32]) -> bool {
    values.iter().all(|&x| f16::from_f32(x).to_f32() == x)
}

/// (bits, group) of `ty`'s affine form; `None` for float and unsupported types.
pub fn affine_params(ty: GgmlType) -> Option<(u32, usize)> {
    Some(match ty {
        GgmlType::Q4_0 | GgmlType::Q4_1 | GgmlType::Q4K => (4, 32),
        GgmlType::Q5_0 | GgmlType::Q5_1 | GgmlType::Q5K => (5, 32),
        GgmlType::Q8_0 => (8, 32),
        GgmlType::Q2K => (2, 16),
        GgmlType::Q3K => (3, 16),
        GgmlType::Q6K => (6, 16),
        _ => return None,
    })
}

/// Converts `raw`, whole rows of `cols` elements of type `ty`, into affine rows.
///
/// Panics if `ty` has no affine form or `raw` is not whole rows (callers check both: the
/// header validated the tensor's extent).
pub fn to_affine(ty: GgmlType, raw: &[u8], cols: usize) -> AffineRows {
    let (bits, group) = affine_params(ty).expect("a block quant type");
    let (words, groups) = affine_len(ty, raw.len(), bits);
    let mut out = AffineRows {
        bits,
        group,
        codes: vec![0; words],
        scales: vec![0.0; groups],
        biases: vec![0.0; groups],
    };
    to_affine_into(
        ty,
        raw,
        cols,
        bits,
        &mut out.codes,
        &mut out.scales,
        &mut out.biases,
    );
    out
}

/// (code words, groups) of the affine form of `raw_len` bytes of `ty` with codes packed
/// `bits` wide.
pub fn affine_len(ty: GgmlType, raw_len: usize, bits: u32) -> (usize, usize) {
    let (_, group) = affine_params(ty).expect("a block quant type");
    let (block_elems, block_bytes) = ty.block().expect("sized");
    let n = raw_len / block_bytes * block_elems;
    (n * bits as usize / 32, n / group)
}

/// [`to_affine`] into memory the caller owns (sized by [`affine_len`]), so a loader can
/// write the codes straight into their final buffer, packed `bits` wide: the type's own
/// width, or a wider one (8: the same values where a kernel runs 8-bit codes and not the
/// type's width), then with the codes shifted to the middle of the wider range and each bias
/// lowered by the shift times the scale (the same values up to f32 rounding).
pub fn to_affine_into(
    ty: GgmlType,
    raw: &[u8],
    cols: usize,
    bits: u32,
    codes_out: &mut [u32],
    scales: &mut [f32],
    biases: &mut [f32],
) {
    let (native, group) = affine_params(ty).expect("a block quant type");
    assert!(
        bits >= native && matches!(bits, 2..=6 | 8),
        "{bits}-bit codes"
    );
    let (block_elems, block_bytes) = ty.block().expect("sized");
    assert!(cols.is_multiple_of(block_elems) && (cols * bits as usize).is_multiple_of(32));
    let row_bytes = cols / block_elems * block_bytes;
    assert!(raw.len().is_multiple_of(row_bytes), "whole rows");
    let (words, groups) = affine_len(ty, raw.len(), bits);
    assert!(codes_out.len() == words && scales.len() == groups && biases.len() == groups);
    let words_per_row = cols * bits as usize / 32;
    let groups_per_block = block_elems / group;
    let mut codes = vec![0u8; cols];
    // Widened codes are re-centred on the wider range's middle (the bias absorbs the shift):
    // the int8 kernels keep a group's constant part exact only around that middle, so 4-bit
    // codes left at 0..15 inside 8 bits would lose precision to activation rounding.
    let shift = if bits > native {
        (1u8 << (bits - 1)) - (1u8 << (native - 1))
    } else {
        0
    };
    for (r, row) in raw.chunks_exact(row_bytes).enumerate() {
        let gbase = r * cols / group;
        for (b, block) in row.chunks_exact(block_bytes).enumerate() {
            let g = gbase + b * groups_per_block;
            decode_block(
                ty,
                block,
                &mut codes[b * block_elems..(b + 1) * block_elems],
                &mut scales[g..g + groups_per_block],
                &mut biases[g..g + groups_per_block],
            );
        }
        if shift > 0 {
            for c in codes.iter_mut() {
                *c += shift;
            }
            let row_groups = gbase..gbase + cols / group;
            for (b, &s) in biases[row_groups.clone()]
                .iter_mut()
                .zip(&scales[row_groups])
            {
                *b -= shift as f32 * s;
            }
        }
        pack(
            &codes,
            bits,
            &mut codes_out[r * words_per_row..(r + 1) * words_per_row],
        );
    }
}

fn half(b: &[u8], at: usize) -> f32 {
    f16::from_le_bytes([b[at], b[at + 1]]).to_f32()
}

/// One block: its unsigned codes, and the scale and bias of each of its groups.
fn decode_block(ty: GgmlType, b: &[u8], q: &mut [u8], s: &mut [f32], m: &mut [f32]) {
    match ty {
        GgmlType::Q4_0 | GgmlType::Q4_1 => {
            let d = half(b, 0);
            let (bias, qs) = if ty == GgmlType::Q4_0 {
                (-8.0 * d, &b[2..18])
            } else {
                (half(b, 2), &b[4..20])
            };
            for j in 0..16 {
                q[j] = qs[j] & 0xF;
                q[j + 16] = qs[j] >> 4;
            }
            (s[0], m[0]) = (d, bias);
        }
        GgmlType::Q5_0 | GgmlType::Q5_1 => {
            let d = half(b, 0);
            let (bias, rest) = if ty == GgmlType::Q5_0 {
                (-16.0 * d, &b[2..])
            } else {
                (half(b, 2), &b[4..])
            };
            let qh = u32::from_le_bytes(rest[..4].try_into().expect("4 bytes"));
            let qs = &rest[4..20];
            for j in 0..16 {
                q[j] = (qs[j] & 0xF) | (((qh >> j) & 1) << 4) as u8;
                q[j + 16] = (qs[j] >> 4) | (((qh >> (j + 16)) & 1) << 4) as u8;
            }
            (s[0], m[0]) = (d, bias);
        }
        GgmlType::Q8_0 => {
            let d = half(b, 0);
            for j in 0..32 {
                q[j] = (b[2 + j] as i8 as i16 + 128) as u8;
            }
            (s[0], m[0]) = (d, -128.0 * d);
        }
        GgmlType::Q2K => {
            let (scales, qs) = (&b[..16], &b[16..80]);
            let (d, dmin) = (half(b, 80), half(b, 82));
            // Two halves of 128; in each, four 2-bit planes of 32 bytes (shift 0, 2, 4, 6),
            // each plane two sub-blocks of 16.
            for n in 0..2 {
                for plane in 0..4 {
                    for h in 0..2 {
                        let sub = n * 8 + plane * 2 + h;
                        let sc = scales[sub];
                        s[sub] = d * (sc & 0xF) as f32;
                        m[sub] = -(dmin * (sc >> 4) as f32);
                        for l in 0..16 {
                            q[sub * 16 + l] = (qs[n * 32 + h * 16 + l] >> (2 * plane)) & 3;
                        }
                    }
                }
            }
        }
        GgmlType::Q3K => {
            let (hmask, qs) = (&b[..32], &b[32..96]);
            let sc = q3k_scales(b[96..108].try_into().expect("12 bytes"));
            let d = half(b, 108);
            for n in 0..2 {
                for plane in 0..4 {
                    let hbit = n * 4 + plane;
                    for h in 0..2 {
                        let sub = n * 8 + plane * 2 + h;
                        let dl = d * (sc[sub] as i32 - 32) as f32;
                        s[sub] = dl;
                        m[sub] = -4.0 * dl;
                        for l in 0..16 {
                            let i = h * 16 + l;
                            let low = (qs[n * 32 + i] >> (2 * plane)) & 3;
                            let high = (hmask[i] >> hbit) & 1;
                            q[sub * 16 + l] = low | (high << 2);
                        }
                    }
                }
            }
        }
        GgmlType::Q4K | GgmlType::Q5K => {
            let (d, dmin) = (half(b, 0), half(b, 2));
            let scales: &[u8; 12] = b[4..16].try_into().expect("12 bytes");
            let (qh, qs) = if ty == GgmlType::Q5K {
                (Some(&b[16..48]), &b[48..176])
            } else {
                (None, &b[16..144])
            };
            // Four chunks of 64: the low nibbles of 32 bytes, then their high nibbles.
            for chunk in 0..4 {
                for h in 0..2 {
                    let sub = chunk * 2 + h;
                    let (sc, mn) = k4_scale_min(scales, sub);
                    s[sub] = d * sc as f32;
                    m[sub] = -(dmin * mn as f32);
                    for l in 0..32 {
                        let byte = qs[chunk * 32 + l];
                        let mut v = if h == 0 { byte & 0xF } else { byte >> 4 };
                        if let Some(qh) = qh {
                            v |= ((qh[l] >> sub) & 1) << 4;
                        }
                        q[sub * 32 + l] = v;
                    }
                }
            }
        }
        GgmlType::Q6K => {
            let (ql, qh, scales) = (&b[..128], &b[128..192], &b[192..208]);
            let d = half(b, 208);
            for n in 0..2 {
                for l in 0..32 {
                    let (lo0, lo1, hi) = (ql[n * 64 + l], ql[n * 64 + l + 32], qh[n * 32 + l]);
                    let e = n * 128 + l;
                    q[e] = (lo0 & 0xF) | ((hi & 3) << 4);
                    q[e + 32] = (lo1 & 0xF) | (((hi >> 2) & 3) << 4);
                    q[e + 64] = (lo0 >> 4) | (((hi >> 4) & 3) << 4);
                    q[e + 96] = (lo1 >> 4) | (((hi >> 6) & 3) << 4);
                }
            }
            for sub in 0..16 {
                let dl = d * scales[sub] as i8 as f32;
                s[sub] = dl;
                m[sub] = -32.0 * dl;
            }
        }
        other => unreachable!("{} has no affine form", other.name()),
    }
}

/// Q3_K's sixteen 6-bit scales (stored `+ 32`) from their 12 packed bytes: the low 4 bits
/// of scale `i` are the low nibble of byte `i` for `i < 8` and the high nibble of byte
/// `i - 8` after; the high 2 bits are bits `2 (i / 4)` and up of byte `8 + i % 4`
/// (`ggml-quants.c`, `dequantize_row_q3_K`'s kmask shuffle).
pub(crate) fn q3k_scales(p: &[u8; 12]) -> [u8; 16] {
    let mut out = [0u8; 16];
    for (i, o) in out.iter_mut().enumerate() {
        let low = if i < 8 { p[i] & 0xF } else { p[i - 8] >> 4 };
        let high = (p[8 + i % 4] >> (2 * (i / 4))) & 3;
        *o = low | (high << 4);
    }
    out
}

/// Q4_K/Q5_K's 6-bit scale and min of sub-block `j` (`get_scale_min_k4`).
pub(crate) fn k4_scale_min(q: &[u8; 12], j: usize) -> (u8, u8) {
    if j < 4 {
        (q[j] & 63, q[j + 4] & 63)
    } else {
        (
            (q[j + 4] & 0xF) | ((q[j - 4] >> 6) << 4),
            (q[j + 4] >> 4) | ((q[j] >> 6) << 4),
        )
    }
}

/// Packs `codes` (each `< 2^bits`) into `out` the way MLX does: a little-endian bit stream,
/// least significant first, values crossing word boundaries for 3, 5 and 6 bits.
fn pack(codes: &[u8], bits: u32, out: &mut [u32]) {
    match bits {
        4 => {
            for (w, c) in out.iter_mut().zip(codes.chunks_exact(8)) {
                *w = c
                    .iter()
                    .enumerate()
                    .fold(0, |acc, (i, &v)| acc | (v as u32) << (4 * i));
            }
        }
        8 => {
            for (w, c) in out.iter_mut().zip(codes.chunks_exact(4)) {
                *w = u32::from_le_bytes(c.try_into().expect("4 bytes"));
            }
        }
        _ => {
            let (mut acc, mut nacc, mut k) = (0u64, 0u32, 0);
            for &v in codes {
                acc |= (v as u64) << nacc;
                nacc += bits;
                if nacc >= 32 {
                    out[k] = acc as u32;
                    k += 1;
                    acc >>= 32;
                    nacc -= 32;
                }
            }
            debug_assert_eq!(nacc, 0);
        }
    }
}
