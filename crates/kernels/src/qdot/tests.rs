//! Every int8 kernel family this CPU has (not only the one dispatch picks) held to the
//! scalar int8 reference: the integer sums are exact, so results agree to float rounding,
//! and a result is bit-identical however weight and activation rows are tiled.

use super::format::{quantize_block_scalar, BlockQuantizer};
use super::*;
use crate::isa::int8_available;
use crate::matrix::FloatSlice;
use crate::quant::quantize_row;
use crate::rng::Rng;

/// A random `rows x cols` matrix quantized at `bits`/`g`, with scales and biases in
/// every dtype MLX writes.
struct Random {
    packed: Vec<u32>,
    scales: Vec<f32>,
    biases: Vec<f32>,
    sb: Vec<half::bf16>,
    bb: Vec<half::bf16>,
    sh: Vec<half::f16>,
    bh: Vec<half::f16>,
}

impl Random {
    fn new(rng: &mut Rng, rows: usize, cols: usize, bits: u32, g: usize) -> Self {
        let (mut packed, mut scales, mut biases) = (vec![], vec![], vec![]);
        for _ in 0..rows {
            let w: Vec<f32> = (0..cols).map(|_| rng.normal()).collect();
            let (p, s, b) = quantize_row(&w, bits, g);
            packed.extend(p);
            scales.extend(s);
            biases.extend(b);
        }
        Random {
            sb: scales.iter().map(|&v| half::bf16::from_f32(v)).collect(),
            bb: biases.iter().map(|&v| half::bf16::from_f32(v)).collect(),
            sh: scales.iter().map(|&v| half::f16::from_f32(v)).collect(),
            bh: biases.iter().map(|&v| half::f16::from_f32(v)).collect(),
            packed,
            scales,
            biases,
        }
    }

    /// The same matrix in the interleaved layout.
    fn interleaved(&self, cols: usize, bits: u32, g: usize) -> Self {
        use crate::interleave::interleave_in_place;
        let (wpr, gpr) = (cols * bits as usize / 32, cols / g);
        let mut m = Random {
            packed: self.packed.clone(),
            scales: self.scales.clone(),
            biases: self.biases.clone(),
            sb: self.sb.clone(),
            bb: self.bb.clone(),
            sh: self.sh.clone(),
            bh: self.bh.clone(),
        };
        interleave_in_place(&mut m.packed, wpr, &mut Vec::new());
        interleave_in_place(&mut m.scales, gpr, &mut Vec::new());
        interleave_in_place(&mut m.biases, gpr, &mut Vec::new());
        interleave_in_place(&mut m.sb, gpr, &mut Vec::new());
        interleave_in_place(&mut m.bb, gpr, &mut Vec::new());
        interleave_in_place(&mut m.sh, gpr, &mut Vec::new());
        interleave_in_place(&mut m.bh, gpr, &mut Vec::new());
        m
    }

    /// Views with f32, bf16 and f16 parameters.
    fn views(&self, rows: usize, cols: usize, bits: u32, g: usize) -> [QuantMatrix<'_>; 3] {
        self.views_in(rows, cols, bits, g, false)
    }

    fn views_in(
        &self,
        rows: usize,
        cols: usize,
        bits: u32,
        g: usize,
        interleaved: bool,
    ) -> [QuantMatrix<'_>; 3] {
        let v = |scales, biases| QuantMatrix {
            packed: &self.packed,
            scales,
            biases,
            rows,
            cols,
            bits,
            group_size: g,
            interleaved,
        };
        [
            v(FloatSlice::F32(&self.scales), FloatSlice::F32(&self.biases)),
            v(FloatSlice::Bf16(&self.sb), FloatSlice::Bf16(&self.bb)),
            v(FloatSlice::F16(&self.sh), FloatSlice::F16(&self.bh)),
        ]
    }
}

