//! RMSNorm (transformers `Qwen2RMSNorm`) and its input gradient, one pass over each row:
//! `n = x / sqrt(mean(x^2) + eps)` in f32, rounded to the storage dtype, times the weight in
//! that dtype, as transformers computes it; the backward `dx = r (dn - x r^2 mean(dn x))` with
//! `dn = dy w`, `r = 1 / sqrt(mean(x^2) + eps)`. The weight is frozen in LoRA training, so
//! no weight gradient. f32 math inside whatever the storage dtype (f32, bf16, f16).
//!
//! As Burn tensor ops the forward is a cast to f32, a square, a mean, a square root, a
//! division, a cast back and the weight's product, each a pass over `[tokens, hidden]` (f32
//! temporaries of 29 MB per 7B layer at 2,048 tokens), and autodiff's backward about twice
//! that; one kernel reads the row once per pass from cache and writes once.

pub mod reference;

#[cfg(feature = "launch")]
pub(crate) mod kernel;
#[cfg(feature = "launch")]
pub use kernel::{rmsnorm_backward, rmsnorm_backward_into, rmsnorm_forward, rmsnorm_forward_into};

#[cfg(test)]
mod tests;
