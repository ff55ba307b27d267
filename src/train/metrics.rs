//! Where training numbers go: TensorBoard event files (`<output_dir>/tb/`, written with
//! tensorboard-rs, read by stock TensorBoard) and `metrics.jsonl`, one JSON object per logged
//! step, for scripts and tests.

use serde::Serialize;
use std::io::Write;
use std::path::{Path, PathBuf};
use tensorboard_rs::summary_writer::SummaryWriter;

/// Errors opening the run's log files.
#[derive(Debug, thiserror::Error)]
#[error("cannot write training logs in {path}: {source}")]
pub struct MetricsError {
    path: PathBuf,
    source: std::io::Error,
}

/// One logged training step.
#[derive(Debug, Clone, Serialize)]
pub struct StepMetrics {
    /// Optimizer step (1-based: the number of updates done).
    pub step: usize,
    /// Mean token loss of the step.
    pub loss: f64,
    /// Learning rate used by this step's update.
    pub lr: f64,
    /// Global gradient norm before clipping.
    pub grad_norm: f64,
    /// Trained (scored + context) tokens per second over this step.
    pub tokens_per_sec: f64,
    /// Scored (assistant) tokens in the step.
    pub scored_tokens: usize,
    /// Tokens the step ran (padding included).
    pub tokens: usize,
    /// Wall-clock seconds of the step (forward, backward, reduction, update).
    pub seconds: f64,
    /// GPU memory the runtime holds reserved at the step's end, bytes (rank 0's device;
    /// `None` on the CPU).
    pub peak_memory_bytes: Option<u64>,
}

/// TensorBoard + JSONL sink.
pub struct Metrics {
    tb: SummaryWriter,
    jsonl: std::fs::File,
}

impl Metrics {
    /// Opens (appending) the sinks under `output_dir`.
    pub fn open(output_dir: &Path) -> Result<Self, MetricsError> {
        let tb_dir = output_dir.join("tb");
        std::fs::create_dir_all(&tb_dir).map_err(|source| MetricsError { path: tb_dir.clone(), source })?;
        let path = output_dir.join("metrics.jsonl");
        let jsonl = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .map_err(|source| MetricsError { path, source })?;
        Ok(Self { tb: SummaryWriter::new(&tb_dir), jsonl })
    }

    /// Logs a training step (TensorBoard tags `train/*`).
    pub fn step(&mut self, m: &StepMetrics) {
        let s = m.step;
        self.tb.add_scalar("train/loss", m.loss as f32, s);
        self.tb.add_scalar("train/lr", m.lr as f32, s);
        self.tb.add_scalar("train/grad_norm", m.grad_norm as f32, s);
        self.tb.add_scalar("train/tokens_per_sec", m.tokens_per_sec as f32, s);
        if let Some(b) = m.peak_memory_bytes {
            self.tb.add_scalar("train/peak_memory_gb", b as f32 / 1e9, s);
        }
        self.line(serde_json::json!({"kind": "train", "metrics": m}));
    }

    /// Logs an evaluation (`eval/loss`, `eval/field_accuracy`, `eval/json_valid`).
    pub fn eval(&mut self, step: usize, loss: f64, field_accuracy: Option<(f64, f64)>) {
        self.tb.add_scalar("eval/loss", loss as f32, step);
        if let Some((acc, valid)) = field_accuracy {
            self.tb.add_scalar("eval/field_accuracy", acc as f32, step);
            self.tb.add_scalar("eval/json_valid", valid as f32, step);
        }
        self.line(serde_json::json!({"kind": "eval", "step": step, "loss": loss,
            "field_accuracy": field_accuracy.map(|f| f.0), "json_valid": field_accuracy.map(|f| f.1)}));
        self.flush();
    }

    fn line(&mut self, v: serde_json::Value) {
        // A failed metrics line must not kill a long run; the checkpoint is what matters.
        if writeln!(self.jsonl, "{v}").is_err() {
            eprintln!("warning: could not append to metrics.jsonl");
        }
    }

    /// Pushes buffered events to disk (before checkpoints and at the end).
    pub fn flush(&mut self) {
        self.tb.flush();
        let _ = self.jsonl.flush();
    }
}
