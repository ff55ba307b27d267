//! `medqlora bench train`: QLoRA training throughput and memory on a checkpoint folder with
//! random tokens, the setup of tools/bench_transformers_qlora.py (same model, sequence length,
//! rank, targets, checkpointing), so the two lines compare directly.

use super::{load_model, model_dir, DeviceArgs, QuantizeFlag};
use crate::backend::{dispatch_autodiff, AutodiffTask};
use crate::lora::LoraSpec;
use crate::train::batches::Batch;
use crate::train::optim::{clip_global_norm, AdamW, AdamWConfig, NamedTensors};
use crate::train::run::load_into_model;
use crate::train::step::{forward_backward_chunked, forward_backward_observed, trainable, Phase};
use burn::tensor::backend::AutodiffBackend;
use std::path::PathBuf;
use std::time::Instant;

/// Arguments of `bench train`.
#[derive(clap::Args, Debug)]
pub struct BenchTrainArgs {
    /// Hugging Face checkpoint folder (random weights are fine).
    #[arg(long)]
    pub model: PathBuf,
    /// Tokens per sequence.
    #[arg(long, default_value_t = 2048)]
    pub seq: usize,
    /// Sequences per step.
    #[arg(long, default_value_t = 1)]
    pub batch: usize,
    /// LoRA rank (alpha 16, the seven projections).
    #[arg(long, default_value_t = 64)]
    pub r: usize,
    /// Timed steps.
    #[arg(long, default_value_t = 5)]
    pub steps: usize,
    /// Untimed steps first (kernel compilation, autotuning).
    #[arg(long, default_value_t = 2)]
    pub warmup: usize,
    /// Keep every layer's activations instead of recomputing them.
    #[arg(long)]
    pub no_checkpointing: bool,
    /// Also split every step into its phases (tape-free forward, head, each layer's recompute
    /// and backward, clip + optimizer), synchronizing the device after each and reading its
    /// memory there (checkpointed path only; the synchronizations cost a little throughput).
    #[arg(long)]
    pub profile: bool,
    /// Scored rows per chunk of the vocabulary head's loss and gradient (checkpointed path;
    /// training uses the default).
    #[arg(long, default_value_t = std::num::NonZeroUsize::new(crate::train::step::HEAD_CHUNK_ROWS).expect("a positive constant"))]
    pub head_chunk_rows: std::num::NonZeroUsize,
    /// Base weight format.
    #[arg(long, value_enum, default_value = "nf4")]
    pub quantize: QuantizeFlag,
    /// AdamW moments: f32 (`adamw`) or 8-bit blockwise (`adamw_8bit`).
    #[arg(long, value_enum, default_value = "adamw")]
    pub optimizer: crate::train::recipe::Optimizer,
    #[command(flatten)]
    pub device: DeviceArgs,
}

struct Task(BenchTrainArgs);

