//! Gated DeltaNet ops (Qwen3-Next / Qwen3.5 linear-attention layers): the causal depthwise
//! conv with its rolling window, L2 normalisation of q/k, the gated delta rule over an f32
//! recurrent state, and the gated RMSNorm of the output.
//!
//! Layouts (one sequence, `l` new tokens): `qkv[l, C]` with `C = 2*Hk*Dk + Hv*Dv` and each row
//! `[q (Hk x Dk) | k (Hk x Dk) | v (Hv x Dv)]`; state `[Hv, Dv, Dk]`; `y[l, Hv, Dv]`;
//! `g`, `beta` `[l, Hv]`. Value head `h` reads key head `h / (Hv / Hk)`.
//!
//! The scalar references are in [`crate::reference`] (`conv1d_causal_silu`, `l2norm`,
//! `gated_delta`, `gated_rms_norm`); the functions here have the same signatures (plus the
//! thread pool) and the tests below hold them to the references.

use crate::activation::silu;
use crate::matrix::FloatSlice;
use crate::pool::{SharedMut, ThreadPool};

/// Head counts and sizes of a Gated DeltaNet layer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DeltaShape {
    /// Key (and query) heads `Hk` and their size `Dk`.
    pub hk: usize,
    pub dk: usize,
    /// Value heads `Hv` (a multiple of `Hk`) and their size `Dv`.
    pub hv: usize,
    pub dv: usize,
}

impl DeltaShape {
    pub fn key_dim(&self) -> usize {
        self.hk * self.dk
    }
    pub fn value_dim(&self) -> usize {
        self.hv * self.dv
    }
    /// Channels of the mixed `qkv` row (and of the conv).
    pub fn channels(&self) -> usize {
        2 * self.key_dim() + self.value_dim()
    }
    /// Floats of the recurrent state `[Hv, Dv, Dk]`.
    pub fn state_len(&self) -> usize {
        self.hv * self.dv * self.dk
    }
}

/// Causal depthwise conv over `x[l, c]` preceded by the window `state[(kernel-1), c]` (the
/// previous inputs), then SiLU: `out[t, ch] = silu(sum_j w[j, ch] * in[t + j, ch])` with
/// `in = concat(state, x)` and the weight transposed to `w[kernel, c]` (`w[kernel-1]` meets
/// the current token). The window then holds the last `kernel-1` inputs.
/// Vectorised over channels; the sum runs in the reference's order, so results are identical.
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
    debug_assert_eq!(state.len(), keep * c);
    debug_assert_eq!(w.len(), kernel * c);
    let input = |r: usize| -> &[f32] {
        if r < keep {
            &state[r * c..(r + 1) * c]
        } else {
            &x[(r - keep) * c..(r - keep + 1) * c]
        }
    };
    for t in 0..l {
        let o = &mut out[t * c..(t + 1) * c];
        o.fill(0.0);
        for j in 0..kernel {
            let (wr, ir) = (&w[j * c..(j + 1) * c], input(t + j));
            for ((o, w), i) in o.iter_mut().zip(wr).zip(ir) {
                *o += w * i;
            }
        }
        o.iter_mut().for_each(|v| *v = silu(*v));
    }
    roll_window(state, x, c, keep);
}

/// The window after `x`: the last `keep` rows of `concat(state, x)`.
pub(crate) fn roll_window(state: &mut [f32], x: &[f32], c: usize, keep: usize) {
    let l = x.len() / c;
    if l >= keep {
        state.copy_from_slice(&x[(l - keep) * c..]);
    } else {
        state.copy_within(l * c.., 0);
        state[(keep - l) * c..].copy_from_slice(x);
    }
}

/// In place: every row of `dim` values becomes `scale * x / sqrt(sum(x^2) + eps)`.
pub fn l2norm(x: &mut [f32], dim: usize, eps: f32, scale: f32) {
    for row in x.chunks_exact_mut(dim) {
        let inv = scale / (crate::simd::dot(row, row) + eps).sqrt();
        row.iter_mut().for_each(|v| *v *= inv);
    }
}

