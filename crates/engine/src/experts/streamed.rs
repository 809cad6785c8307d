//! Streamed experts: routed experts stay on disk and are read on demand into a per-layer
//! slot buffer (the "stacked buffer"); hits are served from slots without any read, misses of
//! one layer are read together at depth. The dense weights stay mapped and resident.
//!
//! In MLX files each expert is a contiguous slab of each stacked tensor, so an expert is 9
//! positional reads (gate/up/down × weight/scales/biases) straight into its slot, with no
//! repacking; the slot then serves as the expert's matrices for the gathered kernels.

use super::io::{IoPool, ReadJob};
use super::{ExpertMats, ExpertStore, ExpertWeights, StoreStats, UsageCounters};
use crate::error::RunError;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Instant;

/// Alignment of every part inside a slot (a cache line; also satisfies f32/u32 views).
const PART_ALIGN: usize = 64;

#[derive(Clone, Copy, Debug)]
pub struct StreamOptions {
    /// Slots per MoE layer (experts kept in memory per layer).
    pub cache_slots: usize,
    /// Reads in flight at once.
    pub io_depth: usize,
    /// Cap on what the engine holds (resident dense weights + slots + a KV reserve); the
    /// slot count is lowered to fit. `None`: no cap.
    pub memory_budget: Option<u64>,
}

impl Default for StreamOptions {
    fn default() -> Self {
        StreamOptions {
            cache_slots: 32,
            io_depth: 16,
            memory_budget: None,
        }
    }
}

/// How the memory budget was spent (reported at load).
#[derive(Clone, Copy, Debug, Default)]
pub struct BudgetPlan {
    pub budget: Option<u64>,
    pub dense_bytes: u64,
    pub kv_reserve: u64,
    pub bytes_per_slot: u64,
    pub slots_requested: usize,
    pub slots: usize,
}

impl BudgetPlan {
    /// What the engine holds at most under this plan.
    pub fn total(&self) -> u64 {
        self.dense_bytes + self.kv_reserve + self.slots as u64 * self.bytes_per_slot
    }
}

impl StreamOptions {
    /// Fits the slot count into the budget: `dense + kv + slots * (one slot in every MoE
    /// layer) <= budget`. Fails when not even one slot per layer fits.
    pub fn plan(
        &self,
        dense_bytes: u64,
        kv_reserve: u64,
        bytes_per_slot: u64,
    ) -> Result<BudgetPlan, String> {
        let mut plan = BudgetPlan {
            budget: self.memory_budget,
            dense_bytes,
            kv_reserve,
            bytes_per_slot,
            slots_requested: self.cache_slots,
            slots: self.cache_slots,
        };
        if let Some(budget) = self.memory_budget {
            let left = budget.saturating_sub(dense_bytes + kv_reserve);
            let fit = (left / bytes_per_slot.max(1)) as usize;
            if fit == 0 {
                return Err(format!(
                    "memory budget {:.2} GB is too small: dense weights {:.2} GB + KV reserve {:.2} GB + one expert slot per layer {:.2} GB",
                    budget as f64 / 1e9,
                    dense_bytes as f64 / 1e9,
                    kv_reserve as f64 / 1e9,
                    bytes_per_slot as f64 / 1e9
                ));
            }
            plan.slots = self.cache_slots.min(fit);
        }
        Ok(plan)
    }
}

/// Where each part of an expert lies inside a slot: offsets of the 9 (or 3) parts.
struct SlotLayout {
    /// Per projection (gate, up, down): byte offset and length of each part.
    parts: [Vec<(usize, usize)>; 3],
    slot_bytes: usize,
}

impl SlotLayout {
    fn of(e: &ExpertWeights) -> Self {
        let mut off = 0usize;
        let mut place = |lin: &crate::weights::Linear| {
            lin.parts()
                .iter()
                .map(|b| {
                    let at = off;
                    off += b.len().div_ceil(PART_ALIGN) * PART_ALIGN;
                    (at, b.len())
                })
                .collect::<Vec<_>>()
        };
        let parts = [place(&e.gate), place(&e.up), place(&e.down)];
        SlotLayout {
            parts,
            slot_bytes: off,
        }
    }
}

/// The slots of one layer and who is in them.
struct Slots {
    buf: Vec<u64>,
    /// Expert held by each slot.
    owner: Vec<Option<u32>>,
    /// Last use (a tick) of each slot, for LRU replacement.
    last_use: Vec<u64>,
    /// Slot of each expert, if resident.
    slot_of: Vec<Option<u32>>,
    tick: u64,
}