impl AutodiffTask for Task {
    type Output = anyhow::Result<()>;
    fn run<B: AutodiffBackend>(self, device: B::Device) -> anyhow::Result<()> {
        let a = &self.0;
        let mut model = load_model::<B>(&a.model, &device, a.quantize)?;
        let spec = LoraSpec { r: a.r, alpha: 16.0, dropout: 0.05, use_rslora: false };
        let targets: Vec<String> =
            ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"].iter().map(|s| s.to_string()).collect();
        let trainable_params = model.add_lora(&spec, &targets, &device);
        for (_, l) in model.linears_mut() {
            if let Some(lora) = l.lora.as_mut() {
                lora.set_training(true);
            }
        }
        let vocab = model.config.vocab_size as i64;
        let params: NamedTensors<B::InnerBackend> = trainable(&model).into_iter().map(|(k, v)| (k, v.inner())).collect();
        let mut opt = AdamW::new(
            AdamWConfig {
                beta1: 0.9,
                beta2: 0.999,
                eps: 1e-8,
                weight_decay: 0.0,
                eight_bit: a.optimizer == crate::train::recipe::Optimizer::Adamw8bit,
            },
            params,
        );
        eprintln!("optimizer {:?}: {:.2} GB of master weights and moments", a.optimizer, opt.state_bytes() as f64 / 1e9);
        // Where the memory goes (GPU): the frozen base + adapters + AdamW state before any step,
        // then what the step adds (activations, gradients, pool pages kept for reuse).
        let gb = |m: Option<crate::gpu_runtime::GpuMemory>| {
            m.map(|m| {
                format!(
                    "in use {:.2} GB, reserved {:.2} GB, device used {:.2} GB (stack {} B/thread)",
                    m.in_use as f64 / 1e9,
                    m.reserved as f64 / 1e9,
                    m.device_used as f64 / 1e9,
                    m.stack_per_thread
                )
            })
                .unwrap_or_else(|| "n/a (CPU)".into())
        };
        eprintln!("memory before the first step: {}", gb(crate::gpu_runtime::memory(a.device.device)));
        let n = a.batch * a.seq;
        // Random tokens (fixed LCG), loss on every position, as the Python script does.
        let mut x = 12345u64;
        let mut times = Vec::new();
        let mut trim = crate::gpu_runtime::LocalMemoryTrim::new(a.device.device);
        for step in 0..a.warmup + a.steps {
            let ids: Vec<i64> = (0..n)
                .map(|_| {
                    x = x.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                    ((x >> 33) as i64) % vocab
                })
                .collect();
            let mut targets = ids[1..].to_vec();
            targets.push(0);
            let mut weights = vec![1.0f32; n];
            for row in 0..a.batch {
                weights[row * a.seq + a.seq - 1] = 0.0;
            }
            let batch = Batch { example_ids: (0..a.batch).collect(), input_ids: ids, targets, weights, batch: a.batch, seq: a.seq };
            let start = Instant::now();
            let mut grads = NamedTensors::new();
            let scale = 1.0 / batch.scored_tokens() as f64;
            let mut timeline = Timeline::new(a.device.device);
            let l = if a.profile {
                let mut observe = |p: Phase| {
                    let issued = Instant::now();
                    let _ = B::sync(&device);
                    timeline.mark(p, issued);
                };
                forward_backward_observed(&model, &batch, scale, !a.no_checkpointing, step as u64, a.head_chunk_rows.get(), &mut observe, &mut grads)
            } else {
                forward_backward_chunked(&model, &batch, scale, !a.no_checkpointing, step as u64, a.head_chunk_rows.get(), &mut grads)
            };
            let after_backward = crate::gpu_runtime::memory(a.device.device);
            // The norm is read back, so every gradient exists when it returns.
            let norm = clip_global_norm(&mut grads, 1.0);
            // The benchmark goes on (its figure is speed), but says where the numbers broke.
            let broken = if norm.is_finite() { String::new() } else { format!(" (non-finite in {:?})", crate::train::optim::non_finite(&grads)) };
            let backward_done = start.elapsed().as_secs_f64();
            opt.step(grads, 2e-4);
            load_into_model(&mut model, &opt.master);
            // The step ends when the updated weights exist on the device.
            let _ = opt.master.values().next().map(|t| t.clone().slice([0..1, 0..1]).into_data());
            let secs = start.elapsed().as_secs_f64();
            if let Some(bytes) = trim.after_step() {
                eprintln!("step {step}: gave back the local-memory reserve of {bytes} B/thread that this step's kernels grew");
            }
            eprintln!(
                "step {step}: loss {:.4}, grad norm {norm:.4e}{broken}, {:.2}s; memory after backward: {}; after the update: {}",
                l.nll_sum / l.tokens as f64,
                secs,
                gb(after_backward),
                gb(crate::gpu_runtime::memory(a.device.device))
            );
            if a.profile {
                // Profiled steps synchronize at every phase: slightly slower than unprofiled ones.
                eprintln!("profile step {step}: {}, clip + optimizer {:.3}s", timeline.summary(), secs - backward_done);
            }
            if step >= a.warmup {
                times.push(secs);
            }
        }
        let tok_s = (n * times.len()) as f64 / times.iter().sum::<f64>();
        let reserved = crate::gpu_runtime::memory(a.device.device).map(|m| format!(" | reserved {:.2} GB", m.reserved as f64 / 1e9));
        println!(
            "bench train | {} | {} {:?} {:?} | seq {} bs {} r {} checkpointing {} | {:?} | trainable {:.1}M | {:.0} tok/s (mean of {} steps){}",
            a.model.display(),
            a.device.device,
            a.device.dtype,
            a.quantize,
            a.seq,
            a.batch,
            a.r,
            !a.no_checkpointing,
            a.optimizer,
            trainable_params as f64 / 1e6,
            tok_s,
            times.len(),
            reserved.unwrap_or_default()
        );
        Ok(())
    }
}

