//! `moestream synth`: write a random-weight model in the mlx-community format at a real
//! model's shapes (for benchmarks and tests of models too big to download casually).
//!
//! `--bits 0` writes an unquantized model (all weights in `--dtype`).

use anyhow::{anyhow, Context, Result};
use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};
use moestream_engine::synth::{self, FloatType, Quant, Source, SynthModel, SynthOptions};
use std::io::Write;
use std::path::PathBuf;
use std::time::Instant;

#[derive(Args, Debug)]
pub struct SynthArgs {
    /// Preset to write (`--list` shows them).
    #[arg(long, required_unless_present_any = ["list", "config"], conflicts_with = "config")]
    preset: Option<String>,
    /// Use this config.json instead of a preset (any model_type synth supports).
    #[arg(long)]
    config: Option<PathBuf>,
    /// Output directory (created if missing).
    #[arg(long, required_unless_present = "list")]
    out: Option<PathBuf>,
    /// Bits of the affine quantization (2, 3, 4, 5, 6, 8); 0 writes an unquantized model.
    #[arg(long, default_value_t = 4)]
    bits: u32,
    /// Quantization group size (32, 64, 128).
    #[arg(long, default_value_t = 64)]
    group_size: usize,
    /// Float type of scales, biases and norms (and of every weight with --bits 0).
    #[arg(long, default_value = "bf16", value_parser = parse_float)]
    dtype: FloatType,
    /// Override num_hidden_layers (quick runs at the real per-layer shapes).
    #[arg(long)]
    layers: Option<usize>,
    /// Seed of the random weights (the same seed writes the same bytes).
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Overwrite a directory that already holds a model (config.json); its weight files
    /// (model*.safetensors, the index) are replaced.
    #[arg(long)]
    force: bool,
    /// List the presets with their sizes for these options; write nothing.
    #[arg(long)]
    list: bool,
}

fn parse_float(s: &str) -> Result<FloatType, String> {
    FloatType::parse(s).ok_or_else(|| format!("unknown dtype {s:?} (bf16, f16, f32)"))
}

fn options(args: &SynthArgs, source: Source) -> SynthOptions {
    let mut o = SynthOptions::new(source);
    o.quant = (args.bits != 0).then_some(Quant {
        bits: args.bits,
        group_size: args.group_size,
    });
    o.float = args.dtype;
    o.layers = args.layers;
    o.seed = args.seed;
    o
}

fn source(args: &SynthArgs) -> Result<Source> {
    if let Some(path) = &args.config {
        let text =
            std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        let config = serde_json::from_str(&text)
            .with_context(|| format!("{}: invalid JSON", path.display()))?;
        return Ok(Source::Config {
            label: path.display().to_string(),
            config,
        });
    }
    let name = args
        .preset
        .clone()
        .ok_or_else(|| anyhow!("give --preset NAME or --config FILE"))?;
    Ok(Source::Preset(name))
}

fn gb(bytes: u64) -> f64 {
    bytes as f64 / 1e9
}

/// Prints the presets table; a closed stdout (`| head`) ends the listing quietly.
fn list(args: &SynthArgs) -> Result<()> {
    match write_list(args, &mut std::io::stdout().lock()) {
        Err(e)
            if e.downcast_ref::<std::io::Error>()
                .is_some_and(|e| e.kind() == std::io::ErrorKind::BrokenPipe) =>
        {
            Ok(())
        }
        other => other,
    }
}

fn write_list(args: &SynthArgs, out: &mut dyn Write) -> Result<()> {
    writeln!(
        out,
        "{:22} {:14} {:>6} {:>9} {:>10}  about",
        "preset", "model_type", "layers", "GB", "params(B)"
    )?;
    for p in synth::PRESETS {
        let m = synth::build(&options(args, Source::Preset(p.name.into())))?;
        let layers = m
            .config
            .get("text_config")
            .unwrap_or(&m.config)
            .get("num_hidden_layers")
            .and_then(|v| v.as_u64())
            .unwrap_or(0);
        writeln!(
            out,
            "{:22} {:14} {:>6} {:>9.2} {:>10.2}  {}",
            p.name,
            m.model_type(),
            layers,
            gb(m.shard_file_bytes()),
            m.plan.parameters as f64 / 1e9,
            p.about
        )?;
    }
    Ok(())
}

fn describe(m: &SynthModel) -> String {
    format!(
        "{} ({}): {} tensors, {:.2} GB in {} shard{}",
        m.label,
        m.model_type(),
        m.plan.tensors.len(),
        gb(m.shard_file_bytes()),
        m.shards.len(),
        if m.shards.len() == 1 { "" } else { "s" }
    )
}

pub fn run(args: SynthArgs) -> Result<()> {
    if args.list {
        return list(&args);
    }
    let out = args
        .out
        .clone()
        .ok_or_else(|| anyhow!("--out DIR is required"))?;
    let model = synth::build(&options(&args, source(&args)?))?;
    eprintln!("synth {} -> {}", describe(&model), out.display());
    let bar = ProgressBar::new(model.tensor_bytes());
    if let Ok(style) = ProgressStyle::with_template(
        "writing {bar:30} {bytes}/{total_bytes} ({bytes_per_sec}, {eta})",
    ) {
        bar.set_style(style);
    }
    let start = Instant::now();
    let result = synth::write(&model, &out, args.force, &mut |done, _| {
        bar.set_position(done)
    });
    bar.finish_and_clear();
    let report = result?;
    let secs = start.elapsed().as_secs_f64();
    eprintln!(
        "wrote {} files, {:.2} GB in {:.1} s ({:.2} GB/s)",
        report.files.len(),
        gb(report.bytes),
        secs,
        gb(report.bytes) / secs.max(1e-9)
    );
    if model.model_type() == "qwen3_moe" {
        eprintln!(
            "try: moestream generate --model {} --prompt-ids 1,2,3 --max-tokens 4",
            out.display()
        );
    }
    Ok(())
}
