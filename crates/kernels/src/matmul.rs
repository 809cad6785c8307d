//! Matrix products against weight views: plain, SwiGLU-fused, and gathered over experts.
//!
//! All of them are row-parallel over the weight's output rows, so every weight row is read
//! once per call however many activation rows use it (a prefill batch, or every token routed
//! to an expert). Quantized rows are dequantized into a per-thread buffer once and then
//! dotted with each activation row.

use crate::activation::silu;
use crate::dequant_dot;
use crate::matrix::{FloatSlice, Matrix};
use crate::pool::{SharedMut, ThreadPool};
use crate::qdot::{self, QuantizedRow};
use crate::simd::dot;
use crate::Precision;
use std::cell::RefCell;

/// One expert's share of a gathered matmul: `out[out_rows[i]] = x[x_rows[i]] @ w.T`.
#[derive(Clone, Copy, Debug)]
pub struct GatherGroup<'a> {
    pub w: Matrix<'a>,
    pub x_rows: &'a [u32],
    pub out_rows: &'a [u32],
}

/// One expert's share of a gathered SwiGLU:
/// `h[out_rows[i]] = silu(x G.T) * (x U.T)` with `x = x[x_rows[i]]`.
#[derive(Clone, Copy, Debug)]
pub struct GatherPair<'a> {
    pub gate: Matrix<'a>,
    pub up: Matrix<'a>,
    pub x_rows: &'a [u32],
    pub out_rows: &'a [u32],
}

thread_local! {
    static ROW_BUF: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
    static ROW_BUF2: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
    /// The calling thread's int8 copies of the activation rows (reused across calls).
    static QROWS: RefCell<Vec<QuantizedRow>> = const { RefCell::new(Vec::new()) };
}

/// Whether `w` takes the int8-activation kernel under `p`.
fn fast(p: Precision, w: &Matrix) -> bool {
    matches!((p, w), (Precision::Fast, Matrix::Quant(q)) if qdot::supported(q))
}

/// Runs `f` with `x`'s rows (`cols` each) quantized to int8, if `needed`.
fn with_quantized<R>(
    needed: bool,
    x: &[f32],
    cols: usize,
    f: impl FnOnce(&[QuantizedRow]) -> R,
) -> R {
    if !needed {
        return f(&[]);
    }
    QROWS.with(|cell| {
        let mut rows = cell.borrow_mut();
        let n = x.len() / cols;
        if rows.len() < n {
            rows.resize_with(n, QuantizedRow::default);
        }
        let quantize = crate::qdot::block_quantizer();
        for (q, xr) in rows.iter_mut().zip(x.chunks_exact(cols)) {
            q.quantize(xr, quantize);
        }
        f(&rows[..n])
    })
}

/// Rows per task: enough tasks to balance threads, not so many that dispatch dominates; a
/// multiple of the interleaved row group, so a task never splits one.
fn chunk_rows(pool: &ThreadPool, rows: usize) -> usize {
    let n = crate::interleave::ROWS;
    rows.div_ceil(pool.threads() * 4)
        .clamp(n, 256)
        .next_multiple_of(n)
}

/// Borrows row `r` of `w` as f32: directly for f32 weights, else widened/dequantized into
/// `buf`.
#[inline]
fn row<'b>(w: &'b Matrix, r: usize, buf: &'b mut Vec<f32>) -> &'b [f32] {
    if let Matrix::Dense(d) = w {
        if let FloatSlice::F32(s) = d.data {
            return &s[r * d.cols..(r + 1) * d.cols];
        }
    }
    buf.resize(w.cols(), 0.0);
    w.row_into(r, buf);
    buf
}

/// `y[m, rows] = x[m, cols] @ W.T`.
pub fn matmul(pool: &ThreadPool, p: Precision, x: &[f32], m: usize, w: &Matrix, y: &mut [f32]) {
    let rows_idx: Vec<u32>;
    let idx: &[u32] = if m <= IDENTITY.len() {
        &IDENTITY[..m]
    } else {
        rows_idx = (0..m as u32).collect();
        &rows_idx
    };
    gather_matmul(
        pool,
        p,
        x,
        &[GatherGroup {
            w: *w,
            x_rows: idx,
            out_rows: idx,
        }],
        y,
    );
}

