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

/// GPU kernel cache and autotune flags, accepted by every subcommand (CPU runs ignore them).
#[derive(clap::Args, Debug, Clone)]
pub struct GpuRuntimeArgs {
    /// Folder keeping compiled GPU kernels and autotune results between runs (the first run of a
    /// model shape compiles and tunes for minutes; later runs reuse them)
    /// [default: $XDG_CACHE_HOME/medqlora/kernels or ~/.cache/medqlora/kernels].
    #[arg(long, global = true, value_name = "DIR")]
    pub kernel_cache: Option<PathBuf>,
    /// Keep no compiled kernels between runs (autotune results then go to cubecl's default place).
    #[arg(long, global = true, conflicts_with = "kernel_cache")]
    pub no_kernel_cache: bool,
    /// How many kernel variants autotune measures on a new matmul shape.
    #[arg(long, global = true, value_enum, default_value = "balanced")]
    pub autotune: crate::gpu_runtime::AutotuneLevel,
    /// Write the GPU memory pools' log to FILE: every new pool buffer, with the pools' buffers
    /// by size (to see where reserved memory goes).
    #[arg(long, global = true, value_name = "FILE")]
    pub memory_log: Option<PathBuf>,
    /// How CUDA runs 16-bit NF4 products (prefill, training): fused kernels (the default
    /// `fused256-wgmma`: both products on Hopper's warpgroup MMA where the GPU is sm_90 and
    /// the shape whole tiles (else `fused256-wide`), the fastest measured; `fused256-wide`:
    /// 256-row tiles of eight 64 x 64 planes fed by `ldmatrix` + `mma.sync`, activations
    /// copied by `cp.async`; `fused256-ldmatrix`: sixteen
    /// 64 x 32 planes; `fused`: 128-row tiles and `wmma`; `-2stage`: two shared tile sets), or a transient
    /// dequantized weight and Burn's autotuned matmul (bitsandbytes' way; ~136 MB more memory
    /// at the 7B's largest weight).
    #[arg(long, global = true, value_enum, default_value = "fused256-wgmma")]
    pub nf4_product: crate::model::nf4_weight::ops::Nf4Product,
    /// Which program runs CUDA's bf16/f16 causal attention forward: `flash` (one pass over the
    /// keys, the softmax online in registers; the fastest measured) or `two-pass` (the
    /// previous kernel for inference, Burn's block-wise ops for training's forward).
    #[arg(long, global = true, value_enum, default_value = "flash")]
    pub attention_kernel: crate::model::attention_kernel::AttentionKernel,
    /// Which program runs CUDA's products with a frozen dense bf16/f16 weight (the untied
    /// vocabulary head, every projection of a model trained without quantization): `kernel`
    /// (ours: `ldmatrix` + `mma.sync` tiles, the input gradient's reduction split to fill the
    /// GPU) or `burn` (Burn's autotuned matmul, the program before).
    #[arg(long, global = true, value_enum, default_value = "kernel")]
    pub dense_product: crate::model::frozen_matmul::DenseProduct,
}

impl GpuRuntimeArgs {
    /// The settings these flags ask for.
    pub fn settings(&self) -> crate::gpu_runtime::GpuRuntimeSettings {
        let cache_dir = match (&self.kernel_cache, self.no_kernel_cache) {
            (_, true) => None,
            (Some(dir), false) => Some(dir.clone()),
            (None, false) => crate::gpu_runtime::GpuRuntimeSettings::default_cache_dir(),
        };
        crate::gpu_runtime::GpuRuntimeSettings { cache_dir, autotune: self.autotune, memory_log: self.memory_log.clone(), nf4_product: self.nf4_product, attention_kernel: self.attention_kernel, dense_product: self.dense_product }
    }
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
    /// Quantize as `nf4`, then keep the dequantized values dense: the NF4 model's numbers
    /// without decoding weights on every token (for CPU evaluation; 4 bytes per weight in f32).
    Nf4Dense,
}

/// Loads a HF checkpoint folder onto `device`, printing a one-line summary to stderr.
pub fn load_model<B: Backend>(dir: &Path, device: &B::Device, quantize: QuantizeFlag) -> anyhow::Result<Qwen2ForCausalLM<B>> {
    let start = Instant::now();
    let config = TextConfig::from_dir(dir)?;
    let store = WeightStore::open(dir)?;
    let q = QuantizeOnLoad::default();
    let nf4 = matches!(quantize, QuantizeFlag::Nf4 | QuantizeFlag::Nf4Dense);
    let mut model = Qwen2ForCausalLM::<B>::load_resident(&config, &store, device, nf4.then_some(&q))?;
    if quantize == QuantizeFlag::Nf4Dense {
        for (_, linear) in model.linears_mut() {
            linear.dequantize_in_place();
        }
    }
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
