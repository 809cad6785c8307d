//! Elementwise activations and softmax-family reductions.

#[inline]
pub fn silu(a: f32) -> f32 {
    a / (1.0 + (-a).exp())
}

#[inline]
pub fn sigmoid(a: f32) -> f32 {
    1.0 / (1.0 + (-a).exp())
}

/// In-place softmax (max-subtracted, f32).
pub fn softmax(x: &mut [f32]) {
    let max = x.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let mut z = 0f32;
    for v in x.iter_mut() {
        *v = (*v - max).exp();
        z += *v;
    }
    let inv = 1.0 / z;
    for v in x.iter_mut() {
        *v *= inv;
    }
}

/// `log(sum(exp(x)))`, computed stably in f64 (used for log-probabilities over the vocab).
pub fn logsumexp(x: &[f32]) -> f32 {
    let max = x.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    if !max.is_finite() {
        return max;
    }
    let s: f64 = x.iter().map(|&v| ((v - max) as f64).exp()).sum();
    max + s.ln() as f32
}
