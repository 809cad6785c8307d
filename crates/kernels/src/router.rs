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
    /// renormalisation, then scaling. With `n_group > 1` the experts form `n_group` equal
    /// groups ranked by the sum of their two best selection scores, and all but the best
    /// `topk_group` groups have their selection scores set to 0 before the top-k.
    SigmoidTopK {
        norm_topk_prob: bool,
        routed_scaling: f32,
        n_group: usize,
        topk_group: usize,
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
            n_group,
            topk_group,
        } => {
            logits.iter_mut().for_each(|v| *v = sigmoid(*v));
            if *n_group > 1 {
                SELECTION.with(|cell| {
                    let mut sel = cell.borrow_mut();
                    sel.clear();
                    sel.extend(
                        logits
                            .iter()
                            .enumerate()
                            .map(|(i, s)| s + bias.map_or(0.0, |b| b[i])),
                    );
                    drop_weak_groups(&mut sel, *n_group, *topk_group);
                    top_k(&sel, None, ids);
                });
            } else {
                top_k(logits, bias, ids);
            }
            fill_weights(logits, ids, weights);
            if *norm_topk_prob && k > 1 {
                normalise(weights, 1e-20);
            }
            weights.iter_mut().for_each(|w| *w *= routed_scaling);
        }
    }
}

/// The most expert groups [`RouterKind::SigmoidTopK`] handles.
pub const MAX_GROUPS: usize = 64;

thread_local! {
    /// Selection scores of a grouped router (reused across tokens).
    static SELECTION: std::cell::RefCell<Vec<f32>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// mlx-lm's `group_expert_select` masking: ranks the `n_group` groups of `sel` by the sum of
/// their two largest entries and sets every entry of the `n_group - topk_group` lowest groups
/// to 0 (ties: the later group is dropped first). At most [`MAX_GROUPS`] groups (model
/// loaders check).
fn drop_weak_groups(sel: &mut [f32], n_group: usize, topk_group: usize) {
    assert!(
        n_group <= MAX_GROUPS,
        "{n_group} expert groups (at most {MAX_GROUPS})"
    );
    let size = sel.len() / n_group;
    let mut score = [f32::INFINITY; MAX_GROUPS];
    for (g, sc) in score.iter_mut().enumerate().take(n_group.min(MAX_GROUPS)) {
        let (mut a, mut b) = (f32::NEG_INFINITY, f32::NEG_INFINITY);
        for &v in &sel[g * size..(g + 1) * size] {
            if v > a {
                (a, b) = (v, a);
            } else if v > b {
                b = v;
            }
        }
        *sc = a + b;
    }
    for _ in topk_group..n_group {
        let (weakest, _) =
            score[..n_group]
                .iter()
                .enumerate()
                .fold(
                    (0, f32::INFINITY),
                    |best, (g, &v)| if v <= best.1 { (g, v) } else { best },
                );
        score[weakest] = f32::INFINITY;
        sel[weakest * size..(weakest + 1) * size].fill(0.0);
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
            n_group: 1,
            topk_group: 1,
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

    /// Grouped selection against a brute-force reading of mlx-lm's `group_expert_select`:
    /// group scores are the sum of the top two (score + bias), the weakest groups are zeroed,
    /// weights come from the unbiased sigmoid scores, renormalised and scaled.
    #[test]
    fn grouped_sigmoid_router_matches_brute_force() {
        let mut rng = crate::rng::Rng::new(5);
        let (e, n_group, topk_group, k) = (16usize, 4usize, 2usize, 3usize);
        let kind = RouterKind::SigmoidTopK {
            norm_topk_prob: true,
            routed_scaling: 1.8,
            n_group,
            topk_group,
        };
        for _ in 0..200 {
            let logits: Vec<f32> = (0..e).map(|_| rng.normal()).collect();
            let bias: Vec<f32> = (0..e).map(|_| 0.3 * rng.normal()).collect();
            let sc: Vec<f32> = logits.iter().map(|&v| sigmoid(v)).collect();
            let mut sel: Vec<f32> = sc.iter().zip(&bias).map(|(s, b)| s + b).collect();
            let size = e / n_group;
            let mut groups: Vec<(f32, usize)> = (0..n_group)
                .map(|g| {
                    let mut v = sel[g * size..(g + 1) * size].to_vec();
                    v.sort_by(|a, b| b.total_cmp(a));
                    (v[0] + v[1], g)
                })
                .collect();
            groups.sort_by(|a, b| a.0.total_cmp(&b.0));
            for &(_, g) in &groups[..n_group - topk_group] {
                sel[g * size..(g + 1) * size].fill(0.0);
            }
            let mut order: Vec<usize> = (0..e).collect();
            order.sort_by(|&a, &b| sel[b].total_cmp(&sel[a]).then(a.cmp(&b)));
            let want_ids: Vec<u32> = order[..k].iter().map(|&i| i as u32).collect();
            let total: f32 = order[..k].iter().map(|&i| sc[i]).sum::<f32>() + 1e-20;
            let (mut ids, mut w) = (vec![0u32; k], vec![0f32; k]);
            router_topk(&kind, &mut logits.clone(), Some(&bias), &mut ids, &mut w);
            assert_eq!(ids, want_ids);
            for (j, &i) in order[..k].iter().enumerate() {
                assert!((w[j] - 1.8 * sc[i] / total).abs() < 1e-6);
            }
        }
    }
}
