//! Training recipes: TOML files, typed (`deny_unknown_fields`, enums for every choice) and
//! validated once, before any work starts. The resolved recipe is saved in every checkpoint.

use crate::backend::{ComputeDtype, DeviceSpec};
use crate::lora::LoraSpec;
use crate::model::tiny::TinyModelSpec;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// Errors reading or validating a recipe.
#[derive(Debug, thiserror::Error)]
pub enum RecipeError {
    #[error("cannot read recipe {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("recipe {path} is not valid: {problem}")]
    Parse { path: PathBuf, problem: String },
    #[error("recipe {path}: `{key}` {problem}")]
    Invalid { path: PathBuf, key: &'static str, problem: String },
}

/// A whole training run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Recipe {
    /// Run name (TensorBoard run label, checkpoint metadata).
    pub name: String,
    /// Folder for checkpoints, TensorBoard events and logs (relative to the working directory;
    /// `--output-dir` overrides it).
    pub output_dir: PathBuf,
    /// Seed of adapter init, data order and dropout.
    #[serde(default)]
    pub seed: u64,
    /// Frozen base model.
    pub model: ModelRecipe,
    /// Adapters.
    pub lora: LoraRecipe,
    /// Training data.
    pub data: DataRecipe,
    /// Optimization and schedule.
    pub train: TrainRecipe,
    /// Where to run.
    #[serde(default)]
    pub hardware: HardwareRecipe,
}

/// The frozen base model.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "source", rename_all = "snake_case", deny_unknown_fields)]
pub enum ModelRecipe {
    /// A Hugging Face checkpoint folder (dense or bitsandbytes NF4).
    Pretrained {
        /// The folder with config.json, safetensors and tokenizer.json.
        path: PathBuf,
        /// Base weight format in memory.
        #[serde(default)]
        quantize: BaseQuant,
    },
    /// The tiny random model medqlora writes itself (under `<output_dir>/tiny-model`).
    TinyRandom {
        /// Its shape and seed (`[model.tiny]`; defaults: 64 wide, 2 layers).
        #[serde(default)]
        tiny: TinyModelSpec,
        /// Base weight format in memory.
        #[serde(default)]
        quantize: BaseQuant,
    },
}

/// How the frozen base is held in memory.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(tag = "format", rename_all = "snake_case", deny_unknown_fields)]
pub enum BaseQuant {
    /// As stored in the checkpoint.
    #[default]
    None,
    /// NF4 (bitsandbytes layout), quantized while loading.
    Nf4 {
        /// Elements per absmax block.
        #[serde(default = "d_blocksize")]
        blocksize: usize,
        /// Double-quantize the block scales.
        #[serde(default = "d_true")]
        double_quant: bool,
        /// Modules kept dense (dotted-path components).
        #[serde(default = "d_skip")]
        skip: Vec<String>,
    },
}

fn d_blocksize() -> usize {
    64
}
fn d_true() -> bool {
    true
}
fn d_skip() -> Vec<String> {
    vec!["lm_head".into()]
}

/// LoRA adapters (PEFT `LoraConfig`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LoraRecipe {
    /// Rank.
    pub r: usize,
    /// `lora_alpha`.
    pub alpha: f64,
    /// `lora_dropout`.
    #[serde(default)]
    pub dropout: f64,
    /// rsLoRA scaling.
    #[serde(default)]
    pub use_rslora: bool,
    /// Module-name suffixes (PEFT `target_modules`).
    pub target_modules: Vec<String>,
}

impl LoraRecipe {
    /// The adapter math parameters.
    pub fn spec(&self) -> LoraSpec {
        LoraSpec { r: self.r, alpha: self.alpha, dropout: self.dropout, use_rslora: self.use_rslora }
    }
}

/// Training data.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DataRecipe {
    /// Where the records come from.
    pub source: DataSource,
    /// Longest tokenized example; longer documents are cut from the document side.
    #[serde(default = "d_max_seq")]
    pub max_seq_len: usize,
    /// Skip malformed JSONL lines (reported) instead of stopping before training.
    #[serde(default)]
    pub skip_bad: bool,
    /// Round each micro-batch's length up to a multiple of this (transformers'
    /// `pad_to_multiple_of`); on the GPU, 256 keeps kernel compilation to a few shapes.
    #[serde(default = "d_one")]
    pub pad_to_multiple_of: usize,
}

