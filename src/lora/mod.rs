//! LoRA adapters with PEFT semantics (targeting, initialization, scaling).

pub mod dropout;
pub mod fused;
pub mod layer;
pub mod op;
pub mod peft_io;
pub mod targets;

pub use layer::{LoraAdapter, LoraSpec};