/// `n` random activation rows of `cols` values, and their int8 forms.
fn random_rows(rng: &mut Rng, n: usize, cols: usize) -> (Vec<Vec<f32>>, Vec<QuantizedRow>) {
    let xs: Vec<Vec<f32>> = (0..n)
        .map(|_| (0..cols).map(|_| rng.normal()).collect())
        .collect();
    let q = xs
        .iter()
        .map(|x| {
            let mut qx = QuantizedRow::default();
            qx.quantize(x, super::block_quantizer());
            qx
        })
        .collect();
    (xs, q)
}

/// The block quantizers this CPU can run, by name.
fn quantizers() -> Vec<(&'static str, BlockQuantizer)> {
    #[allow(unused_mut)]
    let mut all: Vec<(&'static str, BlockQuantizer)> = Vec::new();
    #[cfg(target_arch = "x86_64")]
    {
        if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma")
        {
            // SAFETY: AVX2 and FMA are present; BLOCK-long slices.
            all.push(("avx2", |x, q| unsafe { avx2::quantize_block(x, q) }));
        }
        if std::arch::is_x86_feature_detected!("avx512bw") {
            // SAFETY: AVX-512 F and BW are present; BLOCK-long slices.
            all.push(("avx512", |x, q| unsafe { avx512::quantize_block(x, q) }));
        }
    }
    #[cfg(target_arch = "aarch64")]
    // SAFETY: NEON is part of the aarch64 base ISA; BLOCK-long slices.
    all.push(("neon", |x, q| unsafe { neon::quantize_block(x, q) }));
    all
}

/// The int8 families to test, reporting (not hiding) a CPU that has none.
fn families() -> Vec<Int8> {
    let all = int8_available();
    if all.is_empty() {
        eprintln!("skipped: this CPU has no int8 kernel family (scalar target)");
    }
    eprintln!("int8 families tested: {all:?}");
    all
}

#[test]
fn simd_block_quantization_matches_the_scalar_reference() {
    let mut rng = Rng::new(5);
    let quantizers = quantizers();
    eprintln!(
        "block quantizers tested: {:?}",
        quantizers.iter().map(|q| q.0).collect::<Vec<_>>()
    );
    for (name, quantize) in quantizers {
        for scale in [1e-3f32, 1.0, 300.0] {
            for _ in 0..200 {
                let mut x: Vec<f32> = (0..BLOCK).map(|_| rng.normal() * scale).collect();
                // Values on a rounding midpoint: every path rounds half to even.
                x[3] = x.iter().fold(0f32, |m, v| m.max(v.abs())) / 127.0 * 2.5;
                let (mut a, mut b) = ([0i8; BLOCK], [0i8; BLOCK]);
                let (da, sa, qa) = quantize(&x, &mut a);
                let (db, sb, qb) = quantize_block_scalar(&x, &mut b);
                assert_eq!((a, da.to_bits(), qa), (b, db.to_bits(), qb), "{name}");
                assert!((sa - sb).abs() <= 1e-5 * scale * BLOCK as f32, "{name}");
            }
        }
        let (mut q, zero) = ([1i8; BLOCK], [0f32; BLOCK]);
        assert_eq!(quantize(&zero, &mut q), (0.0, 0.0, 0), "{name}");
        assert_eq!(q, [0i8; BLOCK], "{name}");
    }
}

/// Holds family `isa` on `w` (`rows` rows) to the reference: every activation row of `q`,
/// tiled together and alone, and `w_ref` (the same matrix, maybe in the other layout) gives
/// the same reference values.
fn check(isa: Int8, w: &QuantMatrix, w_ref: &QuantMatrix, xs: &[Vec<f32>], q: &[QuantizedRow]) {
    let (rows, n_x) = (w.rows, q.len());
    let tag = format!(
        "{} bits {} cols {} g {}",
        isa.name(),
        w.bits,
        w.cols,
        w.group_size
    );
    let all: Vec<u32> = (0..n_x as u32).collect();
    let mut tiled = vec![0f32; rows * n_x];
    dot_rows_on(isa, w, 0..rows, q, &all, &mut Vec::new(), |r, i, v| {
        tiled[r * n_x + i] = v
    });
    // The granularity a task may start at: a row group when interleaved.
    let step = if w.interleaved {
        crate::interleave::ROWS
    } else {
        1
    };
    for i in 0..n_x {
        // Alone (decode: one activation row) over pieces of the rows: bit-identical to the
        // tiled results (batch invariance).
        let mut alone = vec![f32::NAN; rows];
        for r0 in (0..rows).step_by(step) {
            dot_rows_on(
                isa,
                w,
                r0..r0 + step,
                q,
                &[i as u32],
                &mut Vec::new(),
                |r, _, v| alone[r] = v,
            );
        }
        let mut whole = vec![f32::NAN; rows];
        dot_rows_on(
            isa,
            w,
            0..rows,
            q,
            &[i as u32],
            &mut Vec::new(),
            |r, _, v| whole[r] = v,
        );
        for r in 0..rows {
            let fast = tiled[r * n_x + i];
            assert_eq!(fast.to_bits(), alone[r].to_bits(), "{tag}: row {r} x {i}");
            assert_eq!(fast.to_bits(), whole[r].to_bits(), "{tag}: row {r} x {i}");
            let want = dot_reference(w_ref, r, &q[i]);
            assert_eq!(
                want,
                dot_reference(w, r, &q[i]),
                "{tag}: reference, row {r}"
            );
            assert!(
                (fast - want).abs() <= 1e-4 * (1.0 + want.abs()),
                "{tag}: row {r} x {i}: {fast} vs {want}"
            );
            let mut exact = 0f32;
            for (c, xv) in xs[i].iter().enumerate() {
                exact += crate::reference::weight_at(&crate::Matrix::Quant(*w), r, c) * xv;
            }
            // int8 activations: error well under the row's magnitude (a bug is of its order).
            let scale: f32 = xs[i].iter().map(|v| v.abs()).sum::<f32>() * 0.1;
            assert!(
                (want - exact).abs() < 0.04 * scale,
                "{tag}: {want} vs exact {exact}"
            );
        }
    }
}

#[test]
fn row_major_kernels_match_the_int8_reference() {
    let mut rng = Rng::new(31);
    // 9 rows: blocks of 4 (decode) or 2 (tiles) plus a single tail row; 7 activation rows:
    // tiles of 4, 2 and 1.
    let (rows, n_x) = (9usize, 7usize);
    for isa in families() {
        for (bits, cols, g) in [
            (4u32, 128usize, 32usize),
            (4, 256, 64),
            (4, 384, 128),
            (4, 2048, 64),
            (8, 64, 32),
            (8, 192, 64),
            (8, 256, 128),
            (8, 576, 32),
        ] {
            let m = Random::new(&mut rng, rows, cols, bits, g);
            for w in m.views(rows, cols, bits, g) {
                if !supported_on(isa, &w) {
                    assert!(bits == 4 && isa != Int8::Avx512Vnni, "{isa:?} {bits}");
                    continue;
                }
                let (xs, q) = random_rows(&mut rng, n_x, cols);
                check(isa, &w, &w, &xs, &q);
            }
        }
    }
}

#[test]
fn interleaved_kernels_match_row_major_values_and_the_reference() {
    let mut rng = Rng::new(41);
    let (rows, n_x) = (48usize, 15usize); // tiles of 8, 4, 2 and 1
    for isa in families() {
        for (cols, g) in [(128usize, 32usize), (256, 64), (384, 128), (2048, 64)] {
            let m = Random::new(&mut rng, rows, cols, 4, g);
            let il = m.interleaved(cols, 4, g);
            for (w, wi) in m
                .views(rows, cols, 4, g)
                .into_iter()
                .zip(il.views_in(rows, cols, 4, g, true))
            {
                assert!(supported_on(isa, &wi));
                // Dequantized rows are the same values in either layout.
                let (mut a, mut b) = (vec![0f32; cols], vec![0f32; cols]);
                for r in 0..rows {
                    crate::Matrix::Quant(w).row_into(r, &mut a);
                    crate::Matrix::Quant(wi).row_into(r, &mut b);
                    assert_eq!(a, b, "row {r}");
                }
                let (xs, q) = random_rows(&mut rng, n_x, cols);
                check(isa, &wi, &w, &xs, &q);
            }
        }
    }
}
