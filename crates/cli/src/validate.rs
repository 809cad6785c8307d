//! `moestream validate`: runs the plain reference path (f32 activations, unfused SwiGLU) and
//! the optimized path on the same prompts, greedy, and reports per prompt whether the tokens
//! are identical and the largest logit difference. The optimized path is the default
//! configuration (int8 activations where a kernel exists: an approximate path, whose drift is
//! reported) or, with `--exact`, the fused f32 path (an exact path: any divergence fails with
//! exit code 1).
//!
//! With `--moe-top-k K` and/or `--draft-model`, the reference is the same path without them
//! (the config's top-k, no draft), so the report shows what they change: for top-k, the
//! token agreement with the default top-k over the prompts (approximate); for speculative
//! decoding alone, nothing may change (exact).
//!
//! With `--device cuda` the candidate is the model on the GPU (f32, fused) against the CPU's
//! f32 unfused reference: approximate, since the two sum in different orders.

use crate::capsule;
use crate::load::ModelArgs;
use anyhow::{bail, Context, Result};
use clap::Args;
use moestream_engine::backend::Backend;
use moestream_engine::generate::{Flow, GenerateParams};
use moestream_engine::models::Transformer;
use moestream_engine::sampling::{Sampler, SamplingParams};
use moestream_engine::session::generate;
use moestream_engine::speculative::{Draft, SpecStats};
use moestream_engine::Engine;
use moestream_kernels::Precision;
use serde_json::{json, Value};
use std::path::PathBuf;

#[derive(Args, Debug)]
pub struct ValidateArgs {
    #[command(flatten)]
    model: ModelArgs,
    /// Prompts, one per line (rendered with the chat template when the model has one).
    #[arg(long)]
    prompts: Option<PathBuf>,
    /// Greedy tokens to compare per prompt.
    #[arg(long, default_value_t = 32)]
    max_tokens: usize,
    /// With --stream-experts: run the reference path on a second, resident copy of the model
    /// (experts from the mapped files, no streaming), so the comparison also covers the
    /// streamed expert store. Needs the model to fit in memory.
    #[arg(long, requires = "stream_experts")]
    reference_resident: bool,
    /// Write the capsule (JSON) here.
    #[arg(long)]
    out: Option<PathBuf>,
}

const DEFAULT_PROMPTS: [&str; 4] = [
    "Write a haiku about the sea.",
    "What is the capital of France? Answer in one word.",
    "Explain, step by step, how a hash map handles collisions.",
    "Translate to German: the weather is nice today, let's go for a walk.",
];

/// One greedy run: the tokens and, per step, the logits that chose them.
struct Run {
    ids: Vec<u32>,
    logits: Vec<Vec<f32>>,
}

/// `n` greedy tokens after `prompt` with the logits that chose each; with `draft`, through
/// speculative decoding (the draft proposes, `model` verifies), whose counters come back.
fn greedy<B: Backend>(
    model: &Transformer<B>,
    draft: Option<&Draft>,
    prompt: &[u32],
    n: usize,
) -> Result<(Run, Option<SpecStats>)> {
    let mut run = Run {
        ids: Vec::with_capacity(n),
        logits: Vec::with_capacity(n),
    };
    let params = GenerateParams {
        max_tokens: n,
        eos_ids: &[],
        logprobs: None,
    };
    let sampler = Sampler::new(SamplingParams::default());
    let mut cache = model.new_cache();
    let stats = generate(
        model,
        draft,
        &mut cache,
        prompt,
        sampler,
        &params,
        &mut |t, row| {
            run.ids.push(t.id);
            run.logits.push(row.to_vec());
            Flow::Continue
        },
    )
    .context("greedy decoding")?;
    Ok((run, stats.speculative))
}

fn configure(
    engine: &mut Engine,
    precision: Precision,
    fused: bool,
    top_k: Option<usize>,
) -> Result<()> {
    engine.loaded.model.precision = precision;
    engine.loaded.model.fused_swiglu = fused;
    engine
        .loaded
        .model
        .set_moe_top_k(top_k)
        .map_err(anyhow::Error::msg)
}

