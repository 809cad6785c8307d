//! `moestream validate`: runs the plain reference path (f32 activations, unfused SwiGLU) and
//! the optimized path on the same prompts, greedy, and reports per prompt whether the tokens
//! are identical and the largest logit difference. The optimized path is the default
//! configuration (int8 activations where a kernel exists: an approximate path, whose drift is
//! reported) or, with `--exact`, the fused f32 path (an exact path: any divergence fails with
//! exit code 1).

use crate::capsule;
use crate::load::ModelArgs;
use anyhow::{bail, Context, Result};
use clap::Args;
use moestream_engine::models::Transformer;
use moestream_engine::sampling::argmax;
use moestream_engine::Engine;
use moestream_kernels::qdot::Precision;
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

fn greedy(model: &Transformer, prompt: &[u32], n: usize) -> Result<Run> {
    let mut cache = model.new_cache();
    let mut logits = Vec::new();
    model
        .forward(prompt, &mut cache, false, &mut logits)
        .context("prefill")?;
    let mut run = Run {
        ids: Vec::with_capacity(n),
        logits: Vec::with_capacity(n),
    };
    for _ in 0..n {
        let id = argmax(&logits);
        run.ids.push(id);
        run.logits.push(logits.clone());
        model
            .forward(&[id], &mut cache, false, &mut logits)
            .context("decode")?;
    }
    Ok(run)
}

fn configure(engine: &mut Engine, precision: Precision, fused: bool) {
    engine.loaded.model.precision = precision;
    engine.loaded.model.fused_swiglu = fused;
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
    let exact_candidate = args.model.exact;
    let mut engine = args.model.load()?;
    let mut resident = if args.reference_resident {
        let mut plain = args.model.clone();
        plain.stream_experts = false;
        Some(plain.load()?)
    } else {
        None
    };
    let reference_name = if resident.is_some() {
        "resident experts, f32 activations, unfused SwiGLU"
    } else {
        "f32 activations, unfused SwiGLU"
    };
    let candidate_name = if exact_candidate {
        "fused f32 (exact)"
    } else {
        "default: fused, int8 activations (approximate)"
    };
    eprintln!("reference: {reference_name} | candidate: {candidate_name}");
    let mut results = Vec::new();
    let mut all_identical = true;
    for (i, text) in prompts.iter().enumerate() {
        let ids = if engine.text.chat_template.is_some() {
            let messages = vec![json!({"role": "user", "content": text})];
            engine.chat_prompt(&messages, None, &Default::default())?
        } else {
            engine.raw_prompt(text)?
        };
        let reference = match resident.as_mut() {
            Some(r) => {
                configure(r, Precision::Exact, false);
                greedy(r.model(), &ids, args.max_tokens)?
            }
            None => {
                configure(&mut engine, Precision::Exact, false);
                greedy(engine.model(), &ids, args.max_tokens)?
            }
        };
        configure(&mut engine, args.model.precision(), true);
        let candidate = greedy(engine.model(), &ids, args.max_tokens)?;
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
            "results": results,
            "verdict": verdict,
        });
        capsule::write(out, &capsule)?;
    }
    Ok(all_identical || !exact_candidate)
}
