//! Multi-head latent attention (DeepSeek-V3 / GLM-4.7-Flash MLA) over the compressed cache:
//! per token one normalised latent row `[R]` and one rotary key `[dr]`, shared by all heads.
//!
//! Per head `h`, with `Wq_h = embed_q[h]` (`[R, dn]`) and `Wo_h = unembed_out[h]` (`[dv, R]`),
//! the attention mlx-lm defines is
//! `softmax(scale * (q_nope . (Wq_h^T c_j) + q_pe . kpe_j)) . (Wo_h c_j)` over latents `c_j`.
//! Here it always runs in the *absorbed* form (mlx-lm's decode path), for prefill too:
//! 1. [`per_head_matmul`] with `embed_q`: `q' = q_nope @ Wq_h^T` (`[R]`), so scores are dots
//!    with the cached latents directly, no per-head keys are ever built;
//! 2. [`mla_attention`]: `o = softmax(scale * (q' . c_j + q_pe . kpe_j)) . c_j` (`[R]`);
//! 3. [`per_head_matmul`] with `unembed_out`: `out = o @ Wo_h^T` (`[dv]`).
//!
//! [`mla_reference`] computes the same thing in the *expanded* form (mlx-lm's prefill path:
//! per-head keys `Wq_h^T c_j` and values `Wo_h c_j`, then plain attention), so the test
//! holding the two together also checks the absorption algebra.

use crate::matmul::{gather_matmul, GatherGroup};
use crate::matrix::Matrix;
use crate::pool::{SharedMut, ThreadPool};
use crate::reference::weight_at;
use crate::Precision;
use std::cell::RefCell;

/// Shapes of one MLA call over one sequence's cache.
#[derive(Clone, Copy, Debug)]
pub struct MlaShape {
    /// New queries in this call.
    pub l: usize,
    /// Latents visible to the last query (cached + new).
    pub t: usize,
    /// Capacity (stride in tokens) of the cache.
    pub cap: usize,
    pub n_heads: usize,
    /// Latent width `R` (`kv_lora_rank`).
    pub rank: usize,
    /// Rotary key width `dr` (`qk_rope_head_dim`).
    pub rope_dim: usize,
    /// Softmax scale, applied to both the latent and the rotary part of the score.
    pub scale: f32,
}

/// One projection per head: `out[i * nh + h] = x[i * nh + h] @ heads[h]^T` for the `l` rows
/// `i` of `x[l, nh, in]`, giving `out[l, nh, out]`. All heads run in one dispatch; `rows` is
/// scratch for the row indices (kept by the caller so decode does not allocate it).
pub fn per_head_matmul(
    pool: &ThreadPool,
    p: Precision,
    x: &[f32],
    l: usize,
    heads: &[Matrix],
    rows: &mut Vec<u32>,
    out: &mut [f32],
) {
    let nh = heads.len();
    rows.clear();
    rows.extend((0..nh).flat_map(|h| (0..l).map(move |i| (i * nh + h) as u32)));
    let groups: Vec<GatherGroup> = heads
        .iter()
        .enumerate()
        .map(|(h, w)| GatherGroup {
            w: *w,
            x_rows: &rows[h * l..(h + 1) * l],
            out_rows: &rows[h * l..(h + 1) * l],
        })
        .collect();
    gather_matmul(pool, p, x, &groups, out);
}

thread_local! {
    static SCORES: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
}

/// Causal attention of absorbed queries `q_lat[l, nh, R]` (plus their rotary parts
/// `q_pe[l, nh, dr]`) over the latent cache `latent[cap, R]`, `k_pe[cap, dr]`; writes the
/// attended latents `out[l, nh, R]`. Query `i` sees positions `0..=t-l+i`. Parallel over
/// (query, head) pairs; softmax in f32.
pub fn mla_attention(
    pool: &ThreadPool,
    q_lat: &[f32],
    q_pe: &[f32],
    latent: &[f32],
    k_pe: &[f32],
    s: MlaShape,
    out: &mut [f32],
) {
    let MlaShape {
        l,
        t,
        n_heads,
        rank,
        rope_dim,
        scale,
        ..
    } = s;
    let out_ptr = SharedMut::new(out);
    pool.run(l * n_heads, &|task| {
        let (i, row) = (task / n_heads, task);
        let visible = t - l + i + 1;
        let q = &q_lat[row * rank..][..rank];
        let qp = &q_pe[row * rope_dim..][..rope_dim];
        // SAFETY: each task owns the output row of its (query, head) pair.
        let o = unsafe { out_ptr.slice(row * rank, rank) };
        SCORES.with(|cell| {
            let mut scores = cell.borrow_mut();
            scores.clear();
            scores.extend((0..visible).map(|j| {
                let c = &latent[j * rank..][..rank];
                let kp = &k_pe[j * rope_dim..][..rope_dim];
                scale * (crate::simd::dot(q, c) + crate::simd::dot(qp, kp))
            }));
            crate::activation::softmax(&mut scores);
            o.fill(0.0);
            for (j, &p) in scores.iter().enumerate() {
                crate::simd::axpy(p, &latent[j * rank..][..rank], o);
            }
        });
    });
}

