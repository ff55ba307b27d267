//! The sum that closes a split-K product: partial products `x [outer, parts, inner]` (the
//! compute dtype, as the batched GEMM wrote them) summed over `parts` in f32, times a scale,
//! written once in the output dtype (f32 for a weight gradient, the compute dtype for an
//! activation). One thread per output vector.
//!
//! As Burn tensor ops this was a cast to f32, `sum_dim` and (for activations) a cast back,
//! plus LoRA's scaling as a fourth pass: three or four launches after every split product, and
//! a training step makes thousands of them (LoRA's skinny products, the frozen head's input
//! gradient, attention's grouped key/value gradients). Here it is one.
//!
//! Its counterpart, the split operand: the product's cut operand `x [rows, cols]` as the
//! batched GEMM takes it, `[parts, rows, cols / parts]`. As the view `x.reshape([rows, parts,
//! width]).swap_dims(0, 1)` Burn's matmul copied it with its generic strided copy first, at
//! ~0.8 TB/s (201 us for `gate_proj`'s `[2048, 18944]` output gradient, twice per 7B layer, and
//! again for the frozen head's input gradient per chunk; H100 profile, 2026-12-06); one pass
//! with whole vectors moves it at elementwise speed.

pub mod reference;

#[cfg(feature = "launch")]
pub(crate) mod kernel;
#[cfg(feature = "launch")]
pub use kernel::{splitk_operand, splitk_operand_into, splitk_sum, splitk_sum_into};
pub use reference::Split;

#[cfg(test)]
mod tests;