/// `y = silu(z) * (w * rms_norm(y))` per row of `w.len()` values (the DeltaNet output norm).
pub fn gated_rms_norm(y: &mut [f32], z: &[f32], w: &FloatSlice, eps: f32) {
    crate::norm::rms_norm_inplace(y, w, eps);
    for (v, z) in y.iter_mut().zip(z) {
        *v *= silu(*z);
    }
}

/// Tokens per block of the prefill loop: the q/k rows of a block stay in cache while every
/// state row of a task runs over them.
const T_BLOCK: usize = 64;

/// The gated delta rule over `l` tokens (see [`crate::reference::gated_delta`]). Each state
/// row `S_h[i, :]` evolves independently (its update needs only `v[t, h, i]`), so the work is
/// split by rows across the pool, and a row runs over a block of tokens while it sits in L1:
/// prefill costs no more state traffic than one decode step per block, and gives exactly the
/// results of feeding the tokens one at a time.
#[allow(clippy::too_many_arguments)]
pub fn gated_delta(
    pool: &ThreadPool,
    qkv: &[f32],
    g: &[f32],
    beta: &[f32],
    shape: DeltaShape,
    state: &mut [f32],
    y: &mut [f32],
) {
    let DeltaShape { hk, dk, hv, dv } = shape;
    let c = shape.channels();
    let l = qkv.len() / c;
    let rows = hv * dv;
    let (kd, r) = (shape.key_dim(), hv / hk);
    let st = SharedMut::new(state);
    let yp = SharedMut::new(y);
    let row_step = select_row_step();
    pool.for_ranges(rows, 16, &|start, end| {
        // SAFETY: each task owns state rows start..end and the y entries of those rows.
        let s_all = unsafe { st.slice(start * dk, (end - start) * dk) };
        for t0 in (0..l).step_by(T_BLOCK) {
            for row in start..end {
                let (h, i) = (row / dv, row % dv);
                let hkk = h / r;
                let s = &mut s_all[(row - start) * dk..][..dk];
                for t in t0..(t0 + T_BLOCK).min(l) {
                    let base = &qkv[t * c..(t + 1) * c];
                    let q = &base[hkk * dk..][..dk];
                    let k = &base[kd + hkk * dk..][..dk];
                    let v = base[2 * kd + h * dv + i];
                    let out = row_step(s, q, k, g[t * hv + h], v, beta[t * hv + h]);
                    // SAFETY: (t, h, i) belongs to this task's rows.
                    unsafe { yp.write((t * hv + h) * dv + i, out) };
                }
            }
        }
    });
}

type RowStep = fn(&mut [f32], &[f32], &[f32], f32, f32, f32) -> f32;

