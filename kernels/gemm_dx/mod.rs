//! Backward product of the frozen weight, `dX[M, K] = dY[M, N] W`, fused like
//! [`crate::gemm`] but with `W` read untransposed (rows of `W` are the reduction dimension).

pub mod reference;

#[cfg(feature = "launch")]
mod kernel;
#[cfg(feature = "launch")]
mod pipelined;
#[cfg(feature = "launch")]
pub use kernel::{gemm_dx, gemm_dx_into};

#[cfg(test)]
mod tests;
