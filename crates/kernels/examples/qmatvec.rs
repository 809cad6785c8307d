//! Decode-shaped quantized matvec throughput: one activation row against a large 4-bit
//! matrix (bigger than the caches), the way a decode step meets expert and dense weights.
//! Reports GB/s of weight bytes (codes + bf16 scales + biases) next to the memory
//! bandwidth measured by `membw`. Run:
//! `cargo run --release -p moestream-kernels --example qmatvec [rows cols reps]`.

use half::bf16;
use moestream_kernels::matmul::matmul;
use moestream_kernels::rng::Rng;
use moestream_kernels::Precision;
use moestream_kernels::{FloatSlice, Matrix, QuantMatrix, ThreadPool};
use std::time::Instant;

fn main() {
    let args: Vec<usize> = std::env::args()
        .skip(1)
        .map(|a| a.parse().unwrap())
        .collect();
    let rows = *args.first().unwrap_or(&(128 * 1024));
    let cols = *args.get(1).unwrap_or(&2048);
    let reps = *args.get(2).unwrap_or(&20);
    let group = 64;
    let mut rng = Rng::new(7);
    let interleaved = std::env::var("INTERLEAVED").is_ok_and(|v| v == "1");
    let mut packed: Vec<u32> = (0..rows * cols / 8).map(|_| rng.next_u32()).collect();
    let mut scales: Vec<bf16> = (0..rows * cols / group)
        .map(|_| bf16::from_f32(rng.normal() * 0.01))
        .collect();
    let mut biases: Vec<bf16> = (0..rows * cols / group)
        .map(|_| bf16::from_f32(rng.normal() * 0.01))
        .collect();
    if interleaved {
        use moestream_kernels::interleave::interleave_in_place;
        interleave_in_place(&mut packed, cols / 8, &mut Vec::new());
        interleave_in_place(&mut scales, cols / group, &mut Vec::new());
        interleave_in_place(&mut biases, cols / group, &mut Vec::new());
    }
    let w = Matrix::Quant(QuantMatrix {
        packed: &packed,
        scales: FloatSlice::Bf16(&scales),
        biases: FloatSlice::Bf16(&biases),
        rows,
        cols,
        bits: 4,
        group_size: group,
        interleaved,
    });
    let bytes = w.bytes() as f64;
    let pool = ThreadPool::with_default_threads();
    let x: Vec<f32> = (0..cols).map(|_| rng.normal()).collect();
    let layout = if interleaved {
        "interleaved"
    } else {
        "row-major"
    };
    println!("layout: {layout}");
    for m in [1usize, 4, 16] {
        let xm: Vec<f32> = x.iter().cycle().take(m * cols).copied().collect();
        let mut ym = vec![0f32; m * rows];
        matmul(&pool, Precision::Fast, &xm, m, &w, &mut ym);
        let t = Instant::now();
        for _ in 0..reps {
            matmul(&pool, Precision::Fast, &xm, m, &w, &mut ym);
        }
        let s = t.elapsed().as_secs_f64() / reps as f64;
        println!(
            "m={m} rows={rows} cols={cols}: {:.3} ms, {:.1} GB/s of weights ({} threads)",
            s * 1e3,
            bytes / s / 1e9,
            pool.threads()
        );
    }
    let bw = moestream_kernels::membw::read_bandwidth(&pool, 1 << 30, 3);
    println!("memory read bandwidth: {:.1} GB/s", bw / 1e9);
}
