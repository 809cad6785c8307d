//! Exact rollback of a sequence's cache to a point after a checkpoint. KV caches simply
//! forget the rows past that point. A recurrent (Gated DeltaNet) state cannot be trimmed, and
//! restoring the checkpoint alone would lose the tokens that were kept; so while a round runs,
//! each recurrent layer logs its inputs ([`crate::cache::RecurrentLog`]), and rolling back
//! restores the checkpoint and replays only the recurrence over the kept tokens. The state
//! then equals that of a sequence fed only the kept tokens, bit for bit: the replay runs the
//! same conv and delta-rule kernels on the same inputs, and those kernels give the same
//! result however the tokens are chunked.

use crate::backend::{Backend, Memory};
use crate::cache::{Checkpoint, DeltaState, SeqCache};
use crate::models::transformer::Mixer;
use crate::models::Transformer;

/// Marks the cache's current point in `cp` (reusing its buffers) and starts logging the
/// recurrent layers' inputs (nothing to log for a pure KV cache).
pub fn mark<B: Backend>(
    model: &Transformer<B>,
    cache: &mut SeqCache<B::Mem>,
    cp: &mut Checkpoint<B::Mem>,
) {
    checkpoint_into(&model.dev, cache, cp);
    if cache.is_trimmable() {
        cache.log.stop();
    } else {
        cache
            .log
            .start(model.layers.len(), |b| model.dev.resize(b, 0));
    }
}

/// `cache`'s checkpoint into `cp`, reusing its buffers (no allocation once they have the
/// right sizes).
fn checkpoint_into<B: Backend>(dev: &B, cache: &SeqCache<B::Mem>, cp: &mut Checkpoint<B::Mem>) {
    cp.offset = cache.offset;
    cp.recurrent.resize(cache.recurrent.len(), None);
    for (dst, src) in cp.recurrent.iter_mut().zip(&cache.recurrent) {
        match (dst, src) {
            (Some(d), Some(s)) if same_shape::<B::Mem>(d, s) => dev.copy_state(d, s),
            (d, s) => *d = s.clone(),
        }
    }
}

fn same_shape<M: Memory>(a: &DeltaState<M>, b: &DeltaState<M>) -> bool {
    M::len(&a.conv) == M::len(&b.conv) && M::len(&a.state) == M::len(&b.state)
}

/// Returns `cache` to `cp` (taken from it, at or before the current position): the KV
/// caches keep their rows below `cp.offset` and recurrent states are copied back in place.
pub fn restore<B: Backend>(dev: &B, cache: &mut SeqCache<B::Mem>, cp: &Checkpoint<B::Mem>) {
    debug_assert!(cp.offset <= cache.offset && cp.recurrent.len() == cache.recurrent.len());
    cache.offset = cp.offset;
    for (dst, src) in cache.recurrent.iter_mut().zip(&cp.recurrent) {
        match (dst, src) {
            (Some(d), Some(s)) => dev.copy_state(d, s),
            (d, s) => *d = s.clone(),
        }
    }
}

/// Brings `cache` (marked at `cp` with [`mark`], then fed more tokens) back to its first
/// `keep` tokens, `cp.offset <= keep <= cache.offset`, as if only those had been fed; stops
/// the log.
pub fn rewind<B: Backend>(
    model: &Transformer<B>,
    cache: &mut SeqCache<B::Mem>,
    cp: &Checkpoint<B::Mem>,
    keep: usize,
) {
    cache.log.stop();
    debug_assert!(cp.offset <= keep, "rewind before the mark");
    if keep >= cache.offset {
        return;
    }
    if cache.is_trimmable() {
        cache.truncate(keep);
        return;
    }
    let n = keep.saturating_sub(cp.offset);
    restore(&model.dev, cache, cp);
    let SeqCache { recurrent, log, .. } = cache;
    let mut own = Default::default();
    let mut lock = model.scratch.try_lock();
    let scratch = match &mut lock {
        Ok(s) => &mut s.delta_net,
        Err(_) => &mut own,
    };
    for (li, layer) in model.layers.iter().enumerate() {
        if let (Mixer::DeltaNet(d), Some(Some(st)), Some(l)) =
            (&layer.attn, recurrent.get_mut(li), log.layers.get(li))
        {
            d.replay(&model.dev, st, l, n, scratch);
        }
    }
    cache.offset = cp.offset + n;
}
