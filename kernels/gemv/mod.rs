//! Decode-time `Y[M, N] = X[M, K] W^T` for `M <= 8`: one plane (warp) per output row,
//! codes read 16 bytes per lane, products on CUDA cores in f32.

pub mod reference;

#[cfg(feature = "launch")]
pub(crate) mod kernel;
#[cfg(feature = "launch")]
pub use kernel::{gemv, gemv_into, MAX_M};

#[cfg(test)]
mod tests;