/// `h[m, rows] = silu(x @ G.T) * (x @ U.T)`, gate and up read in the same pass.
pub fn swiglu(
    pool: &ThreadPool,
    p: Precision,
    x: &[f32],
    m: usize,
    gate: &Matrix,
    up: &Matrix,
    h: &mut [f32],
) {
    let rows_idx: Vec<u32>;
    let idx: &[u32] = if m <= IDENTITY.len() {
        &IDENTITY[..m]
    } else {
        rows_idx = (0..m as u32).collect();
        &rows_idx
    };
    let pair = GatherPair {
        gate: *gate,
        up: *up,
        x_rows: idx,
        out_rows: idx,
    };
    gather_swiglu(pool, p, x, &[pair], h);
}

const IDENTITY: [u32; 64] = {
    let mut a = [0u32; 64];
    let mut i = 0;
    while i < 64 {
        a[i] = i as u32;
        i += 1;
    }
    a
};

/// Maps a flat task index onto (group, first row, end row) for groups of `rows(g)` rows cut
/// into chunks of `chunk`.
fn locate(
    task: usize,
    n_groups: usize,
    rows: impl Fn(usize) -> usize,
    chunk: usize,
) -> (usize, usize, usize) {
    let mut t = task;
    for g in 0..n_groups {
        let n = rows(g).div_ceil(chunk);
        if t < n {
            let start = t * chunk;
            return (g, start, (start + chunk).min(rows(g)));
        }
        t -= n;
    }
    unreachable!("task index beyond the last group")
}

/// Rows `rows` of `w` dotted with activation rows `x_rows` (int8 kernel when `q` holds the
/// quantized activations, else f32); `write(r, i, value)` receives each result.
#[allow(clippy::too_many_arguments)]
#[inline]
fn row_dots(
    w: &Matrix,
    rows: std::ops::Range<usize>,
    q: &[QuantizedRow],
    x: &[f32],
    cols: usize,
    x_rows: &[u32],
    buf: &mut Vec<f32>,
    mut write: impl FnMut(usize, usize, f32),
) {
    match w {
        Matrix::Quant(qm) if !q.is_empty() => qdot::dot_rows(qm, rows, q, x_rows, buf, write),
        // One activation row (decode): dequantize in registers where the ISA can, with the
        // same bits. Several rows (prefill) amortize one dequantized copy of each weight row
        // instead, below.
        Matrix::Quant(qm) if x_rows.len() == 1 && dequant_dot::fused(qm) => {
            let xr = &x[x_rows[0] as usize * cols..][..cols];
            dequant_dot::dot_rows(qm, rows, xr, |r, v| write(r, 0, v));
        }
        _ => {
            for r in rows {
                let wr = row(w, r, buf);
                for (i, &xr) in x_rows.iter().enumerate() {
                    write(r, i, dot(wr, &x[xr as usize * cols..][..cols]));
                }
            }
        }
    }
}

/// Gathered matmul over expert groups in one dispatch.
pub fn gather_matmul(
    pool: &ThreadPool,
    p: Precision,
    x: &[f32],
    groups: &[GatherGroup],
    out: &mut [f32],
) {
    let Some(first) = groups.first() else { return };
    let (rows, cols) = (first.w.rows(), first.w.cols());
    let chunk = chunk_rows(pool, rows);
    let tasks: usize = groups.iter().map(|g| g.w.rows().div_ceil(chunk)).sum();
    let needs_q = groups.iter().any(|g| fast(p, &g.w));
    let out_ptr = SharedMut::new(out);
    with_quantized(needs_q, x, cols, |q| {
        pool.run(tasks, &|task| {
            let (gi, r0, r1) = locate(task, groups.len(), |g| groups[g].w.rows(), chunk);
            let grp = &groups[gi];
            let q = if fast(p, &grp.w) { q } else { &[] };
            ROW_BUF.with(|cell| {
                let mut buf = cell.borrow_mut();
                row_dots(
                    &grp.w,
                    r0..r1,
                    q,
                    x,
                    cols,
                    grp.x_rows,
                    &mut buf,
                    |r, i, v| {
                        // SAFETY: (out row, r) pairs are disjoint across tasks: each task owns
                        // rows r0..r1 of one group, and groups own disjoint out rows.
                        unsafe { out_ptr.write(grp.out_rows[i] as usize * rows + r, v) }
                    },
                );
            });
        });
    });
}

