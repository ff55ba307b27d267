//! Rotary position embedding on a projection's heads, fused with the move into head-major
//! layout: `x [b, s, n, d]` (a projection's output, as it comes) -> `y [b, n, s, d]` (what
//! attention reads), `y = x cos + rotate_half(x) sin` with `rotate_half(x) = [-x2, x1]`
//! (transformers `models/qwen2/modeling_qwen2.py::apply_rotary_pos_emb`); and its gradient,
//! `dx = g cos - rotate_half(g) sin` read from `[b, n, s, d]` and written as `[b, s, n, d]`.
//! `cos, sin: [b, s, d]`, their two halves equal (RoPE's `cat(freqs, freqs)`; multimodal
//! RoPE too), which is what makes the gradient the same rotation with `-sin`. f32 math inside,
//! each output rounded once.
//!
//! As tensor ops the forward was a negation, a concatenation, two products and a sum over a
//! head-transposed view, plus the copy into head-major layout that attention's reshape made,
//! and autodiff's backward about twice that: ~10 launches per projection per pass.

pub mod reference;

#[cfg(feature = "launch")]
pub(crate) mod kernel;
#[cfg(feature = "launch")]
pub use kernel::{rope_backward, rope_forward, rope_into};
pub use reference::RopeDims;

#[cfg(test)]
mod tests;
