//! Which autodiff backend a generic `B` is, for the operations with their own backward
//! ([`super::attention_grad`], [`super::swiglu`]): the model is generic over `B: Backend`, so
//! these are taken by a type check at run time (as the NF4 product is) rather than by a trait
//! bound every generic function would have to carry. One list of the backends training runs.

use burn::tensor::backend::Backend;
use burn::tensor::ops::FloatTensor;
use burn::tensor::{Tensor, TensorPrimitive};
use std::any::Any;

/// A float primitive as a tensor (what the operations' backward passes compute with).
pub(crate) fn float<B: Backend, const D: usize>(t: FloatTensor<B>) -> Tensor<B, D> {
    Tensor::from_primitive(TensorPrimitive::Float(t))
}

/// A float tensor's primitive (what the operations hand to autodiff).
pub(crate) fn prim<B: Backend, const D: usize>(t: Tensor<B, D>) -> FloatTensor<B> {
    t.into_primitive().tensor()
}

/// `t` as a `U` when it is one (the run-time backend check), else `t` back.
pub(crate) fn cast<T: 'static, U: 'static>(t: T) -> Result<U, T> {
    let b: Box<dyn Any> = Box::new(t);
    match b.downcast::<U>() {
        Ok(u) => Ok(*u),
        Err(b) => Err(*b.downcast::<T>().expect("the value's own type")),
    }
}

/// `t` in memory of its own shape: a copy when `t` is a strided view on the CUDA backend,
/// `t` itself anywhere else (the CPU backend reads any view correctly).
///
/// Why: Burn's CUDA matmul (burn-cubecl 0.21) misread a narrowed view: attention scores
/// against the first 512 of 599 keys (`k.narrow(2, 0, 512)`, batch stride `599 * d`) came
/// out at relative L2 0.999 from the CPU's on an H100 (2026-12-05,
/// `tests/attention_blocks.rs::each_op_of_a_block_equals_the_cpu`).
pub(crate) fn contiguous<B: Backend, const D: usize>(t: Tensor<B, D>) -> Tensor<B, D> {
    #[cfg(feature = "cuda")]
    return match super::cuda_tensor::cube(prim(t)) {
        Ok(c) => float(super::cuda_tensor::back(c)),
        Err(p) => float(p),
    };
    #[cfg(not(feature = "cuda"))]
    t
}

/// `a.matmul(b)`, on the CUDA backend with cubek's default strategy (one fixed kernel,
/// `SimpleCyclicCmma`, falling back to `SimpleUnit`) rather than Burn's autotuned choice.
///
/// Why it exists: which of cubek's ~30 matmul kernels runs a shape is chosen by timing on
/// each machine, and on H100s (2026-12-06) the chosen one gave a 599-token sequence's tail
/// attention block wrong f32 scores (relative L2 0.997) where this kernel was right; f32
/// attention products take it ([`super::attention::block_matmul`]).
pub(crate) fn untuned_matmul<B: Backend, const D: usize>(a: Tensor<B, D>, b: Tensor<B, D>) -> Tensor<B, D> {
    #[cfg(feature = "cuda")]
    {
        use super::cuda_tensor::Cube;
        use medqlora_kernels::burn_cubecl::kernel::matmul::{matmul, MatmulStrategy};
        // No contiguous copies: the kernel reads strided operands (a transposed key block).
        match cast::<FloatTensor<B>, Cube>(prim(a)) {
            Ok(ac) => {
                let bc = cast::<FloatTensor<B>, Cube>(prim(b)).unwrap_or_else(|_| unreachable!("operands of one backend"));
                let back = |c: Cube| float::<B, D>(super::cuda_tensor::back(c));
                let dtype = ac.dtype;
                match matmul(ac.clone(), bc.clone(), None, MatmulStrategy::Cube, dtype) {
                    Ok(out) => back(out),
                    // A layout the fixed strategy cannot take: Burn's own choice.
                    Err(_) => back(ac).matmul(back(bc)),
                }
            }
            Err(p) => float::<B, D>(p).matmul(b),
        }
    }
    #[cfg(not(feature = "cuda"))]
    a.matmul(b)
}

/// An operation with its own backward on `Autodiff<I>` (no checkpointing strategy, the
/// trainer's).
pub(crate) trait TrainingOp {
    /// The tensors it takes (given back when the backend is not `Autodiff<I>`).
    type Args;
    /// What it returns.
    type Out;
    /// Runs on `Autodiff<I>` if the arguments' backend is it.
    fn on<I: Backend>(&self, args: Self::Args) -> Result<Self::Out, Self::Args>;
}

/// Runs `op` when its arguments live on one of the autodiff backends training uses (CPU, CUDA
/// bf16 / f32); gives them back otherwise.
pub(crate) fn on_training_backend<O: TrainingOp>(op: &O, args: O::Args) -> Result<O::Out, O::Args> {
    let args = match op.on::<burn::backend::NdArray<f32>>(args) {
        Ok(y) => return Ok(y),
        Err(args) => args,
    };
    #[cfg(feature = "cuda")]
    let args = {
        let args = match op.on::<burn::backend::Cuda<half::bf16>>(args) {
            Ok(y) => return Ok(y),
            Err(args) => args,
        };
        match op.on::<burn::backend::Cuda<f32>>(args) {
            Ok(y) => return Ok(y),
            Err(args) => args,
        }
    };
    Err(args)
}

/// `||got - want|| / ||want||` of two CPU tensors (the operations' tests compare each with
/// autodiff through the plain ops).
#[cfg(test)]
pub(crate) fn rel_l2<const D: usize>(got: &Tensor<burn::backend::NdArray<f32>, D>, want: &Tensor<burn::backend::NdArray<f32>, D>) -> f32 {
    let num: f32 = (got.clone() - want.clone()).powi_scalar(2).sum().into_scalar();
    let den: f32 = want.clone().powi_scalar(2).sum().into_scalar();
    (num / den).sqrt()
}