/// The whole MLA attention in the expanded form, element by element: `q_nope[l, nh, dn]`,
/// `q_pe[l, nh, dr]`, the cache as in [`mla_attention`], `embed_q[h]` `[R, dn]`,
/// `unembed_out[h]` `[dv, R]`; writes `out[l, nh, dv]`.
#[allow(clippy::too_many_arguments)]
pub fn mla_reference(
    q_nope: &[f32],
    q_pe: &[f32],
    latent: &[f32],
    k_pe: &[f32],
    embed_q: &[Matrix],
    unembed_out: &[Matrix],
    s: MlaShape,
    out: &mut [f32],
) {
    let (nh, r, dr) = (s.n_heads, s.rank, s.rope_dim);
    for h in 0..nh {
        let (wq, wo) = (&embed_q[h], &unembed_out[h]);
        let (dn, dv) = (wq.cols(), wo.rows());
        // Per-head keys k_j = Wq^T c_j and values v_j = Wo c_j.
        let key = |j: usize, d: usize| (0..r).map(move |x| weight_at(wq, x, d) * latent[j * r + x]);
        let val = |j: usize, e: usize| (0..r).map(move |x| weight_at(wo, e, x) * latent[j * r + x]);
        for i in 0..s.l {
            let row = i * nh + h;
            let visible = s.t - s.l + i + 1;
            let scores: Vec<f32> = (0..visible)
                .map(|j| {
                    let nope: f32 = (0..dn)
                        .map(|d| q_nope[row * dn + d] * key(j, d).sum::<f32>())
                        .sum();
                    let pe: f32 = (0..dr).map(|d| q_pe[row * dr + d] * k_pe[j * dr + d]).sum();
                    s.scale * (nope + pe)
                })
                .collect();
            let max = scores.iter().copied().fold(f32::NEG_INFINITY, f32::max);
            let exps: Vec<f32> = scores.iter().map(|x| (x - max).exp()).collect();
            let z: f32 = exps.iter().sum();
            for e in 0..dv {
                out[row * dv + e] = (0..visible)
                    .map(|j| exps[j] / z * val(j, e).sum::<f32>())
                    .sum();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::matrix::{DenseMatrix, FloatSlice};
    use crate::rng::Rng;

    fn dense(data: &[f32], rows: usize, cols: usize) -> Matrix<'_> {
        Matrix::Dense(DenseMatrix {
            data: FloatSlice::F32(data),
            rows,
            cols,
        })
    }

    /// The absorbed pipeline (project, attend, unproject) equals the expanded reference,
    /// for decode (l = 1) and prefill over a partly filled cache.
    #[test]
    fn absorbed_mla_matches_expanded_reference() {
        let pool = ThreadPool::new(2);
        let mut rng = Rng::new(77);
        for (l, t, nh, r, dn, dr, dv) in [
            (1usize, 1usize, 2usize, 16usize, 8usize, 4usize, 12usize),
            (1, 29, 4, 32, 16, 8, 16),
            (6, 6, 3, 16, 8, 4, 8),
            (5, 21, 4, 24, 12, 8, 20),
        ] {
            let cap = t + 5;
            let mut randn = |n: usize| (0..n).map(|_| rng.normal()).collect::<Vec<f32>>();
            let (q_nope, q_pe) = (randn(l * nh * dn), randn(l * nh * dr));
            let (latent, k_pe) = (randn(cap * r), randn(cap * dr));
            let wq: Vec<Vec<f32>> = (0..nh).map(|_| randn(r * dn)).collect();
            let wo: Vec<Vec<f32>> = (0..nh).map(|_| randn(dv * r)).collect();
            let embed_q: Vec<Matrix> = wq.iter().map(|w| dense(w, r, dn)).collect();
            let unembed: Vec<Matrix> = wo.iter().map(|w| dense(w, dv, r)).collect();
            let s = MlaShape {
                l,
                t,
                cap,
                n_heads: nh,
                rank: r,
                rope_dim: dr,
                scale: 0.15,
            };
            let mut rows = Vec::new();
            let mut q_lat = vec![0f32; l * nh * r];
            let p = Precision::Exact;
            per_head_matmul(&pool, p, &q_nope, l, &embed_q, &mut rows, &mut q_lat);
            let mut o_lat = vec![0f32; l * nh * r];
            mla_attention(&pool, &q_lat, &q_pe, &latent, &k_pe, s, &mut o_lat);
            let mut fast = vec![0f32; l * nh * dv];
            per_head_matmul(&pool, p, &o_lat, l, &unembed, &mut rows, &mut fast);
            let mut want = vec![0f32; l * nh * dv];
            mla_reference(
                &q_nope, &q_pe, &latent, &k_pe, &embed_q, &unembed, s, &mut want,
            );
            for (a, b) in fast.iter().zip(&want) {
                assert!(
                    (a - b).abs() <= 1e-3 * (1.0 + b.abs()),
                    "l {l} t {t}: {a} vs {b}"
                );
            }
        }
    }
}
