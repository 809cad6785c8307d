//! `moestream`: run Mixture-of-Experts language models from mlx-community / Hugging Face
//! model directories.
//!
//! Exit codes: 0 success, 1 a failure (bad model, failed read, bad prompt), 2 bad usage.

mod generate;
mod progress;
mod sys;

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
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Generate(args) => generate::run(args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(1)
        }
    }
}