/// Gathered SwiGLU (gate + up + `silu(g) * u`) over expert groups in one dispatch, with no
/// fused copy of the weights: each task reads its gate and up rows once for all the
/// activation rows routed to the expert.
pub fn gather_swiglu(
    pool: &ThreadPool,
    p: Precision,
    x: &[f32],
    groups: &[GatherPair],
    h: &mut [f32],
) {
    let Some(first) = groups.first() else { return };
    let (rows, cols) = (first.gate.rows(), first.gate.cols());
    let chunk = chunk_rows(pool, rows);
    let tasks: usize = groups.iter().map(|g| g.gate.rows().div_ceil(chunk)).sum();
    let needs_q = groups.iter().any(|g| fast(p, &g.gate) || fast(p, &g.up));
    let h_ptr = SharedMut::new(h);
    with_quantized(needs_q, x, cols, |q| {
        pool.run(tasks, &|task| {
            let (gi, r0, r1) = locate(task, groups.len(), |g| groups[g].gate.rows(), chunk);
            let grp = &groups[gi];
            let qg = if fast(p, &grp.gate) { q } else { &[] };
            let qu = if fast(p, &grp.up) { q } else { &[] };
            ROW_BUF.with(|c1| {
                ROW_BUF2.with(|c2| {
                    let (mut buf, mut gates) = (c1.borrow_mut(), c2.borrow_mut());
                    // The task's gate results, [row - r0][i], then up rows combined with them.
                    let n = grp.x_rows.len();
                    gates.resize((r1 - r0) * n, 0.0);
                    let gates_out = SharedMut::new(&mut gates[..]);
                    // SAFETY: `gates` is this task's own buffer, written at distinct (r, i).
                    row_dots(
                        &grp.gate,
                        r0..r1,
                        qg,
                        x,
                        cols,
                        grp.x_rows,
                        &mut buf,
                        |r, i, v| unsafe { gates_out.write((r - r0) * n + i, v) },
                    );
                    row_dots(
                        &grp.up,
                        r0..r1,
                        qu,
                        x,
                        cols,
                        grp.x_rows,
                        &mut buf,
                        |r, i, u| {
                            let v = silu(gates[(r - r0) * n + i]) * u;
                            // SAFETY: as in gather_matmul.
                            unsafe { h_ptr.write(grp.out_rows[i] as usize * rows + r, v) }
                        },
                    );
                })
            });
        });
    });
}

