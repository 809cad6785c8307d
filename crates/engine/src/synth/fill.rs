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
    own: Draws,
    /// For biases: the scales tensor's draws, replayed so each bias matches its scale
    /// (unused by other fills).
    replay: Draws,
}

impl Filler {
    pub fn new(spec: &TensorSpec, seed: u64) -> Self {
        let replay = match &spec.fill {
            Fill::Biases { scales, .. } => tensor_seed(seed, scales),
            _ => seed,
        };
        Filler {
            fill: spec.fill.clone(),
            dtype: spec.dtype,
            own: Draws::new(tensor_seed(seed, &spec.name)),
            replay: Draws::new(replay),
        }
    }

    /// Fills `out` (a whole number of elements) with the next values of the tensor.
    pub fn fill(&mut self, out: &mut [u8]) {
        let Filler {
            fill,
            dtype,
            own,
            replay,
        } = self;
        match *fill {
            Fill::Bits => fill_bits(&mut own.rng, out),
            Fill::Scales { std, bits } => {
                let scale = ScaleDraw::new(std, bits);
                write_floats(*dtype, out, || scale.draw(own));
            }
            Fill::Biases { std, bits, .. } => {
                let scale = ScaleDraw::new(std, bits);
                // Codes are uniform on 0..=2^bits-1: -s*mid makes each group's mean zero.
                let mid = ((1u32 << bits) - 1) as f32 / 2.0;
                let noise = 0.125 * std;
                write_floats(*dtype, out, || {
                    -scale.draw(replay) * mid + noise * own.normal()
                });
            }
            Fill::Normal { mean, std } => {
                write_floats(*dtype, out, || mean + std * own.normal());
            }
            Fill::Uniform { lo, hi } => {
                write_floats(*dtype, out, || lo + (hi - lo) * own.unit());
            }
            Fill::LnUniform { lo, hi } => {
                write_floats(*dtype, out, || (lo + (hi - lo) * own.unit()).ln());
            }
        }
    }
}

/// Random words, little-endian; whole 8-byte stores for speed, a final partial word for an
/// odd number of u32 codes.
fn fill_bits(rng: &mut Rng, out: &mut [u8]) {
    let mut words = out.chunks_exact_mut(8);
    for w in &mut words {
        w.copy_from_slice(&rng.next_u64().to_le_bytes());
    }
    let rest = words.into_remainder();
    if !rest.is_empty() {
        let w = rng.next_u64().to_le_bytes();
        rest.copy_from_slice(&w[..rest.len()]);
    }
}

/// Encodes values from `next` into `out` as `dtype`, one loop per dtype so each inlines.
fn write_floats(dtype: Dtype, out: &mut [u8], mut next: impl FnMut() -> f32) {
    match dtype {
        Dtype::Bf16 => {
            for e in out.chunks_exact_mut(2) {
                e.copy_from_slice(&bf16_bits(next()).to_le_bytes());
            }
        }
        Dtype::F16 => {
            for e in out.chunks_exact_mut(2) {
                e.copy_from_slice(&half::f16::from_f32(next()).to_le_bytes());
            }
        }
        Dtype::F32 => {
            for e in out.chunks_exact_mut(4) {
                e.copy_from_slice(&next().to_le_bytes());
            }
        }
        // Float tensors are only ever planned as bf16/f16/f32.
        _ => out.fill(0),
    }
}

/// bfloat16 bits of a finite `v`, rounded to nearest even without branches (`half`'s
/// conversion branches on the rounding bit, which mispredicts on random data and made
/// generation 2x slower).
fn bf16_bits(v: f32) -> u16 {
    let x = v.to_bits();
    let lsb = (x >> 16) & 1;
    (x.wrapping_add(0x7fff + lsb) >> 16) as u16
}

/// 16-bit random values, four per 64-bit draw: a float parameter rarely needs more, and a
/// draw costs more than everything else done per value.
struct Draws {
    rng: Rng,
    word: u64,
    left: u32,
}

impl Draws {
    fn new(seed: u64) -> Self {
        Draws {
            rng: Rng::new(seed),
            word: 0,
            left: 0,
        }
    }

    fn u16(&mut self) -> u32 {
        if self.left == 0 {
            self.word = self.rng.next_u64();
            self.left = 4;
        }
        let v = (self.word & 0xffff) as u32;
        self.word >>= 16;
        self.left -= 1;
        v
    }

    /// Uniform in [0, 1).
    fn unit(&mut self) -> f32 {
        self.u16() as f32 * (1.0 / 65_536.0)
    }

    /// Approximately standard normal: the centred sum of four uniform bytes (Irwin-Hall),
    /// much cheaper than Box-Muller. 1021 levels with tails at +-3.5 sigma are plenty for
    /// random weights.
    fn normal(&mut self) -> f32 {
        let x = self.u16() | (self.u16() << 16);
        // Byte sums without unpacking: pairs first, then the two pair sums.
        let pairs = (x & 0x00ff_00ff) + ((x >> 8) & 0x00ff_00ff);
        let sum = (pairs & 0xffff) + (pairs >> 16);
        // Each byte has mean 127.5 and variance (256^2 - 1) / 12; four of them, std ~147.8.
        const STD: f32 = 147.801_2;
        (sum as f32 - 510.0) * (1.0 / STD)
    }
}

/// Draws affine scales: random sign (mlx's quantizer makes about half the scales negative)
/// and a magnitude of `std / std(codes)` within +-25%, so dequantized entries have std
/// ~`std`.
struct ScaleDraw {
    base: f32,
}

impl ScaleDraw {
    fn new(std: f32, bits: u32) -> Self {
        let levels = (1u64 << bits) as f32;
        // Std of a code uniform on 0..levels-1.
        let code_std = ((levels * levels - 1.0) / 12.0).sqrt();
        ScaleDraw {
            base: std / code_std,
        }
    }

    fn draw(&self, d: &mut Draws) -> f32 {
        let r = d.u16();
        let jitter = 0.75 + 0.5 * ((r >> 1) as f32 * (1.0 / 32_768.0));
        // The sign from the low bit, without a branch (it would mispredict half the time).
        f32::from_bits((jitter * self.base).to_bits() ^ ((r & 1) << 31))
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
    fn bf16_rounding_matches_half() {
        let mut d = Draws::new(9);
        for i in 0..100_000 {
            let v = d.normal() * 10f32.powi(i % 12 - 6);
            assert_eq!(bf16_bits(v), half::bf16::from_f32(v).to_bits(), "{v}");
        }
        // Exact ties (round to even: down, then up) and edge values.
        let ties = [f32::from_bits(0x3f80_8000), f32::from_bits(0x3f81_8000)];
        for v in [0.0f32, -0.0, 1.0, f32::MAX / 2.0].into_iter().chain(ties) {
            assert_eq!(bf16_bits(v), half::bf16::from_f32(v).to_bits(), "{v}");
        }
    }

    #[test]
    fn normal_has_requested_moments() {
        let mut d = Draws::new(3);
        let n = 200_000;
        let xs: Vec<f32> = (0..n).map(|_| d.normal()).collect();
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
