//! The Qwen2 / Qwen2.5 model family in Burn, HF names and layouts kept end to end.

pub mod attention;
pub mod attention_grad;
pub mod attention_kernel;
pub mod autodiff_op;
pub mod config;
pub mod cross_entropy;
#[cfg(feature = "cuda")]
pub(crate) mod cuda_tensor;
pub mod embedding;
pub mod frozen_matmul;
pub mod inventory;
pub mod kv_cache;
pub mod linear;
pub mod load;
pub mod mlp;
pub mod nf4_weight;
pub mod norm;
pub mod rope;
pub mod rope_op;
pub mod softmax;
pub mod split_k;
pub mod swiglu;
pub mod text;
pub mod tiny;

pub use config::{ConfigError, TextConfig};
pub use kv_cache::KvCache;
pub use load::{LoadError, WeightStore};
pub use rope::PositionIds;
pub use text::{ForwardOutput, QuantizeOnLoad, Qwen2ForCausalLM};