fn d_max_seq() -> usize {
    1024
}

/// Records for training and evaluation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum DataSource {
    /// JSONL files in the medqlora record format (datasets/README.md).
    Jsonl {
        /// Training records.
        train: PathBuf,
        /// Held-out records for eval loss (optional).
        #[serde(default)]
        eval: Option<PathBuf>,
    },
    /// Synthetic clinical documents generated in memory (`medqlora datasets synth`).
    Synth {
        /// Document kinds, e.g. ["lab_panel", "icu_flowsheet"].
        kinds: Vec<crate::data::synth::SynthKind>,
        /// Training documents per kind.
        train_per_kind: usize,
        /// Held-out documents per kind.
        #[serde(default)]
        eval_per_kind: usize,
        /// Generator seed (eval documents use a derived seed, so they never repeat training).
        #[serde(default)]
        seed: u64,
    },
}

/// Learning-rate shape after warmup.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum Schedule {
    /// Cosine decay to `min_lr_ratio * lr` at `max_steps`.
    #[default]
    Cosine,
    /// Linear decay to `min_lr_ratio * lr`.
    Linear,
    /// Constant after warmup.
    Constant,
}

/// How AdamW keeps its moments.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum Optimizer {
    /// f32 moments (torch.optim.AdamW; Axolotl's `adamw_torch`).
    #[default]
    Adamw,
    #[value(name = "adamw_8bit")]
    #[serde(rename = "adamw_8bit")]
    /// 8-bit blockwise moments (bitsandbytes' `AdamW8bit`; Axolotl's `adamw_bnb_8bit`): 2 bytes
    /// per parameter instead of 8, tensors under 4,096 elements stay f32.
    Adamw8bit,
}

/// Optimization.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrainRecipe {
    /// Optimizer steps.
    pub max_steps: usize,
    /// Sequences per forward/backward.
    #[serde(default = "d_one")]
    pub micro_batch_size: usize,
    /// Micro-batches per optimizer step.
    #[serde(default = "d_one")]
    pub grad_accum: usize,
    /// Peak learning rate.
    pub lr: f64,
    /// Linear warmup steps from 0.
    #[serde(default)]
    pub warmup_steps: usize,
    /// Decay after warmup.
    #[serde(default)]
    pub schedule: Schedule,
    /// Final lr as a fraction of `lr` (cosine, linear).
    #[serde(default)]
    pub min_lr_ratio: f64,
    /// Optimizer state format: `adamw` (f32 moments) or `adamw_8bit`.
    #[serde(default)]
    pub optimizer: Optimizer,
    /// AdamW decoupled weight decay.
    #[serde(default)]
    pub weight_decay: f64,
    /// AdamW beta1.
    #[serde(default = "d_beta1")]
    pub beta1: f64,
    /// AdamW beta2.
    #[serde(default = "d_beta2")]
    pub beta2: f64,
    /// AdamW epsilon.
    #[serde(default = "d_eps")]
    pub eps: f64,
    /// Global gradient-norm clip (0 = off).
    #[serde(default = "d_clip")]
    pub max_grad_norm: f64,
    /// Recompute each decoder layer in the backward pass instead of keeping its activations.
    #[serde(default = "d_true")]
    pub gradient_checkpointing: bool,
    /// Eval loss every N steps (0 = only at the end).
    #[serde(default)]
    pub eval_every: usize,
    /// Eval micro-batches per evaluation (0 = the whole eval set).
    #[serde(default)]
    pub eval_batches: usize,
    /// Field accuracy (generation + scoring) on this many eval records at each eval (0 = off).
    #[serde(default)]
    pub eval_generate: usize,
    /// Checkpoint every N steps (0 = only at the end).
    #[serde(default)]
    pub save_every: usize,
    /// Checkpoints kept (older ones are deleted).
    #[serde(default = "d_keep")]
    pub keep_last: usize,
}

fn d_one() -> usize {
    1
}
fn d_beta1() -> f64 {
    0.9
}
fn d_beta2() -> f64 {
    0.999
}
fn d_eps() -> f64 {
    1e-8
}
fn d_clip() -> f64 {
    1.0
}
fn d_keep() -> usize {
    3
}

