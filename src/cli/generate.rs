//! `medqlora generate`: stream a completion for one prompt.

use super::{load_model, model_dir, DeviceArgs};
use crate::backend::{dispatch, BackendTask};
use crate::chat::ChatTemplate;
use crate::generate::{generate, SamplingConfig, StopReason};
use crate::tokenizer::{TextStream, Tokenizer};
use anyhow::Context;
use burn::tensor::backend::Backend;
use std::io::Write;
use std::path::PathBuf;

/// Generate text from a prompt (greedy by default), streaming it to stdout.
#[derive(clap::Args, Debug)]
pub struct GenerateArgs {
    /// Hugging Face checkpoint folder (config.json, *.safetensors, tokenizer.json).
    #[arg(long)]
    pub model: PathBuf,
    /// Prompt text.
    #[arg(long, conflicts_with = "prompt_file", required_unless_present = "prompt_file")]
    pub prompt: Option<String>,
    /// Read the prompt from this file.
    #[arg(long)]
    pub prompt_file: Option<PathBuf>,
    /// Wrap the prompt as a user turn in the Qwen chat template (otherwise it is sent raw).
    #[arg(long)]
    pub chat: bool,
    /// System prompt for --chat (default: the checkpoint's own).
    #[arg(long, requires = "chat")]
    pub system: Option<String>,
    /// Stop after this many new tokens.
    #[arg(long, default_value_t = 256)]
    pub max_new_tokens: usize,
    /// Sampling temperature; 0 is greedy.
    #[arg(long, default_value_t = 0.0)]
    pub temperature: f32,
    /// Nucleus sampling threshold (used when temperature > 0).
    #[arg(long, default_value_t = 1.0)]
    pub top_p: f32,
    /// Seed of the sampling RNG.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Weight format of the frozen base: none (as stored) or nf4 (quantize while loading).
    #[arg(long, value_enum, default_value = "none")]
    pub quantize: super::QuantizeFlag,
    #[command(flatten)]
    pub device: DeviceArgs,
}

struct Task {
    args: GenerateArgs,
    prompt: String,
}

impl BackendTask for Task {
    type Output = anyhow::Result<()>;
    fn run<B: Backend>(self, device: B::Device) -> anyhow::Result<()> {
        let args = &self.args;
        let tokenizer = Tokenizer::from_model_dir(&args.model)?;
        let text = if args.chat {
            ChatTemplate::from_model_dir(&args.model).user_prompt(args.system.as_deref(), &self.prompt)
        } else {
            self.prompt.clone()
        };
        let ids = tokenizer.encode(&text)?;
        anyhow::ensure!(!ids.is_empty(), "the prompt is empty after tokenization");
        let model = load_model::<B>(&args.model, &device, args.quantize)?;
        let cfg = SamplingConfig {
            max_new_tokens: args.max_new_tokens,
            temperature: args.temperature,
            top_p: args.top_p,
            seed: args.seed,
            stop_ids: tokenizer.stop_ids(),
        };
        let mut stream = TextStream::new(&tokenizer);
        let mut stdout = std::io::stdout().lock();
        let mut failure = None;
        let out = generate(&model, &ids, &cfg, |id| match stream.push(id) {
            Ok(Some(piece)) => {
                let _ = stdout.write_all(piece.as_bytes()).and_then(|_| stdout.flush());
            }
            Ok(None) => {}
            Err(e) => failure = Some(e),
        });
        let _ = writeln!(stdout);
        if let Some(e) = failure {
            return Err(e.into());
        }
        eprintln!(
            "{} prompt tokens, {} new tokens ({}); prefill {:.1} tok/s, decode {:.2} tok/s on {} {:?}",
            out.prompt_tokens,
            out.tokens.len(),
            match out.stop {
                StopReason::StopToken => "stop token",
                StopReason::Length => "max-new-tokens",
            },
            out.prefill_tokens_per_sec(),
            out.decode_tokens_per_sec(),
            args.device.device,
            args.device.dtype,
        );
        Ok(())
    }
}

/// Entry point of `medqlora generate`.
pub fn run(args: GenerateArgs) -> anyhow::Result<()> {
    model_dir(&args.model)?;
    anyhow::ensure!(args.temperature >= 0.0, "--temperature must be >= 0 (0 is greedy)");
    anyhow::ensure!(args.top_p > 0.0 && args.top_p <= 1.0, "--top-p must be in (0, 1]");
    let prompt = match (&args.prompt, &args.prompt_file) {
        (Some(p), _) => p.clone(),
        (None, Some(f)) => std::fs::read_to_string(f).with_context(|| format!("cannot read --prompt-file {}", f.display()))?,
        (None, None) => anyhow::bail!("give --prompt TEXT or --prompt-file FILE"),
    };
    let (device, dtype) = (args.device.device, args.device.dtype);
    dispatch(device, dtype, Task { args, prompt })?
}
