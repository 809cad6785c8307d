//! Time of the decode-step parts outside the quantized matvec, at Qwen3-30B-A3B's shapes:
//! grouped attention over a cached context (32 query heads, 4 KV heads of 128) and the
//! exact 8-bit router (128 experts x 2048). Run:
//! `cargo run --release -p moestream-kernels --example decode_parts [context reps]`.

use half::bf16;
use moestream_kernels::attention::{attention, AttnShape};
use moestream_kernels::matmul::matmul;
use moestream_kernels::rng::Rng;
use moestream_kernels::{FloatSlice, Matrix, Precision, QuantMatrix, ThreadPool};
use std::time::Instant;

fn main() {
    let args: Vec<usize> = std::env::args()
        .skip(1)
        .map(|a| a.parse().expect("a number"))
        .collect();
    let t = *args.first().unwrap_or(&512);
    let reps = *args.get(1).unwrap_or(&2000);
    let pool = ThreadPool::with_default_threads();
    let mut rng = Rng::new(3);
    let (nh, nkv, hd) = (32, 4, 128);
    let q: Vec<f32> = (0..nh * hd).map(|_| rng.normal()).collect();
    let k: Vec<f32> = (0..nkv * t * hd).map(|_| rng.normal()).collect();
    let v: Vec<f32> = (0..nkv * t * hd).map(|_| rng.normal()).collect();
    let mut out = vec![0f32; nh * hd];
    let shape = AttnShape {
        l: 1,
        t,
        cap: t,
        n_heads: nh,
        n_kv: nkv,
        head_dim: hd,
        scale: 0.088,
    };
    let time = |f: &mut dyn FnMut()| {
        f();
        let start = Instant::now();
        for _ in 0..reps {
            f();
        }
        start.elapsed().as_secs_f64() / reps as f64 * 1e6
    };
    let us = time(&mut || attention(&pool, &q, &k, &v, shape, &mut out));
    println!("attention, {t} positions, {nh}/{nkv} heads of {hd}: {us:.1} us");
    let (rows, cols, group) = (128, 2048, 64);
    let packed: Vec<u32> = (0..rows * cols / 4).map(|_| rng.next_u32()).collect();
    let sb: Vec<bf16> = (0..rows * cols / group)
        .map(|_| bf16::from_f32(rng.normal() * 0.01))
        .collect();
    let w = Matrix::Quant(QuantMatrix {
        packed: &packed,
        scales: FloatSlice::Bf16(&sb),
        biases: FloatSlice::Bf16(&sb),
        rows,
        cols,
        bits: 8,
        group_size: group,
        interleaved: false,
    });
    let x: Vec<f32> = (0..cols).map(|_| rng.normal()).collect();
    let mut y = vec![0f32; rows];
    let us = time(&mut || matmul(&pool, Precision::Exact, &x, 1, &w, &mut y));
    println!("exact 8-bit router, {rows} x {cols}: {us:.1} us");
    std::hint::black_box((&out, &y));
}
