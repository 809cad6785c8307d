//! MLX affine quantization, held to mlx itself: fixtures/quant/quant_cases.safetensors has
//! `mx.quantize` / `mx.dequantize` / `mx.quantized_matmul` outputs for every bit width and
//! group size (see fixtures/quant/README.md).

#![allow(clippy::needless_range_loop)] // (row, column) indices mirror the fixture layout

mod common;

use half::{bf16, f16};
use moestream_engine::weights::bytes::Bytes;
use moestream_engine::weights::safetensors::{read_file, Dtype, Tensor};
use moestream_kernels::quant::{get_q, quantize_row};
use moestream_kernels::{matmul, reference, FloatSlice, Matrix, QuantMatrix, ThreadPool};
use std::collections::BTreeMap;

/// The fixture's tensors, copied to aligned memory (mlx writes unpadded headers, so the
/// mapped data may be misaligned for typed views).
fn cases() -> BTreeMap<String, Tensor> {
    let mut all = read_file(&common::repo_root().join("fixtures/quant/quant_cases.safetensors"))
        .expect("quant fixture loads");
    for t in all.values_mut() {
        t.bytes = Bytes::copied(t.bytes.as_slice());
    }
    all
}

fn floats(t: &Tensor) -> FloatSlice<'_> {
    let b = t.bytes.as_slice();
    match t.dtype {
        Dtype::F32 => FloatSlice::F32(bytemuck::cast_slice(b)),
        Dtype::F16 => FloatSlice::F16(bytemuck::cast_slice::<u8, f16>(b)),
        Dtype::Bf16 => FloatSlice::Bf16(bytemuck::cast_slice::<u8, bf16>(b)),
        d => panic!("{} has dtype {d:?}", t.name),
    }
}

fn prefixes(all: &BTreeMap<String, Tensor>) -> Vec<String> {
    all.keys()
        .filter_map(|k| k.strip_suffix(".weight").map(str::to_string))
        .collect()
}

fn parse(prefix: &str) -> (u32, usize) {
    let mut parts = prefix.split('_');
    let bits = parts.next().unwrap()[1..].parse().unwrap();
    let group = parts.next().unwrap()[1..].parse().unwrap();
    (bits, group)
}

#[test]
fn unpacking_and_dequantization_match_mlx_for_every_width() {
    let all = cases();
    let names = prefixes(&all);
    assert_eq!(names.len(), 22, "18 float32 cases + 4 half-precision cases");
    let pool = ThreadPool::new(2);
    for p in &names {
        let (bits, group) = parse(p);
        let t = |s: &str| &all[&format!("{p}.{s}")];
        let packed: &[u32] = bytemuck::cast_slice(t("weight").bytes.as_slice());
        let (scales, biases, deq) = (
            floats(t("scales")),
            floats(t("biases")),
            floats(t("dequant")),
        );
        let (rows, cols) = (t("dequant").shape[0], t("dequant").shape[1]);
        let w = Matrix::Quant(QuantMatrix {
            packed,
            scales,
            biases,
            rows,
            cols,
            bits,
            group_size: group,
            interleaved: false,
        });
        let mut row = vec![0f32; cols];
        for r in 0..rows {
            w.row_into(r, &mut row);
            for c in 0..cols {
                let g = r * cols / group + c / group;
                let q = get_q(&packed[r * cols * bits as usize / 32..], bits, c) as f32;
                let want = deq.get(r * cols + c);
                match deq {
                    // float32: exact, both in the fast row path and the reference.
                    FloatSlice::F32(_) => {
                        assert_eq!(row[c], want, "{p} ({r},{c})");
                        assert_eq!(
                            reference::weight_at(&w, r, c),
                            want,
                            "{p} reference ({r},{c})"
                        );
                    }
                    // Half precision: mlx rounds s*q, then the sum, to the storage dtype. Our
                    // unpacked q reproduces that bit for bit; our f32 result is within an ulp.
                    FloatSlice::Bf16(_) => {
                        let emu = bf16::from_f32(
                            bf16::from_f32(scales.get(g) * q).to_f32() + biases.get(g),
                        )
                        .to_f32();
                        assert_eq!(emu, want, "{p} ({r},{c})");
                        // Two roundings of half an ulp each, relative to the magnitudes summed.
                        let mag = (scales.get(g) * q).abs() + biases.get(g).abs();
                        assert!((row[c] - want).abs() <= mag / 128.0, "{p}");
                    }
                    FloatSlice::F16(_) => {
                        let emu = f16::from_f32(
                            f16::from_f32(scales.get(g) * q).to_f32() + biases.get(g),
                        )
                        .to_f32();
                        assert_eq!(emu, want, "{p} ({r},{c})");
                        let mag = (scales.get(g) * q).abs() + biases.get(g).abs();
                        assert!((row[c] - want).abs() <= mag / 1024.0, "{p}");
                    }
                }
            }
        }
        if matches!(deq, FloatSlice::F32(_)) {
            let x = floats(t("x")).to_vec();
            let want = floats(t("qmm")).to_vec();
            let m = x.len() / cols;
            let (mut fast, mut slow) = (vec![0f32; m * rows], vec![0f32; m * rows]);
            matmul::matmul(
                &pool,
                moestream_kernels::Precision::Exact,
                &x,
                m,
                &w,
                &mut fast,
            );
            reference::matmul(&x, m, &w, &mut slow);
            for ((a, b), c) in fast.iter().zip(&slow).zip(&want) {
                assert!(
                    (a - c).abs() < 1e-4 && (b - c).abs() < 1e-4,
                    "{p}: {a} {b} vs mlx {c}"
                );
            }
        }
    }
}

#[test]
fn quantizer_is_bit_exact_with_mx_quantize() {
    let all = cases();
    for p in prefixes(&all).iter().filter(|p| p.ends_with("_f32")) {
        let (bits, group) = parse(p);
        let t = |s: &str| &all[&format!("{p}.{s}")];
        let w = floats(t("w")).to_vec();
        let cols = t("w").shape[1];
        let (mut packed, mut scales, mut biases) = (vec![], vec![], vec![]);
        for row in w.chunks(cols) {
            let (q, s, b) = quantize_row(row, bits, group);
            packed.extend(q);
            scales.extend(s);
            biases.extend(b);
        }
        assert_eq!(
            packed.as_slice(),
            bytemuck::cast_slice::<u8, u32>(t("weight").bytes.as_slice()),
            "{p} packed"
        );
        assert_eq!(scales, floats(t("scales")).to_vec(), "{p} scales");
        assert_eq!(biases, floats(t("biases")).to_vec(), "{p} biases");
    }
}
