//! Backward product of the frozen weight, `dX[M, K] = dY[M, N] W`, fused like
//! [`crate::gemm`] but with `W` read untransposed (rows of `W` are the reduction dimension).

pub mod reference;

#[cfg(feature = "launch")]
pub(crate) mod kernel;
#[cfg(feature = "launch")]
pub(crate) mod pipelined;
#[cfg(feature = "launch")]
pub use kernel::{gemm_dx, gemm_dx_into, gemm_dx_into_with, gemm_dx_with};

#[cfg(test)]
mod tests;
