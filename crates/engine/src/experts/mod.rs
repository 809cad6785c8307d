//! The expert store: where the routed experts' weights come from.
//!
//! Model code asks for the experts a layer's tokens were routed to and receives matrices the
//! gathered kernels consume; it never knows whether they are resident (views into the
//! mapped files) or streamed from disk into slots.

pub mod io;
pub mod streamed;

use crate::error::RunError;
use crate::weights::Linear;
use moestream_kernels::Matrix;
use std::sync::atomic::{AtomicU64, Ordering};

/// Counters of a streamed store: what was served from slots, what was read, and how long
/// the forward pass waited for reads.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct StoreStats {
    pub hits: u64,
    pub misses: u64,
    /// Bytes read on misses (demand reads).
    pub bytes_read: u64,
    /// Time the forward pass waited for demand reads.
    pub read_secs: f64,
    /// Experts read ahead of need by a prefetch policy.
    pub prefetch_reads: u64,
    pub prefetch_bytes: u64,
    /// Time the forward pass waited for prefetch reads still in flight.
    pub prefetch_wait_secs: f64,
    /// Prefetched experts that a forward pass then used (counted in `hits`).
    pub prefetch_hits: u64,
}

impl StoreStats {
    pub fn hit_rate(&self) -> f64 {
        let n = self.hits + self.misses;
        if n == 0 {
            0.0
        } else {
            self.hits as f64 / n as f64
        }
    }

    /// Time the forward pass waited on reads of any kind.
    pub fn stall_secs(&self) -> f64 {
        self.read_secs + self.prefetch_wait_secs
    }

    /// Bytes read of any kind.
    pub fn total_bytes(&self) -> u64 {
        self.bytes_read + self.prefetch_bytes
    }

    /// Read bandwidth of demand reads (their bytes over the time spent waiting for them).
    pub fn read_bandwidth(&self) -> f64 {
        if self.read_secs > 0.0 {
            self.bytes_read as f64 / self.read_secs
        } else {
            0.0
        }
    }

    /// Share of prefetched experts that were used before being evicted.
    pub fn prefetch_hit_rate(&self) -> f64 {
        if self.prefetch_reads == 0 {
            0.0
        } else {
            self.prefetch_hits as f64 / self.prefetch_reads as f64
        }
    }

    /// Counters accumulated between `earlier` and `self`.
    pub fn since(&self, earlier: &StoreStats) -> StoreStats {
        StoreStats {
            hits: self.hits - earlier.hits,
            misses: self.misses - earlier.misses,
            bytes_read: self.bytes_read - earlier.bytes_read,
            read_secs: self.read_secs - earlier.read_secs,
            prefetch_reads: self.prefetch_reads - earlier.prefetch_reads,
            prefetch_bytes: self.prefetch_bytes - earlier.prefetch_bytes,
            prefetch_wait_secs: self.prefetch_wait_secs - earlier.prefetch_wait_secs,
            prefetch_hits: self.prefetch_hits - earlier.prefetch_hits,
        }
    }
}

/// What a streamed store reads before a layer asks for it. Prefetch only changes what is in
/// the slots, never the output.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Prefetch {
    #[default]
    None,
    /// When layer l is fetched, re-read the experts the previous token used in the next MoE
    /// layer (wrapping to the first layer for the next token) if they left the slots.
    Prev,
    /// After layer l routes, apply the next MoE layer's router to layer l's residual stream
    /// and read the experts it picks while layer l computes.
    Lookahead,
}

impl std::str::FromStr for Prefetch {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "none" => Ok(Prefetch::None),
            "prev" => Ok(Prefetch::Prev),
            "lookahead" => Ok(Prefetch::Lookahead),
            _ => Err(format!("{s:?}: expected none, prev or lookahead")),
        }
    }
}

impl Prefetch {
    pub fn as_str(&self) -> &'static str {
        match self {
            Prefetch::None => "none",
            Prefetch::Prev => "prev",
            Prefetch::Lookahead => "lookahead",
        }
    }
}

/// One expert's three projections.
#[derive(Clone, Copy, Debug)]
pub struct ExpertMats<'a> {
    pub gate: Matrix<'a>,
    pub up: Matrix<'a>,
    pub down: Matrix<'a>,
}

/// What the decoder and the tools ask of an expert store whatever memory its experts live
/// in: prefetch hints, counters and sizes. A backend names its store type
/// (`Backend::Experts`); the one with host matrices is [`ExpertStore`].
pub trait ExpertSource: Send + Sync {
    /// The prefetch policy the model should drive (`Lookahead` needs the model's routers).
    fn prefetch_policy(&self) -> Prefetch {
        Prefetch::None
    }

