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
            let g = m.param_index(r, c / m.group_size);
            let q = if m.interleaved {
                get_q(&[m.word(r, c / 8)], 4, c % 8)
            } else {
                get_q(m.packed_row(r), m.bits, c)
            };
            m.scales.get(g) * q as f32 + m.biases.get(g)
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

/// Causal depthwise conv + SiLU with a rolling window (Gated DeltaNet). `state[(kernel-1), c]`
/// holds the previous inputs, `x[l, c]` the new ones, `w[kernel, c]` the weight (mlx's
/// `conv1d.weight [c, kernel, 1]` transposed). `out[t, ch] = silu(sum_j w[j, ch] *
/// in[t + j, ch])` over `in = concat(state, x)`; afterwards `state` = the last `kernel-1`
/// rows of `in`.
pub fn conv1d_causal_silu(
    state: &mut [f32],
    x: &[f32],
    c: usize,
    w: &[f32],
    kernel: usize,
    out: &mut [f32],
) {
    let l = x.len() / c;
    let keep = kernel - 1;
    let mut input = state.to_vec();
    input.extend_from_slice(x);
    for t in 0..l {
        for ch in 0..c {
            let mut acc = 0f32;
            for j in 0..kernel {
                acc += w[j * c + ch] * input[(t + j) * c + ch];
            }
            out[t * c + ch] = silu(acc);
        }
    }
    state.copy_from_slice(&input[l * c..][..keep * c]);
}

/// Rows of `dim` values: `x = scale * x / sqrt(sum(x^2) + eps)`.
pub fn l2norm(x: &mut [f32], dim: usize, eps: f32, scale: f32) {
    for row in x.chunks_exact_mut(dim) {
        let ss: f32 = row.iter().map(|v| v * v).sum();
        let d = (ss + eps).sqrt();
        for v in row.iter_mut() {
            *v = scale * *v / d;
        }
    }
}

/// Gated RMSNorm: per row of `w.len()` values, `y = silu(z) * (w * y / sqrt(mean(y^2) + eps))`.
pub fn gated_rms_norm(y: &mut [f32], z: &[f32], w: &crate::FloatSlice, eps: f32) {
    let mut normed = vec![0f32; y.len()];
    rms_norm(y, w, eps, &mut normed);
    for i in 0..y.len() {
        y[i] = silu(z[i]) * normed[i];
    }
}

/// The gated delta rule, token by token (layouts in [`crate::delta`]). For each token `t`
/// and value head `h` (key head `hk = h / (Hv/Hk)`), with the f32 state `S_h[Dv, Dk]`:
/// `S_h *= g[t,h]; kv = S_h k; delta = (v - kv) * beta[t,h]; S_h += outer(delta, k);
/// y[t,h] = S_h q`.
pub fn gated_delta(
    qkv: &[f32],
    g: &[f32],
    beta: &[f32],
    shape: crate::delta::DeltaShape,
    state: &mut [f32],
    y: &mut [f32],
) {
    let crate::delta::DeltaShape { hk, dk, hv, dv } = shape;
    let c = shape.channels();
    let kd = hk * dk;
    let l = qkv.len() / c;
    for t in 0..l {
        let row = &qkv[t * c..(t + 1) * c];
        for h in 0..hv {
            let hkk = h / (hv / hk);
            let q = &row[hkk * dk..(hkk + 1) * dk];
            let k = &row[kd + hkk * dk..kd + (hkk + 1) * dk];
            let v = &row[2 * kd + h * dv..2 * kd + (h + 1) * dv];
            let s = &mut state[h * dv * dk..(h + 1) * dv * dk];
            for x in s.iter_mut() {
                *x *= g[t * hv + h];
            }
            for i in 0..dv {
                let mut kv = 0f32;
                for j in 0..dk {
                    kv += s[i * dk + j] * k[j];
                }
                let delta = (v[i] - kv) * beta[t * hv + h];
                for j in 0..dk {
                    s[i * dk + j] += delta * k[j];
                }
            }
            for i in 0..dv {
                let mut acc = 0f32;
                for j in 0..dk {
                    acc += s[i * dk + j] * q[j];
                }
                y[(t * hv + h) * dv + i] = acc;
            }
        }
    }
}
