//! Scaled dot-product attention over a head-major KV cache, for decode and prefill.

use crate::pool::{SharedMut, ThreadPool};
use std::cell::RefCell;

/// Shapes of one attention call (see [`crate::reference::attention`] for the layouts).
#[derive(Clone, Copy, Debug)]
pub struct AttnShape {
    /// New queries in this call.
    pub l: usize,
    /// Keys visible to the last query (cached + new).
    pub t: usize,
    /// Capacity (stride in tokens) of the cache rows.
    pub cap: usize,
    pub n_heads: usize,
    pub n_kv: usize,
    pub head_dim: usize,
    pub scale: f32,
}

thread_local! {
    static SCORES: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
}

/// Causal GQA attention, parallel over (query, head) pairs. Softmax in f32.
pub fn attention(
    pool: &ThreadPool,
    q: &[f32],
    k: &[f32],
    v: &[f32],
    s: AttnShape,
    out: &mut [f32],
) {
    let AttnShape {
        l,
        t,
        cap,
        n_heads,
        n_kv,
        head_dim,
        scale,
    } = s;
    let group = n_heads / n_kv;
    let out_ptr = SharedMut::new(out);
    pool.run(l * n_heads, &|task| {
        let (i, h) = (task / n_heads, task % n_heads);
        let kvh = h / group;
        let visible = t - l + i + 1;
        let qv = &q[(i * n_heads + h) * head_dim..][..head_dim];
        // SAFETY: each task owns the output row of its (query, head) pair.
        let o = unsafe { out_ptr.slice((i * n_heads + h) * head_dim, head_dim) };
        SCORES.with(|cell| {
            let mut scores = cell.borrow_mut();
            scores.clear();
            scores.resize(visible, 0.0);
            let kbase = &k[kvh * cap * head_dim..];
            for (j, sc) in scores.iter_mut().enumerate() {
                *sc = scale * crate::simd::dot(qv, &kbase[j * head_dim..][..head_dim]);
            }
            crate::activation::softmax(&mut scores);
            o.fill(0.0);
            let vbase = &v[kvh * cap * head_dim..];
            for (j, &p) in scores.iter().enumerate() {
                crate::simd::axpy(p, &vbase[j * head_dim..][..head_dim], o);
            }
        });
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::Rng;

    #[test]
    fn attention_matches_reference_decode_and_prefill() {
        let pool = ThreadPool::new(2);
        let mut rng = Rng::new(21);
        for (l, t, nh, nkv, hd) in [
            (1usize, 1usize, 4usize, 2usize, 16usize),
            (1, 37, 8, 2, 16),
            (5, 5, 4, 4, 8),
            (7, 20, 6, 3, 24),
        ] {
            let cap = t + 3;
            let q: Vec<f32> = (0..l * nh * hd).map(|_| rng.normal()).collect();
            let k: Vec<f32> = (0..nkv * cap * hd).map(|_| rng.normal()).collect();
            let v: Vec<f32> = (0..nkv * cap * hd).map(|_| rng.normal()).collect();
            let s = AttnShape {
                l,
                t,
                cap,
                n_heads: nh,
                n_kv: nkv,
                head_dim: hd,
                scale: 0.3,
            };
            let mut a = vec![0f32; l * nh * hd];
            let mut b = vec![0f32; l * nh * hd];
            attention(&pool, &q, &k, &v, s, &mut a);
            crate::reference::attention(&q, &k, &v, l, t, cap, nh, nkv, hd, 0.3, &mut b);
            for (x, y) in a.iter().zip(&b) {
                assert!((x - y).abs() < 1e-5, "l {l} t {t}: {x} vs {y}");
            }
        }
    }
}
