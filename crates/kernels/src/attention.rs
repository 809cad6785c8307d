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

/// Causal GQA attention, parallel over (query, KV head) pairs. Softmax in f32.
///
/// A task serves every query head that shares its KV head: each key and value row is read
/// once for all of them (from L1 while the group's rows are hot) instead of once per query
/// head. With Qwen3-30B-A3B's 8 query heads per KV head, reading the cache per query head
/// cost as much memory traffic as the weights themselves at a few hundred tokens of context.
/// Models without grouping (one query head per KV head) take [`attend`]'s register-resident
/// path.
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
    pool.run(l * n_kv, &|task| {
        let (i, kvh) = (task / n_kv, task % n_kv);
        let visible = t - l + i + 1;
        // The group's query heads are adjacent: kvh * group .. (kvh + 1) * group.
        let first = (i * n_heads + kvh * group) * head_dim;
        let qs = &q[first..][..group * head_dim];
        // SAFETY: each task owns the output rows of its (query, KV head) group.
        let o = unsafe { out_ptr.slice(first, group * head_dim) };
        SCORES.with(|cell| {
            let mut scores = cell.borrow_mut();
            scores.clear();
            scores.resize(group * visible, 0.0);
            let kbase = &k[kvh * cap * head_dim..][..visible * head_dim];
            let vbase = &v[kvh * cap * head_dim..][..visible * head_dim];
            if group == 1 {
                attend(qs, kbase, vbase, scale, &mut scores, o);
            } else {
                attend_group_on(
                    crate::simd::isa(),
                    group,
                    qs,
                    kbase,
                    vbase,
                    scale,
                    &mut scores,
                    o,
                );
            }
        });
    });
}

/// [`attend_group`] with the kernels of `isa` (one this CPU has): AVX2 takes a tiled kernel
/// that gives the same bits as the generic loop over its dot and axpy (each score and each
/// output value accumulates in the same order), without a call and a horizontal sum per
/// (position, head) pair and without storing the output rows at every position.
#[allow(clippy::too_many_arguments)]
#[inline]
fn attend_group_on(
    isa: crate::simd::Isa,
    heads: usize,
    qs: &[f32],
    keys: &[f32],
    values: &[f32],
    scale: f32,
    scores: &mut [f32],
    o: &mut [f32],
) {
    #[cfg(target_arch = "x86_64")]
    if isa == crate::simd::Isa::Avx2 && (qs.len() / heads).is_multiple_of(16) {
        // SAFETY: AVX2 and FMA present; the head size is a multiple of 16.
        return unsafe { x86::attend_group_avx2(heads, qs, keys, values, scale, scores, o) };
    }
    let _ = isa;
    let ops = (crate::simd::dot, crate::simd::axpy);
    attend_group(ops, heads, qs, keys, values, scale, scores, o)
}

/// `heads` query heads (`qs`, adjacent rows of `d = qs.len() / heads` values) against the
/// same `n = scores.len() / heads` keys and values with the given dot and axpy: scores row
/// by row of keys (a key row meets every head while it is in L1), a softmax per head, then
/// the weighted sum row by row of values into `o` (the heads' output rows, adjacent). The
/// tests run it with one ISA's pair to hold a tiled kernel to its bits.
#[allow(clippy::too_many_arguments)]
fn attend_group(
    (dot, axpy): (
        impl Fn(&[f32], &[f32]) -> f32,
        impl Fn(f32, &[f32], &mut [f32]),
    ),
    heads: usize,
    qs: &[f32],
    keys: &[f32],
    values: &[f32],
    scale: f32,
    scores: &mut [f32],
    o: &mut [f32],
) {
    let (d, n) = (qs.len() / heads, scores.len() / heads);
    for (j, kr) in keys.chunks_exact(d).take(n).enumerate() {
        for (h, qh) in qs.chunks_exact(d).enumerate() {
            scores[h * n + j] = scale * dot(qh, kr);
        }
    }
    for row in scores.chunks_exact_mut(n) {
        crate::activation::softmax(row);
    }
    o.fill(0.0);
    for (j, vr) in values.chunks_exact(d).take(n).enumerate() {
        for (h, oh) in o.chunks_exact_mut(d).enumerate() {
            axpy(scores[h * n + j], vr, oh);
        }
    }
}

/// One query against `keys`/`values` (`scores.len()` rows of `q.len()` values each): scaled
/// scores, softmax, weighted sum of the values into `o`.
#[inline]
fn attend(q: &[f32], keys: &[f32], values: &[f32], scale: f32, scores: &mut [f32], o: &mut [f32]) {
    attend_on(crate::simd::isa(), q, keys, values, scale, scores, o)
}

