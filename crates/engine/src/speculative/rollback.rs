//! Exact rollback of a sequence's cache to a point after a checkpoint. KV caches simply
//! forget the rows past that point. A recurrent (Gated DeltaNet) state cannot be trimmed, and
//! restoring the checkpoint alone would lose the tokens that were kept; so while a round runs,
//! each recurrent layer logs its inputs ([`crate::cache::RecurrentLog`]), and rolling back
//! restores the checkpoint and replays only the recurrence over the kept tokens. The state
//! then equals that of a sequence fed only the kept tokens, bit for bit: the replay runs the
//! same conv and delta-rule kernels on the same inputs, and those kernels give the same
//! result however the tokens are chunked.

use crate::cache::{Checkpoint, SeqCache};
use crate::models::transformer::{with_thread_scratch, Mixer};
use crate::models::Transformer;

/// Marks the cache's current point in `cp` (reusing its buffers) and starts logging the
/// recurrent layers' inputs (nothing to log for a pure KV cache).
pub fn mark(model: &Transformer, cache: &mut SeqCache, cp: &mut Checkpoint) {
    cache.checkpoint_into(cp);
    if cache.is_trimmable() {
        cache.log.stop();
    } else {
        cache.log.start(model.layers.len());
    }
}

/// Brings `cache` (marked at `cp` with [`mark`], then fed more tokens) back to its first
/// `keep` tokens, `cp.offset <= keep <= cache.offset`, as if only those had been fed; stops
/// the log.
pub fn rewind(model: &Transformer, cache: &mut SeqCache, cp: &Checkpoint, keep: usize) {
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
    cache.restore(cp);
    let SeqCache { recurrent, log, .. } = cache;
    with_thread_scratch(|scratch| {
        for (li, layer) in model.layers.iter().enumerate() {
            if let (Mixer::DeltaNet(d), Some(Some(st)), Some(l)) =
                (&layer.attn, recurrent.get_mut(li), log.layers.get(li))
            {
                d.replay(&model.dev, st, l, n, &mut scratch.delta_net);
            }
        }
    });
    cache.offset = cp.offset + n;
}
