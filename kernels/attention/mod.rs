//! Causal attention of grouped queries in one kernel: `softmax(q k^T * scale + mask) v` with
//! the scores and probabilities kept on chip (the block structure of FlashAttention, two
//! passes over the keys; see `kernel`), tensor-core products, bf16/f16 storage and f32 math.
//!
//! Why: the model's attention as Burn ops is two products and a softmax per query block,
//! and which of cubek's matmul kernels runs a product is chosen by timing on each machine; on
//! one H100 (2026-12-06) the chosen kernel gave a 599-token sequence's tail block wrong scores
//! (relative L2 0.997, `tests/attention_blocks.rs`) where another H100 had been right with the
//! same binary. This kernel is one fixed program, tested here against the plain reference on
//! random shapes; the model's forward without a tape (generation, evaluation) takes it on CUDA
//! (`model::attention_kernel`). Training keeps the block-wise ops (`model::attention_grad`):
//! this kernel is not yet fast (21.8 TFLOP/s on the 7B training shape, H100: two passes, no
//! prefetching, one 32-key tile per barrier) and has no backward. `flash` is the one-pass
//! kernel (`mma.sync`, online softmax in registers, `cp.async` prefetch) that
//! `--attention-kernel flash` selects for inference and training's forward.

pub mod reference;

#[cfg(feature = "launch")]
pub(crate) mod kernel;
#[cfg(feature = "launch")]
pub(crate) mod flash;
#[cfg(feature = "launch")]
pub use flash::{flash_attention, flash_attention_into};
#[cfg(feature = "launch")]
pub use kernel::{causal_attention, causal_attention_into, MAX_HEAD_DIM};
pub use reference::Causal;

#[cfg(test)]
mod tests;