    /// Starts reading experts `ids` of `layer` in the background (a hint: no error, no wait;
    /// ignored by stores without slots).
    fn prefetch(&self, _layer: usize, _ids: &[u32]) {}

    /// One line on how experts are served (I/O engine, direct I/O, prefetch), for the log.
    fn describe(&self) -> Option<String> {
        None
    }

    /// Streaming counters (zero for resident stores).
    fn stats(&self) -> StoreStats {
        StoreStats::default()
    }

    /// Bytes of one expert's weights in `layer` (for roofline figures).
    fn expert_bytes(&self, layer: usize) -> usize;

    /// How many times each expert of each layer was handed out since load (one count per
    /// forward call that used it): `usage()[layer][expert]`, empty for dense layers. Shows the
    /// routing spread (synthetic models must not route everything to a few experts).
    fn usage(&self) -> Vec<Vec<u64>>;
}

/// An expert store in host memory (the CPU backend's): resident views of the mapped files,
/// or slots that `io.rs` reads missing experts into.
pub trait ExpertStore: ExpertSource {
    /// Makes experts `ids` (distinct) of MoE layer `layer` available and calls
    /// `f(batch, mats)` with their matrices (`mats[i]` is expert `batch[i]`). A store with
    /// fewer slots than `ids` calls `f` several times with consecutive sub-slices of `ids`.
    fn with_experts(
        &self,
        layer: usize,
        ids: &[u32],
        f: &mut dyn FnMut(&[u32], &[ExpertMats<'_>]),
    ) -> Result<(), RunError>;

    /// Every expert's weights, per layer (`None` for dense layers), when they are all
    /// resident: what a device backend copies into its own memory. `None` for a store that
    /// reads them on demand.
    fn resident(&self) -> Option<&[Option<Vec<ExpertWeights>>]> {
        None
    }
}

/// Per-layer, per-expert use counts (the routing spread), shared by every store.
pub struct UsageCounters(Vec<Vec<AtomicU64>>);

impl UsageCounters {
    /// Zeroed counters shaped like `layers` (empty for dense layers).
    pub fn new(layers: &[Option<Vec<ExpertWeights>>]) -> Self {
        UsageCounters(
            layers
                .iter()
                .map(|l| {
                    l.as_ref().map_or(Vec::new(), |e| {
                        e.iter().map(|_| AtomicU64::new(0)).collect()
                    })
                })
                .collect(),
        )
    }

    pub fn count(&self, layer: usize, ids: &[u32]) {
        for &id in ids {
            if let Some(c) = self.0.get(layer).and_then(|l| l.get(id as usize)) {
                c.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    pub fn snapshot(&self) -> Vec<Vec<u64>> {
        self.0
            .iter()
            .map(|l| l.iter().map(|c| c.load(Ordering::Relaxed)).collect())
            .collect()
    }
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
    counts: UsageCounters,
}

impl ResidentExperts {
    pub fn new(layers: Vec<Option<Vec<ExpertWeights>>>) -> Self {
        let counts = UsageCounters::new(&layers);
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
        f: &mut dyn FnMut(&[u32], &[ExpertMats<'_>]),
    ) -> Result<(), RunError> {
        let experts = self
            .layers
            .get(layer)
            .and_then(Option::as_ref)
            .ok_or_else(|| RunError::Experts(format!("layer {layer} has no routed experts")))?;
        self.counts.count(layer, ids);
        if ids.len() > MAX_EXPERTS {
            return Err(RunError::Experts(format!(
                "{} experts requested at once",
                ids.len()
            )));
        }
        let mut mats = Vec::with_capacity(ids.len());
        for &id in ids {
            let e = experts.get(id as usize).ok_or_else(|| {
                RunError::Experts(format!("expert {id} of layer {layer} does not exist"))
            })?;
            mats.push(e.mats());
        }
        f(ids, &mats);
        Ok(())
    }

    fn resident(&self) -> Option<&[Option<Vec<ExpertWeights>>]> {
        Some(&self.layers)
    }
}

impl ExpertSource for ResidentExperts {
    fn expert_bytes(&self, layer: usize) -> usize {
        self.layers
            .get(layer)
            .and_then(Option::as_ref)
            .and_then(|e| e.first())
            .map_or(0, |e| e.gate.bytes() + e.up.bytes() + e.down.bytes())
    }

    fn usage(&self) -> Vec<Vec<u64>> {
        self.counts.snapshot()
    }
}
