//! RMSNorm, plain and with the residual add fused in.

use crate::matrix::FloatSlice;

/// RMSNorm of each row of `x` (row length `w.len()`) into `out`.
pub fn rms_norm(x: &[f32], w: &FloatSlice, eps: f32, out: &mut [f32]) {
    let n = w.len();
    for (xr, or) in x.chunks_exact(n).zip(out.chunks_exact_mut(n)) {
        norm_row(xr, w, eps, or);
    }
}

/// In-place RMSNorm of each row (per-head q/k norms).
pub fn rms_norm_inplace(x: &mut [f32], w: &FloatSlice, eps: f32) {
    let n = w.len();
    for row in x.chunks_exact_mut(n) {
        let inv = inv_rms(row, eps);
        match w {
            FloatSlice::F32(ws) => row
                .iter_mut()
                .zip(*ws)
                .for_each(|(v, w)| *v = w * (*v * inv)),
            _ => row
                .iter_mut()
                .enumerate()
                .for_each(|(i, v)| *v = w.get(i) * (*v * inv)),
        }
    }
}

/// `residual += delta; out = rms_norm(residual)`: the pre-norm decoder's two steps in one
/// pass over the row.
pub fn add_rms_norm(
    residual: &mut [f32],
    delta: &[f32],
    w: &FloatSlice,
    eps: f32,
    out: &mut [f32],
) {
    let n = w.len();
    for ((rr, dr), or) in residual
        .chunks_exact_mut(n)
        .zip(delta.chunks_exact(n))
        .zip(out.chunks_exact_mut(n))
    {
        rr.iter_mut().zip(dr).for_each(|(r, d)| *r += d);
        norm_row(rr, w, eps, or);
    }
}

#[inline]
fn inv_rms(x: &[f32], eps: f32) -> f32 {
    let ss = crate::simd::dot(x, x);
    1.0 / (ss / x.len() as f32 + eps).sqrt()
}

#[inline]
fn norm_row(x: &[f32], w: &FloatSlice, eps: f32, out: &mut [f32]) {
    let inv = inv_rms(x, eps);
    match w {
        FloatSlice::F32(ws) => {
            for ((o, v), w) in out.iter_mut().zip(x).zip(*ws) {
                *o = w * (v * inv);
            }
        }
        _ => {
            for (i, (o, v)) in out.iter_mut().zip(x).enumerate() {
                *o = w.get(i) * (v * inv);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::Rng;

    #[test]
    fn fused_and_plain_norm_match_reference() {
        let mut rng = Rng::new(5);
        for n in [1usize, 7, 64, 129] {
            let x: Vec<f32> = (0..3 * n).map(|_| rng.normal()).collect();
            let d: Vec<f32> = (0..3 * n).map(|_| rng.normal()).collect();
            let w: Vec<f32> = (0..n).map(|_| rng.normal()).collect();
            let wb: Vec<half::bf16> = w.iter().map(|&v| half::bf16::from_f32(v)).collect();
            for ws in [FloatSlice::F32(&w), FloatSlice::Bf16(&wb)] {
                let mut want = vec![0f32; 3 * n];
                let sum: Vec<f32> = x.iter().zip(&d).map(|(a, b)| a + b).collect();
                crate::reference::rms_norm(&sum, &ws, 1e-6, &mut want);
                let mut res = x.clone();
                let mut got = vec![0f32; 3 * n];
                add_rms_norm(&mut res, &d, &ws, 1e-6, &mut got);
                assert_eq!(res, sum);
                let mut inplace = sum.clone();
                rms_norm_inplace(&mut inplace, &ws, 1e-6);
                for ((a, b), c) in got.iter().zip(&want).zip(&inplace) {
                    assert!((a - b).abs() < 1e-5 && (c - b).abs() < 1e-5);
                }
            }
        }
    }
}