/// Where the run computes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HardwareRecipe {
    /// cpu, cuda or cuda:N.
    #[serde(default = "d_device")]
    pub device: DeviceSpec,
    /// Compute dtype of the frozen base and activations; adapters stay f32 master weights.
    #[serde(default = "d_dtype")]
    pub dtype: ComputeDtype,
    /// Data parallelism: one rank per listed device (CUDA ordinals; rank 0 is the first and
    /// must be `device`'s own). Each rank holds its own copy of the frozen base and runs
    /// `grad_accum / len` of every step's micro-batches; see `train::parallel`. With
    /// `device = "cpu"` the entries only label simulated ranks (threads sharing the CPU), which
    /// is what the CPU equivalence test runs: correct, but no faster. Absent: `device` alone.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub devices: Option<Vec<usize>>,
}

fn d_device() -> DeviceSpec {
    DeviceSpec::Cpu
}
fn d_dtype() -> ComputeDtype {
    ComputeDtype::F32
}

impl Default for HardwareRecipe {
    fn default() -> Self {
        Self { device: d_device(), dtype: d_dtype(), devices: None }
    }
}

impl HardwareRecipe {
    /// Ranks of the run: the length of `devices`, or 1 without it.
    pub fn ranks(&self) -> usize {
        self.devices.as_ref().map_or(1, Vec::len)
    }
}

impl Recipe {
    /// Reads and validates a recipe file.
    pub fn from_file(path: &Path) -> Result<Self, RecipeError> {
        let text = std::fs::read_to_string(path).map_err(|source| RecipeError::Read { path: path.to_owned(), source })?;
        Self::from_toml(&text, path)
    }

    /// Parses and validates recipe text; `path` only names the recipe in errors.
    pub fn from_toml(text: &str, path: &Path) -> Result<Self, RecipeError> {
        let recipe: Recipe =
            toml::from_str(text).map_err(|e| RecipeError::Parse { path: path.to_owned(), problem: e.to_string() })?;
        recipe.validate(path)?;
        Ok(recipe)
    }

    /// The recipe as TOML (saved in checkpoints).
    pub fn to_toml(&self) -> String {
        toml::to_string_pretty(self).unwrap_or_else(|e| format!("# recipe could not be serialized: {e}\n"))
    }

    /// `[hardware] devices`: non-empty, distinct, rank 0 on `device`, and a step that splits
    /// evenly (every rank must run the same number of micro-batches, so the ranks meet at
    /// the gradient sum together).
    fn validate_devices(&self, devices: &[usize], path: &Path) -> Result<(), RecipeError> {
        let bad = |problem: String| Err(RecipeError::Invalid { path: path.to_owned(), key: "hardware.devices", problem });
        let Some(&first) = devices.first() else {
            return bad("must list at least one device, e.g. devices = [0, 1]; leave the key out to train on `device` alone".into());
        };
        if let Some((_, d)) = devices.iter().enumerate().find(|(i, d)| devices[..*i].contains(d)) {
            return bad(format!("lists device {d} twice; every rank needs a device of its own"));
        }
        if let DeviceSpec::Cuda(index) = self.hardware.device {
            if index != first {
                return bad(format!(
                    "rank 0 runs on hardware.device ({}) and must come first: write devices = [{index}, ...] or device = \"cuda:{first}\"",
                    self.hardware.device
                ));
            }
        }
        let (n, g) = (devices.len(), self.train.grad_accum);
        if g % n != 0 {
            return bad(format!(
                "{n} devices need train.grad_accum divisible by {n} (each device runs grad_accum / {n} micro-batches of every step); grad_accum is {g}: use {} or fewer devices",
                g.div_ceil(n) * n
            ));
        }
        Ok(())
    }

