//! Quantized-activation dot products: MLX affine weights against int8 activations.
//!
//! Decode is bound by memory bandwidth only if the arithmetic keeps up; widening every 4-bit
//! weight to f32 does not on a 2-core machine. Instead each activation row is quantized once
//! per kernel call to int8 in blocks of 32 (`x ≈ d_b * qx`, `d_b = max|x| / 127`), and a
//! group's contribution becomes
//!
//! `Σ_i (s q_i + b) x_i  =  s Σ_b d_b Σ_{i∈b} q_i qx_i  +  b Σ_i x_i`
//!
//! where the inner sums are exact integer dot products (u8 weights × s8 activations) and the
//! bias term uses the exact f32 sums of `x`.
//! The only approximation is the int8 rounding of activations (relative error ~0.4% per
//! element, the same order as the bf16 activations mlx itself uses), which is why this path
//! is [`crate::Precision::Fast`] and the plain f32 path stays available as [`crate::Precision::Exact`].
//!
//! Files: [`format`] (the activation format), [`reference`] (the scalar int8 reference every
//! kernel is held to), one file of kernels per instruction set (`avx512`, `avx2` for AVX2 and
//! AVX-VNNI, `neon` for NEON, dotprod and i8mm), and this dispatcher, which picks the family
//! ([`crate::isa::int8`]) and tiles weight and activation rows for it.

use crate::isa::Int8;
use crate::matrix::QuantMatrix;

pub mod format;
pub(crate) mod params;
pub mod reference;

#[cfg(target_arch = "x86_64")]
mod avx2;
#[cfg(target_arch = "x86_64")]
mod avx512;
#[cfg(target_arch = "aarch64")]
mod neon;
#[cfg(test)]
mod tests;

use format::group_index;
pub use format::{BlockQuantizer, QuantizedRow, BLOCK};
use params::with_params;
pub use reference::dot_reference;
use reference::RowParams;

/// Bytes ahead of the current code word that the x86 interleaved kernels prefetch, into L2
/// (`prefetcht1`). Decode streams the weights once, and a core's L1 fill buffers cap how many
/// lines it can have in flight: prefetching into L1 (`prefetcht0`, 4 KiB ahead) held a
/// 2-thread 4-bit matvec to 27 GB/s on a Xeon whose memory reads 36 GB/s; into L2, 16 KiB
/// ahead, it reads 32-33 GB/s on AVX2 and AVX-512 alike (`examples/qmatvec.rs`).
///
/// `MOESTREAM_PREFETCH_BYTES` overrides the distance (0: no software prefetch, the hardware
/// prefetchers alone), so it can be tuned on a new CPU without a rebuild.
#[cfg(target_arch = "x86_64")]
const PREFETCH_AHEAD: usize = 16384;

/// The prefetch distance the x86 interleaved kernels use (see [`PREFETCH_AHEAD`]), read once.
pub fn prefetch_bytes() -> usize {
    static BYTES: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
    *BYTES.get_or_init(|| {
        #[cfg(target_arch = "x86_64")]
        let default = PREFETCH_AHEAD;
        #[cfg(not(target_arch = "x86_64"))]
        let default = 0;
        match std::env::var("MOESTREAM_PREFETCH_BYTES") {
            Ok(v) => v.trim().parse().unwrap_or_else(|_| {
                eprintln!("MOESTREAM_PREFETCH_BYTES={v:?} is not a byte count; using {default}");
                default
            }),
            Err(_) => default,
        }
    })
}

