//! The CUDA backend held to the CPU: every fixture it runs gives the CPU `--exact` path's
//! logits (within float rounding: both compute in f32, in different orders) over the prompt,
//! and the same 32 greedy tokens, for every architecture (standard and gated attention, MLA,
//! the Gated DeltaNet); streamed experts, not on the GPU yet, are refused with the reason.
//!
//! Needs an NVIDIA GPU with its driver and NVRTC: elsewhere (CI) each test prints why it
//! skipped. On the device machine: `scripts/gpu/test.sh`.

mod common;

use common::*;
use moestream_engine::backend::cuda::{
    compile_kernels, kernels_ptx, to_cuda, Cuda, Device, KERNEL_NAMES,
};
use moestream_engine::backend::Backend;
use moestream_engine::cache::{Scratch, SeqCache};
use moestream_engine::models::{LogitRows, SeqStep, Transformer};
use moestream_engine::{load_model, RunError};
use moestream_kernels::Precision;

/// Fixtures of the architectures this version runs (standard and gated attention, dense and
/// MoE feed-forwards), in each storage the fixtures have (f32, bf16, 3/4/6/8-bit).
const SUPPORTED: &[&str] = &[
    "qwen3_moe_f32",
    "qwen3_moe_bf16",
    "qwen3_moe_hf_f32",
    "qwen3_moe_sparse_step2_f32",
    "qwen3_moe_q3_g32_f32",
    "qwen3_moe_q4_g32_f32",
    "qwen3_moe_q4_g64_bf16",
    "qwen3_moe_q4_g64_f32",
    "qwen3_moe_q6_g64_f32",
    "qwen3_moe_q8_g64_f32",
    "qwen3_dense_f32",
    "llama_dense_f32",
    "olmoe_f32",
    "olmoe_q4_g32_f32",
    "mixtral_f32",
    "mixtral_hf_f32",
    "mixtral_q4_g32_f32",
    "glm4_moe_f32",
    "glm4_moe_q4_g32_f32",
    "glm4_moe_lite_f32",
    "qwen3_next_f32",
    "qwen3_5_moe_f32",
];

const GREEDY: usize = 32;

/// The GPU, or `None` after printing why there is none.
fn gpu(test: &str) -> Option<Cuda> {
    match Cuda::new(0) {
        Ok(c) => Some(c),
        Err(e) => {
            eprintln!("{test}: skipped, no usable CUDA GPU here: {e}");
            None
        }
    }
}

/// Runs `tokens` through `model` on `cache`, all logits.
fn forward<B: Backend>(
    model: &Transformer<B>,
    tokens: &[u32],
    cache: &mut SeqCache<B::Mem>,
    s: &mut Scratch<B::Mem>,
) -> Result<Vec<f32>, RunError> {
    forward_rows(model, tokens, cache, s, LogitRows::All)
}

fn forward_rows<B: Backend>(
    model: &Transformer<B>,
    tokens: &[u32],
    cache: &mut SeqCache<B::Mem>,
    s: &mut Scratch<B::Mem>,
    logits: LogitRows,
) -> Result<Vec<f32>, RunError> {
    let mut out = Vec::new();
    let step = SeqStep {
        tokens,
        cache,
        logits,
    };
    model.forward_batch(&mut [step], s, &mut out)?;
    Ok(out)
}

/// The prompt fed as the CLI feeds a long one: a first chunk that wants no logits (no rows
/// for the head), then the rest; the last chunk's logits.
fn chunked<B: Backend>(model: &Transformer<B>, prompt: &[u32]) -> Vec<f32> {
    let (mut cache, mut s) = (model.new_cache(), Scratch::default());
    let (a, b) = prompt.split_at(prompt.len() / 2);
    let none = forward_rows(model, a, &mut cache, &mut s, LogitRows::None).expect("chunk 1");
    assert!(none.is_empty());
    forward(model, b, &mut cache, &mut s).expect("chunk 2")
}

/// Greedy ids after `prompt` (prefill, then one token at a time).
fn greedy<B: Backend>(model: &Transformer<B>, prompt: &[u32], n: usize) -> Vec<u32> {
    let (mut cache, mut s) = (model.new_cache(), Scratch::default());
    let mut logits = forward(model, prompt, &mut cache, &mut s).expect("prefill");
    let vocab = model.info.vocab_size;
    let mut out = Vec::new();
    for _ in 0..n {
        let id = argmax(&logits[logits.len() - vocab..]);
        out.push(id);
        logits = forward(model, &[id], &mut cache, &mut s).expect("decode");
    }
    out
}

