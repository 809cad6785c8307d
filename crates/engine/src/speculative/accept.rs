//! The acceptance rule of speculative decoding at one verified position.

use crate::sampling::{argmax, draw, Sampler};

/// What a verified position yields.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// The drafted token is kept; verification goes on to the next position.
    Accept(u32),
    /// This token (the main model's) ends the round: a rejected draft's replacement, or the
    /// token after the last draft.
    Replace(u32),
}

/// Greedy: the draft is kept when it is the main model's argmax (of the processed logits);
/// otherwise, or past the last draft, the argmax is the round's last token. The output is
/// thus exactly greedy decoding's.
pub fn greedy(processed: &[f32], drafted: Option<u32>) -> Verdict {
    let best = argmax(processed);
    match drafted {
        Some(d) if d == best => Verdict::Accept(d),
        _ => Verdict::Replace(best),
    }
}

/// Sampling: `p` is the main model's distribution at this position; `q` the draft's (from
/// which `drafted` was drawn), or `None` past the last draft (then a token is drawn from `p`).
/// A draft `d` is accepted with probability `min(1, p(d) / q(d))`; otherwise the replacement
/// is drawn from `max(0, p - q)` renormalised (computed in place over `q`). Every token then
/// has probability exactly `p` of coming out of the position.
pub fn sampled(
    p: &[f32],
    q: Option<&mut [f32]>,
    drafted: Option<u32>,
    sampler: &mut Sampler,
) -> Verdict {
    let (Some(q), Some(d)) = (q, drafted) else {
        return Verdict::Replace(draw(p, sampler.uniform()));
    };
    let (pd, qd) = (p[d as usize] as f64, q[d as usize] as f64);
    // u < p/q, written without the division (qd > 0: d was drawn from q).
    if sampler.uniform() * qd < pd {
        return Verdict::Accept(d);
    }
    for (r, &pi) in q.iter_mut().zip(p) {
        *r = (pi - *r).max(0.0);
    }
    // A rejection means p(d) < q(d), so some other token has p > q and the residual has
    // mass; rounding can still leave it empty when p and q are nearly equal: then p itself.
    let residual_mass: f64 = q.iter().map(|&r| r as f64).sum();
    let from: &[f32] = if residual_mass > 0.0 { q } else { p };
    Verdict::Replace(draw(from, sampler.uniform()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sampling::SamplingParams;

    fn sampler(seed: u64) -> Sampler {
        Sampler::new(SamplingParams {
            temperature: 1.0,
            seed: Some(seed),
            ..Default::default()
        })
    }

    #[test]
    fn greedy_keeps_only_the_argmax() {
        let logits = [0.1f32, 2.0, -1.0];
        assert_eq!(greedy(&logits, Some(1)), Verdict::Accept(1));
        assert_eq!(greedy(&logits, Some(0)), Verdict::Replace(1));
        assert_eq!(greedy(&logits, None), Verdict::Replace(1));
    }

    /// Draft from q, verify against p, many times: the tokens that come out follow p, not q
    /// (and both branches, acceptance and replacement, are taken).
    #[test]
    fn sampled_output_follows_the_main_distribution() {
        let p = [0.5f32, 0.3, 0.15, 0.05, 0.0];
        let q = [0.1f32, 0.2, 0.3, 0.2, 0.2];
        let mut s = sampler(11);
        let n = 200_000;
        let (mut hist, mut accepted) = ([0usize; 5], 0usize);
        let mut scratch = [0f32; 5];
        for _ in 0..n {
            scratch.copy_from_slice(&q);
            let d = draw(&q, s.uniform());
            let t = match sampled(&p, Some(&mut scratch), Some(d), &mut s) {
                Verdict::Accept(t) => {
                    accepted += 1;
                    t
                }
                Verdict::Replace(t) => t,
            };
            hist[t as usize] += 1;
        }
        for (h, want) in hist.iter().zip(p) {
            let got = *h as f64 / n as f64;
            assert!((got - want as f64).abs() < 0.004, "{hist:?} vs {p:?}");
        }
        // Acceptance probability is sum_x min(p, q) = 0.1 + 0.2 + 0.15 + 0.05 = 0.5.
        let rate = accepted as f64 / n as f64;
        assert!((rate - 0.5).abs() < 0.005, "acceptance {rate}");
        // Past the last draft: a plain draw from p.
        let mut hist = [0usize; 5];
        for _ in 0..n {
            if let Verdict::Replace(t) = sampled(&p, None, None, &mut s) {
                hist[t as usize] += 1;
            }
        }
        assert!((hist[0] as f64 / n as f64 - 0.5).abs() < 0.004, "{hist:?}");
        assert_eq!(hist[4], 0);
    }

    #[test]
    fn identical_distributions_always_accept() {
        let p = [0.25f32, 0.25, 0.5];
        let mut s = sampler(3);
        for _ in 0..1000 {
            let mut q = p;
            let d = draw(&p, s.uniform());
            assert_eq!(
                sampled(&p, Some(&mut q), Some(d), &mut s),
                Verdict::Accept(d)
            );
        }
    }
}
