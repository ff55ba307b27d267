//! The `medqlora` binary: clap dispatch only.

use clap::{Parser, Subcommand};
use medqlora::cli;

/// QLoRA fine-tuning of Qwen2.5(-VL) for clinical document extraction.
#[derive(Parser, Debug)]
#[command(name = "medqlora", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Generate text from a prompt with a Hugging Face checkpoint (greedy by default).
    Generate(cli::generate::GenerateArgs),
    /// Speed measurements.
    #[command(subcommand)]
    Bench(cli::bench::BenchCommand),
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Command::Generate(args) => cli::generate::run(args),
        Command::Bench(cmd) => cli::bench::run(cmd),
    }
}