pub fn run(args: ValidateArgs) -> Result<bool> {
    let prompts: Vec<String> = match &args.prompts {
        Some(p) => std::fs::read_to_string(p)
            .with_context(|| format!("reading {}", p.display()))?
            .lines()
            .filter(|l| !l.trim().is_empty())
            .map(str::to_string)
            .collect(),
        None => DEFAULT_PROMPTS.iter().map(|s| s.to_string()).collect(),
    };
    if prompts.is_empty() {
        bail!("no prompts");
    }
    let gpu = args.model.gpu()?;
    let mut engine = args.model.load()?;
    // With --device cuda the candidate is the model on the GPU, against the CPU's reference.
    let gpu_model = gpu.map(|g| ModelArgs::to_gpu(&engine, g)).transpose()?;
    let top_k = args.model.moe_top_k;
    let default_top_k = engine.model().default_top_k();
    let top_k_changed = top_k.is_some() && top_k != default_top_k;
    // With --moe-top-k or --draft-model the reference is the same path without them, so
    // the comparison isolates what they change.
    let option_under_test = top_k.is_some() || engine.draft.is_some();
    // Speculative greedy decoding must give the plain tokens: an exact comparison.
    let exact_candidate = !top_k_changed && (args.model.exact || engine.draft.is_some());
    let mut resident = if args.reference_resident {
        let mut plain = args.model.clone();
        plain.stream_experts = false;
        plain.draft_model = None;
        plain.moe_top_k = None;
        Some(plain.load()?)
    } else {
        None
    };
    let precision = args.model.precision();
    let (ref_precision, ref_fused) = if option_under_test {
        (precision, true)
    } else {
        (Precision::Exact, false)
    };
    let path_name = if args.model.exact {
        "fused f32"
    } else {
        "fused, int8 activations"
    };
    let reference_name = format!(
        "{}{}, default MoE top-k ({}), no draft",
        if resident.is_some() {
            "resident experts, "
        } else {
            ""
        },
        if option_under_test {
            path_name
        } else {
            "f32 activations, unfused SwiGLU"
        },
        default_top_k.map_or("dense".into(), |k| k.to_string()),
    );
    let mut candidate_name = if gpu_model.is_some() {
        "cuda, fused f32".to_string()
    } else if option_under_test {
        path_name.to_string()
    } else if args.model.exact {
        "fused f32".to_string()
    } else {
        "default: fused, int8 activations".to_string()
    };
    if let Some(k) = top_k {
        candidate_name += &format!(", MoE top-k {k}");
    }
    if engine.draft.is_some() {
        candidate_name += &format!(
            ", speculative ({} draft tokens per round)",
            args.model.num_draft_tokens
        );
    }
    // The GPU sums in another order than the CPU: close, not bit-equal.
    let exact_candidate = exact_candidate && gpu_model.is_none();
    candidate_name += if exact_candidate {
        " (exact)"
    } else {
        " (approximate)"
    };
    eprintln!("reference: {reference_name} | candidate: {candidate_name}");
    let mut results = Vec::new();
    let mut all_identical = true;
    let mut spec_total = SpecStats::default();
    let (mut agree_total, mut compared_total) = (0usize, 0usize);
    for (i, text) in prompts.iter().enumerate() {
        let ids = if engine.text.chat_template.is_some() {
            let messages = vec![json!({"role": "user", "content": text})];
            engine.chat_prompt(&messages, None, &Default::default())?
        } else {
            engine.raw_prompt(text)?
        };
        let reference = match resident.as_mut() {
            Some(r) => {
                configure(r, ref_precision, ref_fused, None)?;
                greedy(r.model(), None, &ids, args.max_tokens)?.0
            }
            None => {
                configure(&mut engine, ref_precision, ref_fused, None)?;
                greedy(engine.model(), None, &ids, args.max_tokens)?.0
            }
        };
        configure(&mut engine, precision, true, top_k)?;
        let (candidate, stats) = match &gpu_model {
            Some(m) => greedy(m, None, &ids, args.max_tokens)?,
            None => greedy(engine.model(), engine.draft.as_ref(), &ids, args.max_tokens)?,
        };
        if let Some(stats) = stats {
            spec_total.add(&stats);
        }
        let first_diff = reference
            .ids
            .iter()
            .zip(&candidate.ids)
            .position(|(a, b)| a != b);
        let compared = first_diff.map_or(args.max_tokens, |d| d + 1);
        let max_diff = reference.logits[..compared]
            .iter()
            .zip(&candidate.logits)
            .flat_map(|(a, b)| a.iter().zip(b).map(|(x, y)| (x - y).abs()))
            .fold(0f32, f32::max);
        let agree = reference
            .ids
            .iter()
            .zip(&candidate.ids)
            .filter(|(a, b)| a == b)
            .count();
        all_identical &= first_diff.is_none();
        agree_total += agree;
        compared_total += args.max_tokens;
        println!(
            "prompt {i}: {} | {agree}/{} tokens agree | max |logit diff| {max_diff:.3e} (until the first divergence)",
            match first_diff {
                None => "identical".to_string(),
                Some(d) => format!("diverges at token {d}"),
            },
            args.max_tokens
        );
        results.push(json!({
            "prompt": text,
            "prompt_tokens": ids.len(),
            "identical": first_diff.is_none(),
            "first_divergence": first_diff,
            "tokens_agreeing": agree,
            "max_abs_logit_diff": max_diff,
        }));
    }
    let verdict = if all_identical {
        "all prompts token-identical"
    } else if exact_candidate {
        "FAILED: an exact path diverged from the reference"
    } else {
        "the approximate path drifted on some prompts (reported above; not a failure)"
    };
    let agreement = agree_total as f64 / compared_total.max(1) as f64;
    println!(
        "token agreement with the reference: {agree_total}/{compared_total} ({:.1}%) over {} prompts",
        100.0 * agreement,
        prompts.len()
    );
    if engine.draft.is_some() {
        println!("{}", crate::spec_report::line(&spec_total));
    }
    println!("{verdict}");
    if let Some(out) = &args.out {
        let capsule: Value = json!({
            "kind": "moestream validate",
            "build": capsule::build(),
            "machine": capsule::machine(),
            "model": args.model.model.as_ref().map(|p| p.display().to_string()),
            "reference": reference_name,
            "candidate": candidate_name,
            "max_tokens": args.max_tokens,
            "moe_top_k": top_k,
            "default_moe_top_k": default_top_k,
            "token_agreement": agreement,
            "speculative": crate::spec_report::json(engine.draft.as_ref().map(|_| &spec_total)),
            "results": results,
            "verdict": verdict,
        });
        capsule::write(out, &capsule)?;
    }
    Ok(all_identical || !exact_candidate)
}