fn select_row_step() -> RowStep {
    #[cfg(target_arch = "x86_64")]
    match crate::simd::isa() {
        // SAFETY (both): isa() only reports features the CPU has.
        crate::simd::Isa::Avx512 => {
            return |s, q, k, g, v, b| unsafe { row_avx512(s, q, k, g, v, b) }
        }
        crate::simd::Isa::Avx2 => return |s, q, k, g, v, b| unsafe { row_avx2(s, q, k, g, v, b) },
        crate::simd::Isa::Scalar | crate::simd::Isa::Neon => {}
    }
    row_step
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn row_avx512(s: &mut [f32], q: &[f32], k: &[f32], g: f32, v: f32, beta: f32) -> f32 {
    row_step(s, q, k, g, v, beta)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn row_avx2(s: &mut [f32], q: &[f32], k: &[f32], g: f32, v: f32, beta: f32) -> f32 {
    row_step(s, q, k, g, v, beta)
}

const LANES: usize = 16;

/// One token's update of one state row `s[Dk]`, returning `y = s_new . q`:
/// `s *= g; delta = (v - s.k) * beta; s += delta * k`. Lane-parallel accumulators (the
/// compiler keeps them in vector registers under the caller's target features).
#[inline(always)]
fn row_step(s: &mut [f32], q: &[f32], k: &[f32], g: f32, v: f32, beta: f32) -> f32 {
    let n = s.len();
    let main = n - n % LANES;
    let mut acc = [0f32; LANES];
    for (sc, kc) in s[..main]
        .chunks_exact_mut(LANES)
        .zip(k[..main].chunks_exact(LANES))
    {
        for j in 0..LANES {
            sc[j] *= g;
            acc[j] += sc[j] * kc[j];
        }
    }
    let mut kv = hsum(&acc);
    for j in main..n {
        s[j] *= g;
        kv += s[j] * k[j];
    }
    let delta = (v - kv) * beta;
    let mut acc = [0f32; LANES];
    for ((sc, kc), qc) in s[..main]
        .chunks_exact_mut(LANES)
        .zip(k[..main].chunks_exact(LANES))
        .zip(q[..main].chunks_exact(LANES))
    {
        for j in 0..LANES {
            sc[j] += delta * kc[j];
            acc[j] += sc[j] * qc[j];
        }
    }
    let mut out = hsum(&acc);
    for j in main..n {
        s[j] += delta * k[j];
        out += s[j] * q[j];
    }
    out
}

#[inline(always)]
fn hsum(a: &[f32; LANES]) -> f32 {
    let mut w = *a;
    let mut n = LANES;
    while n > 1 {
        n /= 2;
        for j in 0..n {
            w[j] += w[j + n];
        }
    }
    w[0]
}

/// `g = exp(-exp(A_log) * softplus(a + dt_bias))` and `beta = sigmoid(b)` per (token, value
/// head); `a_exp` holds `exp(A_log)` (f32). Softplus is mlx's `logaddexp(x, 0)`.
pub fn delta_gates(
    a: &[f32],
    b: &[f32],
    a_exp: &[f32],
    dt_bias: &[f32],
    g: &mut [f32],
    beta: &mut [f32],
) {
    let hv = a_exp.len();
    for (i, (gv, bv)) in g.iter_mut().zip(beta.iter_mut()).enumerate() {
        let h = i % hv;
        let x = a[i] + dt_bias[h];
        let softplus = x.max(0.0) + (-x.abs()).exp().ln_1p();
        *gv = (-a_exp[h] * softplus).exp();
        *bv = crate::activation::sigmoid(b[i]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::reference;
    use crate::rng::Rng;

    fn randn(rng: &mut Rng, n: usize) -> Vec<f32> {
        (0..n).map(|_| rng.normal()).collect()
    }

    fn close(a: &[f32], b: &[f32], tol: f32) {
        assert_eq!(a.len(), b.len());
        for (i, (x, y)) in a.iter().zip(b).enumerate() {
            assert!((x - y).abs() <= tol * (1.0 + y.abs()), "{i}: {x} vs {y}");
        }
    }

    #[test]
    fn conv_matches_reference_and_rolls_the_window() {
        let mut rng = Rng::new(11);
        for (c, kernel) in [(7usize, 4usize), (96, 4), (33, 2), (16, 3)] {
            let w = randn(&mut rng, kernel * c);
            let st0 = randn(&mut rng, (kernel - 1) * c);
            for l in [1usize, 2, 5] {
                let x = randn(&mut rng, l * c);
                let (mut s1, mut s2) = (st0.clone(), st0.clone());
                let (mut o1, mut o2) = (vec![0f32; l * c], vec![0f32; l * c]);
                conv1d_causal_silu(&mut s1, &x, c, &w, kernel, &mut o1);
                reference::conv1d_causal_silu(&mut s2, &x, c, &w, kernel, &mut o2);
                assert_eq!(o1, o2);
                assert_eq!(s1, s2);
                // Token by token gives the same outputs and window.
                let mut s3 = st0.clone();
                let mut o3 = vec![0f32; l * c];
                for t in 0..l {
                    conv1d_causal_silu(
                        &mut s3,
                        &x[t * c..(t + 1) * c],
                        c,
                        &w,
                        kernel,
                        &mut o3[t * c..(t + 1) * c],
                    );
                }
                assert_eq!(o3, o1);
                assert_eq!(s3, s1);
            }
        }
    }

    #[test]
    fn norms_match_reference() {
        let mut rng = Rng::new(12);
        for dim in [1usize, 8, 16, 129] {
            let x = randn(&mut rng, 3 * dim);
            let (mut a, mut b) = (x.clone(), x.clone());
            l2norm(&mut a, dim, 1e-6, 0.25);
            reference::l2norm(&mut b, dim, 1e-6, 0.25);
            close(&a, &b, 1e-6);
            let z = randn(&mut rng, 3 * dim);
            let w = randn(&mut rng, dim);
            let (mut a, mut b) = (x.clone(), x.clone());
            gated_rms_norm(&mut a, &z, &FloatSlice::F32(&w), 1e-6);
            reference::gated_rms_norm(&mut b, &z, &FloatSlice::F32(&w), 1e-6);
            close(&a, &b, 1e-5);
        }
    }

    #[test]
    fn delta_rule_matches_reference_prefill_and_decode() {
        let pool = ThreadPool::new(2);
        let mut rng = Rng::new(13);
        for shape in [
            DeltaShape {
                hk: 2,
                dk: 16,
                hv: 4,
                dv: 16,
            },
            DeltaShape {
                hk: 2,
                dk: 16,
                hv: 4,
                dv: 8,
            },
            DeltaShape {
                hk: 1,
                dk: 19,
                hv: 3,
                dv: 5,
            },
            DeltaShape {
                hk: 2,
                dk: 128,
                hv: 4,
                dv: 32,
            },
        ] {
            let c = shape.channels();
            for l in [1usize, 3, 70] {
                let mut qkv = randn(&mut rng, l * c);
                for t in 0..l {
                    let row = &mut qkv[t * c..(t + 1) * c];
                    reference::l2norm(&mut row[..2 * shape.key_dim()], shape.dk, 1e-6, 1.0);
                }
                let a = randn(&mut rng, l * shape.hv);
                let b = randn(&mut rng, l * shape.hv);
                let a_exp: Vec<f32> = (0..shape.hv).map(|i| 0.5 + i as f32).collect();
                let dt: Vec<f32> = vec![1.0; shape.hv];
                let (mut g, mut beta) = (vec![0f32; l * shape.hv], vec![0f32; l * shape.hv]);
                delta_gates(&a, &b, &a_exp, &dt, &mut g, &mut beta);
                let s0 = randn(&mut rng, shape.state_len());
                let (mut s1, mut s2) = (s0.clone(), s0.clone());
                let n = l * shape.value_dim();
                let (mut y1, mut y2) = (vec![0f32; n], vec![0f32; n]);
                gated_delta(&pool, &qkv, &g, &beta, shape, &mut s1, &mut y1);
                reference::gated_delta(&qkv, &g, &beta, shape, &mut s2, &mut y2);
                close(&y1, &y2, 1e-4);
                close(&s1, &s2, 1e-4);
                // One token at a time: bit-identical to the prefill.
                let mut s3 = s0.clone();
                let mut y3 = vec![0f32; n];
                let vd = shape.value_dim();
                for t in 0..l {
                    gated_delta(
                        &pool,
                        &qkv[t * c..(t + 1) * c],
                        &g[t * shape.hv..(t + 1) * shape.hv],
                        &beta[t * shape.hv..(t + 1) * shape.hv],
                        shape,
                        &mut s3,
                        &mut y3[t * vd..(t + 1) * vd],
                    );
                }
                assert_eq!(y3, y1);
                assert_eq!(s3, s1);
            }
        }
    }

    #[test]
    fn gates_follow_the_formula() {
        let (mut g, mut b) = ([0f32; 2], [0f32; 2]);
        delta_gates(
            &[0.0, 30.0],
            &[0.0, 2.0],
            &[2.0, 0.5],
            &[1.0, 1.0],
            &mut g,
            &mut b,
        );
        let sp = (1.0f32 + 1.0f32.exp()).ln();
        assert!((g[0] - (-2.0 * sp).exp()).abs() < 1e-6);
        assert!((g[1] - (-0.5f32 * 31.0).exp()).abs() < 1e-9);
        assert!((b[0] - 0.5).abs() < 1e-7 && (b[1] - 1.0 / (1.0 + (-2.0f32).exp())).abs() < 1e-7);
    }
}
