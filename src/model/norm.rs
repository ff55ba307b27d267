//! RMSNorm as in transformers `models/qwen2/modeling_qwen2.py::Qwen2RMSNorm`: the variance is
//! taken in f32 whatever the compute dtype, the weight is applied in the input dtype.
//!
//! With a frozen weight (always, in LoRA training) the norm is one autodiff operation that
//! keeps only its input and returns the input gradient `dx = r (dn - x r^2 mean(dn x))`,
//! `dn = dy w`, `r = 1 / sqrt(mean(x^2) + eps)` (tested equal to autodiff through the ops).
//! On CUDA (feature `cuda`) the forward and that gradient are one kernel each
//! (`medqlora_kernels::rmsnorm`): as tensor ops the forward is seven passes over
//! `[tokens, hidden]` (f32 temporaries) and autodiff's backward more. Elsewhere, and with a
//! trainable weight, the tensor ops below.

use super::autodiff_op::{cast, float, on_training_backend, prim, TrainingOp};
use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::{CheckpointStrategy, NoCheckpointing};
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::backend::Autodiff;
use burn::module::{Module, Param};
use burn::tensor::ops::FloatTensor;
use burn::tensor::{backend::Backend, DType, Tensor};
use std::marker::PhantomData;

/// Root-mean-square layer norm with a learned scale.
#[derive(Module, Debug)]
pub struct RmsNorm<B: Backend> {
    /// `[hidden]` scale.
    pub weight: Param<Tensor<B, 1>>,
    /// Added to the variance before the reciprocal square root.
    pub eps: f64,
}

impl<B: Backend> RmsNorm<B> {
    /// Wraps a loaded (frozen) scale vector.
    pub fn frozen(weight: Tensor<B, 1>, eps: f64) -> Self {
        Self { weight: Param::from_tensor(weight).set_require_grad(false), eps }
    }

    /// `x: [batch, seq, hidden] -> [batch, seq, hidden]`.
    pub fn forward(&self, x: Tensor<B, 3>) -> Tensor<B, 3> {
        let w = self.weight.val();
        if w.is_require_grad() {
            return rms_norm_ops(x, w, self.eps);
        }
        match on_training_backend(&FrozenRmsNorm { eps: self.eps, backend: PhantomData }, (x, w)) {
            Ok(y) => y,
            Err((x, w)) => float(forward_prim::<B>(prim(x), prim(w), self.eps)),
        }
    }
}

/// The norm as tensor ops (what autodiff differentiates op by op).
pub fn rms_norm_ops<B: Backend>(x: Tensor<B, 3>, w: Tensor<B, 1>, eps: f64) -> Tensor<B, 3> {
    let dtype = x.dtype();
    let x32 = x.cast(DType::F32);
    let variance = x32.clone().powi_scalar(2).mean_dim(2);
    // A division, not `recip()`: burn-ndarray's in-place recip (taken when the tensor is
    // uniquely owned) is an approximate SIMD reciprocal (measured 3e-5 off the exact one),
    // which made results depend on reference counts and broke bit-exact resume.
    let normed = x32 / (variance + eps).sqrt();
    normed.cast(dtype) * w.unsqueeze_dim::<2>(0).unsqueeze_dim::<3>(0)
}

/// The input gradient of the norm with a frozen `w`, for the output gradient `dy`, as tensor
/// ops in f32 (divisions, for the reason in [`rms_norm_ops`]); `dy`'s dtype out.
pub fn rms_norm_backward_ops<B: Backend>(x: Tensor<B, 3>, w: Tensor<B, 1>, dy: Tensor<B, 3>, eps: f64) -> Tensor<B, 3> {
    let dtype = dy.dtype();
    let x32 = x.cast(DType::F32);
    let dn = dy.cast(DType::F32) * w.cast(DType::F32).unsqueeze_dim::<2>(0).unsqueeze_dim::<3>(0);
    let s = (x32.clone().powi_scalar(2).mean_dim(2) + eps).sqrt();
    let dot = (dn.clone() * x32.clone()).mean_dim(2);
    (dn / s.clone() - x32 * dot / s.powi_scalar(3)).cast(dtype)
}

