//! Generating a tensor's bytes, chunk by chunk, from a seed and its [`Fill`].
//!
//! Every tensor draws from its own generator, seeded by the model seed and the tensor's
//! name, so its values do not depend on chunk sizes, shard boundaries or which other
//! tensors exist (`--layers 2` writes the same first two layers as the full model).

use super::plan::{Fill, TensorSpec};
use crate::weights::Dtype;
use moestream_kernels::rng::Rng;

/// Seed of tensor `name` in a model synthesized with `seed` (FNV-1a of the name; `Rng::new`
/// mixes the result with SplitMix64, so neighbouring seeds give unrelated streams).
pub fn tensor_seed(seed: u64, name: &str) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in name.bytes() {
        h ^= b as u64;
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h ^ seed.rotate_left(17)
}

/// Produces one tensor's bytes in order, in chunks of any whole number of elements.
pub struct Filler {
    fill: Fill,
    dtype: Dtype,
    rng: Rng,
    /// For biases: replays the scales tensor's stream so each bias matches its scale.
    scales_rng: Option<Rng>,
}

impl Filler {
    pub fn new(spec: &TensorSpec, seed: u64) -> Self {
        let scales_rng = match &spec.fill {
            Fill::Biases { scales, .. } => Some(Rng::new(tensor_seed(seed, scales))),
            _ => None,
        };
        Filler {
            fill: spec.fill.clone(),
            dtype: spec.dtype,
            rng: Rng::new(tensor_seed(seed, &spec.name)),
            scales_rng,
        }
    }

    /// Fills `out` (a whole number of elements) with the next values of the tensor.
    pub fn fill(&mut self, out: &mut [u8]) {
        if self.fill == Fill::Bits {
            for chunk in out.chunks_mut(8) {
                let word = self.rng.next_u64().to_le_bytes();
                chunk.copy_from_slice(&word[..chunk.len()]);
            }
            return;
        }
        let size = self.dtype.size();
        for elem in out.chunks_exact_mut(size) {
            let v = self.next_value();
            encode(self.dtype, v, elem);
        }
    }

    fn next_value(&mut self) -> f32 {
        match self.fill {
            // Packed codes are written as whole words by `fill` and never get here.
            Fill::Bits => 0.0,
            Fill::Scales { std, bits } => scale_sample(&mut self.rng, std, bits),
            Fill::Biases { std, bits, .. } => {
                let rng = self.scales_rng.as_mut().unwrap_or(&mut self.rng);
                let s = scale_sample(rng, std, bits);
                // Codes are uniform on 0..=2^bits-1: -s*mid makes each group's mean zero.
                let mid = ((1u32 << bits) - 1) as f32 / 2.0;
                -s * mid + 0.125 * std * fast_normal(&mut self.rng)
            }
            Fill::Normal { mean, std } => mean + std * fast_normal(&mut self.rng),
            Fill::Uniform { lo, hi } => lo + (hi - lo) * self.rng.uniform() as f32,
            Fill::LnUniform { lo, hi } => (lo + (hi - lo) * self.rng.uniform() as f32).ln(),
        }
    }
}

/// One affine scale: random sign (mlx's quantizer makes about half the scales negative) and a
/// magnitude of `std / std(codes)` within +-25%, so dequantized entries have std ~`std`.
fn scale_sample(rng: &mut Rng, std: f32, bits: u32) -> f32 {
    let levels = (1u64 << bits) as f32;
    // Std of a code uniform on 0..levels-1.
    let code_std = ((levels * levels - 1.0) / 12.0).sqrt();
    let r = rng.next_u64();
    let sign = if r & 1 == 0 { 1.0 } else { -1.0 };
    let jitter = 0.75 + 0.5 * ((r >> 11) as f32 * (1.0 / (1u64 << 53) as f32));
    sign * jitter * std / code_std
}

/// An approximately standard normal value: the centred sum of four 16-bit uniforms from one
/// 64-bit draw (Irwin-Hall), about 10x cheaper than Box-Muller. Tails stop at +-3.5 sigma,
/// which random weights do not need.
fn fast_normal(rng: &mut Rng) -> f32 {
    let r = rng.next_u64();
    let sum = (r & 0xffff) + ((r >> 16) & 0xffff) + ((r >> 32) & 0xffff) + (r >> 48);
    // Mean of each term is 32767.5, variance 65536^2/12: the sum has variance 65536^2/3.
    (sum as f32 - 131_070.0) * (3f32.sqrt() / 65_536.0)
}

