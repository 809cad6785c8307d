//! What a block's `forward` runs with: the execution context ([`Exec`]: the kernels' thread
//! pool and arithmetic, the model's width and norm epsilon) and the sequences of a batched
//! step ([`SeqStep`]). Blocks take these instead of the model they are part of, so the model
//! file imports the blocks and no block imports the model.

use crate::cache::SeqCache;
use crate::weights::Linear;
use moestream_kernels::matmul::{gather_swiglu, gather_swiglu_unfused, matmul, GatherPair};
use moestream_kernels::Precision;
use moestream_kernels::{Matrix, ThreadPool};

/// Which logits a step of a batched forward pass wants.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LogitRows {
    /// None (a prompt chunk that is not the last).
    None,
    /// The last token's (`[vocab]`).
    Last,
    /// Every token's (`[tokens, vocab]`).
    All,
}

/// One sequence's share of a batched forward pass: its new tokens and its cache.
pub struct SeqStep<'a> {
    pub tokens: &'a [u32],
    pub cache: &'a mut SeqCache,
    pub logits: LogitRows,
}

/// The execution context of one forward pass.
#[derive(Clone, Copy)]
pub struct Exec<'a> {
    pub pool: &'a ThreadPool,
    /// Arithmetic of the quantized matmuls (int8 activations by default; `Exact` for
    /// comparisons with mlx and for `validate`'s reference).
    pub precision: Precision,
    /// gate+up+SwiGLU in one pass (default) or as two matmuls then the activation.
    pub fused_swiglu: bool,
    /// The residual stream's width.
    pub hidden: usize,
    pub eps: f32,
}

impl Exec<'_> {
    /// `out = x W^T` over `rows` rows in the model's arithmetic.
    pub fn matmul(&self, x: &[f32], rows: usize, w: &Matrix, out: &mut [f32]) {
        matmul(self.pool, self.precision, x, rows, w, out);
    }

    /// `out = x W^T + b` over `rows` rows in the model's arithmetic.
    pub fn linear(&self, x: &[f32], rows: usize, lin: &Linear, out: &mut [f32]) {
        self.matmul(x, rows, &lin.matrix(), out);
        add_bias(lin, out);
    }

    /// `out = x W^T` in f32 whatever the model's arithmetic: for routers and gates, where
    /// a flipped choice or a scaled output costs more than int8 rounding saves.
    pub fn matmul_exact(&self, x: &[f32], rows: usize, w: &Matrix, out: &mut [f32]) {
        matmul(self.pool, Precision::Exact, x, rows, w, out);
    }

    /// Gathered SwiGLU, fused or not per [`Exec::fused_swiglu`] (`u` is scratch for the
    /// unfused form).
    pub fn swiglu(&self, x: &[f32], pairs: &[GatherPair], h: &mut [f32], u: &mut Vec<f32>) {
        if self.fused_swiglu {
            gather_swiglu(self.pool, self.precision, x, pairs, h);
        } else {
            gather_swiglu_unfused(self.pool, self.precision, x, pairs, h, u);
        }
    }
}

/// Adds `lin`'s bias (if any) to every row of `out`.
pub fn add_bias(lin: &Linear, out: &mut [f32]) {
    if let Some(b) = &lin.bias {
        let b = b.view();
        for row in out.chunks_exact_mut(lin.rows) {
            for (i, v) in row.iter_mut().enumerate() {
                *v += b.get(i);
            }
        }
    }
}
