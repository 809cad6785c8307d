//! Token selection, with mlx-lm's semantics (`make_sampler`, `make_logits_processors`):
//! logits processors (repetition, presence and frequency penalties) first, then
//! `logprobs = logits - logsumexp(logits)`; temperature 0 is argmax; otherwise the filters
//! top-p, min-p and top-k run on the log-probabilities (in that order) and a token is drawn
//! from `softmax(logprobs / temperature)` over the survivors.

use moestream_kernels::activation::logsumexp;
use moestream_kernels::rng::Rng;

#[derive(Clone, Debug, PartialEq)]
pub struct SamplingParams {
    pub temperature: f32,
    /// Nucleus mass in (0, 1); 1 disables.
    pub top_p: f32,
    /// Keep the k most likely tokens; 0 disables.
    pub top_k: usize,
    /// Keep tokens with probability at least `min_p` times the best; 0 disables.
    pub min_p: f32,
    /// Divides positive (multiplies negative) logits of recently seen tokens; 1 disables.
    pub repetition_penalty: f32,
    /// How many recent tokens the repetition penalty looks at (mlx-lm: 20).
    pub repetition_context: usize,
    /// Subtracted once from the logit of every token already generated.
    pub presence_penalty: f32,
    /// Subtracted per occurrence from the logit of every token already generated.
    pub frequency_penalty: f32,
    /// Same seed, same tokens. `None` draws a seed from the clock.
    pub seed: Option<u64>,
}

impl Default for SamplingParams {
    fn default() -> Self {
        SamplingParams {
            temperature: 0.0,
            top_p: 1.0,
            top_k: 0,
            min_p: 0.0,
            repetition_penalty: 1.0,
            repetition_context: 20,
            presence_penalty: 0.0,
            frequency_penalty: 0.0,
            seed: None,
        }
    }
}

impl SamplingParams {
    /// Whether any logits processor (repetition, presence, frequency penalty) is on.
    pub fn has_penalties(&self) -> bool {
        self.repetition_penalty != 1.0
            || self.presence_penalty != 0.0
            || self.frequency_penalty != 0.0
    }

    /// Checks ranges; the message names the parameter.
    pub fn validate(&self) -> Result<(), String> {
        let bad =
            |name: &str, v: f32, want: &str| Err(format!("{name} = {v} is out of range: {want}"));
        if !(self.temperature >= 0.0 && self.temperature.is_finite()) {
            return bad("temperature", self.temperature, "must be >= 0");
        }
        if !(self.top_p > 0.0 && self.top_p <= 1.0) {
            return bad("top_p", self.top_p, "must be in (0, 1]");
        }
        if !(0.0..=1.0).contains(&self.min_p) {
            return bad("min_p", self.min_p, "must be in [0, 1]");
        }
        if !(self.repetition_penalty > 0.0 && self.repetition_penalty.is_finite()) {
            return bad("repetition_penalty", self.repetition_penalty, "must be > 0");
        }
        for (n, v) in [
            ("presence_penalty", self.presence_penalty),
            ("frequency_penalty", self.frequency_penalty),
        ] {
            if !v.is_finite() || v.abs() > 2.0 {
                return bad(n, v, "must be in [-2, 2]");
            }
        }
        Ok(())
    }
}

pub struct Sampler {
    params: SamplingParams,
    rng: Rng,
    /// (logprob, id) pairs, reused across calls.
    order: Vec<(f32, u32)>,
    counts: Vec<(u32, u32)>,
}