/// The forward on primitives of `x [batch, seq, hidden]` and `w [hidden]`: the fused kernel on
/// CUDA, the tensor ops elsewhere.
fn forward_prim<B: Backend>(x: FloatTensor<B>, w: FloatTensor<B>, eps: f64) -> FloatTensor<B> {
    #[cfg(feature = "cuda")]
    let (x, w) = match cuda::forward::<B>(x, w, eps) {
        Ok(y) => return y,
        Err(back) => back,
    };
    prim(rms_norm_ops(float::<B, 3>(x), float(w), eps))
}

/// [`rms_norm_backward_ops`] on primitives: the fused kernel on CUDA.
fn backward_prim<B: Backend>(x: FloatTensor<B>, w: FloatTensor<B>, dy: FloatTensor<B>, eps: f64) -> FloatTensor<B> {
    #[cfg(feature = "cuda")]
    let (x, w, dy) = match cuda::backward::<B>(x, w, dy, eps) {
        Ok(dx) => return dx,
        Err(back) => back,
    };
    prim(rms_norm_backward_ops(float::<B, 3>(x), float(w), float(dy), eps))
}

/// The kernels on `CubeTensor<CudaRuntime>` primitives; a layout they refuse (operands of
/// different dtypes) takes the tensor ops.
#[cfg(feature = "cuda")]
mod cuda {
    use crate::model::cuda_tensor::{back, cube, cube_of};
    use burn::tensor::backend::Backend;
    use burn::tensor::ops::FloatTensor;
    use medqlora_kernels::rmsnorm;

    pub(super) fn forward<B: Backend>(x: FloatTensor<B>, w: FloatTensor<B>, eps: f64) -> Result<FloatTensor<B>, (FloatTensor<B>, FloatTensor<B>)> {
        let x = match cube(x) {
            Ok(x) => x,
            Err(x) => return Err((x, w)),
        };
        let w = cube_of(w);
        rmsnorm::rmsnorm_forward(&x, &w, eps as f32).map(back::<FloatTensor<B>>).map_err(|_| (back(x), back(w)))
    }

    #[allow(clippy::type_complexity)]
    pub(super) fn backward<B: Backend>(x: FloatTensor<B>, w: FloatTensor<B>, dy: FloatTensor<B>, eps: f64) -> Result<FloatTensor<B>, (FloatTensor<B>, FloatTensor<B>, FloatTensor<B>)> {
        let x = match cube(x) {
            Ok(x) => x,
            Err(x) => return Err((x, w, dy)),
        };
        let (w, dy) = (cube_of(w), cube_of(dy));
        rmsnorm::rmsnorm_backward(&x, &w, &dy, eps as f32).map(back::<FloatTensor<B>>).map_err(|_| (back(x), back(w), back(dy)))
    }
}

/// The operation: a norm whose weight is not trained.
struct FrozenRmsNorm<B> {
    eps: f64,
    backend: PhantomData<B>,
}

impl<B: Backend> TrainingOp for FrozenRmsNorm<B> {
    type Args = (Tensor<B, 3>, Tensor<B, 1>);
    type Out = Tensor<B, 3>;

    fn on<I: Backend>(&self, (x, w): Self::Args) -> Result<Self::Out, Self::Args> {
        type A<I> = Autodiff<I, NoCheckpointing>;
        let x = match cast::<_, Tensor<A<I>, 3>>(x) {
            Ok(x) => x,
            Err(x) => return Err((x, w)),
        };
        let w = cast::<_, Tensor<A<I>, 1>>(w).unwrap_or_else(|_| unreachable!("x and the weight share a backend"));
        Ok(cast::<_, Tensor<B, 3>>(on_autodiff::<I, NoCheckpointing>(x, w, self.eps)).unwrap_or_else(|_| unreachable!("Autodiff<I> is B")))
    }
}

/// The operation's backward: the input and the (frozen) weight.
#[derive(Debug)]
struct RmsNormBackward {
    eps: f64,
}

