//! `silu(gate) * up` (the Qwen2 MLP's activation, transformers `Qwen2MLP.forward`) as one
//! autodiff operation that keeps only its two inputs.
//!
//! Through tensor ops autodiff keeps `gate`, `sigmoid(gate)`, `silu(gate)` and `up` for the
//! backward: four `[tokens, intermediate]` tensors, 0.31 GB per 7B layer at 2,048 tokens in
//! bf16, held through the recomputed layer's backward. This operation keeps `gate` and `up` and
//! recomputes the sigmoid: `d up = dh * silu(g)`, `d gate = dh * up * s * (1 + g (1 - s))` with
//! `s = sigmoid(g)`, in the tensors' dtype as autodiff computes them (tested equal to it).
//! Taken on the autodiff backends training uses ([`super::autodiff_op`]); elsewhere the
//! tensor ops.
//!
//! On CUDA (feature `cuda`) the forward, with or without autodiff, and the backward are each
//! one fused kernel (`medqlora_kernels::swiglu`): as tensor ops the forward is ~9 kernels in
//! f32 (casts, Burn's sigmoid as `exp(-log1p(exp(-x)))`, the product) and the backward more,
//! all memory-bound. The CPU keeps the tensor ops, so the tests below check the autodiff
//! structure against Burn's own gradients; the kernels are tested against their reference in
//! the kernel crate.

use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::backend::Autodiff;
use burn::tensor::activation::{sigmoid, silu};
use burn::tensor::backend::Backend;
use burn::tensor::ops::FloatTensor;
use burn::tensor::Tensor;
use burn::backend::autodiff::checkpoint::strategy::NoCheckpointing;
use super::autodiff_op::{cast, float, on_training_backend, TrainingOp};
use std::marker::PhantomData;

/// `silu(gate) * up`, elementwise, same shapes (`[batch, seq, intermediate]` in the MLP).
pub fn swiglu<B: Backend, const D: usize>(gate: Tensor<B, D>, up: Tensor<B, D>) -> Tensor<B, D> {
    match on_training_backend(&Swiglu::<B, D>(PhantomData), (gate, up)) {
        Ok(y) => y,
        Err((gate, up)) => float(forward_prim::<B, D>(gate.into_primitive().tensor(), up.into_primitive().tensor())),
    }
}

/// `silu(g) * u` on primitives of one shape: the fused kernel on CUDA, the tensor ops elsewhere.
fn forward_prim<B: Backend, const D: usize>(g: FloatTensor<B>, u: FloatTensor<B>) -> FloatTensor<B> {
    #[cfg(feature = "cuda")]
    let (g, u) = match cuda::forward::<B>(g, u) {
        Ok(y) => return y,
        Err(back) => back,
    };
    (silu(float::<B, D>(g)) * float::<B, D>(u)).into_primitive().tensor()
}

/// [`swiglu_backward`] on primitives: `(d g, d u)`, the fused kernel on CUDA.
fn backward_prim<B: Backend, const D: usize>(g: FloatTensor<B>, u: FloatTensor<B>, dh: FloatTensor<B>) -> (FloatTensor<B>, FloatTensor<B>) {
    #[cfg(feature = "cuda")]
    let (g, u, dh) = match cuda::backward::<B>(g, u, dh) {
        Ok(grads) => return grads,
        Err(back) => back,
    };
    let (dg, du) = swiglu_backward(float::<B, D>(g), float::<B, D>(u), float::<B, D>(dh));
    (dg.into_primitive().tensor(), du.into_primitive().tensor())
}

/// The kernels on `CubeTensor<CudaRuntime>` primitives (every CUDA float dtype: one type check).
/// Inputs are made contiguous first (`dh` may arrive broadcast from a reduction's backward);
/// a layout the kernels refuse (e.g. operands of different dtypes) takes the tensor ops.
#[cfg(feature = "cuda")]
mod cuda {
    use crate::model::cuda_tensor::{back, cube, cube_of};
    use burn::tensor::backend::Backend;
    use burn::tensor::ops::FloatTensor;
    use medqlora_kernels::swiglu;

    pub(super) fn forward<B: Backend>(g: FloatTensor<B>, u: FloatTensor<B>) -> Result<FloatTensor<B>, (FloatTensor<B>, FloatTensor<B>)> {
        let g = match cube(g) {
            Ok(g) => g,
            Err(g) => return Err((g, u)),
        };
        let u = cube_of(u);
        swiglu::swiglu_forward(&g, &u).map(back::<FloatTensor<B>>).map_err(|_| (back(g), back(u)))
    }

    #[allow(clippy::type_complexity)]
    pub(super) fn backward<B: Backend>(
        g: FloatTensor<B>,
        u: FloatTensor<B>,
        dh: FloatTensor<B>,
    ) -> Result<(FloatTensor<B>, FloatTensor<B>), (FloatTensor<B>, FloatTensor<B>, FloatTensor<B>)> {
        let g = match cube(g) {
            Ok(g) => g,
            Err(g) => return Err((g, u, dh)),
        };
        let (u, dh) = (cube_of(u), cube_of(dh));
        match swiglu::swiglu_backward(&g, &u, &dh) {
            Ok((dg, du)) => Ok((back(dg), back(du))),
            Err(_) => Err((back(g), back(u), back(dh))),
        }
    }
}

/// The operation (no arguments besides the two it differentiates).
struct Swiglu<B, const D: usize>(PhantomData<B>);

