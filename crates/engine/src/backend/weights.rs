//! What the blocks hold: a device's weight types. Architecture files load host weights
//! ([`HostWeights`]: views of the files, laid out as the backend's
//! [`super::Backend::weight_layout`] asked); a device whose kernels read its own memory has
//! weight types of its own, made from the host ones once at load.

use crate::weights::{Floats, Linear};

/// The weight types of one device. A marker type (no data): blocks are generic over it
/// (`Attention<W>`), and a backend names its family as `Backend::Weights`.
pub trait WeightSet: Send + Sync + 'static {
    /// A matrix (quantized or float) with its optional bias.
    type Matrix: Send + Sync;
    /// A norm's weight vector (f32, f16 or bf16).
    type Vector: Send + Sync;
    /// f32 values computed at load (a conv weight transposed, gate constants, a router's
    /// selection bias).
    type Values: Send + Sync;
}

/// Host weights: the loader's matrices and vectors, read in place by the CPU's kernels.
pub struct HostWeights;

impl WeightSet for HostWeights {
    type Matrix = Linear;
    type Vector = Floats;
    type Values = Vec<f32>;
}