fn encode(dtype: Dtype, v: f32, out: &mut [u8]) {
    match dtype {
        Dtype::Bf16 => out.copy_from_slice(&half::bf16::from_f32(v).to_le_bytes()),
        Dtype::F16 => out.copy_from_slice(&half::f16::from_f32(v).to_le_bytes()),
        Dtype::F32 => out.copy_from_slice(&v.to_le_bytes()),
        Dtype::F64 => out.copy_from_slice(&(v as f64).to_le_bytes()),
        // Integer tensors other than packed codes are not planned; write zeros.
        _ => out.fill(0),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(name: &str, dtype: Dtype, n: usize, fill: Fill) -> TensorSpec {
        TensorSpec {
            name: name.into(),
            dtype,
            shape: vec![n],
            fill,
        }
    }

    #[test]
    fn chunking_does_not_change_values() {
        let s = spec(
            "a",
            Dtype::Bf16,
            1000,
            Fill::Normal {
                mean: 0.0,
                std: 1.0,
            },
        );
        let mut whole = vec![0u8; 2000];
        Filler::new(&s, 7).fill(&mut whole);
        let mut parts = vec![0u8; 2000];
        let mut f = Filler::new(&s, 7);
        for c in parts.chunks_mut(34) {
            f.fill(c);
        }
        assert_eq!(whole, parts);
        let b = spec("w", Dtype::U32, 100, Fill::Bits);
        let mut whole = vec![0u8; 400];
        Filler::new(&b, 7).fill(&mut whole);
        let mut parts = vec![0u8; 400];
        let mut f = Filler::new(&b, 7);
        for c in parts.chunks_mut(8) {
            f.fill(c);
        }
        assert_eq!(whole, parts);
    }

    #[test]
    fn normal_has_requested_moments() {
        let mut rng = Rng::new(3);
        let n = 200_000;
        let xs: Vec<f32> = (0..n).map(|_| fast_normal(&mut rng)).collect();
        let mean = xs.iter().sum::<f32>() / n as f32;
        let var = xs.iter().map(|x| (x - mean) * (x - mean)).sum::<f32>() / n as f32;
        assert!(mean.abs() < 0.01, "mean {mean}");
        assert!((var - 1.0).abs() < 0.02, "var {var}");
    }

    #[test]
    fn dequantized_groups_are_centred_with_the_requested_std() {
        // Dequantize a synthetic 4-bit tensor and check mean ~0 and std ~0.05.
        let (rows, cols, g, std) = (64usize, 256usize, 64usize, 0.05f32);
        let w = spec("m.weight", Dtype::U32, rows * cols / 8, Fill::Bits);
        let s = spec(
            "m.scales",
            Dtype::F32,
            rows * cols / g,
            Fill::Scales { std, bits: 4 },
        );
        let b = spec(
            "m.biases",
            Dtype::F32,
            rows * cols / g,
            Fill::Biases {
                std,
                bits: 4,
                scales: "m.scales".into(),
            },
        );
        let gen = |t: &TensorSpec| {
            let mut v = vec![0u8; t.bytes() as usize];
            Filler::new(t, 11).fill(&mut v);
            v
        };
        let words: Vec<u32> = gen(&w)
            .chunks_exact(4)
            .map(|c| u32::from_le_bytes(c.try_into().unwrap()))
            .collect();
        let f32s = |v: Vec<u8>| -> Vec<f32> {
            v.chunks_exact(4)
                .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
                .collect()
        };
        let (scales, biases) = (f32s(gen(&s)), f32s(gen(&b)));
        let vals: Vec<f32> = (0..rows * cols)
            .map(|j| {
                let q = (words[j / 8] >> (4 * (j % 8))) & 15;
                scales[j / g] * q as f32 + biases[j / g]
            })
            .collect();
        let n = vals.len() as f32;
        let mean = vals.iter().sum::<f32>() / n;
        let sd = (vals.iter().map(|x| x * x).sum::<f32>() / n - mean * mean).sqrt();
        assert!(mean.abs() < 0.005, "mean {mean}");
        assert!((sd / std - 1.0).abs() < 0.1, "std {sd}");
    }
}