impl<B: Backend, const D: usize> TrainingOp for Swiglu<B, D> {
    type Args = (Tensor<B, D>, Tensor<B, D>);
    type Out = Tensor<B, D>;

    fn on<I: Backend>(&self, (g, u): Self::Args) -> Result<Self::Out, Self::Args> {
        type A<I> = Autodiff<I, NoCheckpointing>;
        let g = match cast::<_, Tensor<A<I>, D>>(g) {
            Ok(g) => g,
            Err(g) => return Err((g, u)),
        };
        let u = cast::<_, Tensor<A<I>, D>>(u).unwrap_or_else(|_| unreachable!("gate and up share a backend"));
        Ok(cast::<_, Tensor<B, D>>(on_autodiff::<I, NoCheckpointing, D>(g, u)).unwrap_or_else(|_| unreachable!("Autodiff<I> is B")))
    }
}

/// The gradients of `silu(g) * u` for the output gradient `dh`: `(d g, d u)`.
pub fn swiglu_backward<B: Backend, const D: usize>(g: Tensor<B, D>, u: Tensor<B, D>, dh: Tensor<B, D>) -> (Tensor<B, D>, Tensor<B, D>) {
    let s = sigmoid(g.clone());
    let du = dh.clone() * (g.clone() * s.clone());
    let dg = dh * u * s.clone() * (g * s.neg().add_scalar(1.0)).add_scalar(1.0);
    (dg, du)
}

#[derive(Debug)]
struct SwigluBackward<const D: usize>;

impl<B: Backend, const D: usize> Backward<B, 2> for SwigluBackward<D> {
    /// `(gate, up)`.
    type State = (FloatTensor<B>, FloatTensor<B>);

    fn backward(self, ops: Ops<Self::State, 2>, grads: &mut Gradients, _checkpointer: &mut Checkpointer) {
        let [node_g, node_u] = ops.parents;
        let dh = grads.consume::<B>(&ops.node);
        let (g, u) = ops.state;
        let (dg, du) = backward_prim::<B, D>(g, u, dh);
        if let Some(node) = node_g {
            grads.register::<B>(node.id, dg);
        }
        if let Some(node) = node_u {
            grads.register::<B>(node.id, du);
        }
    }
}

fn on_autodiff<I: Backend, C: CheckpointStrategy, const D: usize>(g: Tensor<Autodiff<I, C>, D>, u: Tensor<Autodiff<I, C>, D>) -> Tensor<Autodiff<I, C>, D> {
    let (g, u) = (g.into_primitive().tensor(), u.into_primitive().tensor());
    let out = forward_prim::<I, D>(g.primitive.clone(), u.primitive.clone());
    let out = match SwigluBackward::<D>.prepare::<C>([g.node.clone(), u.node.clone()]).compute_bound().stateful() {
        OpsKind::Tracked(prep) => prep.finish((g.primitive, u.primitive), out),
        OpsKind::UnTracked(prep) => prep.finish(out),
    };
    float(out)
}

#[cfg(test)]
mod tests {
    use super::{swiglu, Swiglu};
    use crate::model::autodiff_op::TrainingOp;
    use std::marker::PhantomData;
    use burn::backend::{Autodiff, NdArray};
    use burn::tensor::activation::silu;
    use burn::tensor::{Distribution, Tensor};

    type A = Autodiff<NdArray<f32>>;

    /// The operation's output and gradients equal autodiff through `silu(g) * u`.
    #[test]
    fn equals_autodiff_through_the_ops() {
        let dev = Default::default();
        let g0 = Tensor::<NdArray<f32>, 3>::random([2, 7, 13], Distribution::Normal(0.0, 3.0), &dev);
        let u0 = Tensor::<NdArray<f32>, 3>::random([2, 7, 13], Distribution::Normal(0.0, 1.0), &dev);
        let w = Tensor::<NdArray<f32>, 3>::random([2, 7, 13], Distribution::Normal(0.0, 1.0), &dev);
        let run = |one_op: bool| {
            let g = Tensor::<A, 3>::from_inner(g0.clone()).require_grad();
            let u = Tensor::<A, 3>::from_inner(u0.clone()).require_grad();
            let y = if one_op { swiglu(g.clone(), u.clone()) } else { silu(g.clone()) * u.clone() };
            let grads = (y.clone() * Tensor::from_inner(w.clone())).sum().backward();
            (y.inner(), g.grad(&grads).unwrap(), u.grad(&grads).unwrap())
        };
        let (a, b) = (run(true), run(false));
        for (what, x, y) in [("out", &a.0, &b.0), ("d gate", &a.1, &b.1), ("d up", &a.2, &b.2)] {
            let e = crate::model::autodiff_op::rel_l2(x, y);
            assert!(e < 1e-6, "{what}: relative L2 {e:e}");
        }
    }

    /// The operation is taken under the CPU autodiff backend (so the test above compares two
    /// different computations), not without autodiff.
    #[test]
    fn taken_under_autodiff_only() {
        let dev = Default::default();
        let t = || Tensor::<A, 2>::random([3, 4], Distribution::Normal(0.0, 1.0), &dev);
        assert!(Swiglu::<A, 2>(PhantomData).on::<NdArray<f32>>((t(), t())).is_ok());
        let p = || Tensor::<NdArray<f32>, 2>::random([3, 4], Distribution::Normal(0.0, 1.0), &dev);
        assert!(Swiglu::<NdArray<f32>, 2>(PhantomData).on::<NdArray<f32>>((p(), p())).is_err());
    }
}
