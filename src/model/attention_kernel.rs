//! Causal attention as one fused kernel on CUDA (`medqlora_kernels::attention`), for every
//! forward without a tape: inference (prefill, batched decoding, evaluation).
//!
//! Why: as Burn ops each query block is two matmuls and a softmax, the matmul kernel chosen
//! per machine by autotuning; on H100s the chosen one gave a 599-token prompt's tail block
//! wrong f32 scores (`tests/attention_blocks.rs`). The kernel is one fixed program, tested
//! against a plain reference, that keeps the scores on chip, so what generation and
//! evaluation compute does not depend on the machine's tuning. It takes bf16/f16 (tensor
//! cores); f32 and anything else it refuses go to [`super::attention::attend_causal_ops`].
//! By default the one-pass kernel serves both inference and training's forward
//! ([`AttentionKernel::Flash`]; training's backward stays block-wise, [`super::attention_grad`]).
//! `--attention-kernel two-pass` keeps the two-pass kernel for inference and Burn's block-wise
//! ops for training's forward (the two-pass kernel took 1.38 ms there against their ~0.75 per
//! layer, H100, `medqlora bench kernels --attention`).

use burn::tensor::backend::Backend;
use burn::tensor::{Bool, Tensor};
use std::sync::atomic::{AtomicBool, Ordering};

/// Which program runs CUDA's 16-bit causal attention forward (a process-wide choice made
/// once at the CLI edge, as [`super::nf4_weight::ops::Nf4Product`]).
#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum AttentionKernel {
    /// The one-pass kernel (`medqlora_kernels::attention::flash_attention`: FlashAttention-2's
    /// forward on `mma.sync`, the softmax online in registers) for inference and for
    /// training's forward (its backward stays block-wise, recomputing from q, k, v). The
    /// default since 2026-12-06: 2.5x the two-pass kernel reading a mask, 3.9x computing the
    /// causal one, at the 7B training shape; the 7B step 0.65-0.66 against 0.67 s (H100,
    /// BENCHMARKS.md).
    #[default]
    Flash,
    /// Inference through the two-pass kernel (`medqlora_kernels::attention::causal_attention`,
    /// closest to eager attention's rounding), training's forward through the block-wise ops.
    TwoPass,
}

static FLASH: AtomicBool = AtomicBool::new(true);

/// Sets the process's [`AttentionKernel`].
pub fn set_attention_kernel(kernel: AttentionKernel) {
    FLASH.store(kernel == AttentionKernel::Flash, Ordering::Relaxed);
}

/// The process's [`AttentionKernel`].
pub fn attention_kernel() -> AttentionKernel {
    if FLASH.load(Ordering::Relaxed) {
        AttentionKernel::Flash
    } else {
        AttentionKernel::TwoPass
    }
}

/// `softmax(q k^T d^-0.5 + mask) v` for `q: [b, kv_heads, rep, s, d]`, `k, v: [b, kv_heads,
/// t, d]`, `mask: [b or 1, 1, 1, s, t]` (causal: it hides every key after a query's position)
/// by the fused kernel, or the operands back when it does not take them. `causal_only`:
/// `mask` is exactly the causal one, which the one-pass kernel then computes.
#[allow(clippy::type_complexity)]
pub fn fused_causal<B: Backend>(q: Tensor<B, 5>, k: Tensor<B, 4>, v: Tensor<B, 4>, mask: &Tensor<B, 5, Bool>, causal_only: bool) -> Result<Tensor<B, 5>, (Tensor<B, 5>, Tensor<B, 4>, Tensor<B, 4>)> {
    #[cfg(feature = "cuda")]
    return cuda::fused_causal(q, k, v, mask, causal_only);
    #[cfg(not(feature = "cuda"))]
    {
        let _ = (mask, causal_only);
        Err((q, k, v))
    }
}

#[cfg(feature = "cuda")]
mod cuda {
    use crate::model::autodiff_op::float;
    use crate::model::cuda_tensor::{back, cube, cube_of};
    use burn::tensor::backend::Backend;
    use burn::tensor::{Bool, DType, Tensor};
    use medqlora_kernels::attention::{causal_attention, flash_attention, Causal};

    #[allow(clippy::type_complexity)]
    pub(super) fn fused_causal<B: Backend>(q: Tensor<B, 5>, k: Tensor<B, 4>, v: Tensor<B, 4>, mask: &Tensor<B, 5, Bool>, causal_only: bool) -> Result<Tensor<B, 5>, (Tensor<B, 5>, Tensor<B, 4>, Tensor<B, 4>)> {
        let [b, kv_heads, rep, s, d] = q.dims();
        let t = k.dims()[2];
        let [mask_batches, ..] = mask.dims();
        // The kernel checks every operand itself; the dtype is checked first only so that
        // f32 (which it never takes) does not pay for contiguous copies.
        if !matches!(q.dtype(), DType::BF16 | DType::F16) {
            return Err((q, k, v));
        }
        let qc = match cube(q.into_primitive().tensor()) {
            Ok(c) => c,
            Err(p) => return Err((float(p), k, v)),
        };
        let (kc, vc) = (cube_of(k.into_primitive().tensor()), cube_of(v.into_primitive().tensor()));
        let mc = cube_of(mask.clone().into_primitive());
        let shape = Causal { batch: b, kv_heads, rep, s, t, d, mask_batches };
        let scale = (d as f32).powf(-0.5);
        let out = match super::attention_kernel() {
            super::AttentionKernel::Flash => flash_attention(&qc, &kc, &vc, if causal_only { None } else { Some(&mc) }, shape, scale),
            super::AttentionKernel::TwoPass => causal_attention(&qc, &kc, &vc, &mc, shape, scale),
        };
        match out {
            Ok(out) => Ok(float::<B, 5>(back(out))),
            Err(_) => Err((float::<B, 5>(back(qc)), float::<B, 4>(back(kc)), float::<B, 4>(back(vc)))),
        }
    }
}
