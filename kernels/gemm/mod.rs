//! Prefill/training `Y[M, N] = X[M, K] W^T`, fused: tiles of `W` dequantized into shared
//! memory feed tensor-core (cmma 16x16x16) instructions, f32 accumulation. The reference is
//! [`crate::gemv::reference::matmul_t`] (the same function).

#[cfg(feature = "launch")]
pub(crate) mod kernel;
#[cfg(feature = "launch")]
pub mod lora;
#[cfg(feature = "launch")]
pub(crate) mod mma;
#[cfg(feature = "launch")]
pub(crate) mod pipelined;
#[cfg(feature = "launch")]
pub(crate) mod wide;
#[cfg(feature = "launch")]
pub use kernel::{gemm, gemm_into, gemm_into_with, gemm_with, GemmConfig, GemmMma, GemmRows, GemmStages};
#[cfg(feature = "launch")]
pub use lora::{gemm_dx_add, gemm_dx_add_into, gemm_dx_add_into_with, gemm_dx_add_with, gemm_lora, gemm_lora_into, gemm_lora_into_with, gemm_lora_with, GemmEpilogue};

#[cfg(test)]
mod tests;