/// The widest [`format::quantize_block_scalar`] this machine has. Every version rounds the same way
/// (half to even: the default MXCSR mode, NEON's `fcvtns`), so the codes and `d` are
/// bit-identical; only the order of the f32 sum `Σx` differs.
pub fn block_quantizer() -> BlockQuantizer {
    use crate::isa::{int8, Int8};
    match int8() {
        // SAFETY (each): int8() only reports features the CPU has; every caller passes
        // BLOCK-long slices.
        #[cfg(target_arch = "x86_64")]
        Int8::Avx512Vnni => |x, q| unsafe { avx512::quantize_block(x, q) },
        #[cfg(target_arch = "x86_64")]
        Int8::Avx2 | Int8::AvxVnni => |x, q| unsafe { avx2::quantize_block(x, q) },
        #[cfg(target_arch = "aarch64")]
        Int8::Neon | Int8::NeonDot | Int8::NeonI8mm => |x, q| unsafe { neon::quantize_block(x, q) },
        _ => format::quantize_block_scalar,
    }
}

/// Whether `w` has an int8-activation kernel on this machine.
pub fn supported(w: &QuantMatrix) -> bool {
    supported_on(crate::isa::int8(), w)
}

/// Whether `w` has an int8-activation kernel in family `isa`: 4-bit in the interleaved layout
/// (every family) or row-major (AVX-512 VNNI only: the other families re-lay instead), and
/// 8-bit row-major; MLX's group sizes 32, 64 and 128.
pub fn supported_on(isa: Int8, w: &QuantMatrix) -> bool {
    let shape_ok = match w.bits {
        4 => w.cols.is_multiple_of(128) && (w.interleaved || isa == Int8::Avx512Vnni),
        8 => w.cols.is_multiple_of(64) && !w.interleaved,
        _ => false,
    };
    shape_ok && group_index(w.group_size).is_some() && isa != Int8::None
}

/// Whether 4-bit weights should be re-laid into the interleaved layout on this machine (every
/// int8 family's fastest kernel runs on it; the f32 path is faster on MLX's layout).
pub fn prefers_interleaved() -> bool {
    crate::isa::int8() != Int8::None
}

/// Whether 4-bit weights can run the int8 kernels only in the interleaved layout on this
/// machine (every family but AVX-512 VNNI, which also has a row-major 4-bit kernel): streamed
/// expert slots are then re-laid as they arrive.
pub fn needs_interleaved_4bit() -> bool {
    !matches!(crate::isa::int8(), Int8::None | Int8::Avx512Vnni)
}

/// Rows `r0..r1` of `w` dotted with the quantized rows `q[x_rows[i]]`; `write(r, i, value)`
/// receives each result. Requires [`supported`]`(w)`.
#[inline]
pub fn dot_rows(
    w: &QuantMatrix,
    rows: std::ops::Range<usize>,
    q: &[QuantizedRow],
    x_rows: &[u32],
    scratch: &mut Vec<f32>,
    write: impl FnMut(usize, usize, f32),
) {
    dot_rows_on(crate::isa::int8(), w, rows, q, x_rows, scratch, write)
}

/// [`dot_rows`] with the kernels of family `isa`. Interleaved 4-bit rows go a row group at a
/// time against tiles of activation rows; row-major 4-bit rows (AVX-512) several weight rows
/// at a time; 8-bit rows widen their parameters once per row into `scratch` (the caller's
/// reusable buffer). Requires [`supported_on`]`(isa, w)`, and `isa` one this CPU has.
#[inline]
pub fn dot_rows_on(
    isa: Int8,
    w: &QuantMatrix,
    rows: std::ops::Range<usize>,
    q: &[QuantizedRow],
    x_rows: &[u32],
    scratch: &mut Vec<f32>,
    mut write: impl FnMut(usize, usize, f32),
) {
    assert!(
        supported_on(isa, w),
        "no {} int8 kernel for this matrix",
        isa.name()
    );
    let k = group_index(w.group_size).expect("supported_on checked the group size");
    if w.interleaved {
        let n = crate::interleave::ROWS;
        debug_assert!(rows.start.is_multiple_of(n) && rows.end.is_multiple_of(n));
        // Tiles of up to 8 activation rows on AVX-512 (32 registers), 4 elsewhere (the
        // 256-bit and NEON kernels run 8 or 4 weight rows per pass with that many).
        let wide = isa == Int8::Avx512Vnni;
        for rg in rows.start / n..rows.end / n {
            let mut first = 0;
            if wide {
                first = group_tiles::<8, _>(isa, w, rg, q, x_rows, k, first, &mut write);
            }
            first = group_tiles::<4, _>(isa, w, rg, q, x_rows, k, first, &mut write);
            first = group_tiles::<2, _>(isa, w, rg, q, x_rows, k, first, &mut write);
            group_tiles::<1, _>(isa, w, rg, q, x_rows, k, first, &mut write);
        }
        return;
    }
    #[cfg(target_arch = "x86_64")]
    if w.bits == 4 {
        let mut r = rows.start;
        if x_rows.len() == 1 {
            while r + ROWS_DECODE <= rows.end {
                r = row_block::<ROWS_DECODE, _>(w, r, q, x_rows, k, &mut write);
            }
        } else {
            while r + ROWS_TILE <= rows.end {
                r = row_block::<ROWS_TILE, _>(w, r, q, x_rows, k, &mut write);
            }
        }
        while r < rows.end {
            r = row_block::<1, _>(w, r, q, x_rows, k, &mut write);
        }
        return;
    }
    for r in rows {
        let params = RowParams::new(w, r, scratch);
        let row = w.packed_row(r);
        for (i, &xr) in x_rows.iter().enumerate() {
            let x = &q[xr as usize];
            write(r, i, dot_q8(isa, row, x, &params));
        }
    }
}

