//! Router lookahead, the model side of `--prefetch lookahead`: after layer l has routed, the
//! next MoE layer's router is applied to layer l's residual stream (normalised with that
//! layer's post-attention norm; its own attention output is not known yet) and the experts
//! it picks are handed to the store as a prefetch hint, so their reads overlap layer l's
//! compute. A wrong guess costs a read, never a different output.

use super::exec::Exec;
use crate::cache::{sized, Scratch};
use crate::experts::ExpertStore;
use crate::weights::{Floats, Linear};
use moestream_kernels::norm::rms_norm;
use moestream_kernels::router::{router_topk, RouterKind};

/// Largest token x top-k product worth predicting for (decode and small batches; a prefill
/// chunk touches most experts of a layer anyway).
const MAX_PREDICTED: usize = 64;

/// The next MoE layer, as the lookahead sees it: its post-attention norm and its router.
pub struct Lookahead<'a> {
    pub layer: usize,
    pub norm: &'a Floats,
    pub router: &'a Linear,
    pub kind: &'a RouterKind,
    pub n_experts: usize,
    pub top_k: usize,
}

/// Called by the MoE block once its routing is done, when the store's policy is
/// `Prefetch::Lookahead` (the decoder only finds the next MoE layer then): `s.router` is free
/// again, `s.x` holds the residual stream entering the block, `s.last_rows` is unused until
/// the final norm.
pub fn prefetch(ex: &Exec, experts: &dyn ExpertStore, next: &Lookahead, l: usize, s: &mut Scratch) {
    let (hsz, e, k) = (ex.hidden, next.n_experts, next.top_k);
    if l * k > MAX_PREDICTED {
        return;
    }
    let xn = sized(&mut s.last_rows, l * hsz);
    rms_norm(&s.x[..l * hsz], &next.norm.view(), ex.eps, xn);
    let logits = sized(&mut s.router, l * e);
    ex.matmul_exact(xn, l, &next.router.matrix(), logits);
    let (mut ids, mut w) = ([0u32; MAX_PREDICTED], [0f32; MAX_PREDICTED]);
    let (mut want, mut n) = ([0u32; MAX_PREDICTED], 0);
    for t in 0..l {
        router_topk(
            next.kind,
            &mut logits[t * e..(t + 1) * e],
            None,
            &mut ids[..k],
            &mut w[..k],
        );
        for &id in &ids[..k] {
            if !want[..n].contains(&id) {
                want[n] = id;
                n += 1;
            }
        }
    }
    experts.prefetch(next.layer, &want[..n]);
}
