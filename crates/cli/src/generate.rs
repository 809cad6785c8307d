//! `moestream generate`.

use crate::load::ModelArgs;
use crate::sys;
use anyhow::{bail, Context, Result};
use clap::Args;
use moestream_engine::backend::Backend;
use moestream_engine::experts::{ExpertSource, StoreStats};
use moestream_engine::generate::GenerationStats;
use moestream_engine::models::Transformer;
use moestream_engine::sampling::{Sampler, SamplingParams};
use moestream_engine::{Engine, TextParams};
use serde_json::{json, Map, Value};
use std::io::Write;

#[derive(Args, Debug)]
pub struct GenerateArgs {
    #[command(flatten)]
    model: ModelArgs,
    /// The prompt (a user message, rendered with the chat template unless --raw).
    #[arg(
        long,
        required_unless_present = "prompt_ids",
        conflicts_with = "prompt_ids"
    )]
    prompt: Option<String>,
    /// A system message placed before the prompt.
    #[arg(long, conflicts_with_all = ["raw", "prompt_ids"])]
    system: Option<String>,
    /// Tokenize the prompt as is, without the chat template.
    #[arg(long)]
    raw: bool,
    /// Exact prompt token ids, comma separated (no template, no tokenizer).
    #[arg(long, value_delimiter = ',', num_args = 1..)]
    prompt_ids: Option<Vec<u32>>,
    #[arg(long, default_value_t = 256)]
    max_tokens: usize,
    /// 0 means greedy.
    #[arg(long, default_value_t = 0.0)]
    temperature: f32,
    #[arg(long, default_value_t = 1.0)]
    top_p: f32,
    /// 0 disables.
    #[arg(long, default_value_t = 0)]
    top_k: usize,
    /// 0 disables.
    #[arg(long, default_value_t = 0.0)]
    min_p: f32,
    /// 1 disables.
    #[arg(long, default_value_t = 1.0)]
    repetition_penalty: f32,
    #[arg(long)]
    seed: Option<u64>,
    /// Stop when this text appears (repeatable); the stop text is not printed.
    #[arg(long)]
    stop: Vec<String>,
    /// Print JSON Lines: one object per token, then a summary object.
    #[arg(long)]
    json: bool,
    /// Top log-probabilities per token in --json output.
    #[arg(long, default_value_t = 0)]
    logprobs: usize,
    /// Extra chat template variables as a JSON object, e.g. '{"enable_thinking": false}'.
    #[arg(long, value_parser = parse_object)]
    chat_template_args: Option<Map<String, Value>>,
}

fn parse_object(s: &str) -> Result<Map<String, Value>, String> {
    match serde_json::from_str(s) {
        Ok(Value::Object(m)) => Ok(m),
        Ok(_) => Err("must be a JSON object".into()),
        Err(e) => Err(format!("invalid JSON: {e}")),
    }
}

pub fn run(args: GenerateArgs) -> Result<()> {
    let sampling = SamplingParams {
        temperature: args.temperature,
        top_p: args.top_p,
        top_k: args.top_k,
        min_p: args.min_p,
        repetition_penalty: args.repetition_penalty,
        seed: args.seed,
        ..Default::default()
    };
    if let Err(e) = sampling.validate() {
        bail!("{e}");
    }
    let gpu = args.model.gpu()?;
    let engine = args.model.load()?;
    let prompt = prompt_ids(&engine, &args)?;
    let sampler = Sampler::new(sampling);
    let args = &args;
    match gpu {
        None => emit(&engine, engine.model(), args, &prompt, sampler),
        Some(gpu) => {
            let model = ModelArgs::to_gpu(&engine, gpu)?;
            emit(&engine, &model, args, &prompt, sampler)
        }
    }
}

