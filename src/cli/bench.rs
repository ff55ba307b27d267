//! `medqlora bench`: throughput measurements (run on the device for GPU figures).

use super::{load_model, model_dir, DeviceArgs};
use crate::backend::{dispatch, BackendTask};
use crate::generate::{generate, SamplingConfig};
use burn::tensor::backend::Backend;
use std::path::PathBuf;

/// Benchmarks.
#[derive(clap::Subcommand, Debug)]
pub enum BenchCommand {
    /// Prefill and decode speed of `generate` (stop tokens ignored, batch 1).
    Generate(BenchGenerateArgs),
    /// QLoRA training steps/s and tokens/s on random tokens (compare tools/bench_transformers_qlora.py).
    Train(super::bench_train::BenchTrainArgs),
    /// NF4 kernels (dequant, GEMV, fused GEMM, backward dX) at the Qwen2.5-VL-7B shapes, next
    /// to the device's copy bandwidth and Burn's bf16 matmul (CUDA build; compare
    /// tools/bench_torch_kernels.py).
    Kernels(BenchKernelsArgs),
}

/// Arguments of `bench kernels`.
#[derive(clap::Args, Debug)]
pub struct BenchKernelsArgs {
    /// One shape (N = K = 3584) and M in {1, 2048} only.
    #[arg(long)]
    pub quick: bool,
    /// Only attention's block products at the 7B training shape, Burn's autotuned matmul
    /// against its fixed default kernel (speed, and how far their outputs differ).
    #[arg(long, conflicts_with = "quick")]
    pub attention: bool,
    /// Only the products with a dense bf16 weight (the 7B vocabulary head at a 512-row chunk,
    /// the 7B projections at 2,048 rows): ours against Burn's matmul, autotuned and fixed.
    #[arg(long, conflicts_with_all = ["quick", "attention"])]
    pub dense: bool,
    /// Only these token counts (rows of X), comma-separated; default 1, 8, 2048, 8192 (with
    /// `--quick`: 1, 2048).
    #[arg(long, value_delimiter = ',', conflicts_with_all = ["attention", "dense"])]
    pub rows: Vec<usize>,
}

/// `bench kernels`: the table of `medqlora_kernels::bench` on CUDA device 0.
fn bench_kernels(args: BenchKernelsArgs) -> anyhow::Result<()> {
    #[cfg(feature = "cuda")]
    {
        use medqlora_kernels::bench::{format_row, run, HEADER, MS, SHAPES};
        use medqlora_kernels::cubecl::Runtime;
        let device = medqlora_kernels::cubecl::cuda::CudaDevice::new(0);
        let client = medqlora_kernels::cubecl::cuda::CudaRuntime::client(&device);
        let (shapes, ms): (&[(usize, usize)], &[usize]) = if args.quick { (&[(3584, 3584)], &[1, 2048]) } else { (&SHAPES, &MS) };
        let ms = if args.rows.is_empty() { ms } else { &args.rows[..] };
        println!("{HEADER}");
        if args.attention {
            medqlora_kernels::bench::attention_products(&client, &device, |r| println!("{}", format_row(r)));
            return Ok(());
        }
        if args.dense {
            medqlora_kernels::bench::dense_products(&client, &device, |r| println!("{}", format_row(r)));
            return Ok(());
        }
        run(&client, &device, shapes, ms, &crate::quant::dynamic_map::DYNAMIC_MAP_SIGNED, |r| println!("{}", format_row(r)));
        Ok(())
    }
    #[cfg(not(feature = "cuda"))]
    {
        let _ = args;
        anyhow::bail!("bench kernels needs a CUDA build: cargo build --release --features cuda")
    }
}

/// Arguments of `bench generate`.
#[derive(clap::Args, Debug)]
pub struct BenchGenerateArgs {
    /// Hugging Face checkpoint folder (weights may be random: speed does not depend on them).
    #[arg(long)]
    pub model: PathBuf,
    /// Prompt length in tokens.
    #[arg(long, default_value_t = 128)]
    pub prompt_tokens: usize,
    /// Tokens to generate per run.
    #[arg(long, default_value_t = 128)]
    pub new_tokens: usize,
    /// Untimed warm-up runs (kernel compilation and autotuning happen there).
    #[arg(long, default_value_t = 1)]
    pub warmup: usize,
    /// Timed runs; the median is reported.
    #[arg(long, default_value_t = 3)]
    pub runs: usize,
    /// Weight format of the frozen base: none (as stored) or nf4 (quantize while loading).
    #[arg(long, value_enum, default_value = "none")]
    pub quantize: super::QuantizeFlag,
    #[command(flatten)]
    pub device: DeviceArgs,
}

struct GenTask(BenchGenerateArgs);

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

impl BackendTask for GenTask {
    type Output = anyhow::Result<()>;
    fn run<B: Backend>(self, device: B::Device) -> anyhow::Result<()> {
        let a = &self.0;
        let model = load_model::<B>(&a.model, &device, a.quantize)?;
        let vocab = model.config.vocab_size as u32;
        // A fixed, non-degenerate prompt: token ids spread over the vocabulary.
        let prompt: Vec<u32> = (0..a.prompt_tokens as u32).map(|i| (i * 7919 + 13) % vocab).collect();
        let cfg = SamplingConfig::greedy(a.new_tokens, Vec::new());
        for _ in 0..a.warmup {
            generate(&model, &prompt, &cfg, |_| {});
        }
        let (mut prefill, mut decode) = (Vec::new(), Vec::new());
        for _ in 0..a.runs.max(1) {
            let g = generate(&model, &prompt, &cfg, |_| {});
            prefill.push(g.prefill_tokens_per_sec());
            decode.push(g.decode_tokens_per_sec());
        }
        let bytes = model.resident_bytes();
        println!(
            "bench generate | {} | {} {:?} {:?} | weights {:.2} GB | prompt {} tok: prefill {:.1} tok/s | {} new tok: decode {:.2} tok/s (median of {})",
            a.model.display(),
            a.device.device,
            a.device.dtype,
            a.quantize,
            bytes as f64 / 1e9,
            a.prompt_tokens,
            median(prefill),
            a.new_tokens,
            median(decode),
            a.runs.max(1)
        );
        Ok(())
    }
}

/// Entry point of `medqlora bench`.
pub fn run(cmd: BenchCommand) -> anyhow::Result<()> {
    match cmd {
        BenchCommand::Generate(args) => {
            model_dir(&args.model)?;
            anyhow::ensure!(args.prompt_tokens > 0 && args.new_tokens > 0, "--prompt-tokens and --new-tokens must be > 0");
            let (device, dtype) = (args.device.device, args.device.dtype);
            dispatch(device, dtype, GenTask(args))?
        }
        BenchCommand::Train(args) => super::bench_train::run(args),
        BenchCommand::Kernels(args) => bench_kernels(args),
    }
}