impl Sampler {
    pub fn new(params: SamplingParams) -> Self {
        let seed = params.seed.unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos() as u64)
        });
        Sampler {
            params,
            rng: Rng::new(seed),
            order: Vec::new(),
            counts: Vec::new(),
        }
    }

    pub fn params(&self) -> &SamplingParams {
        &self.params
    }

    /// Applies the logits processors in place. `generated` is the tokens generated so far
    /// (presence/frequency), `context` the recent tokens of prompt+generation (repetition).
    pub fn process(&mut self, logits: &mut [f32], context: &[u32], generated: &[u32]) {
        let p = &self.params;
        if p.repetition_penalty != 1.0 {
            let start = context.len().saturating_sub(p.repetition_context);
            let mut seen: Vec<u32> = context[start..].to_vec();
            seen.sort_unstable();
            seen.dedup();
            for id in seen {
                if let Some(l) = logits.get_mut(id as usize) {
                    *l = if *l < 0.0 {
                        *l * p.repetition_penalty
                    } else {
                        *l / p.repetition_penalty
                    };
                }
            }
        }
        if p.presence_penalty != 0.0 || p.frequency_penalty != 0.0 {
            self.counts.clear();
            let mut sorted: Vec<u32> = generated.to_vec();
            sorted.sort_unstable();
            for id in sorted {
                match self.counts.last_mut() {
                    Some((last, n)) if *last == id => *n += 1,
                    _ => self.counts.push((id, 1)),
                }
            }
            for &(id, n) in &self.counts {
                if let Some(l) = logits.get_mut(id as usize) {
                    *l -= p.presence_penalty + p.frequency_penalty * n as f32;
                }
            }
        }
    }

    /// Picks the next token from (processed) logits.
    pub fn sample(&mut self, logits: &[f32]) -> u32 {
        if self.params.temperature == 0.0 {
            return argmax(logits);
        }
        let keep = self.filter(logits);
        let kept = &self.order[..keep];
        let weight = weight(self.params.temperature, kept[0].0);
        let total: f64 = kept.iter().map(|(lp, _)| weight(*lp)).sum();
        let mut u = self.rng.uniform() * total;
        for (lp, id) in kept {
            u -= weight(*lp);
            if u <= 0.0 {
                return *id;
            }
        }
        kept[kept.len() - 1].1
    }

    /// The distribution [`Sampler::sample`] draws from, written densely into `probs`
    /// (`[vocab]`, zero outside the tokens the filters keep; one-hot at the argmax when
    /// greedy). Speculative sampling compares these for the draft and the main model.
    pub fn probabilities(&mut self, logits: &[f32], probs: &mut [f32]) {
        probs.fill(0.0);
        if self.params.temperature == 0.0 {
            probs[argmax(logits) as usize] = 1.0;
            return;
        }
        let p = &self.params;
        let keep = if p.top_p < 1.0 || p.min_p > 0.0 || p.top_k > 0 {
            self.filter(logits)
        } else {
            // No filter: every token survives, no need to sort.
            self.order.clear();
            self.order
                .extend(logits.iter().enumerate().map(|(i, &l)| (l, i as u32)));
            self.order.len()
        };
        let kept = &self.order[..keep];
        let top = kept.iter().map(|k| k.0).fold(f32::NEG_INFINITY, f32::max);
        let weight = weight(self.params.temperature, top);
        let total: f64 = kept.iter().map(|(lp, _)| weight(*lp)).sum();
        for (lp, id) in kept {
            probs[*id as usize] = (weight(*lp) / total) as f32;
        }
    }

    /// A uniform draw in `[0, 1)` from this sampler's generator (same seed, same draws).
    pub fn uniform(&mut self) -> f64 {
        self.rng.uniform()
    }

    /// Sorts the log-probabilities into `self.order` and returns how many the filters
    /// (top-p, then min-p, then top-k) keep (at least one).
    fn filter(&mut self, logits: &[f32]) -> usize {
        let p = &self.params;
        let lse = logsumexp(logits);
        self.order.clear();
        self.order
            .extend(logits.iter().enumerate().map(|(i, &l)| (l - lse, i as u32)));
        self.order
            .sort_unstable_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)));
        let mut keep = self.order.len();
        if p.top_p < 1.0 {
            // Smallest prefix whose mass reaches top_p (the token crossing it is kept).
            let mut mass = 0f64;
            for (i, (lp, _)) in self.order.iter().enumerate() {
                mass += (*lp as f64).exp();
                if mass >= p.top_p as f64 {
                    keep = keep.min(i + 1);
                    break;
                }
            }
        }
        if p.min_p > 0.0 {
            let threshold = self.order[0].0 + p.min_p.ln();
            let n = self
                .order
                .iter()
                .take_while(|(lp, _)| *lp >= threshold)
                .count()
                .max(1);
            keep = keep.min(n);
        }
        if p.top_k > 0 {
            keep = keep.min(p.top_k);
        }
        keep.max(1)
    }
}

