//! GGUF, llama.cpp's model file: a header, typed metadata, a tensor directory, then aligned
//! tensor data. This crate reads the first three from bytes (no I/O of its own: the engine
//! maps the file, the tokenizer reads the metadata) and maps the block quant types onto MLX's
//! affine format, `w = scale * q + bias` per group, which the engine's kernels run.
//!
//! Files: [`header`] (parsing and validation), [`value`] (metadata values), [`ggml_type`]
//! (the tensor types and their block sizes), [`affine`] (block types to affine rows),
//! [`reference`] (llama.cpp's dequantization formulas, for tests), [`split`] (multi-file
//! models), [`writer`] (test fixtures and synthetic models).
//!
//! Format facts (tensor types, block layouts, the metadata keys) are from llama.cpp's
//! `ggml/src/ggml-common.h`, `ggml/src/ggml-quants.c` and `gguf-py/gguf/constants.py`.

pub mod affine;
pub mod ggml_type;
pub mod header;
pub mod reference;
pub mod split;
pub mod value;
pub mod writer;

#[cfg(test)]
mod tests;

pub use affine::{affine_len, fit_f16, to_affine, to_affine_into, AffineRows};
pub use ggml_type::GgmlType;
pub use header::{Gguf, GgufError, TensorInfo};
pub use value::Value;
pub use writer::GgufWriter;
