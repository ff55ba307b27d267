//! Inverted dropout with a counter-based mask: `y = x / (1 - p)` where element `i` is kept,
//! `0` where it is dropped, and whether `i` is kept is a hash of `(seed, i)`.
//!
//! Why a hash, not a stored mask: LoRA's input dropout (PEFT's `lora_dropout`, torch's
//! `nn.Dropout`) is applied to every adapter's input in the forward, again in the recomputed
//! layer, and twice in the backward (`dA` needs the dropped input, `dX` drops the gradient).
//! As Burn ops each application was a Bernoulli draw into a float tensor, a comparison into a
//! bool mask kept for the backward, a mask fill and a scale: four passes over a `[tokens, in]`
//! tensor and a byte per element held, for seven adapters per layer (`down_proj`'s input is
//! `[2048, 18944]` in the 7B bench). Here one kernel reads `x` once and writes `y` once, and
//! the mask is four integers (the seed, drawn on the device from the backend RNG, so no host
//! synchronization and the same per-layer reseeding as before). The scale is applied in f32
//! (torch's), not in the storage dtype (Burn's `mul_scalar` on bf16 rounded `1 / 0.95` to
//! 1.0547).
//!
//! The hash ([`reference::keep`]) is integer arithmetic only, so the CPU reference and every
//! device give the same mask bit for bit: a run on the CPU drops the elements a CUDA run drops.

pub mod reference;

#[cfg(feature = "launch")]
pub(crate) mod kernel;
#[cfg(feature = "launch")]
pub use kernel::{dropout, dropout_into, dropout_split};

#[cfg(test)]
mod tests;