/// [`attend`] with the kernels of `isa` (one this CPU has).
#[inline]
fn attend_on(
    isa: crate::simd::Isa,
    q: &[f32],
    keys: &[f32],
    values: &[f32],
    scale: f32,
    scores: &mut [f32],
    o: &mut [f32],
) {
    #[cfg(target_arch = "x86_64")]
    if isa == crate::simd::Isa::Avx512 {
        // SAFETY: AVX-512F present; the head sizes match the const parameter.
        unsafe {
            match q.len() {
                64 => return x86::attend::<4>(q, keys, values, scale, scores, o),
                128 => return x86::attend::<8>(q, keys, values, scale, scores, o),
                256 => return x86::attend::<16>(q, keys, values, scale, scores, o),
                _ => {}
            }
        }
    }
    #[cfg(target_arch = "x86_64")]
    if isa == crate::simd::Isa::Avx2 && q.len().is_multiple_of(64) {
        // SAFETY: AVX2 and FMA present; the head size is a multiple of 64.
        return unsafe { x86::attend_avx2(q, keys, values, scale, scores, o) };
    }
    #[cfg(target_arch = "aarch64")]
    if isa == crate::simd::Isa::Neon && q.len().is_multiple_of(64) {
        // SAFETY: NEON is aarch64's base ISA; the head size is a multiple of 64.
        return unsafe { neon::attend(q, keys, values, scale, scores, o) };
    }
    let d = q.len();
    for (j, sc) in scores.iter_mut().enumerate() {
        *sc = scale * crate::simd::dot(q, &keys[j * d..][..d]);
    }
    crate::activation::softmax(scores);
    o.fill(0.0);
    for (j, &p) in scores.iter().enumerate() {
        crate::simd::axpy(p, &values[j * d..][..d], o);
    }
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use crate::simd::x86::hsum_avx;
    use std::arch::x86_64::*;

    /// [`super::attend`] for heads of `16 * V` values: the query and the output row live in
    /// registers (decode reads every cached key and value once per head, and the per-call
    /// overhead of a generic dot/axpy per position dominated long contexts).
    #[target_feature(enable = "avx512f")]
    pub unsafe fn attend<const V: usize>(
        q: &[f32],
        keys: &[f32],
        values: &[f32],
        scale: f32,
        scores: &mut [f32],
        o: &mut [f32],
    ) {
        let qv: [__m512; V] = std::array::from_fn(|c| _mm512_loadu_ps(q.as_ptr().add(16 * c)));
        let d = 16 * V;
        for (j, sc) in scores.iter_mut().enumerate() {
            let kr = keys.as_ptr().add(j * d);
            let (mut a0, mut a1) = (_mm512_setzero_ps(), _mm512_setzero_ps());
            for c in (0..V).step_by(2) {
                a0 = _mm512_fmadd_ps(qv[c], _mm512_loadu_ps(kr.add(16 * c)), a0);
                a1 = _mm512_fmadd_ps(qv[c + 1], _mm512_loadu_ps(kr.add(16 * c + 16)), a1);
            }
            *sc = scale * _mm512_reduce_add_ps(_mm512_add_ps(a0, a1));
        }
        crate::activation::softmax(scores);
        let mut acc = [_mm512_setzero_ps(); V];
        for (j, &p) in scores.iter().enumerate() {
            let vr = values.as_ptr().add(j * d);
            let pv = _mm512_set1_ps(p);
            for (c, a) in acc.iter_mut().enumerate() {
                *a = _mm512_fmadd_ps(pv, _mm512_loadu_ps(vr.add(16 * c)), *a);
            }
        }
        for (c, a) in acc.iter().enumerate() {
            _mm512_storeu_ps(o.as_mut_ptr().add(16 * c), *a);
        }
    }

    /// [`super::attend`] for heads of a multiple of 64 values on AVX2's 16 registers: the
    /// query streams from L1 against four accumulators, and the output is built 64 values
    /// (8 registers) at a time over all positions.
    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn attend_avx2(
        q: &[f32],
        keys: &[f32],
        values: &[f32],
        scale: f32,
        scores: &mut [f32],
        o: &mut [f32],
    ) {
        let d = q.len();
        let qp = q.as_ptr();
        for (j, sc) in scores.iter_mut().enumerate() {
            let kr = keys.as_ptr().add(j * d);
            let mut a = [_mm256_setzero_ps(); 4];
            for c in (0..d).step_by(32) {
                for (u, acc) in a.iter_mut().enumerate() {
                    let at = c + 8 * u;
                    *acc = _mm256_fmadd_ps(
                        _mm256_loadu_ps(qp.add(at)),
                        _mm256_loadu_ps(kr.add(at)),
                        *acc,
                    );
                }
            }
            let s = _mm256_add_ps(_mm256_add_ps(a[0], a[1]), _mm256_add_ps(a[2], a[3]));
            *sc = scale * hsum_avx(s);
        }
        crate::activation::softmax(scores);
        for c in (0..d).step_by(64) {
            let mut acc = [_mm256_setzero_ps(); 8];
            for (j, &p) in scores.iter().enumerate() {
                let vr = values.as_ptr().add(j * d + c);
                let pv = _mm256_set1_ps(p);
                for (u, a) in acc.iter_mut().enumerate() {
                    *a = _mm256_fmadd_ps(pv, _mm256_loadu_ps(vr.add(8 * u)), *a);
                }
            }
            for (u, a) in acc.iter().enumerate() {
                _mm256_storeu_ps(o.as_mut_ptr().add(c + 8 * u), *a);
            }
        }
    }

    /// [`super::attend_group`] on AVX2, bit-identical to it with the AVX2 dot and axpy: each
    /// score is `dot_avx2`'s two accumulators over 16-value steps and its final reduction,
    /// tiled two heads by two positions (a key row and a query row loaded once serve two
    /// products each); each output value is the same chain of FMAs over the positions in
    /// order, kept in registers for four heads by 16 values at a time. Keys and values are
    /// each read from memory once per call, in order, whatever the number of heads.
    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn attend_group_avx2(
        heads: usize,
        qs: &[f32],
        keys: &[f32],
        values: &[f32],
        scale: f32,
        scores: &mut [f32],
        o: &mut [f32],
    ) {
        let (d, n) = (qs.len() / heads, scores.len() / heads);
        debug_assert!(d.is_multiple_of(16) && keys.len() >= n * d && values.len() >= n * d);
        if n == 0 {
            // No visible position: the generic loop's zeroed output.
            o.fill(0.0);
            return;
        }
        let (q, k, s) = (qs.as_ptr(), keys.as_ptr(), scores.as_mut_ptr());
        // Positions outer: a pair of key rows is read from memory once and meets every head
        // from L1 (the cache is read once per token, not once per head pair).
        let mut j = 0;
        while j < n {
            let pair = n - j >= 2;
            let mut h = 0;
            while h + 2 <= heads {
                if pair {
                    scores_tile::<2, 2>(d, n, q, k, h, j, scale, s);
                } else {
                    scores_tile::<2, 1>(d, n, q, k, h, j, scale, s);
                }
                h += 2;
            }
            if h < heads {
                scores_tile::<1, 1>(d, n, q, k, h, j, scale, s);
                if pair {
                    scores_tile::<1, 1>(d, n, q, k, h, j + 1, scale, s);
                }
            }
            j += if pair { 2 } else { 1 };
        }
        for row in scores.chunks_exact_mut(n) {
            crate::activation::softmax(row);
        }
        // Values in tiles of rows, each read from memory once (in order) for every head and
        // column; the outputs carry over between tiles through `o` (L1), which keeps each
        // value's chain of FMAs in position order.
        let (v, out) = (values.as_ptr(), o.as_mut_ptr());
        for t0 in (0..n).step_by(VALUE_TILE) {
            let rows = t0..(t0 + VALUE_TILE).min(n);
            for r in rows.end..(rows.end + VALUE_TILE).min(n) {
                for line in (0..d).step_by(16) {
                    _mm_prefetch::<_MM_HINT_T0>(v.add(r * d + line) as *const i8);
                }
            }
            let mut h = 0;
            while h < heads {
                let take = match heads - h {
                    r if r >= 4 => 4,
                    r if r >= 2 => 2,
                    _ => 1,
                };
                for c in (0..d).step_by(16) {
                    let r = rows.clone();
                    match take {
                        4 => weighted_values::<4>(d, n, v, s, h, c, r, out),
                        2 => weighted_values::<2>(d, n, v, s, h, c, r, out),
                        _ => weighted_values::<1>(d, n, v, s, h, c, r, out),
                    }
                }
                h += take;
            }
        }
    }

    /// Scores of heads `h0..h0 + H` against positions `j0..j0 + K`.
    #[allow(clippy::too_many_arguments)]
    #[inline(always)]
    unsafe fn scores_tile<const H: usize, const K: usize>(
        d: usize,
        n: usize,
        q: *const f32,
        k: *const f32,
        h0: usize,
        j0: usize,
        scale: f32,
        s: *mut f32,
    ) {
        let mut a0 = [[_mm256_setzero_ps(); K]; H];
        let mut a1 = [[_mm256_setzero_ps(); K]; H];
        for i in (0..d).step_by(16) {
            let kr: [(__m256, __m256); K] = std::array::from_fn(|kk| {
                let p = k.add((j0 + kk) * d + i);
                (_mm256_loadu_ps(p), _mm256_loadu_ps(p.add(8)))
            });
            for hh in 0..H {
                let p = q.add((h0 + hh) * d + i);
                let (q0, q1) = (_mm256_loadu_ps(p), _mm256_loadu_ps(p.add(8)));
                for kk in 0..K {
                    a0[hh][kk] = _mm256_fmadd_ps(q0, kr[kk].0, a0[hh][kk]);
                    a1[hh][kk] = _mm256_fmadd_ps(q1, kr[kk].1, a1[hh][kk]);
                }
            }
        }
        for hh in 0..H {
            for kk in 0..K {
                // dot_avx2's reduction.
                let acc = _mm256_add_ps(a0[hh][kk], a1[hh][kk]);
                *s.add((h0 + hh) * n + j0 + kk) = scale * hsum_avx(acc);
            }
        }
    }

    /// Positions per tile of value rows (16 rows of 128 values: 8 KiB, in L1 with the outputs).
    const VALUE_TILE: usize = 16;

    /// Values `c..c + 16` of the outputs of heads `h0..h0 + H`, over positions `rows`:
    /// `o += Σ_j p[h][j] v[j]` (from zero on the first tile), one FMA per position in order,
    /// as `axpy_avx2` adds them into a zeroed row.
    #[allow(clippy::too_many_arguments)]
    #[inline(always)]
    unsafe fn weighted_values<const H: usize>(
        d: usize,
        n: usize,
        v: *const f32,
        p: *const f32,
        h0: usize,
        c: usize,
        rows: std::ops::Range<usize>,
        o: *mut f32,
    ) {
        let first = rows.start == 0;
        let at = |hh: usize| o.add((h0 + hh) * d + c);
        let mut a0: [__m256; H] = std::array::from_fn(|hh| {
            if first {
                _mm256_setzero_ps()
            } else {
                _mm256_loadu_ps(at(hh))
            }
        });
        let mut a1: [__m256; H] = std::array::from_fn(|hh| {
            if first {
                _mm256_setzero_ps()
            } else {
                _mm256_loadu_ps(at(hh).add(8))
            }
        });
        for j in rows {
            let vr = v.add(j * d + c);
            let (v0, v1) = (_mm256_loadu_ps(vr), _mm256_loadu_ps(vr.add(8)));
            for hh in 0..H {
                let pv = _mm256_broadcast_ss(&*p.add((h0 + hh) * n + j));
                a0[hh] = _mm256_fmadd_ps(pv, v0, a0[hh]);
                a1[hh] = _mm256_fmadd_ps(pv, v1, a1[hh]);
            }
        }
        for hh in 0..H {
            _mm256_storeu_ps(at(hh), a0[hh]);
            _mm256_storeu_ps(at(hh).add(8), a1[hh]);
        }
    }
}

