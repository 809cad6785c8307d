//! Kernel-level benchmark on Qwen3-30B-A3B expert shapes (H 2048, Im 768, 8 of 128 experts
//! per token, 4-bit group 64, bf16 scales): the fused gathered SwiGLU against two separate
//! gathered matmuls plus the activation, for one decode token and for a prefill batch.
//! Both weight layouts: the files' row-major one (streamed slots) and the interleaved one
//! (resident weights). Run: `cargo bench -p moestream-kernels --bench gather`.

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use half::bf16;
use moestream_kernels::matmul::{gather_swiglu, gather_swiglu_unfused, GatherPair};
use moestream_kernels::rng::Rng;
use moestream_kernels::Precision;
use moestream_kernels::{FloatSlice, Matrix, QuantMatrix, ThreadPool};

const H: usize = 2048;
const IM: usize = 768;
const EXPERTS: usize = 16;
const TOP_K: usize = 8;
const GROUP: usize = 64;

struct Expert {
    packed: Vec<u32>,
    scales: Vec<bf16>,
    biases: Vec<bf16>,
}

fn random_expert(rng: &mut Rng) -> Expert {
    let words = IM * H / 8;
    let groups = IM * H / GROUP;
    Expert {
        packed: (0..words).map(|_| rng.next_u32()).collect(),
        scales: (0..groups)
            .map(|_| bf16::from_f32(rng.normal() * 0.01))
            .collect(),
        biases: (0..groups)
            .map(|_| bf16::from_f32(rng.normal() * 0.05))
            .collect(),
    }
}

/// The same expert in the interleaved layout the loader gives resident 4-bit weights.
fn interleaved(e: &Expert) -> Expert {
    use moestream_kernels::interleave::interleave_in_place;
    let (mut packed, mut scales, mut biases) =
        (e.packed.clone(), e.scales.clone(), e.biases.clone());
    interleave_in_place(&mut packed, H / 8, &mut Vec::new());
    interleave_in_place(&mut scales, H / GROUP, &mut Vec::new());
    interleave_in_place(&mut biases, H / GROUP, &mut Vec::new());
    Expert {
        packed,
        scales,
        biases,
    }
}

fn view(e: &Expert, interleaved: bool) -> Matrix<'_> {
    Matrix::Quant(QuantMatrix {
        packed: &e.packed,
        scales: FloatSlice::Bf16(&e.scales),
        biases: FloatSlice::Bf16(&e.biases),
        rows: IM,
        cols: H,
        bits: 4,
        group_size: GROUP,
        interleaved,
    })
}

fn bench(c: &mut Criterion) {
    let pool = ThreadPool::with_default_threads();
    let mut rng = Rng::new(42);
    let gates: Vec<Expert> = (0..EXPERTS).map(|_| random_expert(&mut rng)).collect();
    let ups: Vec<Expert> = (0..EXPERTS).map(|_| random_expert(&mut rng)).collect();
    let gates_il: Vec<Expert> = gates.iter().map(interleaved).collect();
    let ups_il: Vec<Expert> = ups.iter().map(interleaved).collect();
    let mut group = c.benchmark_group("gather_swiglu_q4");
    for tokens in [1usize, 64] {
        let x: Vec<f32> = (0..tokens * H).map(|_| rng.normal()).collect();
        // Token t's k-th choice is expert (t + 3k) % EXPERTS: spread like a real router.
        let mut routes: Vec<(Vec<u32>, Vec<u32>)> = vec![(vec![], vec![]); EXPERTS];
        for t in 0..tokens {
            for k in 0..TOP_K {
                let e = (t + 3 * k) % EXPERTS;
                routes[e].0.push(t as u32);
                routes[e].1.push((t * TOP_K + k) as u32);
            }
        }
        for (layout, gates, ups) in [
            ("row-major", &gates, &ups),
            ("interleaved", &gates_il, &ups_il),
        ] {
            let il = layout == "interleaved";
            let pairs: Vec<GatherPair> = routes
                .iter()
                .enumerate()
                .filter(|(_, r)| !r.0.is_empty())
                .map(|(e, r)| GatherPair {
                    gate: view(&gates[e], il),
                    up: view(&ups[e], il),
                    x_rows: &r.0,
                    out_rows: &r.1,
                })
                .collect();
            let bytes: usize = pairs.iter().map(|p| p.gate.bytes() + p.up.bytes()).sum();
            group.throughput(Throughput::Bytes(bytes as u64));
            let mut h = vec![0f32; tokens * TOP_K * IM];
            let mut u = Vec::new();
            for (name, p) in [("int8", Precision::Fast), ("f32", Precision::Exact)] {
                group.bench_with_input(
                    BenchmarkId::new(format!("fused/{name}/{layout}"), tokens),
                    &tokens,
                    |b, _| b.iter(|| gather_swiglu(&pool, p, &x, &pairs, &mut h)),
                );
                group.bench_with_input(
                    BenchmarkId::new(format!("unfused/{name}/{layout}"), tokens),
                    &tokens,
                    |b, _| b.iter(|| gather_swiglu_unfused(&pool, p, &x, &pairs, &mut h, &mut u)),
                );
            }
        }
    }
    group.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(20).measurement_time(std::time::Duration::from_secs(3));
    targets = bench
}
criterion_main!(benches);