#[test]
fn every_fixture_it_runs_matches_the_cpu_exact_path() {
    if gpu("every_fixture_it_runs_matches_the_cpu_exact_path").is_none() {
        return;
    }
    for name in SUPPORTED {
        let cpu = load_model(&fixture(name), &exact_options(), &mut |_| {}).expect("loads");
        let dev = Cuda::new(0).expect("the GPU again");
        let device = dev.device_name().to_string();
        let cuda = to_cuda(&cpu.model, dev).unwrap_or_else(|e| panic!("{name}: {e}"));
        let prompt = ids(&expected(name)["prompt_ids"]);
        let (mut cc, mut cs) = (cpu.model.new_cache(), Scratch::default());
        let (mut gc, mut gs) = (cuda.new_cache(), Scratch::<Device>::default());
        let want = forward(&cpu.model, &prompt, &mut cc, &mut cs).expect("cpu");
        let got =
            forward(&cuda, &prompt, &mut gc, &mut gs).unwrap_or_else(|e| panic!("{name}: {e}"));
        let scale = want.iter().fold(1f32, |m, v| m.max(v.abs()));
        let diff = max_abs_diff(&want, &got);
        eprintln!(
            "{name} on {device}: prompt logits ({} tokens) max |cuda - cpu| = {diff:.2e} (max |logit| {scale:.1})",
            prompt.len()
        );
        assert!(diff <= 1e-3 * scale, "{name}: logits differ by {diff}");
        let diff = max_abs_diff(&chunked(&cpu.model, &prompt), &chunked(&cuda, &prompt));
        assert!(
            diff <= 1e-3 * scale,
            "{name}: chunked prompt: logits differ by {diff}"
        );
        // A prompt long enough that its routed slots are grouped by expert on the host
        // (more than the direct path's 64), where the fixture's own prompt runs direct.
        let long: Vec<u32> = prompt.iter().cycle().take(72).copied().collect();
        let (mut cc, mut gc) = (cpu.model.new_cache(), cuda.new_cache());
        let want = forward(&cpu.model, &long, &mut cc, &mut cs).expect("cpu");
        let got = forward(&cuda, &long, &mut gc, &mut gs).expect("cuda");
        let scale = want.iter().fold(1f32, |m, v| m.max(v.abs()));
        let diff = max_abs_diff(&want, &got);
        assert!(
            diff <= 1e-3 * scale,
            "{name}: {}-token prompt: logits differ by {diff}",
            long.len()
        );
        let (a, b) = (
            greedy(&cpu.model, &prompt, GREEDY),
            greedy(&cuda, &prompt, GREEDY),
        );
        assert_eq!(a, b, "{name}: greedy tokens differ");
        // Expert activations, counted on the host (grouped) and on the device (direct).
        use moestream_engine::experts::ExpertSource;
        assert_eq!(
            cpu.model.experts.usage(),
            cuda.experts.usage(),
            "{name}: expert usage counts differ"
        );
    }
}

/// The router kernel against the CPU's `router_topk`, for every router kind (softmax
/// then top-k, top-k then softmax, sigmoid with a selection bias and group masking), on
/// random logits with planted ties.
#[test]
fn the_router_kernel_matches_the_cpu_router() {
    use moestream_kernels::rng::Rng;
    use moestream_kernels::router::{router_topk, RouterKind};
    let Some(dev) = gpu("the_router_kernel_matches_the_cpu_router") else {
        return;
    };
    let kinds = [
        (
            RouterKind::SoftmaxTopK {
                norm_topk_prob: true,
            },
            false,
        ),
        (
            RouterKind::SoftmaxTopK {
                norm_topk_prob: false,
            },
            false,
        ),
        (RouterKind::TopKSoftmax, false),
        (
            RouterKind::SigmoidTopK {
                norm_topk_prob: true,
                routed_scaling: 2.5,
                n_group: 1,
                topk_group: 1,
            },
            true,
        ),
        (
            RouterKind::SigmoidTopK {
                norm_topk_prob: true,
                routed_scaling: 1.8,
                n_group: 8,
                topk_group: 4,
            },
            true,
        ),
    ];
    let mut rng = Rng::new(7);
    for (experts, k, rows) in [(128, 8, 5), (64, 4, 3), (256, 8, 2), (8, 2, 4)] {
        for (kind, with_bias) in &kinds {
            if let RouterKind::SigmoidTopK { n_group, .. } = kind {
                if experts % n_group != 0 {
                    continue;
                }
            }
            let mut logits: Vec<f32> = (0..rows * experts).map(|_| rng.normal()).collect();
            logits[3] = logits[5]; // a tie: the lower id wins on both
            let bias: Vec<f32> = (0..experts).map(|_| 0.1 * rng.normal()).collect();
            let bias = with_bias.then_some(bias);
            let (mut want_ids, mut want_w) = (vec![0u32; rows * k], vec![0f32; rows * k]);
            let mut host = logits.clone();
            for r in 0..rows {
                router_topk(
                    kind,
                    &mut host[r * experts..(r + 1) * experts],
                    bias.as_deref(),
                    &mut want_ids[r * k..(r + 1) * k],
                    &mut want_w[r * k..(r + 1) * k],
                );
            }
            let mut dl = dev.buffer(&logits);
            let db = bias.as_ref().map(|b| dev.buffer(b));
            let (mut ids, mut w) = (dev.buffer::<u32>(&[]), dev.buffer::<f32>(&[]));
            dev.router_topk(kind, &mut dl, experts, db.as_ref(), k, &mut ids, &mut w);
            dev.check().expect("the router kernel runs");
            let what = format!("{kind:?}, {experts} experts, top {k}");
            assert_eq!(dev.to_host(&ids), want_ids, "{what}: ids");
            let diff = max_abs_diff(&dev.to_host(&w), &want_w);
            assert!(diff <= 1e-6, "{what}: weights differ by {diff}");
        }
    }
}

