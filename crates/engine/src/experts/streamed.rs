//! Streamed experts: routed experts stay on disk and are read on demand into a per-layer
//! slot buffer (the "stacked buffer"); hits are served from slots without any read, misses of
//! one layer are read together at depth. The dense weights stay mapped and resident.
//!
//! In MLX files each expert is a contiguous slab of each stacked tensor, so an expert is 9
//! positional reads (gate/up/down × weight/scales/biases) straight into its slot, with no
//! repacking; the slot then serves as the expert's matrices for the gathered kernels.

use super::io::{
    direct_region, view_offset, IoEngine, IoPool, Priority, ReadJob, SourceFiles, Ticket,
    DIRECT_ALIGN,
};
use super::{
    ExpertMats, ExpertSource, ExpertStore, ExpertWeights, Prefetch, StoreStats, UsageCounters,
};
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
    /// What to read before it is asked for.
    pub prefetch: Prefetch,
    /// Read experts with `O_DIRECT` (bypassing the page cache).
    pub direct_io: bool,
    /// io_uring (probed) or the pread pool.
    pub io_engine: IoEngine,
    /// Re-lay 4-bit experts into the interleaved layout as they arrive in a slot, on the reader
    /// threads (set by the loader where the int8 kernels want that layout and have no
    /// row-major 4-bit kernel).
    pub interleave_slots: bool,
}

