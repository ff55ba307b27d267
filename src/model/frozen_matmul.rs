//! `x W^T` for a frozen dense weight (the untied `lm_head`, and every projection of a model
//! trained without quantization) as one autodiff operation whose backward computes only
//! `dX = dY W`, with its long reduction cut into slices.
//!
//! Why: the vocabulary head's input gradient `dlogits [256, 152,064] x W [152,064, 3,584]`
//! (one per head chunk, see `train::step`) has a small output and a 152,064-long reduction, so
//! Burn's matmul backward ran it on 112 thread blocks: 3.1 ms per chunk, 25 ms of each 7B
//! step (H100 profile, 2026-12-06). Cut into 8 slices of 19,008 taken as one batched product
//! and summed in f32 it has 8 times the blocks (split-K, as `lora::op` does for the adapters'
//! skinny products). The weight gets no gradient (it is frozen: the operation is taken only
//! for a weight that requires none).
//!
//! On CUDA both products of a 16-bit weight take `medqlora_kernels::gemm_dense` (the NF4 wide
//! kernel's tensor-core core with `W` copied, not decoded; the input gradient's reduction cut
//! into parts that fill the machine) where it takes the operands and there are at least
//! [`KERNEL_MIN_ROWS`] rows; `--dense-product burn` keeps Burn's matmul for both, as before.

use super::autodiff_op::{cast, float, on_training_backend, prim, TrainingOp};
use super::linear::{copies_strided_operands, matmul_weight_t, unread_output, OutputUse};
use super::split_k::{split_k_parts, split_operand, sum_parts};
use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::NoCheckpointing;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::backend::Autodiff;
use burn::tensor::backend::Backend;
use burn::tensor::ops::FloatTensor;
use burn::tensor::Tensor;
use std::marker::PhantomData;
use std::sync::atomic::{AtomicBool, Ordering};

/// Output widths `N` from which the input gradient's reduction is cut on the GPU: the
/// vocabulary head's (151,936-152,064), not the projections' (at most 18,944, where the
/// product already has enough thread blocks).
const GPU_MIN_SPLIT: usize = 32_768;

/// Fewest rows for which CUDA's products take the kernel (fewer are decoding's, where a
/// 256-row tile would be mostly idle and Burn's matmul is the better program).
pub const KERNEL_MIN_ROWS: usize = 64;

/// Which program runs CUDA's products with a frozen dense 16-bit weight (a process-wide choice
/// made once at the CLI edge, as [`super::nf4_weight::ops::Nf4Product`]).
#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum DenseProduct {
    /// `medqlora_kernels::gemm_dense`: `ldmatrix` + `mma.sync` on 256 x 128 tiles, operands
    /// copied by `cp.async`, the input gradient's reduction split to fill the machine.
    #[default]
    Kernel,
    /// Burn's autotuned matmul, the input gradient's reduction cut into 8 batched slices
    /// (the program before the kernel).
    Burn,
}

static BURN_DENSE: AtomicBool = AtomicBool::new(false);

/// Sets the process's [`DenseProduct`].
pub fn set_dense_product(product: DenseProduct) {
    BURN_DENSE.store(product == DenseProduct::Burn, Ordering::Relaxed);
}

/// `x [m, k] W[n, k]^T -> [m, n]` for a frozen `W`; under the training autodiff backends the
/// operation above (gradient for `x` only), elsewhere [`matmul_weight_t`] (or the kernel).
pub fn frozen_matmul_t<B: Backend>(x: Tensor<B, 2>, w: Tensor<B, 2>) -> Tensor<B, 2> {
    frozen_matmul_t_for(x, w, OutputUse::Value)
}

/// [`frozen_matmul_t`] whose output is read as `output` says: with [`OutputUse::TapeOnly`]
/// under a training backend the product is not computed (its backward needs only `W`) and the
/// output's value is undefined.
pub fn frozen_matmul_t_for<B: Backend>(x: Tensor<B, 2>, w: Tensor<B, 2>, output: OutputUse) -> Tensor<B, 2> {
    let min_split = if copies_strided_operands::<B>() { usize::MAX } else { GPU_MIN_SPLIT };
    frozen_matmul_t_with(x, w, min_split, output)
}

