//! The causal LM's per-token loss, transformers' `loss/loss_utils.py::ForCausalLMLoss`:
//! logits upcast to f32, `cross_entropy` (here without its reduction, which the trainer does
//! in f64 over a step's tokens) as one autodiff operation.
//!
//! Through tensor ops (a cast to f32, `log_softmax`, a gather, and autodiff's scatter,
//! exponential, products and cast back) the head of a 7B step spent 19.4 ms in f32
//! element-wise kernels over `[rows, vocab]` (H100, 2,048 tokens; BENCHMARKS.md). The
//! operation keeps the logits and each row's log-sum-exp, and its backward writes
//! `(softmax(x) - onehot(t)) g` in the logits' dtype. On CUDA each direction is one kernel
//! (`medqlora_kernels::cross_entropy`, tested against its reference there); elsewhere the same
//! formulas as tensor ops, which the tests below check against autodiff through
//! `log_softmax`.

use super::autodiff_op::{cast, float, on_training_backend, prim, TrainingOp};
use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::{CheckpointStrategy, NoCheckpointing};
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::backend::Autodiff;
use burn::tensor::backend::Backend;
use burn::tensor::ops::{FloatTensor, IntTensor};
use burn::tensor::{DType, IndexingUpdateOp, Int, Tensor};
use std::marker::PhantomData;

/// `-log softmax(logits)[target]` per row, in f32: `logits: [n, vocab]` (any float dtype),
/// `targets: [n, 1]` (each in `[0, vocab)`) -> `[n]`.
pub fn token_nll<B: Backend>(logits: Tensor<B, 2>, targets: Tensor<B, 2, Int>) -> Tensor<B, 1> {
    match on_training_backend(&CrossEntropy::<B>(PhantomData), (logits, targets)) {
        Ok(nll) => nll,
        Err((logits, targets)) => float(forward_prim::<B>(prim(logits), targets.into_primitive()).1),
    }
}

/// `(lse, nll)`, f32 `[n]`: the kernel on CUDA, tensor ops elsewhere.
fn forward_prim<B: Backend>(x: FloatTensor<B>, t: IntTensor<B>) -> (FloatTensor<B>, FloatTensor<B>) {
    #[cfg(feature = "cuda")]
    let (x, t) = match cuda::forward::<B>(x, t) {
        Ok(out) => return out,
        Err(back) => back,
    };
    let x = float::<B, 2>(x).cast(DType::F32);
    let n = x.dims()[0];
    let max = x.clone().max_dim(1);
    let lse = (x.clone() - max.clone()).exp().sum_dim(1).log() + max;
    let nll = lse.clone() - x.gather(1, Tensor::from_primitive(t));
    (prim(lse.reshape([n])), prim(nll.reshape([n])))
}

/// `dx = (exp(x - lse) - onehot(t)) g` in `x`'s dtype, for `g: [n]` (any float dtype).
fn backward_prim<B: Backend>(x: FloatTensor<B>, t: IntTensor<B>, lse: FloatTensor<B>, g: FloatTensor<B>) -> FloatTensor<B> {
    let g = prim(float::<B, 1>(g).cast(DType::F32));
    #[cfg(feature = "cuda")]
    let (x, t, lse, g) = match cuda::backward::<B>(x, t, lse, g) {
        Ok(dx) => return dx,
        Err(back) => back,
    };
    let x = float::<B, 2>(x);
    let (dtype, [n, vocab]) = (x.dtype(), x.dims());
    let p = (x.cast(DType::F32) - float::<B, 1>(lse).reshape([n, 1])).exp();
    let t = Tensor::<B, 2, Int>::from_primitive(t);
    let onehot = Tensor::<B, 2>::zeros([n, vocab], &t.device()).cast(DType::F32).scatter(1, t, Tensor::<B, 2>::ones([n, 1], &p.device()).cast(DType::F32), IndexingUpdateOp::Add);
    prim(((p - onehot) * float::<B, 1>(g).reshape([n, 1])).cast(dtype))
}

/// The kernels on `CubeTensor<CudaRuntime>` primitives; anything they refuse takes the ops.
#[cfg(feature = "cuda")]
mod cuda {
    use crate::model::cuda_tensor::{back, cube, cube_of};
    use burn::tensor::backend::Backend;
    use burn::tensor::ops::{FloatTensor, IntTensor};
    use medqlora_kernels::cross_entropy;

    type Pair<B> = (FloatTensor<B>, FloatTensor<B>);

    pub(super) fn forward<B: Backend>(x: FloatTensor<B>, t: IntTensor<B>) -> Result<Pair<B>, (FloatTensor<B>, IntTensor<B>)> {
        let x = match cube(x) {
            Ok(x) => x,
            Err(x) => return Err((x, t)),
        };
        let t = cube_of(t);
        match cross_entropy::cross_entropy_forward(&x, &t) {
            Ok((lse, nll)) => Ok((back(lse), back(nll))),
            Err(_) => Err((back(x), back(t))),
        }
    }

    type Refused<B> = (FloatTensor<B>, IntTensor<B>, FloatTensor<B>, FloatTensor<B>);

