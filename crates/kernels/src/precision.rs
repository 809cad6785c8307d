//! The arithmetic policy of the quantized matmuls, chosen by the engine (a model's setting,
//! `--exact`) and passed to every matmul kernel.

/// Which arithmetic the quantized matmuls use.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Precision {
    /// f32 activations, dequantized weights: matches mlx's float32 results to rounding.
    Exact,
    /// int8 activations with integer dot products where the weight format has a kernel
    /// (4- and 8-bit); other widths fall back to `Exact`.
    #[default]
    Fast,
}
