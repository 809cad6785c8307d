//! The expert store: where the routed experts' weights come from.
//!
//! Model code asks for the experts a layer's tokens were routed to and receives matrices the
//! gathered kernels consume; it never knows whether they are resident (views into the
//! mapped files) or, later, streamed from disk into slots.

use crate::error::RunError;
use crate::weights::Linear;
use moestream_kernels::Matrix;
use std::sync::atomic::{AtomicU64, Ordering};

/// One expert's three projections.
#[derive(Clone, Copy, Debug)]
pub struct ExpertMats<'a> {
    pub gate: Matrix<'a>,
    pub up: Matrix<'a>,
    pub down: Matrix<'a>,
}

pub trait ExpertStore: Send + Sync {
    /// Makes experts `ids` (distinct) of MoE layer `layer` available and calls `f` with their
    /// matrices, in the order of `ids`.
    fn with_experts(
        &self,
        layer: usize,
        ids: &[u32],
        f: &mut dyn FnMut(&[ExpertMats<'_>]),
    ) -> Result<(), RunError>;

    /// Bytes of one expert's weights in `layer` (for roofline figures).
    fn expert_bytes(&self, layer: usize) -> usize;

    /// How many times each expert of each layer was handed out since load (one count per
    /// forward call that used it): `usage()[layer][expert]`, empty for dense layers. Shows the
    /// routing spread (synthetic models must not route everything to a few experts).
    fn usage(&self) -> Vec<Vec<u64>>;
}

/// An expert's weights held as views into the mapped files.
#[derive(Clone)]
pub struct ExpertWeights {
    pub gate: Linear,
    pub up: Linear,
    pub down: Linear,
}

impl ExpertWeights {
    pub fn mats(&self) -> ExpertMats<'_> {
        ExpertMats {
            gate: self.gate.matrix(),
            up: self.up.matrix(),
            down: self.down.matrix(),
        }
    }
}

/// All experts resident (mapped): the default when the model fits in memory.
pub struct ResidentExperts {
    /// Indexed by layer; `None` for layers without routed experts.
    layers: Vec<Option<Vec<ExpertWeights>>>,
    counts: Vec<Vec<AtomicU64>>,
}

impl ResidentExperts {
    pub fn new(layers: Vec<Option<Vec<ExpertWeights>>>) -> Self {
        let counts = layers
            .iter()
            .map(|l| {
                l.as_ref().map_or(Vec::new(), |e| {
                    e.iter().map(|_| AtomicU64::new(0)).collect()
                })
            })
            .collect();
        ResidentExperts { layers, counts }
    }
}

/// Most experts one call can hand out (a prefill batch can touch every expert of a layer).
const MAX_EXPERTS: usize = 1024;

impl ExpertStore for ResidentExperts {
    fn with_experts(
        &self,
        layer: usize,
        ids: &[u32],
        f: &mut dyn FnMut(&[ExpertMats<'_>]),
    ) -> Result<(), RunError> {
        let experts = self
            .layers
            .get(layer)
            .and_then(Option::as_ref)
            .ok_or_else(|| RunError::Experts(format!("layer {layer} has no routed experts")))?;
        if ids.len() > MAX_EXPERTS {
            return Err(RunError::Experts(format!(
                "{} experts requested at once",
                ids.len()
            )));
        }
        let mut mats = Vec::with_capacity(ids.len());
        for &id in ids {
            if let Some(c) = self.counts[layer].get(id as usize) {
                c.fetch_add(1, Ordering::Relaxed);
            }
            let e = experts.get(id as usize).ok_or_else(|| {
                RunError::Experts(format!("expert {id} of layer {layer} does not exist"))
            })?;
            mats.push(e.mats());
        }
        f(&mats);
        Ok(())
    }

    fn expert_bytes(&self, layer: usize) -> usize {
        self.layers
            .get(layer)
            .and_then(Option::as_ref)
            .and_then(|e| e.first())
            .map_or(0, |e| e.gate.bytes() + e.up.bytes() + e.down.bytes())
    }

    fn usage(&self) -> Vec<Vec<u64>> {
        self.counts
            .iter()
            .map(|l| l.iter().map(|c| c.load(Ordering::Relaxed)).collect())
            .collect()
    }
}