fn frozen_matmul_t_with<B: Backend>(x: Tensor<B, 2>, w: Tensor<B, 2>, min_split: usize, output: OutputUse) -> Tensor<B, 2> {
    match on_training_backend(&FrozenOp::<B>(min_split, output, PhantomData), (x, w)) {
        Ok(y) => y,
        Err((x, w)) => forward(x, w),
    }
}

/// `x W^T`: the kernel where it serves, else [`matmul_weight_t`].
fn forward<B: Backend>(x: Tensor<B, 2>, w: Tensor<B, 2>) -> Tensor<B, 2> {
    #[cfg(feature = "cuda")]
    let (x, w) = match cuda::product(x, w, medqlora_kernels::gemm_dense::Direction::Forward) {
        Ok(y) => return y,
        Err(back) => back,
    };
    matmul_weight_t(x, w)
}

/// Into how many slices the reduction `n` of `dY W` is cut: up to 8 ([`split_k_parts`]) when
/// `n >= min_split`; else 1.
fn parts(n: usize, min_split: usize) -> usize {
    if n < min_split {
        return 1;
    }
    split_k_parts(n, 8, 1)
}

/// `g [m, n] w [n, k] -> [m, k]` in `g`'s dtype, the reduction over `n` cut ([`parts`]).
fn input_grad<B: Backend>(g: Tensor<B, 2>, w: Tensor<B, 2>, min_split: usize) -> Tensor<B, 2> {
    #[cfg(feature = "cuda")]
    let (g, w) = match cuda::product(g, w, medqlora_kernels::gemm_dense::Direction::InputGrad) {
        Ok(dx) => return dx,
        Err(back) => back,
    };
    let ([m, n], k) = (g.dims(), w.dims()[1]);
    let dtype = g.dtype();
    match parts(n, min_split) {
        1 => g.matmul(w),
        p => {
            let gs = split_operand(g, p);
            sum_parts(gs.matmul(w.reshape([p, n / p, k])), 0, 1.0, dtype).reshape([m, k])
        }
    }
}

/// The split threshold of the input gradient and how the output is read.
struct FrozenOp<B>(usize, OutputUse, PhantomData<B>);

impl<B: Backend> TrainingOp for FrozenOp<B> {
    type Args = (Tensor<B, 2>, Tensor<B, 2>);
    type Out = Tensor<B, 2>;

    fn on<I: Backend>(&self, (x, w): Self::Args) -> Result<Self::Out, Self::Args> {
        type A<I> = Autodiff<I, NoCheckpointing>;
        let (x, w) = match (cast::<_, Tensor<A<I>, 2>>(x), cast::<_, Tensor<A<I>, 2>>(w)) {
            (Ok(x), Ok(w)) if !w.is_require_grad() => (x, w),
            (x, w) => {
                let back = |t: Result<Tensor<A<I>, 2>, Tensor<B, 2>>| t.map(|t| cast::<_, Tensor<B, 2>>(t).unwrap_or_else(|_| unreachable!("A<I> is B"))).unwrap_or_else(|t| t);
                return Err((back(x), back(w)));
            }
        };
        let w = w.inner().into_primitive().tensor();
        let x = x.into_primitive().tensor();
        let (xt, wt) = (float::<I, 2>(x.primitive.clone()), float::<I, 2>(w.clone()));
        let y = match self.1 {
            OutputUse::Value => forward(xt, wt),
            OutputUse::TapeOnly => unread_output(xt.dims()[0], wt.dims()[0], &xt),
        };
        let out = match FrozenBackward(self.0).prepare::<NoCheckpointing>([x.node.clone()]).compute_bound().stateful() {
            OpsKind::Tracked(prep) => prep.finish(w, prim(y)),
            OpsKind::UnTracked(prep) => prep.finish(prim(y)),
        };
        Ok(cast::<_, Tensor<B, 2>>(float::<A<I>, 2>(out)).unwrap_or_else(|_| unreachable!("A<I> is B")))
    }
}

/// Keeps the weight (a handle of the frozen parameter) and the split threshold.
#[derive(Debug)]
struct FrozenBackward(usize);

impl<B: Backend> Backward<B, 1> for FrozenBackward {
    type State = FloatTensor<B>;

    fn backward(self, ops: Ops<Self::State, 1>, grads: &mut Gradients, _checkpointer: &mut Checkpointer) {
        let [node_x] = ops.parents;
        let g = float::<B, 2>(grads.consume::<B>(&ops.node));
        if let Some(node) = node_x {
            grads.register::<B>(node.id, prim(input_grad(g, float::<B, 2>(ops.state), self.0)));
        }
    }
}