#[cfg(target_arch = "aarch64")]
mod neon {
    use std::arch::aarch64::*;

    /// [`super::attend`] for heads of a multiple of 64 values: the query streams from L1
    /// against four accumulators, and the output is built 64 values (16 registers) at a time
    /// over all positions.
    pub unsafe fn attend(
        q: &[f32],
        keys: &[f32],
        values: &[f32],
        scale: f32,
        scores: &mut [f32],
        o: &mut [f32],
    ) {
        let d = q.len();
        let qp = q.as_ptr();
        for (j, sc) in scores.iter_mut().enumerate() {
            let kr = keys.as_ptr().add(j * d);
            let mut a = [vdupq_n_f32(0.0); 4];
            for c in (0..d).step_by(16) {
                for (u, acc) in a.iter_mut().enumerate() {
                    let at = c + 4 * u;
                    *acc = vfmaq_f32(*acc, vld1q_f32(qp.add(at)), vld1q_f32(kr.add(at)));
                }
            }
            *sc = scale * vaddvq_f32(vaddq_f32(vaddq_f32(a[0], a[1]), vaddq_f32(a[2], a[3])));
        }
        crate::activation::softmax(scores);
        for c in (0..d).step_by(64) {
            let mut acc = [vdupq_n_f32(0.0); 16];
            for (j, &p) in scores.iter().enumerate() {
                let vr = values.as_ptr().add(j * d + c);
                let pv = vdupq_n_f32(p);
                for (u, a) in acc.iter_mut().enumerate() {
                    *a = vfmaq_f32(*a, pv, vld1q_f32(vr.add(4 * u)));
                }
            }
            for (u, a) in acc.iter().enumerate() {
                vst1q_f32(o.as_mut_ptr().add(c + 4 * u), *a);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::Rng;

    #[test]
    fn every_isa_attends_like_the_reference() {
        let mut rng = Rng::new(23);
        let isas = crate::isa::isa_available();
        eprintln!("attention tested on {isas:?}");
        for isa in isas {
            for (t, d) in [(1usize, 64usize), (7, 128), (33, 256), (5, 192), (9, 24)] {
                let q: Vec<f32> = (0..d).map(|_| rng.normal()).collect();
                let k: Vec<f32> = (0..t * d).map(|_| rng.normal()).collect();
                let v: Vec<f32> = (0..t * d).map(|_| rng.normal()).collect();
                let (mut scores, mut o) = (vec![0f32; t], vec![0f32; d]);
                attend_on(isa, &q, &k, &v, 0.2, &mut scores, &mut o);
                let mut want = vec![0f32; d];
                crate::reference::attention(&q, &k, &v, 1, t, t, 1, 1, d, 0.2, &mut want);
                for (x, y) in o.iter().zip(&want) {
                    assert!((x - y).abs() < 1e-5, "{isa:?} t {t} d {d}: {x} vs {y}");
                }
            }
        }
    }

    /// Grouped attention (several query heads per KV head) against the reference on every
    /// ISA, and the AVX2 tiled kernel bit for bit against the generic loop over the AVX2 dot
    /// and axpy (the run with `MOESTREAM_ISA=avx2` depends on those bits).
    #[test]
    fn grouped_attention_on_every_isa() {
        let mut rng = Rng::new(29);
        for isa in crate::isa::isa_available() {
            for (heads, t, d) in [
                (8usize, 37usize, 128usize),
                (5, 4, 16),
                (3, 1, 64),
                (2, 9, 24),
            ] {
                let q: Vec<f32> = (0..heads * d).map(|_| rng.normal()).collect();
                let k: Vec<f32> = (0..t * d).map(|_| rng.normal()).collect();
                let v: Vec<f32> = (0..t * d).map(|_| rng.normal()).collect();
                let (mut scores, mut o) = (vec![0f32; heads * t], vec![0f32; heads * d]);
                attend_group_on(isa, heads, &q, &k, &v, 0.2, &mut scores, &mut o);
                let mut want = vec![0f32; heads * d];
                crate::reference::attention(&q, &k, &v, 1, t, t, heads, 1, d, 0.2, &mut want);
                for (x, y) in o.iter().zip(&want) {
                    assert!(
                        (x - y).abs() < 1e-5,
                        "{isa:?} heads {heads} t {t} d {d}: {x} vs {y}"
                    );
                }
                #[cfg(target_arch = "x86_64")]
                if isa == crate::simd::Isa::Avx2 {
                    use crate::simd::x86::{axpy_avx2, dot_avx2};
                    // SAFETY (both): isa_available() lists AVX2 only when the CPU has AVX2
                    // and FMA.
                    let ops = (
                        |a: &[f32], b: &[f32]| unsafe { dot_avx2(a, b) },
                        |a: f32, x: &[f32], y: &mut [f32]| unsafe { axpy_avx2(a, x, y) },
                    );
                    let mut sc = vec![0f32; heads * t];
                    let mut generic = vec![0f32; heads * d];
                    attend_group(ops, heads, &q, &k, &v, 0.2, &mut sc, &mut generic);
                    let bits = |x: &[f32]| x.iter().map(|v| v.to_bits()).collect::<Vec<_>>();
                    assert_eq!(bits(&o), bits(&generic), "heads {heads} t {t} d {d}");
                }
            }
        }
    }

    #[test]
    fn attention_matches_reference_decode_and_prefill() {
        let pool = ThreadPool::new(2);
        let mut rng = Rng::new(21);
        for (l, t, nh, nkv, hd) in [
            (1usize, 1usize, 4usize, 2usize, 16usize),
            (1, 37, 8, 2, 16),
            (5, 5, 4, 4, 8),
            (7, 20, 6, 3, 24),
            // The register-resident fast path's head sizes.
            (1, 300, 8, 2, 128),
            (3, 40, 4, 2, 64),
            (2, 9, 2, 1, 256),
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
