//! The op vocabulary of moestream.
//!
//! Every op has a plain scalar reference (in [`reference`]) that is the spec in code, and a
//! fast version with the same signature (the top-level functions of each module) that tests
//! hold to the reference. Nothing here does I/O or knows about model files: weights arrive as
//! borrowed views ([`Matrix`]), activations as `f32` slices.

pub mod activation;
pub mod attention;
pub mod delta;
pub mod dequant_dot;
pub mod hugebuf;
pub mod interleave;
pub mod isa;
pub mod matmul;
pub mod matrix;
pub mod membw;
pub mod mla;
pub mod norm;
pub mod pool;
pub mod precision;
pub mod qdot;
pub mod quant;
pub mod reference;
pub mod rng;
pub mod rope;
pub mod router;
pub mod simd;

pub use matrix::{DenseMatrix, FloatSlice, Matrix, QuantMatrix};
pub use pool::ThreadPool;
pub use precision::Precision;
