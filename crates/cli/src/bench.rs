//! `moestream bench`: prefill and decode speed, time to first token, peak RSS, the machine's
//! memory bandwidth and decode as a fraction of the bandwidth roofline; writes a capsule.

use crate::capsule;
use crate::load::ModelArgs;
use crate::sys;
use anyhow::{bail, Context, Result};
use clap::Args;
use moestream_engine::backend::Backend;
use moestream_engine::experts::ExpertSource;
use moestream_engine::generate::{GenerateParams, Next, TokenLoop};
use moestream_engine::models::Transformer;
use moestream_engine::sampling::{Sampler, SamplingParams};
use moestream_engine::session::Session;
use moestream_engine::Engine;
use moestream_kernels::rng::Rng;
use serde_json::{json, Value};
use std::path::PathBuf;
use std::time::Instant;

#[derive(Args, Debug)]
pub struct BenchArgs {
    #[command(flatten)]
    model: ModelArgs,
    /// Prompt length for the prefill measurement (random token ids, fixed seed).
    #[arg(long, default_value_t = 512)]
    prompt_tokens: usize,
    /// Tokens to decode (greedy) after the prompt.
    #[arg(long, default_value_t = 128)]
    gen_tokens: usize,
    /// Print the results as JSON on stdout.
    #[arg(long)]
    json: bool,
    /// Write the repro capsule (JSON) here.
    #[arg(long)]
    out: Option<PathBuf>,
    /// Bytes of the buffer used to measure memory bandwidth.
    #[arg(long, default_value_t = 1 << 30)]
    bandwidth_bytes: usize,
}

pub fn run(args: BenchArgs) -> Result<()> {
    if args.prompt_tokens == 0 || args.gen_tokens == 0 {
        bail!("--prompt-tokens and --gen-tokens must be at least 1");
    }
    let gpu = args.model.gpu()?;
    let t_load = Instant::now();
    let engine = args.model.load()?;
    let cpu = engine.model();
    match gpu {
        None => {
            let load_secs = t_load.elapsed().as_secs_f64();
            eprintln!("measuring memory bandwidth...");
            let pool = &cpu.dev.pool;
            let bandwidth = moestream_kernels::membw::read_bandwidth(pool, args.bandwidth_bytes, 5);
            let host = Host {
                bandwidth,
                threads: pool.threads(),
            };
            bench_on(&engine, cpu, &args, load_secs, Some(host))
        }
        Some(gpu) => {
            let model = ModelArgs::to_gpu(&engine, gpu)?;
            let load_secs = t_load.elapsed().as_secs_f64();
            bench_on(&engine, &model, &args, load_secs, None)
        }
    }
}

/// What the CPU run measures of the host: its memory bandwidth (for the roofline) and the
/// kernel threads.
struct Host {
    bandwidth: f64,
    threads: usize,
}

