//! Command-line front end: one file per subcommand; anyhow lives only here.

pub mod bench;
pub mod datasets;
pub mod eval;
pub mod bench_train;
pub mod generate;
pub mod inspect;
pub mod quantize;
pub mod train;

use crate::backend::{ComputeDtype, DeviceSpec};
use crate::model::{QuantizeOnLoad, Qwen2ForCausalLM, TextConfig, WeightStore};
use burn::tensor::backend::Backend;
use std::path::{Path, PathBuf};
use std::time::Instant;

/// Device and precision flags shared by every subcommand that runs a model.
#[derive(clap::Args, Debug, Clone)]
pub struct DeviceArgs {
    /// Where to run: cpu, cuda, cuda:N.
    #[arg(long, default_value = "cpu")]
    pub device: DeviceSpec,
    /// Compute dtype: f32 (CPU and CUDA) or bf16 (CUDA).
    #[arg(long, value_enum, default_value = "f32")]
    pub dtype: ComputeDtype,
}

/// NF4 layout flags shared by `quantize` and `inspect`.
#[derive(clap::Args, Debug, Clone)]
pub struct Nf4Args {
    /// Elements per absmax block: 32, 64, 128, ... 4096.
    #[arg(long, default_value_t = 64)]
    pub blocksize: usize,
    /// Keep the block scales in f32 (default: double-quantize them, as QLoRA does).
    #[arg(long)]
    pub no_double_quant: bool,
    /// Modules kept dense, comma-separated dotted-path components (e.g. lm_head,visual.merger).
    #[arg(long, value_delimiter = ',', default_value = "lm_head")]
    pub skip: Vec<String>,
}

/// Weight format of the frozen base.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum QuantizeFlag {
    /// Keep the checkpoint's dense weights (NF4 checkpoints stay NF4).
    None,
    /// Quantize linear weights to NF4 while loading (blocksize 64, double quant, lm_head dense).
    Nf4,
}

/// Loads a HF checkpoint folder onto `device`, printing a one-line summary to stderr.
pub fn load_model<B: Backend>(dir: &Path, device: &B::Device, quantize: QuantizeFlag) -> anyhow::Result<Qwen2ForCausalLM<B>> {
    let start = Instant::now();
    let config = TextConfig::from_dir(dir)?;
    let store = WeightStore::open(dir)?;
    let q = QuantizeOnLoad::default();
    let model = Qwen2ForCausalLM::<B>::load_with(&config, &store, device, (quantize == QuantizeFlag::Nf4).then_some(&q))?;
    eprintln!(
        "loaded {} ({} layers, {:.1}M parameters, {:.2} GB resident) in {:.1}s",
        dir.display(),
        config.num_hidden_layers,
        model.parameter_count() as f64 / 1e6,
        model.resident_bytes() as f64 / 1e9,
        start.elapsed().as_secs_f64()
    );
    Ok(model)
}

/// A `--model` folder argument, checked to exist before any work starts.
pub fn model_dir(path: &Path) -> anyhow::Result<PathBuf> {
    anyhow::ensure!(
        path.is_dir(),
        "model folder {} does not exist: pass --model a Hugging Face checkpoint folder (config.json, model.safetensors, tokenizer.json)",
        path.display()
    );
    Ok(path.to_owned())
}
