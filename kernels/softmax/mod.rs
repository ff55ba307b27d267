//! Attention's masked softmax in one pass per row, and its gradient: the probabilities
//! `P = softmax(S * scale)` over the keys a row may see (`mask == 0`; hidden keys get 0), and
//! `dS = P * (dP - rowsum(P * dP)) * scale` with `P` recomputed from `S`. f32 math inside
//! whatever the storage dtype (f32, bf16, f16), the mask in Burn's bool storage (u8 or u32).
//!
//! As Burn tensor ops the forward is a scale, a cast to f32, a mask fill, Burn's softmax
//! (max and sum reductions, an exponential, a division) and a cast back, every one a pass over
//! `[heads, rows, keys]` in f32; the backward about twice that. On the H200 profile (7B, 2,048
//! tokens) these were ~5.5 ms per layer, mostly unvectorized f32 element-wise kernels and row
//! reductions launched on 32 thread blocks; one kernel reads the scores once per pass from
//! cache and writes its outputs once.
//!
//! Layout: `S, P, dP, dS` are `[rows, keys]` row-major, rows grouped as `[batches, group]`
//! with `group = heads * n` (`n` query rows per head); row `r` reads mask row
//! `((r / group) % mask_batches) * n + r % n` of the `[mask_batches, n, keys]` mask, so one
//! mask serves every head (and every batch when `mask_batches == 1`).

pub mod reference;

#[cfg(feature = "launch")]
pub(crate) mod kernel;
#[cfg(feature = "launch")]
pub use kernel::{masked_softmax, masked_softmax_backward, masked_softmax_backward_into, masked_softmax_into};
pub use reference::Rows;

#[cfg(test)]
mod tests;