    /// Checks every value a run depends on; errors name the key.
    pub fn validate(&self, path: &Path) -> Result<(), RecipeError> {
        let bad = |key: &'static str, problem: String| Err(RecipeError::Invalid { path: path.to_owned(), key, problem });
        let t = &self.train;
        if self.name.trim().is_empty() {
            return bad("name", "must not be empty".into());
        }
        if self.lora.r == 0 {
            return bad("lora.r", "must be at least 1".into());
        }
        if !(self.lora.alpha > 0.0) {
            return bad("lora.alpha", format!("must be positive, got {}", self.lora.alpha));
        }
        if !(0.0..1.0).contains(&self.lora.dropout) {
            return bad("lora.dropout", format!("must be in [0, 1), got {}", self.lora.dropout));
        }
        if self.lora.target_modules.is_empty() {
            return bad("lora.target_modules", "must name at least one module, e.g. [\"q_proj\", \"v_proj\"]".into());
        }
        if let ModelRecipe::Pretrained { quantize: BaseQuant::Nf4 { blocksize, .. }, .. }
        | ModelRecipe::TinyRandom { quantize: BaseQuant::Nf4 { blocksize, .. }, .. } = &self.model
        {
            if !blocksize.is_power_of_two() || !(32..=4096).contains(blocksize) {
                return bad("model.quantize.blocksize", format!("must be a power of two in 32..=4096, got {blocksize}"));
            }
        }
        if self.data.pad_to_multiple_of == 0 || self.data.pad_to_multiple_of > self.data.max_seq_len {
            return bad(
                "data.pad_to_multiple_of",
                format!("must be between 1 (no rounding) and max_seq_len {}, got {}", self.data.max_seq_len, self.data.pad_to_multiple_of),
            );
        }
        if self.data.max_seq_len < 16 {
            return bad("data.max_seq_len", format!("must be at least 16, got {}", self.data.max_seq_len));
        }
        if let DataSource::Synth { kinds, train_per_kind, .. } = &self.data.source {
            if kinds.is_empty() || *train_per_kind == 0 {
                return bad("data.source", "synth needs at least one kind and train_per_kind >= 1".into());
            }
        }
        if t.max_steps == 0 {
            return bad("train.max_steps", "must be at least 1".into());
        }
        if t.micro_batch_size == 0 || t.grad_accum == 0 {
            return bad("train.micro_batch_size", "micro_batch_size and grad_accum must be at least 1".into());
        }
        if !(t.lr > 0.0 && t.lr.is_finite()) {
            return bad("train.lr", format!("must be a positive number, got {}", t.lr));
        }
        if t.warmup_steps > t.max_steps {
            return bad("train.warmup_steps", format!("{} exceeds max_steps {}", t.warmup_steps, t.max_steps));
        }
        if !(0.0..=1.0).contains(&t.min_lr_ratio) {
            return bad("train.min_lr_ratio", format!("must be in [0, 1], got {}", t.min_lr_ratio));
        }
        if !(0.0..1.0).contains(&t.beta1) || !(0.0..1.0).contains(&t.beta2) {
            return bad("train.beta1", format!("betas must be in [0, 1), got ({}, {})", t.beta1, t.beta2));
        }
        if !(t.eps > 0.0) || t.weight_decay < 0.0 || t.max_grad_norm < 0.0 {
            return bad("train.eps", "eps must be positive; weight_decay and max_grad_norm non-negative".into());
        }
        if t.keep_last == 0 {
            return bad("train.keep_last", "must keep at least 1 checkpoint".into());
        }
        if self.hardware.device == DeviceSpec::Cpu && self.hardware.dtype == ComputeDtype::Bf16 {
            return bad("hardware.dtype", "bf16 runs on CUDA only; use dtype = \"f32\" on the CPU".into());
        }
        if let Some(devices) = &self.hardware.devices {
            self.validate_devices(devices, path)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every recipe shipped in recipes/ parses, validates, and survives the round trip through
    /// the TOML saved in checkpoints.
    #[test]
    fn shipped_recipes_are_valid() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("recipes");
        let mut n = 0;
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.extension().and_then(|e| e.to_str()) != Some("toml") {
                continue;
            }
            let recipe = Recipe::from_file(&path).unwrap_or_else(|e| panic!("{e}"));
            let again = Recipe::from_toml(&recipe.to_toml(), &path).unwrap_or_else(|e| panic!("round trip: {e}"));
            assert_eq!(recipe, again, "{}", path.display());
            n += 1;
        }
        assert!(n >= 4, "expected the shipped recipes in {}, found {n}", dir.display());
    }

    #[test]
    fn pad_to_multiple_of_is_checked() {
        let text = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("recipes/tiny-smoke.toml")).unwrap();
        let bad = text.replace("[data]\n", "[data]\npad_to_multiple_of = 0\n");
        assert_ne!(bad, text, "tiny-smoke.toml has a [data] table");
        let err = Recipe::from_toml(&bad, Path::new("x.toml")).unwrap_err().to_string();
        assert!(err.contains("data.pad_to_multiple_of"), "{err}");
    }
}
