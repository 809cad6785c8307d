//! The header's validation and every block type's affine form against llama.cpp's formulas.

use crate::affine::{affine_params, to_affine};
use crate::reference::dequantize;
use crate::{GgmlType, Gguf, GgufWriter, Value};
use std::path::Path;

/// The block types (everything runnable but the floats).
fn block_types() -> impl Iterator<Item = GgmlType> {
    GgmlType::RUNNABLE.into_iter().filter(|t| !t.is_float())
}

fn random(ty: GgmlType, n: usize, seed: &mut u64) -> Vec<u8> {
    *seed += 1;
    crate::writer::random_blocks(ty, n, *seed)
}

fn unpack(codes: &[u32], bits: u32, j: usize) -> u32 {
    let bit = j * bits as usize;
    let (w, off) = (bit / 32, (bit % 32) as u32);
    let mut v = codes[w] >> off;
    if off + bits > 32 {
        v |= codes[w + 1] << (32 - off);
    }
    v & ((1 << bits) - 1)
}

#[test]
fn every_block_type_maps_onto_affine_rows_that_dequantize_as_llama_cpp_does() {
    let mut seed = 0x9E37_79B9_7F4A_7C15;
    for ty in block_types() {
        let (elems, _) = ty.block().unwrap();
        let cols = 2 * elems.max(64);
        let rows = 3;
        let raw = random(ty, rows * cols / elems, &mut seed);
        let a = to_affine(ty, &raw, cols);
        let (bits, group) = affine_params(ty).unwrap();
        assert_eq!((a.bits, a.group), (bits, group));
        assert_eq!(a.codes.len(), rows * cols * bits as usize / 32);
        let want = dequantize(ty, &raw);
        let mut max_err = 0f32;
        for (i, &w) in want.iter().enumerate() {
            let (r, c) = (i / cols, i % cols);
            let q = unpack(&a.codes[r * cols * bits as usize / 32..], bits, c);
            assert!(q < 1 << bits);
            let g = i / group;
            let got = a.scales[g] * q as f32 + a.biases[g];
            // The same affine value, rounded in a different order: a few ulps of the
            // group's scale times its largest code.
            let tol = 4.0 * f32::EPSILON * (a.scales[g].abs() * 256.0 + a.biases[g].abs());
            let err = (got - w).abs();
            assert!(err <= tol, "{}: element {i}: {got} vs {w}", ty.name());
            max_err = max_err.max(err);
        }
        println!(
            "{}: {} values, max |affine - llama.cpp| {max_err:e}",
            ty.name(),
            want.len()
        );
    }
}

#[test]
fn legacy_types_keep_f16_scales_and_k_types_are_flagged_when_they_need_f32() {
    let mut seed = 7;
    for ty in [
        GgmlType::Q4_0,
        GgmlType::Q4_1,
        GgmlType::Q5_0,
        GgmlType::Q8_0,
    ] {
        let raw = random(ty, 8, &mut seed);
        assert!(to_affine(ty, &raw, 256).params_fit_f16(), "{}", ty.name());
    }
    let raw = random(GgmlType::Q4K, 8, &mut seed);
    assert!(!to_affine(GgmlType::Q4K, &raw, 256).params_fit_f16());
}

fn tiny_file() -> GgufWriter {
    let mut w = GgufWriter::new();
    w.meta("general.architecture", Value::String("llama".into()))
        .meta("llama.block_count", Value::U32(2))
        .meta(
            "tokenizer.ggml.tokens",
            Value::Array(vec![Value::String("a".into()), Value::String("b".into())]),
        )
        .tensor("a", &[2, 32], GgmlType::Q4_0, vec![1; 2 * 18])
        .tensor("b", &[3], GgmlType::F32, vec![2; 12]);
    w
}