/// One 8-bit row against one activation row with family `isa`'s kernel.
#[inline]
fn dot_q8(isa: Int8, row: &[u32], x: &QuantizedRow, p: &RowParams) -> f32 {
    let (qx, qs, s, d) = (&x.natural, &x.qsum, p.block_scales, &x.scale);
    // SAFETY (each arm): the caller checked `supported_on(isa, w)` and that the CPU has
    // `isa`; the activation row was quantized from a row of `w.cols` values.
    unsafe {
        match isa {
            #[cfg(target_arch = "x86_64")]
            Int8::Avx512Vnni => {
                let (b, gs, r) = (p.biases, &x.group_sum[p.k], &x.group_resid[p.k]);
                avx512::dot_q8(row, qx, s, d) + avx512::dot2(b, gs, p.scales, r, p.mid)
            }
            #[cfg(target_arch = "x86_64")]
            Int8::AvxVnni => avx2::dot_q8_vnni(row, qx, qs, s, d) + p.exact_part(x),
            #[cfg(target_arch = "x86_64")]
            Int8::Avx2 => avx2::dot_q8(row, qx, qs, s, d) + p.exact_part(x),
            #[cfg(target_arch = "aarch64")]
            Int8::NeonDot | Int8::NeonI8mm => neon::dot_q8_dot(row, qx, qs, s, d) + p.exact_part(x),
            #[cfg(target_arch = "aarch64")]
            Int8::Neon => neon::dot_q8(row, qx, qs, s, d) + p.exact_part(x),
            _ => unreachable!("no {} int8 kernel on this target", isa.name()),
        }
    }
}

/// `out[t][i]` = row `16 rg + i` of the interleaved matrix `w` dotted with `x[t]`, with family
/// `isa`'s kernel.
#[inline]
fn row_group<const N: usize>(
    isa: Int8,
    w: &QuantMatrix,
    rg: usize,
    x: [&QuantizedRow; N],
    k: usize,
) -> [[f32; crate::interleave::ROWS]; N] {
    let n = crate::interleave::ROWS * w.groups_per_row();
    with_params!(w, rg * n, n, |DT, s, b| {
        // SAFETY (each arm): the caller checked `supported_on(isa, w)`, that the CPU has
        // `isa`, that row group `rg` exists and that every `x[t]` matches `w.cols`.
        unsafe {
            match isa {
                #[cfg(target_arch = "x86_64")]
                Int8::Avx512Vnni => avx512::row_group::<N, DT>(w, rg, s, b, x, k),
                #[cfg(target_arch = "x86_64")]
                Int8::AvxVnni => avx2::row_group_vnni::<N, DT>(w, rg, s, b, x, k),
                #[cfg(target_arch = "x86_64")]
                Int8::Avx2 => avx2::row_group::<N, DT>(w, rg, s, b, x, k),
                #[cfg(target_arch = "aarch64")]
                Int8::NeonDot => neon::row_group_dot::<N, DT>(w, rg, s, b, x, k),
                #[cfg(target_arch = "aarch64")]
                Int8::NeonI8mm => neon::row_group_i8mm::<N, DT>(w, rg, s, b, x, k),
                #[cfg(target_arch = "aarch64")]
                Int8::Neon => neon::row_group::<N, DT>(w, rg, s, b, x, k),
                _ => unreachable!("no {} int8 kernel on this target", isa.name()),
            }
        }
    })
}

