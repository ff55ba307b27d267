//! The QLoRA trainer: `medqlora train RECIPE.toml`.
//!
//! [`recipe`] (typed TOML) -> [`data`] (model folder, tokenized examples) -> [`run`] (loop:
//! [`batches`] -> [`step`] forward/backward with per-layer checkpointing -> [`optim`] AdamW on
//! f32 masters) -> [`metrics`] (TensorBoard, JSONL) and [`checkpoint`] (atomic, verified,
//! exact resume). [`parallel`] splits each step over the devices of `[hardware] devices`.

pub mod batches;
pub mod checkpoint;
pub mod data;
pub mod metrics;
pub mod optim;
pub mod optim8;
pub mod parallel;
pub mod recipe;
pub mod run;
pub mod seeded;
pub mod step;

pub use recipe::Recipe;
pub use run::{train, ResumeFrom, TrainError, TrainSummary};
