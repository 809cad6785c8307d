//! Rotary position embeddings (mlx `fast.rope` semantics).

/// Default inverse frequencies `base^(-2i/dims)` for `i < dims/2`.
pub fn inv_freq(dims: usize, base: f32) -> Vec<f32> {
    (0..dims / 2)
        .map(|i| (base as f64).powf(-2.0 * i as f64 / dims as f64) as f32)
        .collect()
}

/// Rotates the first `2 * inv_freq.len()` features of every head of one token.
/// Same contract as [`crate::reference::rope`]; the angles are computed once per token and
/// shared by all heads.
pub fn rope(x: &mut [f32], head_dim: usize, pos: usize, inv_freq: &[f32], traditional: bool) {
    const MAX_HALF: usize = 256;
    let half = inv_freq.len();
    if half > MAX_HALF {
        return crate::reference::rope(x, head_dim, pos, inv_freq, traditional);
    }
    let mut cos = [0f32; MAX_HALF];
    let mut sin = [0f32; MAX_HALF];
    for (i, &f) in inv_freq.iter().enumerate() {
        let (s, c) = (pos as f32 * f).sin_cos();
        cos[i] = c;
        sin[i] = s;
    }
    for head in x.chunks_exact_mut(head_dim) {
        if traditional {
            for i in 0..half {
                let (a, b) = (head[2 * i], head[2 * i + 1]);
                head[2 * i] = a * cos[i] - b * sin[i];
                head[2 * i + 1] = b * cos[i] + a * sin[i];
            }
        } else {
            let (lo, hi) = head[..2 * half].split_at_mut(half);
            for i in 0..half {
                let (a, b) = (lo[i], hi[i]);
                lo[i] = a * cos[i] - b * sin[i];
                hi[i] = b * cos[i] + a * sin[i];
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::Rng;

    #[test]
    fn rope_matches_reference_full_and_partial() {
        let mut rng = Rng::new(9);
        for (hd, rot, trad) in [
            (16usize, 16usize, false),
            (16, 16, true),
            (32, 8, false),
            (64, 16, true),
        ] {
            let freqs = inv_freq(rot, 10000.0);
            let x: Vec<f32> = (0..3 * hd).map(|_| rng.normal()).collect();
            for pos in [0usize, 1, 17, 4000] {
                let mut a = x.clone();
                let mut b = x.clone();
                rope(&mut a, hd, pos, &freqs, trad);
                crate::reference::rope(&mut b, hd, pos, &freqs, trad);
                assert_eq!(a, b);
                assert_eq!(a[rot..hd], x[rot..hd], "unrotated tail must pass through");
            }
        }
    }
}
