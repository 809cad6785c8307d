//! Dequantization of one block to f32, written as llama.cpp's `dequantize_row_*`
//! (`ggml/src/ggml-quants.c`) compute it: the reference the affine conversion is held to.

use crate::affine::{k4_scale_min, q3k_scales};
use crate::ggml_type::GgmlType;
use half::{bf16, f16};

fn half(b: &[u8], at: usize) -> f32 {
    f16::from_le_bytes([b[at], b[at + 1]]).to_f32()
}

/// The values of one block of `ty` (one element for float types).
pub fn dequantize_block(ty: GgmlType, b: &[u8]) -> Vec<f32> {
    let mut y = Vec::with_capacity(256);
    match ty {
        GgmlType::F32 => y.push(f32::from_le_bytes(b[..4].try_into().expect("4"))),
        GgmlType::F16 => y.push(half(b, 0)),
        GgmlType::Bf16 => y.push(bf16::from_le_bytes([b[0], b[1]]).to_f32()),
        GgmlType::Q4_0 => {
            let d = half(b, 0);
            let qs = &b[2..18];
            y.extend((0..16).map(|j| ((qs[j] & 0xF) as i32 - 8) as f32 * d));
            y.extend((0..16).map(|j| ((qs[j] >> 4) as i32 - 8) as f32 * d));
        }
        GgmlType::Q4_1 => {
            let (d, m) = (half(b, 0), half(b, 2));
            let qs = &b[4..20];
            y.extend((0..16).map(|j| (qs[j] & 0xF) as f32 * d + m));
            y.extend((0..16).map(|j| (qs[j] >> 4) as f32 * d + m));
        }
        GgmlType::Q5_0 | GgmlType::Q5_1 => {
            let d = half(b, 0);
            let off = if ty == GgmlType::Q5_0 { 2 } else { 4 };
            let qh = u32::from_le_bytes(b[off..off + 4].try_into().expect("4"));
            let qs = &b[off + 4..off + 20];
            let mut lo = [0f32; 16];
            let mut hi = [0f32; 16];
            for j in 0..16 {
                let xh0 = ((qh >> j) << 4) & 0x10;
                let xh1 = (qh >> (j + 12)) & 0x10;
                let x0 = (qs[j] as u32 & 0xF) | xh0;
                let x1 = (qs[j] as u32 >> 4) | xh1;
                if ty == GgmlType::Q5_0 {
                    lo[j] = (x0 as i32 - 16) as f32 * d;
                    hi[j] = (x1 as i32 - 16) as f32 * d;
                } else {
                    let m = half(b, 2);
                    lo[j] = x0 as f32 * d + m;
                    hi[j] = x1 as f32 * d + m;
                }
            }
            y.extend(lo);
            y.extend(hi);
        }
        GgmlType::Q8_0 => {
            let d = half(b, 0);
            y.extend((0..32).map(|j| b[2 + j] as i8 as f32 * d));
        }
        GgmlType::Q2K => {
            let (d, min) = (half(b, 80), half(b, 82));
            let mut is = 0;
            for n in 0..2 {
                let q = &b[16 + 32 * n..];
                for shift in [0, 2, 4, 6] {
                    for half_ in 0..2 {
                        let sc = b[is];
                        is += 1;
                        let (dl, ml) = (d * (sc & 0xF) as f32, min * (sc >> 4) as f32);
                        for l in 0..16 {
                            y.push(dl * ((q[l + 16 * half_] >> shift) & 3) as f32 - ml);
                        }
                    }
                }
            }
        }
        GgmlType::Q3K => {
            let d = half(b, 108);
            let scales = q3k_scales(b[96..108].try_into().expect("12"));
            let hm = &b[..32];
            let mut m = 1u8;
            let mut is = 0;
            for n in 0..2 {
                let q = &b[32 + 32 * n..];
                for shift in [0, 2, 4, 6] {
                    for half_ in 0..2 {
                        let dl = d * (scales[is] as i32 - 32) as f32;
                        is += 1;
                        for l in 0..16 {
                            let i = l + 16 * half_;
                            let low = ((q[i] >> shift) & 3) as i32;
                            let sub = if hm[i] & m != 0 { 0 } else { 4 };
                            y.push(dl * (low - sub) as f32);
                        }
                    }
                    m <<= 1;
                }
            }
        }
        GgmlType::Q4K | GgmlType::Q5K => {
            let (d, min) = (half(b, 0), half(b, 2));
            let scales: &[u8; 12] = b[4..16].try_into().expect("12");
            let five = ty == GgmlType::Q5K;
            let qh = &b[16..48];
            let ql = if five { &b[48..176] } else { &b[16..144] };
            let (mut u1, mut u2) = (1u8, 2u8);
            for j in 0..4 {
                let (sc, m) = k4_scale_min(scales, 2 * j);
                let (d1, m1) = (d * sc as f32, min * m as f32);
                let (sc, m) = k4_scale_min(scales, 2 * j + 1);
                let (d2, m2) = (d * sc as f32, min * m as f32);
                let q = &ql[32 * j..];
                for l in 0..32 {
                    let h = if five && qh[l] & u1 != 0 { 16 } else { 0 };
                    y.push(d1 * ((q[l] & 0xF) + h) as f32 - m1);
                }
                for l in 0..32 {
                    let h = if five && qh[l] & u2 != 0 { 16 } else { 0 };
                    y.push(d2 * ((q[l] >> 4) + h) as f32 - m2);
                }
                u1 <<= 2;
                u2 <<= 2;
            }
        }
        GgmlType::Q6K => {
            let d = half(b, 208);
            let mut out = [0f32; 256];
            for n in 0..2 {
                let (ql, qh) = (&b[64 * n..], &b[128 + 32 * n..]);
                let sc = &b[192 + 8 * n..];
                let y = &mut out[128 * n..];
                for l in 0..32 {
                    let is = l / 16;
                    let q1 = ((ql[l] & 0xF) | ((qh[l] & 3) << 4)) as i32 - 32;
                    let q2 = ((ql[l + 32] & 0xF) | (((qh[l] >> 2) & 3) << 4)) as i32 - 32;
                    let q3 = ((ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4)) as i32 - 32;
                    let q4 = ((ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4)) as i32 - 32;
                    let s = |k: usize| d * sc[is + k] as i8 as f32;
                    y[l] = s(0) * q1 as f32;
                    y[l + 32] = s(2) * q2 as f32;
                    y[l + 64] = s(4) * q3 as f32;
                    y[l + 96] = s(6) * q4 as f32;
                }
            }
            y.extend(out);
        }
        GgmlType::Unsupported(_) => panic!("{} cannot be dequantized", ty.name()),
    }
    y
}

/// Every value of `raw` (whole blocks of `ty`).
pub fn dequantize(ty: GgmlType, raw: &[u8]) -> Vec<f32> {
    let (_, bytes) = ty.block().expect("sized");
    raw.chunks_exact(bytes)
        .flat_map(|b| dequantize_block(ty, b))
        .collect()
}
