//! NF4 kernels for QLoRA on the GPU, in cubecl, with the plain CPU reference each is tested
//! against.
//!
//! The weight is a frozen linear weight `W[N, K]` (`[out_features, in_features]`, row-major)
//! in the bitsandbytes NF4 layout: two 4-bit codes per byte (element 2j in the high nibble of
//! byte j), one scale per `blocksize` consecutive elements of the flattened weight, the
//! scales optionally double-quantized (u8 codes into the signed dynamic map, one f32 per 256
//! blocks, plus an offset). Every kernel decodes the scales on the fly.
//!
//! One folder per op, each with its `#[cube]` body and launch code (feature `launch`, which
//! `cuda` and `wgpu` turn on), its reference (always compiled, so CPU CI tests it) and its
//! tests:
//! - [`dequant`]: `W` to a dense f32/bf16/f16 tensor;
//! - [`gemv`]: `Y[M, N] = X[M, K] W^T` for decode (`M <= 8`), on CUDA cores;
//! - [`gemm`]: the same product for prefill and training, tiles of `W` dequantized into
//!   shared memory feeding tensor-core (cmma) instructions, f32 accumulation (a reduction whose
//!   output has too few tiles for the GPU cut into parts, summed by [`splitk_sum`]);
//! - [`gemm_dx`]: the backward product `dX[M, K] = dY[M, N] W` of the frozen weight;
//! - [`gemm_wgmma`]: the prefill/training forward on Hopper's warpgroup MMA, in CUDA C++
//!   launched through cubecl's CUDA server ([`cuda_source`]), where the GPU and shape allow;
//! - [`gemm_dense`]: both products for a dense 16-bit frozen weight (the vocabulary head), on
//!   the same tensor-core core, the reduction cut into parts where the output has few tiles;
//! - [`adamw8`]: the 8-bit blockwise AdamW step (bitsandbytes' `AdamW8bit`) for the adapters;
//! - [`dropout`]: inverted dropout whose mask is a hash of a seed and the element index;
//! - [`swiglu`]: the MLP activation `silu(gate) * up` and its two gradients, one pass each;
//! - [`softmax`]: attention's masked softmax and its gradient, one cube per score row;
//! - [`rmsnorm`]: RMSNorm and its input gradient, one cube per row;
//! - [`cross_entropy`]: the vocabulary loss and its gradient, one cube per token row;
//! - [`splitk_sum`]: the f32 sum over a split-K product's partials, scaled, in one pass;
//! - [`rope`]: the rotary embedding and its gradient, moving heads into attention's layout.
//!
//! `cuda_check` (feature `cuda-check`) compiles every kernel for sm_90a with NVRTC and reads
//! ptxas' registers and spills back, without a GPU (`tools/cuda-check.sh`).

pub mod adamw8;
pub mod attention;
pub mod cross_entropy;
pub mod dequant;
pub mod dropout;
pub mod gemm;
pub mod gemm_dense;
pub mod gemm_dx;
pub mod gemm_wgmma;
pub mod gemv;
pub mod nf4;
pub mod rmsnorm;
pub mod rope;
pub mod softmax;
pub mod splitk_sum;
pub mod swiglu;
pub mod testutil;

#[cfg(feature = "cuda")]
pub mod bench;
#[cfg(feature = "cuda-check")]
pub mod cuda_check;
#[cfg(feature = "cuda")]
pub mod cuda_source;
#[cfg(feature = "launch")]
pub mod device;

pub use nf4::{Nf4Host, Nf4Owned, ScalesHost, ScalesOwned, NF4_CODE};

/// The crates the launch code is written against, for callers that implement backends on top.
#[cfg(feature = "launch")]
pub use {burn_backend, burn_cubecl, cubecl};
