//! What a block's `forward` runs with: the execution context ([`Exec`]: the backend, the
//! arithmetic, the model's width and norm epsilon) and the sequences of a batched step
//! ([`SeqStep`]). Blocks take these instead of the model they are part of, so the model
//! file imports the blocks and no block imports the model.

use crate::backend::{Backend, Cpu, Mat, F32, U32};
use crate::cache::SeqCache;
use moestream_kernels::Precision;

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
pub struct SeqStep<'a, B: Backend = Cpu> {
    pub tokens: &'a [u32],
    pub cache: &'a mut SeqCache<B::Mem>,
    pub logits: LogitRows,
}

/// The execution context of one forward pass.
pub struct Exec<'a, B: Backend = Cpu> {
    pub dev: &'a B,
    /// Arithmetic of the quantized matmuls (int8 activations by default; `Exact` for
    /// comparisons with mlx and for `validate`'s reference).
    pub precision: Precision,
    /// gate+up+SwiGLU in one pass (default) or as two matmuls then the activation.
    pub fused_swiglu: bool,
    /// The residual stream's width.
    pub hidden: usize,
    pub eps: f32,
}

impl<B: Backend> Exec<'_, B> {
    /// `out = x W^T + b` over `rows` rows in the model's arithmetic.
    pub fn linear(&self, x: &F32<B>, rows: usize, lin: &Mat<B>, out: &mut F32<B>) {
        self.dev.linear(self.precision, x, rows, lin, out);
    }

    /// `out = x W^T + b` in f32 whatever the model's arithmetic: for routers and gates,
    /// where a flipped choice or a scaled output costs more than int8 rounding saves.
    pub fn linear_exact(&self, x: &F32<B>, rows: usize, lin: &Mat<B>, out: &mut F32<B>) {
        self.dev.linear(Precision::Exact, x, rows, lin, out);
    }

    /// `h = silu(x G^T) * (x U^T)` in the model's arithmetic and fusion (`idx`, `u`:
    /// scratch).
    #[allow(clippy::too_many_arguments)]
    pub fn swiglu(
        &self,
        x: &F32<B>,
        rows: usize,
        gate_up: (&Mat<B>, &Mat<B>),
        h: &mut F32<B>,
        scratch: (&mut U32<B>, &mut F32<B>),
    ) {
        let (p, fused) = (self.precision, self.fused_swiglu);
        self.dev.swiglu(p, fused, x, rows, gate_up, h, scratch);
    }
}