/// Generates with `model` (the engine's, or a copy on another device) and writes the text,
/// or JSON lines, and the summary.
fn emit<B: Backend>(
    engine: &Engine,
    model: &Transformer<B>,
    args: &GenerateArgs,
    prompt: &[u32],
    sampler: Sampler,
) -> Result<()> {
    let mut cache = model.new_cache();
    let kernels = match model.dev.name() {
        "cpu" => moestream_kernels::isa::summary(),
        name => name.to_string(),
    };
    let params = TextParams {
        max_tokens: args.max_tokens,
        stop: &args.stop,
        // The JSON lines carry the chosen token's log-probability; plain text none.
        logprobs: args.json.then_some(args.logprobs),
    };
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    let mut write_error = None;
    let outcome = engine
        .generate_text_on(model, &mut cache, prompt, sampler, &params, &mut |ev| {
            let r = if args.json {
                let top: Vec<Value> =
                    ev.token.top_logprobs.iter().map(|(id, lp)| json!({"id": id, "logprob": lp})).collect();
                let line = json!({"id": ev.token.id, "text": ev.text, "logprob": ev.token.logprob, "top_logprobs": top});
                writeln!(out, "{line}")
            } else {
                out.write_all(ev.text.as_bytes()).and_then(|_| out.flush())
            };
            match r {
                Ok(()) => true,
                Err(e) => {
                    write_error = Some(e);
                    false
                }
            }
        })
        .context("generation failed")?;
    if let Some(e) = write_error {
        if e.kind() != std::io::ErrorKind::BrokenPipe {
            return Err(e).context("writing to stdout");
        }
        return Ok(());
    }
    let rss = sys::peak_rss_bytes();
    let stats = &outcome.stats;
    if args.json {
        let summary = json!({
            "summary": true,
            "text": outcome.tail,
            "prompt_tokens": stats.prompt_tokens,
            "generated_tokens": stats.generated_tokens,
            "prefill_tok_s": stats.prefill_tok_s(),
            "decode_tok_s": stats.decode_tok_s(),
            "peak_rss_bytes": rss,
            "finish_reason": stats.finish.map(|f| f.as_str()),
            "kernels": kernels,
            "experts": experts_json(model.experts.stats()),
            "speculative": crate::spec_report::json(stats.speculative.as_ref()),
        });
        writeln!(out, "{summary}")?;
    } else {
        write!(out, "{}", outcome.tail)?;
        writeln!(out)?;
        eprintln!("{}", summary_line(stats, rss, &kernels));
        if let Some(s) = &stats.speculative {
            eprintln!("{}", crate::spec_report::line(s));
        }
        if args.model.stream_experts {
            let io = model.experts.stats();
            eprintln!(
                "experts: hit rate {:.1}% | {:.1} MB read on misses at {:.2} GB/s | prefetch: {} experts ({:.1} MB), {:.1}% used | stalled {:.2} s on reads",
                100.0 * io.hit_rate(),
                io.bytes_read as f64 / 1e6,
                io.read_bandwidth() / 1e9,
                io.prefetch_reads,
                io.prefetch_bytes as f64 / 1e6,
                100.0 * io.prefetch_hit_rate(),
                io.stall_secs()
            );
        }
    }
    Ok(())
}

/// Streaming counters for the JSON summary (`null` when experts are resident).
fn experts_json(io: StoreStats) -> Value {
    if io.hits + io.misses == 0 {
        return Value::Null;
    }
    json!({"hits": io.hits, "misses": io.misses, "hit_rate": io.hit_rate(), "bytes_read": io.bytes_read,
           "read_bandwidth_bytes_s": io.read_bandwidth(), "read_stall_s": io.stall_secs(),
           "prefetch_reads": io.prefetch_reads, "prefetch_hits": io.prefetch_hits,
           "prefetch_hit_rate": io.prefetch_hit_rate(), "prefetch_bytes": io.prefetch_bytes,
           "prefetch_wait_s": io.prefetch_wait_secs})
}

fn prompt_ids(engine: &Engine, args: &GenerateArgs) -> Result<Vec<u32>> {
    if let Some(ids) = &args.prompt_ids {
        let vocab = engine.model().info.vocab_size;
        if let Some(bad) = ids.iter().find(|&&i| i as usize >= vocab) {
            bail!("--prompt-ids: token id {bad} is outside the vocabulary (size {vocab})");
        }
        return Ok(ids.clone());
    }
    let text = args.prompt.as_deref().unwrap_or_default();
    let ids = if args.raw || engine.text.chat_template.is_none() {
        if !args.raw {
            eprintln!("note: the model has no chat template; using the prompt as raw text");
        }
        engine.raw_prompt(text)?
    } else {
        let mut messages = Vec::new();
        if let Some(s) = &args.system {
            messages.push(json!({"role": "system", "content": s}));
        }
        messages.push(json!({"role": "user", "content": text}));
        let extra = args.chat_template_args.clone().unwrap_or_default();
        engine.chat_prompt(&messages, None, &extra)?
    };
    if ids.is_empty() {
        bail!("the prompt tokenizes to no tokens");
    }
    Ok(ids)
}

fn summary_line(s: &GenerationStats, rss: Option<u64>, kernels: &str) -> String {
    format!(
        "prefill: {} tokens at {:.1} tok/s | decode: {} tokens at {:.1} tok/s | peak RSS: {} | finish: {} | kernels: {}",
        s.prompt_tokens,
        s.prefill_tok_s(),
        s.generated_tokens,
        s.decode_tok_s(),
        rss.map_or("n/a".into(), |b| format!("{:.0} MiB", b as f64 / (1 << 20) as f64)),
        s.finish.map_or("?", |f| f.as_str()),
        kernels,
    )
}