#[test]
fn a_written_file_parses_back_with_its_metadata_and_tensor_extents() {
    let bytes = tiny_file().to_bytes();
    let g = Gguf::parse(&bytes, Path::new("t.gguf")).unwrap();
    assert_eq!(g.version, 3);
    assert_eq!(g.architecture().unwrap(), "llama");
    assert_eq!(g.require_u64("llama.block_count").unwrap(), 2);
    assert_eq!(g.tensors.len(), 2);
    let a = &g.tensors[0];
    assert_eq!(
        (a.name.as_str(), a.shape.clone(), a.ty, a.len),
        ("a", vec![2, 32], GgmlType::Q4_0, 36)
    );
    assert_eq!(&bytes[a.offset..a.offset + a.len], &[1u8; 36][..]);
    let b = &g.tensors[1];
    assert_eq!(&bytes[b.offset..b.offset + b.len], &[2u8; 12][..]);
    assert!(g
        .require_u64("llama.context_length")
        .unwrap_err()
        .to_string()
        .contains("llama.context_length is missing"));
}

fn parse_err(bytes: &[u8]) -> String {
    Gguf::parse(bytes, Path::new("bad.gguf"))
        .unwrap_err()
        .to_string()
}

#[test]
fn malformed_files_are_errors_that_name_the_file_and_the_problem() {
    let good = tiny_file().to_bytes();
    let b = Gguf::parse(&good, Path::new("good.gguf")).unwrap().tensors[1].clone();
    let b_end = b.offset + b.len;
    // Truncated anywhere: inside the header, the directory or the data.
    for cut in [0, 3, 10, 30, 100, b.offset - 40, b_end - 1] {
        let e = parse_err(&good[..cut]);
        assert!(e.starts_with("bad.gguf: "), "{e}");
        assert!(
            e.contains("truncated") || e.contains("magic"),
            "cut {cut}: {e}"
        );
    }
    assert!(parse_err(&good[..b_end - 1]).contains("tensor b"));
    let mut bad = good.clone();
    bad[..4].copy_from_slice(b"GGML");
    assert!(parse_err(&bad).contains("not a GGUF file"));
    let mut bad = good.clone();
    bad[4..8].copy_from_slice(&1u32.to_le_bytes());
    assert!(parse_err(&bad).contains("version 1 is not supported"));
    let mut bad = good.clone();
    bad[8..16].copy_from_slice(&u64::MAX.to_le_bytes());
    assert!(parse_err(&bad).contains("tensor count"));
    // A row that is not whole blocks.
    let mut w = GgufWriter::new();
    w.tensor("odd", &[2, 16], GgmlType::Q4_0, vec![0; 18]);
    assert!(parse_err(&w.to_bytes()).contains("tensor odd"));
}

#[test]
fn unsupported_types_are_named() {
    assert_eq!(GgmlType::from_id(23).name(), "IQ4_XS");
    assert_eq!(GgmlType::from_id(35).name(), "TQ2_0");
    assert_eq!(GgmlType::from_id(99).name(), "unknown type 99");
    assert_eq!(affine_params(GgmlType::from_id(23)), None);
}

#[test]
fn four_bit_types_widened_to_8_bits_keep_their_values_with_centred_codes() {
    let mut seed = 99;
    for ty in [GgmlType::Q4_0, GgmlType::Q4_1, GgmlType::Q4K] {
        let cols = 256;
        let raw = random(ty, 2 * cols / ty.block().unwrap().0, &mut seed);
        let (words, groups) = crate::affine_len(ty, raw.len(), 8);
        let (mut codes, mut s, mut b) = (vec![0u32; words], vec![0f32; groups], vec![0f32; groups]);
        crate::to_affine_into(ty, &raw, cols, 8, &mut codes, &mut s, &mut b);
        let want = dequantize(ty, &raw);
        for (i, &w) in want.iter().enumerate() {
            let q = unpack(&codes, 8, i);
            assert!(
                (120..=135).contains(&q),
                "{}: code {q} not centred",
                ty.name()
            );
            let g = i / 32;
            let got = s[g] * q as f32 + b[g];
            let tol = 4.0 * f32::EPSILON * (s[g].abs() * 256.0 + b[g].abs());
            assert!((got - w).abs() <= tol, "{}: {got} vs {w}", ty.name());
        }
    }
}