    pub(super) fn backward<B: Backend>(x: FloatTensor<B>, t: IntTensor<B>, lse: FloatTensor<B>, g: FloatTensor<B>) -> Result<FloatTensor<B>, Refused<B>> {
        let x = match cube(x) {
            Ok(x) => x,
            Err(x) => return Err((x, t, lse, g)),
        };
        let (t, lse, g) = (cube_of(t), cube_of(lse), cube_of(g));
        cross_entropy::cross_entropy_backward(&x, &t, &lse, &g).map(back).map_err(|_| (back(x), back(t), back(lse), back(g)))
    }
}

/// The operation (the logits are differentiated, the targets are not).
struct CrossEntropy<B>(PhantomData<B>);

impl<B: Backend> TrainingOp for CrossEntropy<B> {
    type Args = (Tensor<B, 2>, Tensor<B, 2, Int>);
    type Out = Tensor<B, 1>;

    fn on<I: Backend>(&self, (x, t): Self::Args) -> Result<Self::Out, Self::Args> {
        type A<I> = Autodiff<I, NoCheckpointing>;
        let x = match cast::<_, Tensor<A<I>, 2>>(x) {
            Ok(x) => x,
            Err(x) => return Err((x, t)),
        };
        let t = cast::<_, Tensor<A<I>, 2, Int>>(t).unwrap_or_else(|_| unreachable!("logits and targets share a backend"));
        Ok(cast::<_, Tensor<B, 1>>(on_autodiff::<I, NoCheckpointing>(x, t)).unwrap_or_else(|_| unreachable!("Autodiff<I> is B")))
    }
}

#[derive(Debug)]
struct CrossEntropyBackward;

impl<B: Backend> Backward<B, 1> for CrossEntropyBackward {
    /// `(logits, targets, lse)`.
    type State = (FloatTensor<B>, IntTensor<B>, FloatTensor<B>);

    fn backward(self, ops: Ops<Self::State, 1>, grads: &mut Gradients, _checkpointer: &mut Checkpointer) {
        let [node_x] = ops.parents;
        let g = grads.consume::<B>(&ops.node);
        if let Some(node) = node_x {
            let (x, t, lse) = ops.state;
            grads.register::<B>(node.id, backward_prim::<B>(x, t, lse, g));
        }
    }
}

fn on_autodiff<I: Backend, C: CheckpointStrategy>(x: Tensor<Autodiff<I, C>, 2>, t: Tensor<Autodiff<I, C>, 2, Int>) -> Tensor<Autodiff<I, C>, 1> {
    let x = x.into_primitive().tensor();
    let t: IntTensor<I> = t.into_primitive();
    let (lse, nll) = forward_prim::<I>(x.primitive.clone(), t.clone());
    let out = match CrossEntropyBackward.prepare::<C>([x.node.clone()]).compute_bound().stateful() {
        OpsKind::Tracked(prep) => prep.finish((x.primitive, t, lse), nll),
        OpsKind::UnTracked(prep) => prep.finish(nll),
    };
    float(out)
}

#[cfg(test)]
mod tests {
    use super::token_nll;
    use burn::backend::{Autodiff, NdArray};
    use burn::tensor::activation::log_softmax;
    use burn::tensor::{Distribution, Int, Tensor, TensorData};

    type Cpu = NdArray<f32>;
    type A = Autodiff<Cpu>;

    /// The operation's losses and logit gradient (for random per-row weights) equal autodiff
    /// through `log_softmax` and a gather, and the tape-free call gives the same losses.
    #[test]
    fn equals_autodiff_through_log_softmax() {
        let dev = Default::default();
        let (n, vocab) = (6, 37);
        let x0 = Tensor::<Cpu, 2>::random([n, vocab], Distribution::Normal(0.0, 4.0), &dev);
        let w = Tensor::<Cpu, 1>::random([n], Distribution::Uniform(0.1, 2.0), &dev);
        let t: Vec<i64> = (0..n as i64).map(|i| (i * 11 + 3) % vocab as i64).collect();
        let targets = || Tensor::<A, 2, Int>::from_data(TensorData::new(t.clone(), [n, 1]), &dev);
        let run = |one_op: bool| {
            let x = Tensor::<A, 2>::from_inner(x0.clone()).require_grad();
            let nll = if one_op { token_nll(x.clone(), targets()) } else { log_softmax(x.clone(), 1).gather(1, targets()).reshape([n]).neg() };
            let grads = (nll.clone() * Tensor::from_inner(w.clone())).sum().backward();
            (nll.inner(), x.grad(&grads).unwrap())
        };
        let ((nll, dx), (want_nll, want_dx)) = (run(true), run(false));
        for (what, got, want) in [("nll", nll.clone().reshape([1, n]), want_nll.clone().reshape([1, n])), ("dx", dx, want_dx)] {
            let e = crate::model::autodiff_op::rel_l2(&got, &want);
            assert!(e < 1e-6, "{what}: relative L2 {e:e}");
        }
        let plain = token_nll(x0, Tensor::<Cpu, 2, Int>::from_data(TensorData::new(t, [n, 1]), &dev));
        assert!(crate::model::autodiff_op::rel_l2(&plain.reshape([1, n]), &want_nll.reshape([1, n])) < 1e-6);
    }
}
