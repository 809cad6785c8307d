//! The interleaved layout of 4-bit matrices: 16 rows side by side, so one 64-byte load holds
//! one code word (8 values) of each of 16 rows and a vector lane is a row.
//!
//! In MLX's row-major layout a decode matvec must reduce every row across vector lanes and
//! spend a permute per 128 values spreading group scales over lanes; on a 2-core machine that
//! arithmetic, not memory, bounded decode. With 16 rows interleaved, each lane accumulates
//! its own row, an activation word is broadcast to all lanes, a scale vector holds 16 rows'
//! scales of one group, and the 16 results are stored without any horizontal reduction.
//! llama.cpp's CPU backend gains about 1.6x in decode from repacking Q4_0 the same way
//! (BENCHMARKS.md, scripts/peers/README.md); this is our own layout for MLX affine codes.
//!
//! For a matrix of `rows = 16 * R16` rows, `wpr` code words and `gpr` groups per row:
//! - code word `c` of row `16 G + i` is at `(G * wpr + c) * 16 + i`;
//! - scale and bias of group `g` of that row are at `(G * gpr + g) * 16 + i`.
//!
//! Sizes are unchanged, so a repacked matrix fits in the memory the row-major one used.

/// Rows per interleaved row group (one f32 vector of AVX-512).
pub const ROWS: usize = 16;

/// Whether a matrix of this shape can be interleaved (4-bit, whole row groups, and the
/// column/group shapes the int8 kernel serves).
pub fn can_interleave(bits: u32, rows: usize, cols: usize, group_size: usize) -> bool {
    bits == 4
        && rows.is_multiple_of(ROWS)
        && cols.is_multiple_of(128)
        && matches!(group_size, 32 | 64 | 128)
}

/// Index of row `r`'s item `j` (a code word or a group) in an interleaved array with `per_row`
/// items per row.
#[inline]
pub fn index(r: usize, j: usize, per_row: usize) -> usize {
    ((r / ROWS) * per_row + j) * ROWS + r % ROWS
}

/// Reorders a row-major `[rows, per_row]` array of `T` (code words, scales or biases) into the
/// interleaved order, in place, using `scratch` (one row group's worth) as the only extra
/// memory.
pub fn interleave_in_place<T: Copy + Default>(
    data: &mut [T],
    per_row: usize,
    scratch: &mut Vec<T>,
) {
    let block = ROWS * per_row;
    scratch.resize(block, T::default());
    for group in data.chunks_exact_mut(block) {
        scratch.copy_from_slice(group);
        relay_group(scratch, group, per_row);
    }
}

/// One row group: `src` row-major (`ROWS` rows of `per_row` items), `dst` interleaved.
/// Writes go out in order; the 16 reads per item come from the row group's rows, which are
/// in L1 (streamed experts re-laid as they arrive: decode 12-13.5 -> 14-15 tok/s against the
/// write-strided order, BENCHMARKS.md).
#[inline]
fn relay_group<T: Copy>(src: &[T], dst: &mut [T], per_row: usize) {
    for (j, out) in dst.chunks_exact_mut(ROWS).enumerate() {
        for (i, o) in out.iter_mut().enumerate() {
            *o = src[i * per_row + j];
        }
    }
}

/// Writes the row-major `[rows, per_row]` array `src` into `dst` in the interleaved order,
/// in one pass, splitting the row groups over `threads` threads (load time: every resident
/// 4-bit weight goes through here).
pub fn interleave_into<T: Copy + Send + Sync>(
    src: &[T],
    dst: &mut [T],
    per_row: usize,
    threads: usize,
) {
    assert_eq!(src.len(), dst.len());
    let block = ROWS * per_row;
    let groups = src.len() / block;
    let per_thread = groups.div_ceil(threads.max(1)).max(1) * block;
    std::thread::scope(|scope| {
        for (s, d) in src.chunks(per_thread).zip(dst.chunks_mut(per_thread)) {
            scope.spawn(move || {
                for (sg, dg) in s.chunks_exact(block).zip(d.chunks_exact_mut(block)) {
                    relay_group(sg, dg, per_row);
                }
            });
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn interleaving_puts_each_item_where_index_says() {
        let (rows, per_row) = (48usize, 5usize);
        let orig: Vec<u32> = (0..(rows * per_row) as u32).collect();
        let mut data = orig.clone();
        interleave_in_place(&mut data, per_row, &mut Vec::new());
        for r in 0..rows {
            for j in 0..per_row {
                assert_eq!(data[index(r, j, per_row)], orig[r * per_row + j]);
            }
        }
        assert_ne!(data, orig);
        let mut copied = vec![0u32; orig.len()];
        interleave_into(&orig, &mut copied, per_row, 2);
        assert_eq!(copied, data);
    }
}