struct Layer {
    experts: Vec<ExpertWeights>,
    layout: SlotLayout,
    slots: Mutex<Slots>,
}

pub struct StreamedExperts {
    layers: Vec<Option<Layer>>,
    io: IoPool,
    options: StreamOptions,
    hits: AtomicU64,
    misses: AtomicU64,
    bytes_read: AtomicU64,
    read_nanos: AtomicU64,
    usage: UsageCounters,
}

impl StreamedExperts {
    /// Takes the experts' metadata (views into the mapped files, which this store never
    /// touches through the mapping) and allocates the slots.
    pub fn new(layers: Vec<Option<Vec<ExpertWeights>>>, options: StreamOptions) -> Self {
        let usage = UsageCounters::new(&layers);
        let layers = layers
            .into_iter()
            .map(|l| {
                l.filter(|e| !e.is_empty()).map(|experts| {
                    let layout = SlotLayout::of(&experts[0]);
                    let n = options.cache_slots.max(1);
                    let slots = Slots {
                        buf: vec![0u64; n * layout.slot_bytes / 8],
                        owner: vec![None; n],
                        last_use: vec![0; n],
                        slot_of: vec![None; experts.len()],
                        tick: 0,
                    };
                    Layer {
                        experts,
                        layout,
                        slots: Mutex::new(slots),
                    }
                })
            })
            .collect();
        StreamedExperts {
            layers,
            io: IoPool::new(options.io_depth),
            options,
            hits: AtomicU64::new(0),
            misses: AtomicU64::new(0),
            bytes_read: AtomicU64::new(0),
            read_nanos: AtomicU64::new(0),
            usage,
        }
    }

    pub fn options(&self) -> StreamOptions {
        self.options
    }

    /// Bytes of one slot in every MoE layer.
    pub fn bytes_per_slot(layers: &[Option<Vec<ExpertWeights>>]) -> u64 {
        layers
            .iter()
            .flatten()
            .filter_map(|e| e.first())
            .map(|e| SlotLayout::of(e).slot_bytes as u64)
            .sum()
    }

    /// Bytes of slot memory across all layers.
    pub fn slot_bytes(&self) -> usize {
        self.layers
            .iter()
            .flatten()
            .map(|l| l.layout.slot_bytes * self.options.cache_slots.max(1))
            .sum()
    }
}

