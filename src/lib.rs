//! medqlora: QLoRA fine-tuning of Qwen2.5 / Qwen2.5-VL for clinical document extraction.
//!
//! Data path: model folder (HF config + safetensors + tokenizer) -> [`model`] (Burn modules
//! with HF parameter names) -> [`generate`]; the backend is picked once in [`backend`].

pub mod backend;
pub mod chat;
pub mod data;
pub mod eval;
pub mod generate;
pub mod gpu_runtime;
pub mod lora;
pub mod model;
pub mod quant;
pub mod tokenizer;
pub mod train;
pub mod cli;
