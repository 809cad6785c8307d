//! Router lookahead, the model side of `--prefetch lookahead`: after layer l has routed, the
//! next MoE layer's router is applied to layer l's residual stream (normalised with that
//! layer's post-attention norm; its own attention output is not known yet) and the experts
//! it picks are handed to the store as a prefetch hint, so their reads overlap layer l's
//! compute. A wrong guess costs a read, never a different output.

use super::exec::Exec;
use crate::backend::{Backend, HostWeights, WeightSet};
use crate::cache::Scratch;
use crate::experts::ExpertSource;
use moestream_kernels::router::RouterKind;

/// Largest token x top-k product worth predicting for (decode and small batches; a prefill
/// chunk touches most experts of a layer anyway).
const MAX_PREDICTED: usize = 64;

/// The next MoE layer, as the lookahead sees it: its post-attention norm and its router.
pub struct Lookahead<'a, W: WeightSet = HostWeights> {
    pub layer: usize,
    pub norm: &'a W::Vector,
    pub router: &'a W::Matrix,
    pub kind: &'a RouterKind,
    pub n_experts: usize,
    pub top_k: usize,
}

/// Called by the MoE block once its routing is done, when the store's policy is
/// `Prefetch::Lookahead` (the decoder only finds the next MoE layer then): `s.router` is free
/// again, `s.x` holds the residual stream entering the block, `s.last_rows` is unused until
/// the final norm.
pub fn prefetch<B: Backend>(
    ex: &Exec<B>,
    experts: &B::Experts,
    next: &Lookahead<B::Weights>,
    l: usize,
    s: &mut Scratch<B::Mem>,
) {
    let (dev, e, k) = (ex.dev, next.n_experts, next.top_k);
    if l * k > MAX_PREDICTED {
        return;
    }
    dev.rms_norm(&s.x, next.norm, ex.eps, &mut s.last_rows);
    ex.linear_exact(&s.last_rows, l, next.router, &mut s.router);
    let (ids, w) = (&mut s.predicted_ids, &mut s.predicted_w);
    dev.router_topk(next.kind, &mut s.router, e, None, k, ids, w);
    dev.ids_to_host(ids, &mut s.predicted);
    let want = &mut s.predicted;
    let mut n = 0;
    for i in 0..want.len() {
        let id = want[i];
        if !want[..n].contains(&id) {
            want[n] = id;
            n += 1;
        }
    }
    experts.prefetch(next.layer, &want[..n]);
}
