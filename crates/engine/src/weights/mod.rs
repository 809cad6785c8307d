//! Weight files: safetensors over mmap, the multi-shard store, and typed weight views.

pub mod bytes;
pub mod linear;
pub mod safetensors;
pub mod store;

pub use linear::{Floats, Linear, WeightLoader};
pub use safetensors::{Dtype, Tensor};
pub use store::WeightStore;