impl ExpertStore for StreamedExperts {
    fn with_experts(
        &self,
        layer: usize,
        ids: &[u32],
        f: &mut dyn FnMut(&[u32], &[ExpertMats<'_>]),
    ) -> Result<(), RunError> {
        let l = self
            .layers
            .get(layer)
            .and_then(Option::as_ref)
            .ok_or_else(|| RunError::Experts(format!("layer {layer} has no routed experts")))?;
        if let Some(&bad) = ids.iter().find(|&&id| id as usize >= l.experts.len()) {
            return Err(RunError::Experts(format!(
                "expert {bad} of layer {layer} does not exist"
            )));
        }
        self.usage.count(layer, ids);
        let mut slots = l.slots.lock().unwrap_or_else(|e| e.into_inner());
        let n_slots = slots.owner.len();
        for batch in ids.chunks(n_slots) {
            let placed = self.fill(l, layer, &mut slots, batch)?;
            let base = slots.buf.as_ptr() as *const u8;
            let slot_bytes = l.layout.slot_bytes;
            let mats: Vec<ExpertMats> = batch
                .iter()
                .zip(&placed)
                .map(|(&id, &slot)| {
                    // SAFETY: the slot holds `slot_bytes` initialised bytes inside `buf`, which
                    // lives (locked) until `f` returns.
                    let mem = unsafe {
                        std::slice::from_raw_parts(base.add(slot * slot_bytes), slot_bytes)
                    };
                    let e = &l.experts[id as usize];
                    let view = |k: usize, lin: &'_ crate::weights::Linear| {
                        let parts: Vec<&[u8]> = l.layout.parts[k]
                            .iter()
                            .map(|&(o, n)| &mem[o..o + n])
                            .collect();
                        lin.matrix_over(&parts)
                    };
                    ExpertMats {
                        gate: view(0, &e.gate),
                        up: view(1, &e.up),
                        down: view(2, &e.down),
                    }
                })
                .collect();
            f(batch, &mats);
        }
        Ok(())
    }

    fn expert_bytes(&self, layer: usize) -> usize {
        self.layers
            .get(layer)
            .and_then(Option::as_ref)
            .map_or(0, |l| l.layout.parts.iter().flatten().map(|p| p.1).sum())
    }

    fn usage(&self) -> Vec<Vec<u64>> {
        self.usage.snapshot()
    }

    fn stats(&self) -> StoreStats {
        StoreStats {
            hits: self.hits.load(Ordering::Relaxed),
            misses: self.misses.load(Ordering::Relaxed),
            bytes_read: self.bytes_read.load(Ordering::Relaxed),
            read_secs: self.read_nanos.load(Ordering::Relaxed) as f64 * 1e-9,
        }
    }
}

impl StreamedExperts {
    /// Makes every expert of `batch` (at most one slot's worth each, `batch.len() <= slots`)
    /// resident and returns their slots: hits are reused, misses replace the least recently
    /// used slots not needed by this batch and are read together.
    fn fill(
        &self,
        l: &Layer,
        layer: usize,
        s: &mut Slots,
        batch: &[u32],
    ) -> Result<Vec<usize>, RunError> {
        s.tick += 1;
        let tick = s.tick;
        let mut placed = vec![usize::MAX; batch.len()];
        let mut misses = Vec::new();
        for (i, &id) in batch.iter().enumerate() {
            match s.slot_of[id as usize] {
                Some(slot) => {
                    placed[i] = slot as usize;
                    s.last_use[slot as usize] = tick;
                }
                None => misses.push(i),
            }
        }
        self.hits
            .fetch_add((batch.len() - misses.len()) as u64, Ordering::Relaxed);
        if misses.is_empty() {
            return Ok(placed);
        }
        self.misses
            .fetch_add(misses.len() as u64, Ordering::Relaxed);
        // Victims: free slots first, then the least recently used ones this batch doesn't use.
        let mut candidates: Vec<usize> = (0..s.owner.len())
            .filter(|&k| s.last_use[k] != tick)
            .collect();
        candidates.sort_by_key(|&k| (s.owner[k].is_some(), s.last_use[k]));
        let slot_bytes = l.layout.slot_bytes;
        let base = s.buf.as_mut_ptr() as *mut u8;
        let mut jobs = Vec::new();
        let mut bytes = 0u64;
        for (&i, &slot) in misses.iter().zip(&candidates) {
            if let Some(old) = s.owner[slot].take() {
                s.slot_of[old as usize] = None;
            }
            let id = batch[i];
            let e = &l.experts[id as usize];
            for (k, lin) in [&e.gate, &e.up, &e.down].into_iter().enumerate() {
                for (src, &(off, len)) in lin.parts().into_iter().zip(&l.layout.parts[k]) {
                    debug_assert_eq!(src.len(), len);
                    bytes += len as u64;
                    // SAFETY: inside the slot; the buffer is locked and outlives the batch.
                    jobs.push(ReadJob {
                        src: src.clone(),
                        dst: unsafe { base.add(slot * slot_bytes + off) },
                    });
                }
            }
            placed[i] = slot;
            s.last_use[slot] = tick;
        }
        let t = Instant::now();
        let result = self.io.read_all(jobs);
        self.read_nanos
            .fetch_add(t.elapsed().as_nanos() as u64, Ordering::Relaxed);
        match result {
            Ok(()) => {
                self.bytes_read.fetch_add(bytes, Ordering::Relaxed);
                for &i in &misses {
                    s.owner[placed[i]] = Some(batch[i]);
                    s.slot_of[batch[i] as usize] = Some(placed[i] as u32);
                }
                Ok(placed)
            }
            // The slots read into hold nothing valid now: they stay unowned.
            Err(e) => Err(RunError::Experts(format!(
                "reading an expert of layer {layer}: {e}"
            ))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn budget_lowers_slots_or_refuses() {
        let opts = StreamOptions {
            cache_slots: 32,
            io_depth: 4,
            memory_budget: Some(1_000),
        };
        // 1000 - 300 dense - 100 KV = 600 left: 6 slots of 100 bytes.
        let plan = opts.plan(300, 100, 100).unwrap();
        assert_eq!((plan.slots, plan.slots_requested), (6, 32));
        assert!(plan.total() <= 1_000);
        assert!(
            opts.plan(950, 100, 100).is_err(),
            "no room for one slot per layer"
        );
        let unlimited = StreamOptions {
            memory_budget: None,
            ..opts
        };
        assert_eq!(unlimited.plan(10_000, 0, 100).unwrap().slots, 32);
    }
}
