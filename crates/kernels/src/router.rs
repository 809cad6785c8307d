//! MoE routing: scores, top-k and combine weights in one op.

use crate::activation::{sigmoid, softmax};

/// How a model turns router logits into (expert ids, combine weights).
#[derive(Clone, Debug, PartialEq)]
pub enum RouterKind {
    /// Qwen3-MoE / OLMoE: softmax over all experts, top-k, optional renormalisation.
    SoftmaxTopK { norm_topk_prob: bool },
    /// Mixtral: top-k on raw logits, softmax over the selected k.
    TopKSoftmax,
    /// GLM/DeepSeek noaux_tc: sigmoid scores, selection on scores + bias, optional
    /// renormalisation, then scaling.
    SigmoidTopK {
        norm_topk_prob: bool,
        routed_scaling: f32,
    },
}

/// Routes one token: `logits[E]` (overwritten as scratch) to `ids[k]` and `weights[k]`.
/// Ties pick the lower expert id. `bias` (length E) only affects selection.
pub fn router_topk(
    kind: &RouterKind,
    logits: &mut [f32],
    bias: Option<&[f32]>,
    ids: &mut [u32],
    weights: &mut [f32],
) {
    let k = ids.len();
    match kind {
        RouterKind::SoftmaxTopK { norm_topk_prob } => {
            softmax(logits);
            top_k(logits, None, ids);
            fill_weights(logits, ids, weights);
            if *norm_topk_prob {
                normalise(weights, 0.0);
            }
        }
        RouterKind::TopKSoftmax => {
            top_k(logits, None, ids);
            fill_weights(logits, ids, weights);
            softmax(weights);
        }
        RouterKind::SigmoidTopK {
            norm_topk_prob,
            routed_scaling,
        } => {
            logits.iter_mut().for_each(|v| *v = sigmoid(*v));
            top_k(logits, bias, ids);
            fill_weights(logits, ids, weights);
            if *norm_topk_prob && k > 1 {
                normalise(weights, 1e-20);
            }
            weights.iter_mut().for_each(|w| *w *= routed_scaling);
        }
    }
}

fn fill_weights(scores: &[f32], ids: &[u32], weights: &mut [f32]) {
    for (w, &id) in weights.iter_mut().zip(ids) {
        *w = scores[id as usize];
    }
}

fn normalise(w: &mut [f32], eps: f32) {
    let s: f32 = w.iter().sum::<f32>() + eps;
    w.iter_mut().for_each(|v| *v /= s);
}

/// Indices of the k largest `scores[i] + bias[i]`, in descending order (ties: lower index).
fn top_k(scores: &[f32], bias: Option<&[f32]>, ids: &mut [u32]) {
    let key = |i: usize| scores[i] + bias.map_or(0.0, |b| b[i]);
    let mut filled = 0usize;
    for i in 0..scores.len() {
        let v = key(i);
        if filled == ids.len() && v <= key(ids[filled - 1] as usize) {
            continue;
        }
        let mut pos = filled.min(ids.len() - 1);
        if filled < ids.len() {
            filled += 1;
        }
        while pos > 0 && key(ids[pos - 1] as usize) < v {
            ids[pos] = ids[pos - 1];
            pos -= 1;
        }
        ids[pos] = i as u32;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn softmax_topk_renormalises() {
        let mut logits = vec![0.0, 2.0, 1.0, 3.0, -1.0];
        let (mut ids, mut w) = ([0u32; 2], [0f32; 2]);
        router_topk(
            &RouterKind::SoftmaxTopK {
                norm_topk_prob: true,
            },
            &mut logits,
            None,
            &mut ids,
            &mut w,
        );
        assert_eq!(ids, [3, 1]);
        let e = (1.0f32).exp();
        assert!((w[0] - e / (e + 1.0)).abs() < 1e-6 && (w[0] + w[1] - 1.0).abs() < 1e-6);
    }

    #[test]
    fn ties_pick_the_lower_index_and_bias_only_selects() {
        let mut logits = vec![1.0, 1.0, 1.0, 0.0];
        let (mut ids, mut w) = ([0u32; 2], [0f32; 2]);
        router_topk(
            &RouterKind::SoftmaxTopK {
                norm_topk_prob: false,
            },
            &mut logits,
            None,
            &mut ids,
            &mut w,
        );
        assert_eq!(ids, [0, 1]);
        let mut logits = vec![0.0, 0.0, 0.0, 0.0];
        let bias = [0.0, 0.0, 0.5, 0.2];
        let kind = RouterKind::SigmoidTopK {
            norm_topk_prob: false,
            routed_scaling: 2.0,
        };
        router_topk(&kind, &mut logits, Some(&bias), &mut ids, &mut w);
        assert_eq!(ids, [2, 3]);
        assert_eq!(w, [1.0, 1.0]);
    }

    #[test]
    fn mixtral_softmax_over_selected() {
        let mut logits = vec![0.5, 2.0, 1.0];
        let (mut ids, mut w) = ([0u32; 2], [0f32; 2]);
        router_topk(
            &RouterKind::TopKSoftmax,
            &mut logits,
            None,
            &mut ids,
            &mut w,
        );
        assert_eq!(ids, [1, 2]);
        let e = (1.0f32).exp();
        assert!((w[0] - e / (e + 1.0)).abs() < 1e-6);
    }
}