/// Unnormalised weight of a kept log-probability at `temperature`, relative to the largest
/// one `top` (so the exponent never overflows).
fn weight(temperature: f32, top: f32) -> impl Fn(f32) -> f64 {
    let inv_t = 1.0 / temperature as f64;
    let top = top as f64 * inv_t;
    move |lp| (lp as f64 * inv_t - top).exp()
}

/// Draws from a dense distribution `probs` (non-negative, any positive total) with the
/// uniform `u` in `[0, 1)`: the first token whose cumulative weight passes `u * total`.
pub fn draw(probs: &[f32], u: f64) -> u32 {
    let total: f64 = probs.iter().map(|&p| p as f64).sum();
    let mut left = u * total;
    let mut last = 0;
    for (i, &p) in probs.iter().enumerate() {
        if p > 0.0 {
            left -= p as f64;
            last = i;
            if left < 0.0 {
                return i as u32;
            }
        }
    }
    last as u32
}

/// Index of the largest logit (the first on ties, like `mx.argmax`).
pub fn argmax(v: &[f32]) -> u32 {
    let mut best = 0usize;
    for (i, &x) in v.iter().enumerate() {
        if x > v[best] {
            best = i;
        }
    }
    best as u32
}

/// Log-softmax value of `id` and the `k` most likely `(id, logprob)` pairs of `logits`.
pub fn logprobs(logits: &[f32], id: u32, k: usize) -> (f32, Vec<(u32, f32)>) {
    let lse = logsumexp(logits);
    let mut top: Vec<(u32, f32)> = Vec::with_capacity(k + 1);
    if k > 0 {
        for (i, &l) in logits.iter().enumerate() {
            if top.len() < k || l > top[top.len() - 1].1 {
                let pos = top.partition_point(|&(_, v)| v >= l);
                top.insert(pos, (i as u32, l));
                top.truncate(k);
            }
        }
    }
    (
        logits[id as usize] - lse,
        top.into_iter().map(|(i, l)| (i, l - lse)).collect(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sampler(f: impl FnOnce(&mut SamplingParams)) -> Sampler {
        let mut p = SamplingParams {
            temperature: 1.0,
            seed: Some(7),
            ..Default::default()
        };
        f(&mut p);
        Sampler::new(p)
    }

    #[test]
    fn greedy_is_argmax_and_first_on_ties() {
        let mut s = Sampler::new(SamplingParams::default());
        assert_eq!(s.sample(&[0.0, 3.0, 3.0, 1.0]), 1);
    }

    #[test]
    fn same_seed_same_tokens() {
        let logits: Vec<f32> = (0..50).map(|i| (i as f32 * 0.37).sin()).collect();
        let draw = |seed| {
            let mut s = sampler(|p| p.seed = Some(seed));
            (0..40).map(|_| s.sample(&logits)).collect::<Vec<_>>()
        };
        assert_eq!(draw(1), draw(1));
        assert_ne!(draw(1), draw(2));
    }

    #[test]
    fn filters_restrict_the_support() {
        let logits = [5.0f32, 4.0, 0.0, -1.0, -2.0];
        let mut s = sampler(|p| p.top_k = 2);
        assert!((0..200).all(|_| s.sample(&logits) < 2));
        // p(0) ~ 0.73, p(0)+p(1) ~ 0.99: top_p 0.5 keeps only token 0.
        let mut s = sampler(|p| p.top_p = 0.5);
        assert!((0..200).all(|_| s.sample(&logits) == 0));
        // min_p 0.2: token 1 has p1/p0 = e^-1 = 0.37 >= 0.2, token 2 has e^-5 < 0.2.
        let mut s = sampler(|p| p.min_p = 0.2);
        let draws: Vec<u32> = (0..400).map(|_| s.sample(&logits)).collect();
        assert!(draws.iter().all(|&t| t < 2) && draws.contains(&1));
    }

    #[test]
    fn temperature_sampling_follows_the_distribution() {
        let logits = [0.0f32, (2.0f32).ln(), (7.0f32).ln()]; // p = 0.1, 0.2, 0.7
        let mut s = sampler(|_| {});
        let mut hist = [0usize; 3];
        let n = 20000;
        for _ in 0..n {
            hist[s.sample(&logits) as usize] += 1;
        }
        for (h, p) in hist.iter().zip([0.1, 0.2, 0.7]) {
            assert!((*h as f64 / n as f64 - p).abs() < 0.015, "{hist:?}");
        }
    }

    #[test]
    fn probabilities_are_what_sample_draws_from() {
        let logits: Vec<f32> = (0..40).map(|i| (i as f32 * 0.61).cos() * 2.0).collect();
        for f in [
            (|_: &mut SamplingParams| {}) as fn(&mut SamplingParams),
            |p| p.top_k = 5,
            |p| p.top_p = 0.6,
            |p| {
                p.min_p = 0.1;
                p.temperature = 0.7
            },
        ] {
            let mut s = sampler(f);
            let mut probs = vec![0f32; logits.len()];
            s.probabilities(&logits, &mut probs);
            assert!((probs.iter().sum::<f32>() - 1.0).abs() < 1e-5);
            let n = 20000;
            let mut hist = vec![0usize; logits.len()];
            for _ in 0..n {
                hist[s.sample(&logits) as usize] += 1;
            }
            for (h, p) in hist.iter().zip(&probs) {
                assert!(
                    (*h as f32 / n as f32 - p).abs() < 0.015,
                    "{hist:?} vs {probs:?}"
                );
                assert!(*p > 0.0 || *h == 0, "sampled outside the support");
            }
        }
        let mut greedy = Sampler::new(SamplingParams::default());
        let mut probs = vec![0f32; 4];
        greedy.probabilities(&[0.0, 3.0, 3.0, 1.0], &mut probs);
        assert_eq!(probs, vec![0.0, 1.0, 0.0, 0.0]);
    }

    #[test]
    fn draw_follows_cumulative_weights() {
        let probs = [0.0f32, 0.25, 0.0, 0.75];
        assert_eq!(draw(&probs, 0.0), 1);
        assert_eq!(draw(&probs, 0.2499), 1);
        assert_eq!(draw(&probs, 0.25), 3);
        assert_eq!(draw(&probs, 0.9999), 3);
        // Unnormalised weights work the same.
        assert_eq!(draw(&[0.0, 2.0, 0.0, 6.0], 0.3), 3);
    }

    #[test]
    fn penalties_follow_mlx_lm() {
        let mut s = sampler(|p| {
            p.repetition_penalty = 2.0;
            p.presence_penalty = 0.5;
            p.frequency_penalty = 0.25;
        });
        let mut logits = vec![4.0, -4.0, 1.0, 1.0];
        s.process(&mut logits, &[0, 1, 0], &[2, 2]);
        assert_eq!(logits, vec![2.0, -8.0, 1.0 - 0.5 - 0.5, 1.0]);
    }

    #[test]
    fn logprobs_are_log_softmax_and_sorted() {
        let (lp, top) = logprobs(&[1.0, 3.0, 2.0], 0, 2);
        let z = (1f32.exp() + 3f32.exp() + 2f32.exp()).ln();
        assert!((lp - (1.0 - z)).abs() < 1e-6);
        assert_eq!(top.iter().map(|t| t.0).collect::<Vec<_>>(), vec![1, 2]);
    }
}
