//! The `medqlora` binary: clap dispatch only.

use clap::{Parser, Subcommand};
use medqlora::cli;

/// QLoRA fine-tuning of Qwen2.5(-VL) for clinical document extraction.
#[derive(Parser, Debug)]
#[command(name = "medqlora", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
    #[command(flatten)]
    gpu: cli::GpuRuntimeArgs,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Train LoRA adapters from a recipe (recipes/*.toml).
    Train(cli::train::TrainArgs),
    /// Generate text from a prompt with a Hugging Face checkpoint (greedy by default).
    Generate(cli::generate::GenerateArgs),
    /// Parameter counts and weight memory (bf16 vs NF4) from a config.json.
    Inspect(cli::inspect::InspectArgs),
    /// Quantize a checkpoint to NF4 in the bitsandbytes layout.
    Quantize(cli::quantize::QuantizeArgs),
    /// Build and check JSONL datasets (MTSamples, synthetic clinical documents).
    #[command(subcommand)]
    Datasets(cli::datasets::DatasetsCommand),
    /// Evaluate a model (+ PEFT adapter) on a JSONL dataset: field accuracy, JSON validity.
    Eval(cli::eval::EvalArgs),
    /// Speed measurements.
    #[command(subcommand)]
    Bench(cli::bench::BenchCommand),
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    if let Err(e) = medqlora::gpu_runtime::configure(&cli.gpu.settings()) {
        eprintln!("error: {e}");
        return std::process::ExitCode::FAILURE;
    }
    let result = match cli.command {
        Command::Train(args) => cli::train::run(args),
        Command::Generate(args) => cli::generate::run(args),
        Command::Inspect(args) => cli::inspect::run(args),
        Command::Quantize(args) => cli::quantize::run(args),
        Command::Datasets(cmd) => cli::datasets::run(cmd),
        Command::Eval(args) => cli::eval::run(args),
        Command::Bench(cmd) => cli::bench::run(cmd),
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {}", one_line(&e));
            std::process::ExitCode::FAILURE
        }
    }
}

/// The error and its causes on one line, no backtrace (a user error is not a crash). A cause
/// whose text the message already holds is left out: many library errors name their source
/// in their own message (`cannot read recipe R: No such file or directory`), and anyhow's
/// `{:#}` would print it twice.
fn one_line(e: &anyhow::Error) -> String {
    let mut line = String::new();
    for cause in e.chain() {
        let text = cause.to_string();
        if line.contains(&text) {
            continue;
        }
        if !line.is_empty() {
            line.push_str(": ");
        }
        line.push_str(&text);
    }
    line
}
