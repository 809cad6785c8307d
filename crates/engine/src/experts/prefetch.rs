//! Router lookahead, the model side of `--prefetch lookahead`: after layer l has routed, the
//! next MoE layer's router is applied to layer l's residual stream (normalised with that
//! layer's post-attention norm; its own attention output is not known yet) and the experts
//! it picks are handed to the store as a prefetch hint, so their reads overlap layer l's
//! compute. A wrong guess costs a read, never a different output.

use super::Prefetch;
use crate::cache::{sized, Scratch};
use crate::models::transformer::{FeedForward, Transformer};
use moestream_kernels::matmul::matmul;
use moestream_kernels::norm::rms_norm;
use moestream_kernels::qdot::Precision;
use moestream_kernels::router::router_topk;

/// Largest token x top-k product worth predicting for (decode and small batches; a prefill
/// chunk touches most experts of a layer anyway).
const MAX_PREDICTED: usize = 64;

impl Transformer {
    /// Called by `moe()` of `layer` once its routing is done (`s.router` is free again,
    /// `s.x` holds the residual stream entering the MoE block, `s.last_rows` is unused until
    /// the final norm).
    pub(crate) fn prefetch_lookahead(&self, layer: usize, l: usize, s: &mut Scratch) {
        if self.experts.prefetch_policy() != Prefetch::Lookahead {
            return;
        }
        let Some((next, moe)) =
            self.layers
                .iter()
                .enumerate()
                .skip(layer + 1)
                .find_map(|(i, ly)| match &ly.ffn {
                    FeedForward::Moe(m) => Some((i, m)),
                    FeedForward::Dense(_) => None,
                })
        else {
            return;
        };
        let (hsz, e, k) = (self.info.hidden_size, moe.n_experts, self.top_k(moe));
        if l * k > MAX_PREDICTED {
            return;
        }
        let xn = sized(&mut s.last_rows, l * hsz);
        rms_norm(
            &s.x[..l * hsz],
            &self.layers[next].post_norm.view(),
            self.eps,
            xn,
        );
        let logits = sized(&mut s.router, l * e);
        matmul(
            &self.pool,
            Precision::Exact,
            xn,
            l,
            &moe.router.matrix(),
            logits,
        );
        let (mut ids, mut w) = ([0u32; MAX_PREDICTED], [0f32; MAX_PREDICTED]);
        let (mut want, mut n) = ([0u32; MAX_PREDICTED], 0);
        for t in 0..l {
            router_topk(
                &moe.kind,
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
        self.experts.prefetch(next, &want[..n]);
    }
}
