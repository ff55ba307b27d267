//! LoRA adapters with PEFT semantics (targeting, initialization, scaling).

pub mod layer;
pub mod targets;

pub use layer::{LoraAdapter, LoraSpec};
