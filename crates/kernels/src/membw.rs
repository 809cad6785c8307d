//! Measures the machine's memory read bandwidth: the roofline for decode, which reads every
//! active weight once per token. Wide loads and several accumulators on every thread, over a
//! buffer far larger than the caches (a scalar loop would report about half).

use crate::pool::ThreadPool;
use std::time::Instant;

/// Best read bandwidth in bytes/s over `passes` passes over a `bytes`-sized buffer.
pub fn read_bandwidth(pool: &ThreadPool, bytes: usize, passes: usize) -> f64 {
    let n = bytes / 4;
    let buf: Vec<f32> = (0..n).map(|i| (i % 7) as f32).collect();
    let parts = pool.threads() * 4;
    let chunk = n.div_ceil(parts);
    let mut best = 0f64;
    for _ in 0..passes.max(1) {
        let t = Instant::now();
        let sums: Vec<std::sync::atomic::AtomicU32> =
            (0..parts).map(|_| Default::default()).collect();
        pool.run(parts, &|p| {
            let s = &buf[(p * chunk).min(n)..((p + 1) * chunk).min(n)];
            let v = sum(s);
            sums[p].store(v.to_bits(), std::sync::atomic::Ordering::Relaxed);
        });
        let secs = t.elapsed().as_secs_f64();
        std::hint::black_box(&sums);
        best = best.max((n * 4) as f64 / secs);
    }
    best
}

fn sum(s: &[f32]) -> f32 {
    #[cfg(target_arch = "x86_64")]
    if crate::simd::isa() == crate::simd::Isa::Avx512 {
        // SAFETY: AVX-512F is present.
        return unsafe { sum_avx512(s) };
    }
    let mut acc = [0f32; 8];
    for c in s.chunks_exact(8) {
        for k in 0..8 {
            acc[k] += c[k];
        }
    }
    acc.iter().sum()
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn sum_avx512(s: &[f32]) -> f32 {
    use std::arch::x86_64::*;
    let p = s.as_ptr();
    let mut a = [_mm512_setzero_ps(); 4];
    let mut i = 0;
    while i + 64 <= s.len() {
        for (k, acc) in a.iter_mut().enumerate() {
            *acc = _mm512_add_ps(*acc, _mm512_loadu_ps(p.add(i + 16 * k)));
        }
        i += 64;
    }
    _mm512_reduce_add_ps(_mm512_add_ps(
        _mm512_add_ps(a[0], a[1]),
        _mm512_add_ps(a[2], a[3]),
    ))
}
