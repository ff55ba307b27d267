//! `medqlora eval`: greedy answers for a JSONL dataset, scored field by field, written as
//! report.json + report.md (side by side with `--compare`).

use super::{load_model, model_dir, DeviceArgs, QuantizeFlag};
use crate::backend::{dispatch, BackendTask};
use crate::chat::ChatTemplate;
use crate::data::read_jsonl;
use crate::eval::{evaluate, EvalOptions, EvalReport};
use crate::lora::peft_io::load_peft_adapter;
use crate::tokenizer::Tokenizer;
use anyhow::Context;
use burn::tensor::backend::Backend;
use std::path::PathBuf;
use std::time::Instant;

/// Evaluate a model (optionally with a PEFT LoRA adapter) on a JSONL dataset.
#[derive(clap::Args, Debug)]
pub struct EvalArgs {
    /// Hugging Face checkpoint folder of the base model.
    #[arg(long)]
    pub model: PathBuf,
    /// PEFT adapter folder (adapter_config.json + adapter_model.safetensors).
    #[arg(long)]
    pub adapter: Option<PathBuf>,
    /// JSONL dataset (see datasets/README.md).
    #[arg(long)]
    pub data: PathBuf,
    /// Evaluate only the first N records.
    #[arg(long)]
    pub limit: Option<usize>,
    /// A previous report.json (or its folder) to compare against.
    #[arg(long)]
    pub compare: Option<PathBuf>,
    /// Output folder for report.json and report.md.
    #[arg(long, default_value = "eval-report")]
    pub out: PathBuf,
    /// Prompts per generation batch.
    #[arg(long, default_value_t = 8)]
    pub batch_size: usize,
    /// Answer budget in tokens.
    #[arg(long, default_value_t = 256)]
    pub max_new_tokens: usize,
    /// Prompt budget in tokens (longer documents are cut, as in training).
    #[arg(long, default_value_t = 2048)]
    pub max_prompt_tokens: usize,
    /// Skip malformed JSONL lines instead of stopping.
    #[arg(long)]
    pub skip_bad: bool,
    /// Weight format of the frozen base.
    #[arg(long, value_enum, default_value = "none")]
    pub quantize: QuantizeFlag,
    #[command(flatten)]
    pub device: DeviceArgs,
}

struct Task {
    args: EvalArgs,
    records: Vec<crate::data::Record>,
    baseline: Option<EvalReport>,
}

impl BackendTask for Task {
    type Output = anyhow::Result<()>;
    fn run<B: Backend>(self, device: B::Device) -> anyhow::Result<()> {
        let a = &self.args;
        let tok = Tokenizer::from_model_dir(&a.model)?;
        let template = ChatTemplate::from_model_dir(&a.model);
        let mut model = load_model::<B>(&a.model, &device, a.quantize)?;
        if let Some(dir) = &a.adapter {
            let info = load_peft_adapter(&mut model, dir, &device).with_context(|| format!("loading adapter {}", dir.display()))?;
            eprintln!("adapter {}: r={} alpha={} on {} modules ({} vision tensors skipped)", dir.display(), info.r, info.alpha, info.modules, info.skipped_vision);
        }
        let label = format!(
            "{}{} on {}",
            a.model.display(),
            a.adapter.as_ref().map(|d| format!(" + {}", d.display())).unwrap_or_default(),
            a.data.display()
        );
        let opts = EvalOptions {
            max_new_tokens: a.max_new_tokens,
            batch_size: a.batch_size,
            limit: a.limit,
            max_prompt_tokens: a.max_prompt_tokens,
            progress: true,
            label,
            ..Default::default()
        };
        let start = Instant::now();
        let report = evaluate(&model, &tok, &template, &self.records, &opts)?;
        report.write(&a.out, self.baseline.as_ref())?;
        let o = &report.overall;
        eprintln!(
            "{} records in {:.1}s: field accuracy {:.1}%, JSON validity {:.1}%, exact match {:.1}%{}; report in {}",
            o.records,
            start.elapsed().as_secs_f64(),
            100.0 * o.field_accuracy(),
            100.0 * o.json_validity(),
            100.0 * o.exact_match(),
            self.baseline.as_ref().map(|b| format!(" (baseline {:.1}%)", 100.0 * b.field_accuracy())).unwrap_or_default(),
            a.out.display()
        );
        Ok(())
    }
}

/// Entry point of `medqlora eval`.
pub fn run(args: EvalArgs) -> anyhow::Result<()> {
    model_dir(&args.model)?;
    // Read everything that can fail before the model loads.
    let ds = read_jsonl(&args.data, args.skip_bad)?;
    for b in &ds.skipped {
        eprintln!("skipped {b}");
    }
    let baseline = args.compare.as_deref().map(EvalReport::read).transpose()?;
    let (device, dtype) = (args.device.device, args.device.dtype);
    dispatch(device, dtype, Task { records: ds.records, baseline, args })?
}
