//! Scalar reference implementations: the spec in code.
//!
//! Written for clarity, element by element, straight from the math in the reference notes.
//! Fast kernels keep the same signatures (minus the thread pool) and are tested against these.

use crate::matrix::Matrix;
use crate::quant::get_q;

/// Element `(r, c)` of a weight matrix, dequantized: `scale * q + bias`.
pub fn weight_at(w: &Matrix, r: usize, c: usize) -> f32 {
    match w {
        Matrix::Dense(m) => m.data.get(r * m.cols + c),
        Matrix::Quant(m) => {
            let g = r * m.groups_per_row() + c / m.group_size;
            m.scales.get(g) * get_q(m.packed_row(r), m.bits, c) as f32 + m.biases.get(g)
        }
    }
}

/// `y[m, rows] = x[m, cols] @ W.T`.
pub fn matmul(x: &[f32], m: usize, w: &Matrix, y: &mut [f32]) {
    let (rows, cols) = (w.rows(), w.cols());
    for t in 0..m {
        for r in 0..rows {
            let mut acc = 0f32;
            for c in 0..cols {
                acc += x[t * cols + c] * weight_at(w, r, c);
            }
            y[t * rows + r] = acc;
        }
    }
}

pub fn silu(a: f32) -> f32 {
    a / (1.0 + (-a).exp())
}

/// `h = silu(x @ G.T) * (x @ U.T)`.
pub fn swiglu(x: &[f32], m: usize, gate: &Matrix, up: &Matrix, h: &mut [f32]) {
    let rows = gate.rows();
    let mut g = vec![0f32; m * rows];
    let mut u = vec![0f32; m * rows];
    matmul(x, m, gate, &mut g);
    matmul(x, m, up, &mut u);
    for i in 0..m * rows {
        h[i] = silu(g[i]) * u[i];
    }
}

/// Gathered matmul: `out[out_rows[i]] = x[x_rows[i]] @ W_e.T` for each expert group `e`.
pub fn gather_matmul(x: &[f32], groups: &[crate::matmul::GatherGroup], out: &mut [f32]) {
    for grp in groups {
        let (rows, cols) = (grp.w.rows(), grp.w.cols());
        for (&xr, &or) in grp.x_rows.iter().zip(grp.out_rows) {
            let (xr, or) = (xr as usize, or as usize);
            matmul(
                &x[xr * cols..(xr + 1) * cols],
                1,
                &grp.w,
                &mut out[or * rows..(or + 1) * rows],
            );
        }
    }
}

/// Gathered SwiGLU: `h[out_rows[i]] = silu(x G_e.T) * (x U_e.T)` with `x = x[x_rows[i]]`.
pub fn gather_swiglu(x: &[f32], groups: &[crate::matmul::GatherPair], h: &mut [f32]) {
    for grp in groups {
        let (rows, cols) = (grp.gate.rows(), grp.gate.cols());
        for (&xr, &or) in grp.x_rows.iter().zip(grp.out_rows) {
            let (xr, or) = (xr as usize, or as usize);
            swiglu(
                &x[xr * cols..(xr + 1) * cols],
                1,
                &grp.gate,
                &grp.up,
                &mut h[or * rows..(or + 1) * rows],
            );
        }
    }
}

/// RMSNorm over rows of length `w.len()`: `y = w * x / sqrt(mean(x^2) + eps)`.
pub fn rms_norm(x: &[f32], w: &crate::FloatSlice, eps: f32, out: &mut [f32]) {
    let n = w.len();
    for (xr, or) in x.chunks_exact(n).zip(out.chunks_exact_mut(n)) {
        let ms = xr.iter().map(|v| v * v).sum::<f32>() / n as f32;
        let inv = 1.0 / (ms + eps).sqrt();
        for i in 0..n {
            or[i] = w.get(i) * (xr[i] * inv);
        }
    }
}

/// RoPE on one token's heads `x[n_heads, head_dim]` at position `pos`, rotating the first
/// `inv_freq.len() * 2` features. Non-traditional pairs `(i, i + rot/2)`; traditional pairs
/// `(2i, 2i + 1)`.
pub fn rope(x: &mut [f32], head_dim: usize, pos: usize, inv_freq: &[f32], traditional: bool) {
    let half = inv_freq.len();
    for head in x.chunks_exact_mut(head_dim) {
        for (i, &f) in inv_freq.iter().enumerate() {
            let theta = pos as f32 * f;
            let (s, c) = theta.sin_cos();
            let (ia, ib) = if traditional {
                (2 * i, 2 * i + 1)
            } else {
                (i, i + half)
            };
            let (a, b) = (head[ia], head[ib]);
            head[ia] = a * c - b * s;
            head[ib] = b * c + a * s;
        }
    }
}

/// Causal attention of `l` new queries against `t` cached keys (the last `l` of which are
/// the new tokens). Layouts: `q[l, nh, hd]`, `k/v[nkv, cap, hd]` (head-major cache with
/// capacity `cap`), `out[l, nh, hd]`. Query `i` sees keys `0..=t-l+i`.
#[allow(clippy::too_many_arguments)]
pub fn attention(
    q: &[f32],
    k: &[f32],
    v: &[f32],
    l: usize,
    t: usize,
    cap: usize,
    n_heads: usize,
    n_kv: usize,
    head_dim: usize,
    scale: f32,
    out: &mut [f32],
) {
    let group = n_heads / n_kv;
    for i in 0..l {
        let visible = t - l + i + 1;
        for h in 0..n_heads {
            let kvh = h / group;
            let qv = &q[(i * n_heads + h) * head_dim..][..head_dim];
            let scores: Vec<f32> = (0..visible)
                .map(|j| {
                    let kv = &k[(kvh * cap + j) * head_dim..][..head_dim];
                    scale * qv.iter().zip(kv).map(|(a, b)| a * b).sum::<f32>()
                })
                .collect();
            let max = scores.iter().copied().fold(f32::NEG_INFINITY, f32::max);
            let exps: Vec<f32> = scores.iter().map(|s| (s - max).exp()).collect();
            let z: f32 = exps.iter().sum();
            let o = &mut out[(i * n_heads + h) * head_dim..][..head_dim];
            o.fill(0.0);
            for (j, e) in exps.iter().enumerate() {
                let vv = &v[(kvh * cap + j) * head_dim..][..head_dim];
                for d in 0..head_dim {
                    o[d] += e / z * vv[d];
                }
            }
        }
    }
}