/// Entry point of `bench train`.
pub fn run(args: BenchTrainArgs) -> anyhow::Result<()> {
    model_dir(&args.model)?;
    anyhow::ensure!(args.seq >= 2 && args.batch >= 1 && args.steps >= 1, "--seq >= 2, --batch >= 1 and --steps >= 1");
    let (device, dtype) = (args.device.device, args.device.dtype);
    dispatch_autodiff(device, dtype, Task(args))?
}

/// Time and device memory at each [`Phase`] of one profiled step (`--profile`), and how long
/// the synchronization that ends each phase waited: the GPU runs behind the host, so a phase
/// whose wait is near zero had the GPU idle for work, bound by the host issuing its launches
/// (a check that needs no Nsight Systems, which the lent GPU machines lack).
struct Timeline {
    device: crate::backend::DeviceSpec,
    last: Instant,
    /// `(phase, seconds since the previous mark, of which waiting in the sync, memory)`.
    marks: Vec<(Phase, f64, f64, Option<crate::gpu_runtime::GpuMemory>)>,
}

impl Timeline {
    fn new(device: crate::backend::DeviceSpec) -> Self {
        Self { device, last: Instant::now(), marks: Vec::new() }
    }

    /// Ends `phase`; `issued`: when the host had issued its work and began to synchronize.
    fn mark(&mut self, phase: Phase, issued: Instant) {
        let now = Instant::now();
        self.marks.push((phase, (now - self.last).as_secs_f64(), (now - issued).as_secs_f64(), crate::gpu_runtime::memory(self.device)));
        self.last = now;
    }

    /// `forward 0.410s (sync waited 0.012s), head 0.060s, 28 layers 1.080s (max 0.041s; sync waited 0.600s in all), peak in use at marks 8.12 GB (Layer(27)), reserved 11.70 GB from Head`.
    fn summary(&self) -> String {
        let secs = |f: &dyn Fn(&Phase) -> bool| self.marks.iter().filter(|m| f(&m.0)).map(|m| m.1).sum::<f64>();
        let waited = |f: &dyn Fn(&Phase) -> bool| self.marks.iter().filter(|m| f(&m.0)).map(|m| m.2).sum::<f64>();
        let layer = |p: &Phase| matches!(p, Phase::Layer(_));
        let layers: Vec<f64> = self.marks.iter().filter(|m| layer(&m.0)).map(|m| m.1).collect();
        let mut out = format!(
            "forward {:.3}s (sync waited {:.3}s), head {:.3}s, {} layers {:.3}s (max {:.3}s; sync waited {:.3}s in all)",
            secs(&|p| *p == Phase::Forward),
            waited(&|p| *p == Phase::Forward),
            secs(&|p| *p == Phase::Head),
            layers.len(),
            layers.iter().sum::<f64>(),
            layers.iter().cloned().fold(0.0, f64::max),
            waited(&layer)
        );
        let mem: Vec<(Phase, crate::gpu_runtime::GpuMemory)> = self.marks.iter().filter_map(|m| m.3.map(|g| (m.0, g))).collect();
        if let Some((p, m)) = mem.iter().max_by_key(|(_, m)| m.in_use) {
            // The first mark at the largest reserve: the phase in which the pools reached it
            // (they can shrink again: the step frees the head's buffers before the backward).
            let reserved = mem.iter().map(|(_, g)| g.reserved).max().unwrap_or(0);
            let grew = mem.iter().find(|(_, g)| g.reserved == reserved).map_or(*p, |(q, _)| *q);
            let (dp, device) = mem.iter().max_by_key(|(_, g)| g.device_used).map_or((*p, 0), |(q, g)| (*q, g.device_used));
            out += &format!(
                ", peak in use at marks {:.2} GB ({p:?}), reserved {:.2} GB from {grew:?}, device used {:.2} GB ({dp:?})",
                m.in_use as f64 / 1e9,
                reserved as f64 / 1e9,
                device as f64 / 1e9
            );
        }
        out
    }
}