impl<B: Backend> Backward<B, 1> for RmsNormBackward {
    /// `(x, w)`.
    type State = (FloatTensor<B>, FloatTensor<B>);

    fn backward(self, ops: Ops<Self::State, 1>, grads: &mut Gradients, _checkpointer: &mut Checkpointer) {
        let [node_x] = ops.parents;
        let dy = grads.consume::<B>(&ops.node);
        let (x, w) = ops.state;
        if let Some(node) = node_x {
            grads.register::<B>(node.id, backward_prim::<B>(x, w, dy, self.eps));
        }
    }
}

fn on_autodiff<I: Backend, C: CheckpointStrategy>(x: Tensor<Autodiff<I, C>, 3>, w: Tensor<Autodiff<I, C>, 1>, eps: f64) -> Tensor<Autodiff<I, C>, 3> {
    let x = prim(x);
    let w = prim(w).primitive;
    let out = forward_prim::<I>(x.primitive.clone(), w.clone(), eps);
    let out = match (RmsNormBackward { eps }).prepare::<C>([x.node.clone()]).compute_bound().stateful() {
        OpsKind::Tracked(prep) => prep.finish((x.primitive, w), out),
        OpsKind::UnTracked(prep) => prep.finish(out),
    };
    float(out)
}

#[cfg(test)]
mod tests {
    use super::{rms_norm_ops, FrozenRmsNorm, RmsNorm};
    use crate::model::autodiff_op::TrainingOp;
    use burn::backend::{Autodiff, NdArray};
    use burn::tensor::{Distribution, Tensor};
    use std::marker::PhantomData;

    type A = Autodiff<NdArray<f32>>;

    /// The operation's output and input gradient equal autodiff through the tensor ops.
    #[test]
    fn equals_autodiff_through_the_ops() {
        let dev = Default::default();
        let x0 = Tensor::<NdArray<f32>, 3>::random([2, 5, 13], Distribution::Normal(0.0, 3.0), &dev);
        let w = Tensor::<NdArray<f32>, 1>::random([13], Distribution::Uniform(0.5, 1.5), &dev);
        let g = Tensor::<NdArray<f32>, 3>::random([2, 5, 13], Distribution::Normal(0.0, 1.0), &dev);
        let norm = RmsNorm::<A>::frozen(Tensor::from_inner(w.clone()), 1e-6);
        let run = |one_op: bool| {
            let x = Tensor::<A, 3>::from_inner(x0.clone()).require_grad();
            let y = if one_op { norm.forward(x.clone()) } else { rms_norm_ops(x.clone(), Tensor::from_inner(w.clone()), 1e-6) };
            let grads = (y.clone() * Tensor::from_inner(g.clone())).sum().backward();
            (y.inner(), x.grad(&grads).unwrap())
        };
        let (a, b) = (run(true), run(false));
        for (what, x, y) in [("out", &a.0, &b.0), ("dx", &a.1, &b.1)] {
            let e = crate::model::autodiff_op::rel_l2(x, y);
            assert!(e < 1e-6, "{what}: relative L2 {e:e}");
        }
    }

    /// Taken under the CPU autodiff backend (so the test above compares two computations),
    /// not without autodiff.
    #[test]
    fn taken_under_autodiff_only() {
        let dev = Default::default();
        let op = FrozenRmsNorm::<A> { eps: 1e-6, backend: PhantomData };
        let x = Tensor::<A, 3>::random([1, 2, 4], Distribution::Normal(0.0, 1.0), &dev);
        assert!(op.on::<NdArray<f32>>((x, Tensor::ones([4], &dev))).is_ok());
        let plain = FrozenRmsNorm::<NdArray<f32>> { eps: 1e-6, backend: PhantomData };
        let x = Tensor::<NdArray<f32>, 3>::random([1, 2, 4], Distribution::Normal(0.0, 1.0), &dev);
        assert!(plain.on::<NdArray<f32>>((x, Tensor::ones([4], &dev))).is_err());
    }
}