/// The unfused form of [`gather_swiglu`]: gate and up as two gathered matmuls (two passes
/// over the activations, an intermediate buffer `u`), then the activation. Kept as the
/// baseline the fused kernel is benchmarked and validated against.
pub fn gather_swiglu_unfused(
    pool: &ThreadPool,
    p: Precision,
    x: &[f32],
    groups: &[GatherPair],
    h: &mut [f32],
    u: &mut Vec<f32>,
) {
    u.resize(h.len(), 0.0);
    let gates: Vec<GatherGroup> = groups
        .iter()
        .map(|g| GatherGroup {
            w: g.gate,
            x_rows: g.x_rows,
            out_rows: g.out_rows,
        })
        .collect();
    let ups: Vec<GatherGroup> = groups
        .iter()
        .map(|g| GatherGroup {
            w: g.up,
            x_rows: g.x_rows,
            out_rows: g.out_rows,
        })
        .collect();
    gather_matmul(pool, p, x, &gates, h);
    gather_matmul(pool, p, x, &ups, u);
    let rows = groups.first().map_or(0, |g| g.gate.rows());
    for grp in groups {
        for &or in grp.out_rows {
            let range = or as usize * rows..(or as usize + 1) * rows;
            for (hv, uv) in h[range.clone()].iter_mut().zip(&u[range]) {
                *hv = silu(*hv) * uv;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::matrix::{DenseMatrix, QuantMatrix};
    use crate::quant::quantize_row;
    use crate::rng::Rng;
    use half::{bf16, f16};

    struct OwnedQ {
        packed: Vec<u32>,
        scales: Vec<f32>,
        biases: Vec<f32>,
        scales_bf: Vec<bf16>,
        biases_bf: Vec<bf16>,
        rows: usize,
        cols: usize,
        bits: u32,
        g: usize,
    }

    fn random_q(rng: &mut Rng, rows: usize, cols: usize, bits: u32, g: usize) -> OwnedQ {
        let (mut packed, mut scales, mut biases) = (vec![], vec![], vec![]);
        for _ in 0..rows {
            let w: Vec<f32> = (0..cols).map(|_| rng.normal()).collect();
            let (p, s, b) = quantize_row(&w, bits, g);
            packed.extend(p);
            scales.extend(s);
            biases.extend(b);
        }
        let scales_bf = scales.iter().map(|&v| bf16::from_f32(v)).collect();
        let biases_bf = biases.iter().map(|&v| bf16::from_f32(v)).collect();
        OwnedQ {
            packed,
            scales,
            biases,
            scales_bf,
            biases_bf,
            rows,
            cols,
            bits,
            g,
        }
    }

    impl OwnedQ {
        fn view(&self, bf: bool) -> Matrix<'_> {
            let (scales, biases) = if bf {
                (
                    FloatSlice::Bf16(&self.scales_bf),
                    FloatSlice::Bf16(&self.biases_bf),
                )
            } else {
                (FloatSlice::F32(&self.scales), FloatSlice::F32(&self.biases))
            };
            Matrix::Quant(QuantMatrix {
                packed: &self.packed,
                scales,
                biases,
                rows: self.rows,
                cols: self.cols,
                bits: self.bits,
                group_size: self.g,
                interleaved: false,
            })
        }
    }

    fn close(a: &[f32], b: &[f32], tol: f32) {
        for (i, (x, y)) in a.iter().zip(b).enumerate() {
            assert!(
                (x - y).abs() <= tol * (1.0 + y.abs()),
                "index {i}: {x} vs {y}"
            );
        }
    }

    #[test]
    fn quantized_matmul_matches_reference_every_width_and_odd_shapes() {
        let pool = ThreadPool::new(2);
        let mut rng = Rng::new(1);
        for bits in [2u32, 3, 4, 5, 6, 8] {
            for (rows, cols, g, m) in [
                (1usize, 32usize, 32usize, 1usize),
                (37, 64, 32, 1),
                (13, 128, 64, 3),
                (70, 256, 128, 5),
            ] {
                let q = random_q(&mut rng, rows, cols, bits, g);
                let x: Vec<f32> = (0..m * cols).map(|_| rng.normal()).collect();
                for bf in [false, true] {
                    let w = q.view(bf);
                    let (mut a, mut b) = (vec![0f32; m * rows], vec![0f32; m * rows]);
                    matmul(&pool, Precision::Exact, &x, m, &w, &mut a);
                    crate::reference::matmul(&x, m, &w, &mut b);
                    close(&a, &b, 1e-4);
                }
            }
        }
    }

    #[test]
    fn dense_matmul_all_dtypes() {
        let pool = ThreadPool::new(2);
        let mut rng = Rng::new(2);
        let (rows, cols, m) = (33, 45, 70);
        let w: Vec<f32> = (0..rows * cols).map(|_| rng.normal()).collect();
        let wh: Vec<f16> = w.iter().map(|&v| f16::from_f32(v)).collect();
        let wb: Vec<bf16> = w.iter().map(|&v| bf16::from_f32(v)).collect();
        let x: Vec<f32> = (0..m * cols).map(|_| rng.normal()).collect();
        for data in [
            FloatSlice::F32(&w),
            FloatSlice::F16(&wh),
            FloatSlice::Bf16(&wb),
        ] {
            let w = Matrix::Dense(DenseMatrix { data, rows, cols });
            let (mut a, mut b) = (vec![0f32; m * rows], vec![0f32; m * rows]);
            matmul(&pool, Precision::Exact, &x, m, &w, &mut a);
            crate::reference::matmul(&x, m, &w, &mut b);
            close(&a, &b, 1e-4);
        }
    }

    #[test]
    fn gathered_swiglu_and_down_match_reference() {
        let pool = ThreadPool::new(2);
        let mut rng = Rng::new(3);
        let (hidden, inter, n_tok) = (64usize, 96usize, 5usize);
        let experts: Vec<(OwnedQ, OwnedQ, OwnedQ)> = (0..3)
            .map(|_| {
                (
                    random_q(&mut rng, inter, hidden, 4, 32),
                    random_q(&mut rng, inter, hidden, 4, 32),
                    random_q(&mut rng, hidden, inter, 4, 32),
                )
            })
            .collect();
        let x: Vec<f32> = (0..n_tok * hidden).map(|_| rng.normal()).collect();
        // Slots: token t, choice j -> slot 2t+j; expert e gets these slots.
        let routes: [(Vec<u32>, Vec<u32>); 3] = [
            (vec![0, 2, 4], vec![0, 4, 8]),
            (vec![0, 1], vec![1, 2]),
            (vec![1, 2, 3, 3, 4], vec![3, 5, 6, 7, 9]),
        ];
        let pairs: Vec<GatherPair> = experts
            .iter()
            .zip(&routes)
            .map(|(e, (xr, or))| GatherPair {
                gate: e.0.view(false),
                up: e.1.view(true),
                x_rows: xr,
                out_rows: or,
            })
            .collect();
        let (mut h1, mut h2) = (vec![0f32; 10 * inter], vec![0f32; 10 * inter]);
        gather_swiglu(&pool, Precision::Exact, &x, &pairs, &mut h1);
        crate::reference::gather_swiglu(&x, &pairs, &mut h2);
        close(&h1, &h2, 1e-4);
        let (mut h4, mut u) = (vec![0f32; 10 * inter], Vec::new());
        gather_swiglu_unfused(&pool, Precision::Exact, &x, &pairs, &mut h4, &mut u);
        close(&h4, &h2, 1e-4);
        let downs: Vec<GatherGroup> = experts
            .iter()
            .zip(&routes)
            .map(|(e, (_, or))| GatherGroup {
                w: e.2.view(false),
                x_rows: or,
                out_rows: or,
            })
            .collect();
        let (mut y1, mut y2) = (vec![0f32; 10 * hidden], vec![0f32; 10 * hidden]);
        gather_matmul(&pool, Precision::Exact, &h1, &downs, &mut y1);
        crate::reference::gather_matmul(&h1, &downs, &mut y2);
        close(&y1, &y2, 1e-4);

        // The int8-activation path: within int8 rounding of the exact result.
        let (mut h3, mut y3) = (vec![0f32; 10 * inter], vec![0f32; 10 * hidden]);
        gather_swiglu(&pool, Precision::Fast, &x, &pairs, &mut h3);
        gather_matmul(&pool, Precision::Fast, &h1, &downs, &mut y3);
        let rel = |a: &[f32], b: &[f32]| {
            let num: f32 = a.iter().zip(b).map(|(x, y)| (x - y) * (x - y)).sum();
            (num / b.iter().map(|y| y * y).sum::<f32>()).sqrt()
        };
        assert!(
            rel(&h3, &h2) < 0.02,
            "swiglu relative error {}",
            rel(&h3, &h2)
        );
        assert!(
            rel(&y3, &y2) < 0.02,
            "down relative error {}",
            rel(&y3, &y2)
        );
    }
}
