//! `moestream`: run Mixture-of-Experts language models from mlx-community / Hugging Face
//! model directories.
//!
//! Exit codes: 0 success, 1 a failure (bad model, failed read, bad prompt), 2 bad usage.

mod bench;
mod capsule;
mod generate;
mod load;
mod progress;
mod serve;
mod spec_report;
mod synth;
mod sys;
mod validate;

use clap::{Parser, Subcommand};
use std::process::ExitCode;

#[derive(Parser)]
#[command(
    name = "moestream",
    version,
    about = "Mixture-of-Experts inference that streams experts from SSD"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Generate text from a prompt (streams to stdout; a summary goes to stderr).
    Generate(generate::GenerateArgs),
    /// Measure prefill/decode speed, memory bandwidth and the roofline fraction.
    Bench(bench::BenchArgs),
    /// Compare the optimized path with the plain reference path, token by token.
    Validate(validate::ValidateArgs),
    /// Serve the OpenAI-compatible HTTP API (chat and completions, streaming, metrics).
    Serve(serve::ServeArgs),
    /// Write a random-weight model in the mlx-community format at a real model's shapes.
    Synth(synth::SynthArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Generate(args) => generate::run(args),
        Command::Bench(args) => bench::run(args),
        Command::Synth(args) => synth::run(args),
        Command::Serve(args) => serve::run(args),
        Command::Validate(args) => match validate::run(args) {
            Ok(true) => Ok(()),
            Ok(false) => return ExitCode::from(1),
            Err(e) => Err(e),
        },
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(1)
        }
    }
}
