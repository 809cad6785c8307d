//! Measures the machine's memory read bandwidth: the roofline for decode, which reads every
//! active weight once per token. Wide loads and several accumulators on every thread, over a
//! buffer far larger than the caches (a scalar loop would report about half).

use crate::pool::ThreadPool;
use std::time::Instant;

/// Best read bandwidth in bytes/s over `passes` passes over a `bytes`-sized buffer, at each
/// load width the CPU has (the best of them is the machine's roofline: on some x86 parts
/// 512-bit loads stream more slowly than 256-bit ones).
pub fn read_bandwidth(pool: &ThreadPool, bytes: usize, passes: usize) -> f64 {
    let n = bytes / 4;
    // The same huge-page backed memory the resident weights live in (see `hugebuf`).
    let mut mem = crate::hugebuf::HugeBuf::zeroed(n * 4);
    let buf: &mut [f32] = bytemuck::cast_slice_mut(&mut mem.as_mut_slice()[..n * 4]);
    for (i, v) in buf.iter_mut().enumerate() {
        *v = (i % 7) as f32;
    }
    let buf: &[f32] = buf;
    let parts = pool.threads() * 4;
    let chunk = n.div_ceil(parts);
    let mut best = 0f64;
    for width in widths() {
        for _ in 0..passes.max(1) {
            let t = Instant::now();
            let sums: Vec<std::sync::atomic::AtomicU32> =
                (0..parts).map(|_| Default::default()).collect();
            pool.run(parts, &|p| {
                let s = &buf[(p * chunk).min(n)..((p + 1) * chunk).min(n)];
                let v = sum(width, s);
                sums[p].store(v.to_bits(), std::sync::atomic::Ordering::Relaxed);
            });
            let secs = t.elapsed().as_secs_f64();
            std::hint::black_box(&sums);
            best = best.max((n * 4) as f64 / secs);
        }
    }
    best
}

/// Load widths in bits to try: 128 (SSE2 / NEON, every x86-64 and aarch64 CPU) and each
/// wider one the dispatch allows.
fn widths() -> Vec<u32> {
    let mut w = vec![128];
    match crate::isa::isa() {
        crate::isa::Isa::Avx512 => w.extend([256, 512]),
        crate::isa::Isa::Avx2 => w.push(256),
        crate::isa::Isa::Scalar | crate::isa::Isa::Neon => {}
    }
    w
}

/// Sums `s` with eight vector registers of accumulators `width` bits wide: f32 adds take
/// about four cycles and two issue per cycle, so fewer accumulators make the loop wait on
/// its adds instead of memory (four AVX2 registers read 27 GB/s where eight read 37 on a
/// 2-core Xeon VM).
fn sum(width: u32, s: &[f32]) -> f32 {
    match width {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: widths() only offers 512 when isa() reports AVX-512, which the CPU has.
        512 => unsafe { sum_avx512(s) },
        #[cfg(target_arch = "x86_64")]
        // SAFETY: as above, for AVX2.
        256 => unsafe { sum_avx2(s) },
        // SSE2 / NEON (both baseline): eight 128-bit registers.
        _ => sum_lanes::<32>(s),
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn sum_avx512(s: &[f32]) -> f32 {
    sum_lanes::<128>(s)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn sum_avx2(s: &[f32]) -> f32 {
    sum_lanes::<64>(s)
}

/// `L` independent accumulators (no reassociation needed, so the compiler keeps them in
/// `L / width` vector registers).
#[inline(always)]
fn sum_lanes<const L: usize>(s: &[f32]) -> f32 {
    let mut acc = [0f32; L];
    for c in s.chunks_exact(L) {
        for k in 0..L {
            acc[k] += c[k];
        }
    }
    acc.iter().sum()
}
