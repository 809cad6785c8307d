//! Where a backend keeps its numbers: the buffer types that the caches, the recurrent states
//! and the scratch of a forward pass are made of. Split from the op vocabulary (`Backend`) so
//! that the cache types can name their storage without depending on the ops.

use std::fmt::Debug;

/// A family of buffer types on one device. A marker type (no data): the caches are generic
/// over it (`KvCache<M>`, `Scratch<M>`), and a backend names its family as `Backend::Mem`.
pub trait Memory: Clone + Copy + Debug + Default + PartialEq + Send + Sync + 'static {
    /// f32 values: activations, KV rows, recurrent states. Its length is the number of values
    /// an op produced (a backend resizes it; its capacity is kept across calls).
    type F32: Clone + Debug + Default + PartialEq + Send + Sync;
    /// u32 values: expert ids and the dispatch tables.
    type U32: Clone + Debug + Default + PartialEq + Send + Sync;

    /// The number of values `b` holds.
    fn len(b: &Self::F32) -> usize;
}

/// Host memory: plain vectors (the CPU backend's family).
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Host;

impl Memory for Host {
    type F32 = Vec<f32>;
    type U32 = Vec<u32>;

    fn len(b: &Vec<f32>) -> usize {
        b.len()
    }
}