#[test]
fn streamed_experts_are_refused_with_the_reason() {
    use moestream_engine::experts::streamed::StreamOptions;
    if gpu("streamed_experts_are_refused_with_the_reason").is_none() {
        return;
    }
    let stream = StreamOptions {
        cache_slots: 3,
        io_depth: 4,
        ..Default::default()
    };
    let cpu = load_with(&fixture("qwen3_moe_f32"), Precision::Exact, Some(stream));
    let err = match to_cuda(&cpu.model, Cuda::new(0).expect("the GPU")) {
        Ok(_) => panic!("streamed experts must be refused"),
        Err(e) => e,
    };
    assert!(
        err.contains("streamed experts") && err.contains("not on CUDA yet"),
        "{err}"
    );
}

#[test]
fn without_a_gpu_the_error_says_what_is_missing() {
    match Cuda::new(0) {
        Ok(c) => eprintln!(
            "without_a_gpu_the_error_says_what_is_missing: skipped, this machine has {}",
            c.device_name()
        ),
        Err(e) => assert!(
            e.contains("CUDA") || e.contains("NVRTC"),
            "unclear error: {e}"
        ),
    }
    // A GPU ordinal that cannot exist is an error on any machine.
    let err = Cuda::new(1 << 20).err().expect("no such GPU");
    assert!(!err.is_empty());
}

/// The kernels compile under NVRTC for Hopper (sm_90) and Ampere (sm_80), the PTX holds
/// every kernel the backend loads, and the second run takes them from the on-disk cache. Needs NVRTC, not a GPU: where there is none (CI),
/// NVRTC's PyPI wheel is installed under target/ and this test runs again in a child process
/// that can load it (a library path is read at start).
#[test]
fn the_kernels_compile_under_nvrtc() {
    let compile = || {
        let cache = std::env::temp_dir().join(format!("moestream-ptx-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&cache);
        for (major, minor) in [(9, 0), (8, 0)] {
            let (ptx, cached) =
                kernels_ptx(major, minor, Some(&cache)).unwrap_or_else(|e| panic!("{e}"));
            assert!(!cached, "sm_{major}{minor}: compiled the first time");
            let src = ptx.to_src();
            for name in KERNEL_NAMES {
                assert!(
                    src.contains(&format!(".entry {name}(")),
                    "kernel {name} is loaded by the backend but missing from kernels.cu"
                );
            }
            let (again, cached) = kernels_ptx(major, minor, Some(&cache)).unwrap();
            assert!(cached, "sm_{major}{minor}: the second time from the cache");
            assert_eq!(ptx.to_src(), again.to_src());
        }
        let files = std::fs::read_dir(&cache).map_or(0, |d| d.count());
        assert_eq!(files, 2, "one cached file per architecture");
        let _ = std::fs::remove_dir_all(&cache);
    };
    if std::env::var_os("MOESTREAM_NVRTC_CHILD").is_some() || compile_kernels(9, 0).is_ok() {
        return compile();
    }
    let dir = repo_root().join("target/nvrtc");
    let out = std::process::Command::new(repo_root().join("scripts/tests/nvrtc-lib.sh"))
        .arg(&dir)
        .output()
        .expect("runs the install script");
    if !out.status.success() {
        eprintln!(
            "the_kernels_compile_under_nvrtc: skipped, NVRTC could not be installed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        return;
    }
    let lib = String::from_utf8_lossy(&out.stdout).trim().to_string();
    let child = std::process::Command::new(std::env::current_exe().expect("this test binary"))
        .args(["the_kernels_compile_under_nvrtc", "--exact", "--nocapture"])
        .env("LD_LIBRARY_PATH", &lib)
        .env("MOESTREAM_NVRTC_CHILD", "1")
        .output()
        .expect("runs the child");
    assert!(
        child.status.success(),
        "compiling under NVRTC failed:\n{}{}",
        String::from_utf8_lossy(&child.stdout),
        String::from_utf8_lossy(&child.stderr)
    );
}
