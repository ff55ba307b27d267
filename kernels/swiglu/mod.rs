//! SwiGLU, `y = silu(g) * u` (the Qwen2 MLP's activation), and its gradients in one pass:
//! `s = sigmoid(g)`, `du = dh g s`, `dg = dh u s (1 + g (1 - s))`. Elementwise over
//! same-shaped contiguous tensors, f32 math inside whatever the storage dtype (f32, bf16, f16).
//!
//! As Burn tensor ops the forward is ~9 kernels (casts, Burn's sigmoid as
//! `exp(-log1p(exp(-x)))`, the product) and the backward more; both are memory-bound, so one
//! kernel each reads the inputs once and writes the outputs once.

pub mod reference;

#[cfg(feature = "launch")]
pub(crate) mod kernel;
#[cfg(feature = "launch")]
pub use kernel::{swiglu_backward, swiglu_backward_into, swiglu_forward, swiglu_forward_into};

#[cfg(test)]
mod tests;