/// The kernel on `CubeTensor<CudaRuntime>` primitives.
#[cfg(feature = "cuda")]
mod cuda {
    use super::{BURN_DENSE, KERNEL_MIN_ROWS};
    use crate::model::autodiff_op::{float, prim};
    use crate::model::cuda_tensor::{back, cube, cube_of};
    use burn::tensor::backend::Backend;
    use burn::tensor::Tensor;
    use medqlora_kernels::gemm_dense::{gemm_dense, Direction};
    use std::sync::atomic::Ordering;

    type Pair<B> = (Tensor<B, 2>, Tensor<B, 2>);

    /// `a W^T` or `a W` by the kernel when both are CUDA tensors it takes, `a` has at least
    /// [`KERNEL_MIN_ROWS`] rows and the process chose the kernel; else the operands back.
    pub(super) fn product<B: Backend>(a: Tensor<B, 2>, w: Tensor<B, 2>, direction: Direction) -> Result<Tensor<B, 2>, Pair<B>> {
        if BURN_DENSE.load(Ordering::Relaxed) || a.dims()[0] < KERNEL_MIN_ROWS {
            return Err((a, w));
        }
        let ac = match cube(prim(a)) {
            Ok(ac) => ac,
            Err(a) => return Err((float(a), w)),
        };
        let wc = cube_of(prim(w));
        match gemm_dense(&ac, &wc, direction, None) {
            Ok(out) => Ok(float(back(out))),
            Err(_) => Err((float(back(ac)), float(back(wc)))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::backend::NdArray;
    use burn::tensor::Distribution;

    type Cpu = NdArray<f32>;
    type A = Autodiff<Cpu>;

    /// Output and input gradient equal autodiff through the plain product, with the reduction
    /// cut (`n` 1,024 in 8 slices of 128) and uncut, and the input gradient with the output
    /// tape-only; a weight that requires a gradient is left to autodiff (and gets one).
    #[test]
    fn equals_autodiff_through_the_plain_product() {
        let dev = Default::default();
        let (m, k, n) = (24, 40, 1024);
        let x0 = Tensor::<Cpu, 2>::random([m, k], Distribution::Normal(0.0, 1.0), &dev);
        let w0 = Tensor::<Cpu, 2>::random([n, k], Distribution::Normal(0.0, 0.1), &dev);
        let g0 = Tensor::<Cpu, 2>::random([m, n], Distribution::Normal(0.0, 1.0), &dev);
        assert_eq!(parts(n, 16), 8);
        let run = |min_split: Option<usize>| {
            let x = Tensor::<A, 2>::from_inner(x0.clone()).require_grad();
            let w = Tensor::<A, 2>::from_inner(w0.clone());
            let y = match min_split {
                Some(s) => frozen_matmul_t_with(x.clone(), w, s, OutputUse::Value),
                None => x.clone().matmul(w.transpose()),
            };
            let grads = (y.clone() * Tensor::from_inner(g0.clone())).sum().backward();
            (y.inner(), x.grad(&grads).unwrap())
        };
        let want = run(None);
        for s in [16, usize::MAX] {
            let got = run(Some(s));
            assert!(crate::model::autodiff_op::rel_l2(&got.0, &want.0) < 1e-6, "y (min_split {s})");
            assert!(crate::model::autodiff_op::rel_l2(&got.1, &want.1) < 1e-5, "dx (min_split {s})");
        }
        // Tape-only (the checkpointed recompute's `down_proj`): the same input gradient.
        let x = Tensor::<A, 2>::from_inner(x0.clone()).require_grad();
        let y = frozen_matmul_t_with(x.clone(), Tensor::<A, 2>::from_inner(w0.clone()), 16, OutputUse::TapeOnly);
        let grads = (y * Tensor::from_inner(g0.clone())).sum().backward();
        assert!(crate::model::autodiff_op::rel_l2(&x.grad(&grads).unwrap(), &want.1) < 1e-5, "dx (tape-only)");
        let w = Tensor::<A, 2>::from_inner(w0).require_grad();
        let y = frozen_matmul_t_with(Tensor::<A, 2>::from_inner(x0), w.clone(), 16, OutputUse::Value);
        let grads = (y * Tensor::from_inner(g0)).sum().backward();
        assert!(w.grad(&grads).is_some(), "a trainable weight keeps its gradient");
    }
}