/// Weight rows per pass of the row-major AVX-512 4-bit kernel when one activation row is
/// served (decode).
#[cfg(target_arch = "x86_64")]
const ROWS_DECODE: usize = 4;
/// Weight rows per pass of the row-major kernel for tiles of several activation rows.
#[cfg(target_arch = "x86_64")]
const ROWS_TILE: usize = 2;

/// Serves `x_rows[first..]` in tiles of `N` for row group `rg` of an interleaved matrix;
/// returns the first index not served.
#[inline]
#[allow(clippy::too_many_arguments)]
fn group_tiles<const N: usize, W: FnMut(usize, usize, f32)>(
    isa: Int8,
    w: &QuantMatrix,
    rg: usize,
    q: &[QuantizedRow],
    x_rows: &[u32],
    k: usize,
    mut first: usize,
    write: &mut W,
) -> usize {
    while first + N <= x_rows.len() {
        let xs: [&QuantizedRow; N] = std::array::from_fn(|t| &q[x_rows[first + t] as usize]);
        let dots = row_group::<N>(isa, w, rg, xs, k);
        for (t, lanes) in dots.iter().enumerate() {
            for (i, &v) in lanes.iter().enumerate() {
                write(rg * crate::interleave::ROWS + i, first + t, v);
            }
        }
        first += N;
    }
    first
}

/// Row-major 4-bit weight rows `r..r + R` against every activation row, in tiles of 4, 2 and 1 activation
/// rows; returns the next row.
#[cfg(target_arch = "x86_64")]
#[inline]
fn row_block<const R: usize, W: FnMut(usize, usize, f32)>(
    w: &QuantMatrix,
    r: usize,
    q: &[QuantizedRow],
    x_rows: &[u32],
    k: usize,
    write: &mut W,
) -> usize {
    let mut first = 0;
    first = x_tiles::<R, 4, W>(w, r, q, x_rows, k, first, write);
    first = x_tiles::<R, 2, W>(w, r, q, x_rows, k, first, write);
    x_tiles::<R, 1, W>(w, r, q, x_rows, k, first, write);
    r + R
}

/// Serves `x_rows[first..]` in tiles of `N` for weight rows `r..r + R`; returns the first
/// index not served.
#[cfg(target_arch = "x86_64")]
#[inline]
fn x_tiles<const R: usize, const N: usize, W: FnMut(usize, usize, f32)>(
    w: &QuantMatrix,
    r: usize,
    q: &[QuantizedRow],
    x_rows: &[u32],
    k: usize,
    mut first: usize,
    write: &mut W,
) -> usize {
    while first + N <= x_rows.len() {
        let xs: [&QuantizedRow; N] = std::array::from_fn(|t| &q[x_rows[first + t] as usize]);
        let n = R * w.groups_per_row();
        // SAFETY: callers checked `supported_on` (AVX-512 VNNI, shapes); r + R <= rows.
        let dots = with_params!(w, r * w.groups_per_row(), n, |DT, s, b| unsafe {
            avx512::block::<R, N, DT>(w, r, s, b, xs, k)
        });
        for (j, row) in dots.iter().enumerate() {
            for (t, &v) in row.iter().enumerate() {
                write(r + j, first + t, v);
            }
        }
        first += N;
    }
    first
}
