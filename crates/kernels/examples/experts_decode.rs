//! Decode-shaped routed experts: one token's gathered SwiGLU and down projection over 8 of 128
//! experts (Qwen3-30B-A3B's 768 x 2048, 4-bit group 64, bf16, interleaved), the experts
//! chosen at random each step so their weights come from memory, not cache. Reports GB/s of
//! expert bytes next to one large matvec of the same layout and the memory bandwidth, to show
//! what the gathered form loses to task starts. Run:
//! `cargo run --release -p moestream-kernels --example experts_decode [steps]`.

use half::bf16;
use moestream_kernels::interleave::interleave_in_place;
use moestream_kernels::matmul::{gather_matmul, gather_swiglu, matmul, GatherGroup, GatherPair};
use moestream_kernels::rng::Rng;
use moestream_kernels::{FloatSlice, Matrix, Precision, QuantMatrix, ThreadPool};
use std::time::Instant;

const GROUP: usize = 64;

/// `n` matrices of `rows x cols`, 4-bit, laid out one after another and interleaved.
struct Stack {
    packed: Vec<u32>,
    scales: Vec<bf16>,
    rows: usize,
    cols: usize,
}

impl Stack {
    fn new(rng: &mut Rng, n: usize, rows: usize, cols: usize) -> Stack {
        let mut packed: Vec<u32> = (0..n * rows * cols / 8).map(|_| rng.next_u32()).collect();
        let mut scales: Vec<bf16> = (0..n * rows * cols / GROUP)
            .map(|_| bf16::from_f32(rng.normal() * 0.01))
            .collect();
        interleave_in_place(&mut packed, cols / 8, &mut Vec::new());
        interleave_in_place(&mut scales, cols / GROUP, &mut Vec::new());
        Stack {
            packed,
            scales,
            rows,
            cols,
        }
    }

    fn get(&self, e: usize) -> Matrix<'_> {
        let (w, g) = (self.rows * self.cols / 8, self.rows * self.cols / GROUP);
        Matrix::Quant(QuantMatrix {
            packed: &self.packed[e * w..(e + 1) * w],
            scales: FloatSlice::Bf16(&self.scales[e * g..(e + 1) * g]),
            biases: FloatSlice::Bf16(&self.scales[e * g..(e + 1) * g]),
            rows: self.rows,
            cols: self.cols,
            bits: 4,
            group_size: GROUP,
            interleaved: true,
        })
    }
}

fn main() {
    let steps: usize = std::env::args()
        .nth(1)
        .map_or(400, |a| a.parse().expect("a number"));
    let (n, k, hidden, inter) = (128usize, 8usize, 2048usize, 768usize);
    let mut rng = Rng::new(5);
    let gate = Stack::new(&mut rng, n, inter, hidden);
    let up = Stack::new(&mut rng, n, inter, hidden);
    let down = Stack::new(&mut rng, n, hidden, inter);
    let pool = ThreadPool::with_default_threads();
    let x: Vec<f32> = (0..hidden).map(|_| rng.normal()).collect();
    let (mut h, mut y) = (vec![0f32; k * inter], vec![0f32; k * hidden]);
    let (zero, slots): ([u32; 1], Vec<[u32; 1]>) = ([0], (0..k as u32).map(|i| [i]).collect());
    let expert_bytes = (gate.get(0).bytes() + up.get(0).bytes() + down.get(0).bytes()) as f64;
    let mut secs = 0f64;
    for step in 0..steps + 10 {
        let mut ids: Vec<usize> = Vec::with_capacity(k);
        while ids.len() < k {
            let e = rng.next_u32() as usize % n;
            if !ids.contains(&e) {
                ids.push(e);
            }
        }
        let t = Instant::now();
        let pairs: Vec<GatherPair> = ids
            .iter()
            .zip(&slots)
            .map(|(&e, s)| GatherPair {
                gate: gate.get(e),
                up: up.get(e),
                x_rows: &zero,
                out_rows: s,
            })
            .collect();
        gather_swiglu(&pool, Precision::Fast, &x, &pairs, &mut h);
        let downs: Vec<GatherGroup> = ids
            .iter()
            .zip(&slots)
            .map(|(&e, s)| GatherGroup {
                w: down.get(e),
                x_rows: s,
                out_rows: s,
            })
            .collect();
        gather_matmul(&pool, Precision::Fast, &h, &downs, &mut y);
        if step >= 10 {
            secs += t.elapsed().as_secs_f64();
        }
    }
    let per_step = secs / steps as f64;
    println!(
        "8 of 128 experts, one token: {:.1} us per step, {:.1} GB/s of expert weights ({} threads)",
        per_step * 1e6,
        k as f64 * expert_bytes / per_step / 1e9,
        pool.threads()
    );
    // The same layout as one long matrix: all 128 gate matrices as one matvec.
    let all = Matrix::Quant(QuantMatrix {
        packed: &gate.packed,
        scales: FloatSlice::Bf16(&gate.scales),
        biases: FloatSlice::Bf16(&gate.scales),
        rows: n * inter,
        cols: hidden,
        bits: 4,
        group_size: GROUP,
        interleaved: true,
    });
    let mut out = vec![0f32; n * inter];
    matmul(&pool, Precision::Fast, &x, 1, &all, &mut out);
    let t = Instant::now();
    let reps = 10;
    for _ in 0..reps {
        matmul(&pool, Precision::Fast, &x, 1, &all, &mut out);
    }
    let s = t.elapsed().as_secs_f64() / reps as f64;
    println!(
        "one {} x {hidden} matvec: {:.1} GB/s",
        n * inter,
        all.bytes() as f64 / s / 1e9
    );
    let bw = moestream_kernels::membw::read_bandwidth(&pool, 1 << 30, 3);
    println!("memory read bandwidth: {:.1} GB/s", bw / 1e9);
    std::hint::black_box((&h, &y, &out));
}