/// The measurement on `model` (the engine's, or a copy on a GPU: then without the host's
/// roofline).
fn bench_on<B: Backend>(
    engine: &Engine,
    model: &Transformer<B>,
    args: &BenchArgs,
    load_secs: f64,
    host: Option<Host>,
) -> Result<()> {
    let info = &model.info;
    if args.prompt_tokens + args.gen_tokens > info.max_context {
        bail!(
            "prompt + generated tokens exceed the model's context ({})",
            info.max_context
        );
    }
    let kernels = match model.dev.name() {
        "cpu" => moestream_kernels::isa::summary(),
        name => name.to_string(),
    };

    // Random prompt ids within the tokenizer's range (fixed seed: the same prompt every run).
    let id_range = engine
        .text
        .tokenizer
        .vocab_size()
        .min(info.vocab_size)
        .max(1);
    let mut rng = Rng::new(1234);
    let prompt: Vec<u32> = (0..args.prompt_tokens)
        .map(|_| rng.below(id_range) as u32)
        .collect();
    let usage_before = model.experts.usage();
    let rss_after_load = rss_bytes();

    let mut cache = model.new_cache();
    // Greedy, no end-of-sequence: exactly gen_tokens tokens after the first.
    let params = GenerateParams {
        max_tokens: args.gen_tokens + 1,
        eos_ids: &[],
        logprobs: None,
    };
    let lp = TokenLoop::new(&prompt, Sampler::new(SamplingParams::default()), &params);
    let mut session = Session::new(lp, engine.draft.as_ref(), 0);
    let mut emit = |lp: &mut TokenLoop, next: Next, _: &[f32]| {
        matches!(next, Next::Token(_)) && !lp.is_finished()
    };
    eprintln!("prefill: {} tokens...", prompt.len());
    let t0 = Instant::now();
    // The step that feeds the prompt's last chunk also picks the first token (and has the
    // draft read the prompt).
    let mut alive = true;
    while session.prefilling() {
        alive = session
            .step(model, &mut cache, &mut emit)
            .context("prefill")?;
    }
    let ttft = t0.elapsed().as_secs_f64();
    let usage_mid = model.experts.usage();
    let io_mid = model.experts.stats();
    eprintln!("decode: {} tokens...", args.gen_tokens);
    let rss_decode_start = rss_bytes();
    // Resident set every 100 decoded tokens (bounded memory over long generations).
    let mut rss_samples = Vec::new();
    let mut sampled_at = 0;
    let t1 = Instant::now();
    while alive {
        alive = session
            .step(model, &mut cache, &mut emit)
            .context("decode")?;
        let decoded = session.seq.stats.generated_tokens - 1;
        if decoded / 100 > sampled_at {
            sampled_at = decoded / 100;
            rss_samples.push(json!([decoded, rss_bytes()]));
        }
    }
    let decode_secs = t1.elapsed().as_secs_f64();
    let spec_stats = session.spec_stats();
    let usage_after = model.experts.usage();
    let io = model.experts.stats().since(&io_mid);

    let prefill_tok_s = args.prompt_tokens as f64 / ttft;
    let decode_tok_s = args.gen_tokens as f64 / decode_secs;
    let bandwidth = host.as_ref().map(|h| h.bandwidth);
    let roofline_tok_s = bandwidth.map(|b| b / info.bytes_per_token as f64);
    let figures = json!({
        "load_secs": load_secs,
        "prompt_tokens": args.prompt_tokens,
        "gen_tokens": args.gen_tokens,
        "prefill_tok_s": prefill_tok_s,
        "time_to_first_token_s": ttft,
        "decode_tok_s": decode_tok_s,
        "peak_rss_bytes": sys::peak_rss_bytes(),
        "memory_bandwidth_bytes_s": bandwidth,
        "weight_bytes_per_token": info.bytes_per_token,
        "roofline_decode_tok_s": roofline_tok_s,
        "decode_fraction_of_roofline": roofline_tok_s.map(|r| decode_tok_s / r),
        "device": model.dev.name(),
        "experts_streamed": args.model.stream_experts,
        "decode_expert_hit_rate": io.hit_rate(),
        "decode_expert_bytes_read_per_token": io.total_bytes() as f64 / args.gen_tokens as f64,
        "decode_expert_miss_bytes_per_token": io.bytes_read as f64 / args.gen_tokens as f64,
        "decode_expert_read_bandwidth_bytes_s": io.read_bandwidth(),
        "decode_io_stall_s_per_token": io.stall_secs() / args.gen_tokens as f64,
        "decode_prefetch_reads": io.prefetch_reads,
        "decode_prefetch_hits": io.prefetch_hits,
        "decode_prefetch_hit_rate": io.prefetch_hit_rate(),
        "decode_prefetch_bytes_per_token": io.prefetch_bytes as f64 / args.gen_tokens as f64,
        "decode_prefetch_wait_s_per_token": io.prefetch_wait_secs / args.gen_tokens as f64,
        "rss_after_load_bytes": rss_after_load,
        "rss_decode_start_bytes": rss_decode_start,
        "rss_end_bytes": rss_bytes(),
        "rss_every_100_decoded_tokens": rss_samples,
        "expert_store": model.experts.describe(),
        "speculative": crate::spec_report::json(spec_stats.as_ref()),
        "moe_top_k": model.moe_top_k,
        "routing_spread": json!({
            "prefill_distinct_experts_per_layer": distinct(&usage_before, &usage_mid),
            "decode_distinct_experts_per_layer": distinct(&usage_mid, &usage_after),
        }),
    });
    let capsule = json!({
        "kind": "moestream bench",
        "build": capsule::build(),
        "machine": capsule::machine(),
        "model": {
            "dir": args.model.model.as_ref().map(|p| p.display().to_string()),
            "model_type": info.model_type,
            "weight_bytes": engine.loaded.weight_bytes,
            "config": strip_big(&engine.loaded.config.raw),
        },
        "flags": {
            "exact": args.model.exact,
            "stream_experts": args.model.stream_experts,
            "cache_slots": args.model.stream_experts.then_some(args.model.cache_slots),
            "io_depth": args.model.stream_experts.then_some(args.model.io_depth),
            "prefetch": args.model.stream_experts.then_some(args.model.prefetch.as_str()),
            "direct_io": args.model.stream_experts.then_some(&args.model.direct_io),
            "io_engine": args.model.stream_experts.then(|| format!("{:?}", args.model.io_engine)),
            "threads": host.as_ref().map(|h| h.threads),
            "device": format!("{:?}", args.model.device).to_lowercase(),
            "prompt_tokens": args.prompt_tokens,
            "gen_tokens": args.gen_tokens,
            "draft_model": args.model.draft_model.as_ref().map(|p| p.display().to_string()),
            "num_draft_tokens": args.model.draft_model.as_ref().map(|_| args.model.num_draft_tokens),
            "moe_top_k": args.model.moe_top_k,
        },
        "figures": figures,
    });
    if let Some(out) = &args.out {
        capsule::write(out, &capsule)?;
    }
    if args.json {
        println!("{}", serde_json::to_string_pretty(&capsule)?);
    } else {
        let roofline = match (roofline_tok_s, bandwidth) {
            (Some(r), Some(b)) => format!(
                " = {:.0}% of the {r:.1} tok/s roofline ({:.1} GB/s, {:.2} GB/token)",
                100.0 * decode_tok_s / r,
                b / 1e9,
                info.bytes_per_token as f64 / 1e9
            ),
            _ => String::new(),
        };
        println!(
            "prefill {:.1} tok/s ({} tokens, TTFT {:.2} s) | decode {:.2} tok/s{roofline} | peak RSS {:.2} GiB | kernels: {kernels}",
            prefill_tok_s,
            args.prompt_tokens,
            ttft,
            decode_tok_s,
            sys::peak_rss_bytes().unwrap_or(0) as f64 / (1u64 << 30) as f64,
        );
        if let Some(s) = &spec_stats {
            println!("{}", crate::spec_report::line(s));
        }
        if args.model.stream_experts {
            let per_tok = |x: f64| x / args.gen_tokens as f64;
            println!(
                "experts (decode): hit rate {:.1}% | {:.1} MB read per token ({:.1} MB on misses at {:.2} GB/s) | prefetch {:.1} experts/token, {:.1}% used | I/O stall {:.1} ms per token | RSS {:.2} -> {:.2} GiB",
                100.0 * io.hit_rate(),
                per_tok(io.total_bytes() as f64) / 1e6,
                per_tok(io.bytes_read as f64) / 1e6,
                io.read_bandwidth() / 1e9,
                per_tok(io.prefetch_reads as f64),
                100.0 * io.prefetch_hit_rate(),
                1e3 * per_tok(io.stall_secs()),
                rss_decode_start.unwrap_or(0) as f64 / (1u64 << 30) as f64,
                rss_bytes().unwrap_or(0) as f64 / (1u64 << 30) as f64,
            );
        }
    }
    Ok(())
}

/// Current resident set size (`VmRSS`).
fn rss_bytes() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = text.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kib: u64 = line["VmRSS:".len()..]
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()?;
    Some(kib * 1024)
}

/// Distinct experts used per MoE layer between two usage snapshots.
fn distinct(before: &[Vec<u64>], after: &[Vec<u64>]) -> Vec<usize> {
    before
        .iter()
        .zip(after)
        .filter(|(b, _)| !b.is_empty())
        .map(|(b, a)| b.iter().zip(a).filter(|(x, y)| y > x).count())
        .collect()
}

/// The config without large fields that say nothing about speed.
fn strip_big(cfg: &Value) -> Value {
    let mut c = cfg.clone();
    if let Some(o) = c.as_object_mut() {
        o.remove("quantization_config");
    }
    c
}