impl Default for StreamOptions {
    fn default() -> Self {
        // Chosen by measurement (BENCHMARKS.md, streaming): 64 slots beat 32 and 16 at every
        // depth, depth 16 beat 4, router lookahead beat no prefetch in every cell, and the
        // pread pool beat io_uring for buffered and direct reads on the dev machine.
        StreamOptions {
            cache_slots: 64,
            io_depth: 16,
            memory_budget: None,
            prefetch: Prefetch::Lookahead,
            direct_io: false,
            io_engine: IoEngine::Pread,
            interleave_slots: false,
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

/// Where each part of an expert lies inside a slot. Buffered: parts packed at
/// [`PART_ALIGN`]. Direct: each part gets an aligned region that can take the aligned
/// superset a direct read needs; the part then starts at its file offset's phase inside it.
struct SlotLayout {
    /// Per projection (gate, up, down): region offset and part length of each part.
    parts: [Vec<(usize, usize)>; 3],
    slot_bytes: usize,
    direct: bool,
}

impl SlotLayout {
    fn of(e: &ExpertWeights, direct: bool) -> Self {
        let mut off = 0usize;
        let mut place = |lin: &crate::weights::Linear| {
            lin.parts()
                .iter()
                .map(|b| {
                    let at = off;
                    off += if direct {
                        direct_region(b.len())
                    } else {
                        b.len().div_ceil(PART_ALIGN) * PART_ALIGN
                    };
                    (at, b.len())
                })
                .collect::<Vec<_>>()
        };
        let parts = [place(&e.gate), place(&e.up), place(&e.down)];
        SlotLayout {
            parts,
            slot_bytes: off,
            direct,
        }
    }

    /// Where `src`'s bytes start inside its region.
    fn at(&self, src: &crate::weights::bytes::Bytes) -> usize {
        view_offset(src, self.direct)
    }
}

/// Zeroed memory aligned for direct reads (pages are only touched as slots fill).
struct AlignedBuf {
    ptr: *mut u8,
    len: usize,
}

// SAFETY: plain memory; access is serialised by the layer's mutex and the tickets of reads
// in flight.
unsafe impl Send for AlignedBuf {}
unsafe impl Sync for AlignedBuf {}

impl AlignedBuf {
    fn zeroed(len: usize) -> Self {
        let layout = std::alloc::Layout::from_size_align(len.max(1), DIRECT_ALIGN)
            .expect("slot buffer layout");
        // SAFETY: non-zero size.
        let ptr = unsafe { std::alloc::alloc_zeroed(layout) };
        if ptr.is_null() {
            std::alloc::handle_alloc_error(layout);
        }
        AlignedBuf { ptr, len }
    }
}

impl Drop for AlignedBuf {
    fn drop(&mut self) {
        let layout = std::alloc::Layout::from_size_align(self.len.max(1), DIRECT_ALIGN)
            .expect("slot buffer layout");
        // SAFETY: allocated in `zeroed` with this layout.
        unsafe { std::alloc::dealloc(self.ptr, layout) }
    }
}

/// Reads started by a prefetch, not yet waited for: their slots already name their experts,
/// so anyone locking the layer settles this first.
struct Pending {
    ticket: Ticket,
    slots: Vec<usize>,
}

/// The slots of one layer and who is in them.
struct Slots {
    buf: AlignedBuf,
    /// Expert held by each slot.
    owner: Vec<Option<u32>>,
    /// Last use (a tick) of each slot, for LRU replacement.
    last_use: Vec<u64>,
    /// Slot of each expert, if resident.
    slot_of: Vec<Option<u32>>,
    /// Whether the slot was filled by a prefetch and not used since.
    prefetched: Vec<bool>,
    pending: Option<Pending>,
    /// Experts the last call used (for `Prefetch::Prev`).
    last_ids: Vec<u32>,
    tick: u64,
}

struct Layer {
    experts: Vec<ExpertWeights>,
    layout: SlotLayout,
    slots: Mutex<Slots>,
}

pub struct StreamedExperts {
    layers: Vec<Option<Layer>>,
    /// MoE layer after each layer (wrapping to the first for the next token), for `Prev`.
    next_moe: Vec<Option<usize>>,
    files: SourceFiles,
    io: IoPool,
    options: StreamOptions,
    hits: AtomicU64,
    misses: AtomicU64,
    bytes_read: AtomicU64,
    read_nanos: AtomicU64,
    prefetch_reads: AtomicU64,
    prefetch_hits: AtomicU64,
    prefetch_bytes: AtomicU64,
    prefetch_wait_nanos: AtomicU64,
    usage: UsageCounters,
}

impl StreamedExperts {
    /// Takes the experts' metadata (views into the mapped files, which this store never
    /// touches through the mapping), opens the files for reads and allocates the slots.
    pub fn new(layers: Vec<Option<Vec<ExpertWeights>>>, options: StreamOptions) -> Self {
        let usage = UsageCounters::new(&layers);
        let mut files = SourceFiles::default();
        for e in layers.iter().flatten().flatten() {
            for lin in [&e.gate, &e.up, &e.down] {
                for b in lin.parts() {
                    files.open(b, options.direct_io);
                }
            }
        }
        let layers: Vec<Option<Layer>> = layers
            .into_iter()
            .map(|l| {
                l.filter(|e| !e.is_empty()).map(|experts| {
                    let layout = SlotLayout::of(&experts[0], options.direct_io);
                    let n = options.cache_slots.max(1);
                    let slots = Slots {
                        buf: AlignedBuf::zeroed(n * layout.slot_bytes),
                        owner: vec![None; n],
                        last_use: vec![0; n],
                        slot_of: vec![None; experts.len()],
                        prefetched: vec![false; n],
                        pending: None,
                        last_ids: Vec::with_capacity(experts.len()),
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
        let moe: Vec<usize> = (0..layers.len()).filter(|&i| layers[i].is_some()).collect();
        let next_moe = (0..layers.len())
            .map(|i| {
                let next = moe
                    .iter()
                    .copied()
                    .find(|&j| j > i)
                    .or(moe.first().copied());
                next.filter(|&j| j != i)
            })
            .collect();
        StreamedExperts {
            layers,
            next_moe,
            files,
            io: IoPool::new(options.io_depth, options.io_engine),
            options,
            hits: AtomicU64::new(0),
            misses: AtomicU64::new(0),
            bytes_read: AtomicU64::new(0),
            read_nanos: AtomicU64::new(0),
            prefetch_reads: AtomicU64::new(0),
            prefetch_hits: AtomicU64::new(0),
            prefetch_bytes: AtomicU64::new(0),
            prefetch_wait_nanos: AtomicU64::new(0),
            usage,
        }
    }

    pub fn options(&self) -> StreamOptions {
        self.options
    }

    /// Bytes of one slot in every MoE layer.
    pub fn bytes_per_slot(layers: &[Option<Vec<ExpertWeights>>], direct_io: bool) -> u64 {
        layers
            .iter()
            .flatten()
            .filter_map(|e| e.first())
            .map(|e| SlotLayout::of(e, direct_io).slot_bytes as u64)
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

    /// Waits for the layer's prefetch reads, if any; a failed one leaves its slots empty
    /// (the demand path will read them again and report a lasting error).
    fn settle(&self, s: &mut Slots) {
        if let Some(p) = s.pending.take() {
            let t = Instant::now();
            let r = p.ticket.wait();
            self.prefetch_wait_nanos
                .fetch_add(t.elapsed().as_nanos() as u64, Ordering::Relaxed);
            if r.is_err() {
                for slot in p.slots {
                    if let Some(old) = s.owner[slot].take() {
                        s.slot_of[old as usize] = None;
                    }
                    s.prefetched[slot] = false;
                }
            }
        }
    }

    /// Whether `lin`'s copies in the slots are re-laid into the interleaved layout.
    fn relays(&self, lin: &crate::weights::Linear) -> bool {
        self.options.interleave_slots && lin.can_interleave()
    }

    /// Read jobs that fill `slot` with expert `id`.
    fn jobs_for(
        &self,
        l: &Layer,
        base: *mut u8,
        slot: usize,
        id: u32,
        jobs: &mut Vec<ReadJob>,
    ) -> u64 {
        let slot_bytes = l.layout.slot_bytes;
        let e = &l.experts[id as usize];
        let mut bytes = 0u64;
        for (k, lin) in [&e.gate, &e.up, &e.down].into_iter().enumerate() {
            // The 4-bit parts are re-laid by the reader threads as they land (see
            // `StreamOptions::interleave_slots`).
            let steps = self.relays(lin).then(|| lin.interleave_steps());
            for (p, (src, &(off, len))) in
                lin.parts().into_iter().zip(&l.layout.parts[k]).enumerate()
            {
                debug_assert_eq!(src.len(), len);
                bytes += len as u64;
                // SAFETY: inside the slot; the buffer outlives the batch (the store settles
                // every batch before touching or freeing its slots).
                let region = unsafe { base.add(slot * slot_bytes + off) };
                jobs.push(
                    ReadJob::new(src, self.files.get(src), region, l.layout.direct)
                        .then(steps.map(|s| s[p])),
                );
            }
        }
        bytes
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
        if self.options.prefetch == Prefetch::Prev {
            if let Some(next) = self.next_moe[layer] {
                self.prefetch_prev(next);
            }
        }
        let mut slots = l.slots.lock().unwrap_or_else(|e| e.into_inner());
        self.settle(&mut slots);
        let n_slots = slots.owner.len();
        for batch in ids.chunks(n_slots) {
            let placed = self.fill(l, layer, &mut slots, batch)?;
            let base = slots.buf.ptr as *const u8;
            let slot_bytes = l.layout.slot_bytes;
            let mats: Vec<ExpertMats> = batch
                .iter()
                .zip(&placed)
                .map(|(&id, &slot)| {
                    // SAFETY: the slot holds `slot_bytes` initialised bytes inside `buf`, which
                    // lives (locked, no reads in flight into it) until `f` returns.
                    let mem = unsafe {
                        std::slice::from_raw_parts(base.add(slot * slot_bytes), slot_bytes)
                    };
                    let e = &l.experts[id as usize];
                    let view = |k: usize, lin: &'_ crate::weights::Linear| {
                        let parts: Vec<&[u8]> = l.layout.parts[k]
                            .iter()
                            .zip(lin.parts())
                            .map(|(&(o, n), src)| {
                                let o = o + l.layout.at(src);
                                &mem[o..o + n]
                            })
                            .collect();
                        lin.matrix_over(&parts, self.relays(lin))
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
        if self.options.prefetch == Prefetch::Prev {
            slots.last_ids.clear();
            slots.last_ids.extend_from_slice(ids);
        }
        Ok(())
    }
}

impl ExpertSource for StreamedExperts {
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
            prefetch_reads: self.prefetch_reads.load(Ordering::Relaxed),
            prefetch_hits: self.prefetch_hits.load(Ordering::Relaxed),
            prefetch_bytes: self.prefetch_bytes.load(Ordering::Relaxed),
            prefetch_wait_secs: self.prefetch_wait_nanos.load(Ordering::Relaxed) as f64 * 1e-9,
        }
    }

    fn prefetch_policy(&self) -> Prefetch {
        self.options.prefetch
    }

    fn prefetch(&self, layer: usize, ids: &[u32]) {
        let Some(l) = self.layers.get(layer).and_then(Option::as_ref) else {
            return;
        };
        let mut s = l.slots.lock().unwrap_or_else(|e| e.into_inner());
        self.prefetch_locked(l, &mut s, ids);
    }

    fn describe(&self) -> Option<String> {
        let mut d = format!(
            "{} at depth {}, {}, prefetch {}",
            self.io.engine_name(),
            self.io.depth(),
            match (self.options.direct_io, self.files.any_direct()) {
                (false, _) => "buffered reads".to_string(),
                (true, true) => "direct I/O".to_string(),
                (true, false) => "buffered reads (direct I/O unavailable)".to_string(),
            },
            self.options.prefetch.as_str()
        );
        if let Some(why) = &self.io.uring_failure {
            if self.options.io_engine != IoEngine::Pread {
                d += &format!("; io_uring unavailable ({why}), using the pread pool");
            }
        }
        if let Some(why) = &self.files.direct_failure {
            d += &format!("; O_DIRECT refused: {why}");
        }
        Some(d)
    }
}

impl StreamedExperts {
    /// `Prev`: re-read the experts `layer` used last time, if they left its slots.
    fn prefetch_prev(&self, layer: usize) {
        let Some(l) = self.layers.get(layer).and_then(Option::as_ref) else {
            return;
        };
        let mut s = l.slots.lock().unwrap_or_else(|e| e.into_inner());
        let ids = std::mem::take(&mut s.last_ids);
        self.prefetch_locked(l, &mut s, &ids);
        s.last_ids = ids;
    }

    /// Starts reading those of `ids` not in the slots into the least recently used slots
    /// that hold none of `ids`. Skipped while an earlier prefetch of this layer is still in
    /// flight, or when `ids` would not fit.
    fn prefetch_locked(&self, l: &Layer, s: &mut Slots, ids: &[u32]) {
        if let Some(p) = &s.pending {
            if !p.ticket.is_done() {
                return;
            }
            self.settle(s);
        }
        let n_slots = s.owner.len();
        if ids.is_empty() || ids.len() > n_slots {
            return;
        }
        let missing: Vec<u32> = ids
            .iter()
            .copied()
            .filter(|&id| (id as usize) < l.experts.len() && s.slot_of[id as usize].is_none())
            .collect();
        if missing.is_empty() {
            return;
        }
        let mut candidates: Vec<usize> = (0..n_slots)
            .filter(|&k| s.owner[k].is_none_or(|o| !ids.contains(&o)))
            .collect();
        candidates.sort_by_key(|&k| (s.owner[k].is_some(), s.last_use[k]));
        let base = s.buf.ptr;
        let mut jobs = Vec::new();
        let mut bytes = 0u64;
        let mut filled = Vec::with_capacity(missing.len());
        for (&id, &slot) in missing.iter().zip(&candidates) {
            if let Some(old) = s.owner[slot].take() {
                s.slot_of[old as usize] = None;
            }
            bytes += self.jobs_for(l, base, slot, id, &mut jobs);
            s.owner[slot] = Some(id);
            s.slot_of[id as usize] = Some(slot as u32);
            s.prefetched[slot] = true;
            s.last_use[slot] = s.tick;
            filled.push(slot);
        }
        self.prefetch_reads
            .fetch_add(filled.len() as u64, Ordering::Relaxed);
        self.prefetch_bytes.fetch_add(bytes, Ordering::Relaxed);
        let ticket = self.io.submit(jobs, Priority::Prefetch);
        s.pending = Some(Pending {
            ticket,
            slots: filled,
        });
    }

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
                    let slot = slot as usize;
                    placed[i] = slot;
                    s.last_use[slot] = tick;
                    if std::mem::take(&mut s.prefetched[slot]) {
                        self.prefetch_hits.fetch_add(1, Ordering::Relaxed);
                    }
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
        let base = s.buf.ptr;
        let mut jobs = Vec::new();
        let mut bytes = 0u64;
        for (&i, &slot) in misses.iter().zip(&candidates) {
            if let Some(old) = s.owner[slot].take() {
                s.slot_of[old as usize] = None;
            }
            s.prefetched[slot] = false;
            bytes += self.jobs_for(l, base, slot, batch[i], &mut jobs);
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

impl Drop for StreamedExperts {
    /// Reads in flight write into the slot buffers: wait for them before the buffers go.
    fn drop(&mut self) {
        for l in self.layers.iter().flatten() {
            let mut s = l.slots.lock().unwrap_or_else(|e| e.into_inner());
            if let Some(p) = s.pending.take() {
                let _ = p.ticket.wait();
            }
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
            ..Default::default()
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
