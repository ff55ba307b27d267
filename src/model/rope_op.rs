//! A projection's heads with the rotary embedding applied, in attention's head-major layout,
//! as one operation: `[b, s, n * d] -> [b, n, s, d]`, `y = x cos + rotate_half(x) sin`
//! ([`super::rope::apply_rotary`] on the head-transposed view, transformers
//! `apply_rotary_pos_emb`), with its own backward `dx = g cos - rotate_half(g) sin` moved
//! back to `[b, s, n * d]` (RoPE's cos and sin have equal halves, so the gradient is the same
//! rotation with `-sin`).
//!
//! On CUDA each direction is one kernel (`medqlora_kernels::rope`, f32 math, outputs rounded
//! once): through tensor ops the forward was a negation, a concatenation, two products and a
//! sum over the transposed view plus the copy attention's reshape makes, and autodiff's
//! backward about twice that, for q and k in the forward, the recompute and the backward of
//! every layer. Elsewhere the tensor ops (the CPU tests check the backward against Burn's
//! autodiff through them).

use super::autodiff_op::{cast, float, on_training_backend, prim, TrainingOp};
use super::rope::apply_rotary;
use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::{CheckpointStrategy, NoCheckpointing};
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::backend::Autodiff;
use burn::tensor::backend::Backend;
use burn::tensor::ops::FloatTensor;
use burn::tensor::Tensor;
use std::marker::PhantomData;

/// `x: [b, s, heads * head_dim]` (a projection's output) -> `[b, heads, s, head_dim]` with the
/// rotary embedding of `cos`, `sin: [b, 1, s, head_dim]` (halves equal, as
/// [`super::rope::Rotary::cos_sin`] makes them).
pub fn rotary_heads<B: Backend>(x: Tensor<B, 3>, heads: usize, cos: &Tensor<B, 4>, sin: &Tensor<B, 4>) -> Tensor<B, 4> {
    match on_training_backend(&RopeOp::<B>(heads, PhantomData), (x, cos.clone(), sin.clone())) {
        Ok(y) => y,
        Err((x, cos, sin)) => float(forward_prim::<B>(prim(x), prim(cos), prim(sin), heads)),
    }
}

/// `[b, s, n * d]` and `cos: [b, 1, s, d]` -> `[b, s, n, d]`.
fn dims<B: Backend>(x: &Tensor<B, 3>, cos: &Tensor<B, 4>, heads: usize) -> [usize; 4] {
    let [b, s, _] = x.dims();
    [b, s, heads, cos.dims()[3]]
}

/// The forward on primitives: the kernel on CUDA, else the tensor ops.
fn forward_prim<B: Backend>(x: FloatTensor<B>, cos: FloatTensor<B>, sin: FloatTensor<B>, heads: usize) -> FloatTensor<B> {
    let (x, cos, sin) = (float::<B, 3>(x), float::<B, 4>(cos), float::<B, 4>(sin));
    let [b, s, n, d] = dims(&x, &cos, heads);
    #[cfg(feature = "cuda")]
    let (x, cos, sin) = match cuda::rope::<B, 3>(x, cos, sin, [b, s, n, d], false) {
        Ok(y) => return y,
        Err(back) => back,
    };
    prim(apply_rotary(x.reshape([b, s, n, d]).swap_dims(1, 2), &cos, &sin))
}

/// The gradient on primitives: `g [b, n, s, d]` -> `[b, s, n * d]`.
fn backward_prim<B: Backend>(g: FloatTensor<B>, cos: FloatTensor<B>, sin: FloatTensor<B>) -> FloatTensor<B> {
    let (g, cos, sin) = (float::<B, 4>(g), float::<B, 4>(cos), float::<B, 4>(sin));
    let [b, n, s, d] = g.dims();
    #[cfg(feature = "cuda")]
    let (g, cos, sin) = match cuda::rope::<B, 4>(g, cos, sin, [b, s, n, d], true) {
        Ok(dx) => return dx,
        Err(back) => back,
    };
    prim(apply_rotary(g, &cos, &sin.neg()).swap_dims(1, 2).reshape([b, s, n * d]))
}

/// The kernel on `CubeTensor<CudaRuntime>` primitives; anything it refuses takes the ops.
#[cfg(feature = "cuda")]
mod cuda {
    use crate::model::autodiff_op::{float, prim};
    use crate::model::cuda_tensor::{back, cube, cube_of};
    use burn::tensor::backend::Backend;
    use burn::tensor::ops::FloatTensor;
    use burn::tensor::Tensor;
    use medqlora_kernels::rope::{rope_backward, rope_forward, RopeDims};

    /// Forward (`x: [b, s, n * d]`) or gradient (`x: [b, n, s, d]`), `dims = [b, s, n, d]`.
    pub(super) fn rope<B: Backend, const D: usize>(x: Tensor<B, D>, cos: Tensor<B, 4>, sin: Tensor<B, 4>, [b, s, n, d]: [usize; 4], gradient: bool) -> Result<FloatTensor<B>, (Tensor<B, D>, Tensor<B, 4>, Tensor<B, 4>)> {
        let xc = match cube(prim(x)) {
            Ok(c) => c,
            Err(p) => return Err((float(p), cos, sin)),
        };
        let (cc, sc) = (cube_of(prim(cos)), cube_of(prim(sin)));
        let dims = RopeDims { batch: b, seq: s, heads: n, head_dim: d };
        let out = if gradient { rope_backward(&xc, &cc, &sc, dims) } else { rope_forward(&xc, &cc, &sc, dims) };
        match out {
            // The kernels' outputs are [b, n, s, d] and [b, s, n, d] row-major.
            Ok(y) if gradient => Ok(prim(float::<B, 4>(back(y)).reshape([b, s, n * d]))),
            Ok(y) => Ok(back(y)),
            Err(_) => Err((float(back(xc)), float(back(cc)), float(back(sc)))),
        }
    }
}

/// The operation (the head count is its one constant).
struct RopeOp<B>(usize, PhantomData<B>);

impl<B: Backend> TrainingOp for RopeOp<B> {
    type Args = (Tensor<B, 3>, Tensor<B, 4>, Tensor<B, 4>);
    type Out = Tensor<B, 4>;

    fn on<I: Backend>(&self, (x, cos, sin): Self::Args) -> Result<Self::Out, Self::Args> {
        type A<I> = Autodiff<I, NoCheckpointing>;
        let x = match cast::<_, Tensor<A<I>, 3>>(x) {
            Ok(x) => x,
            Err(x) => return Err((x, cos, sin)),
        };
        fn same<T, U>(_: T) -> U {
            unreachable!("x, cos and sin share a backend")
        }
        let (cos, sin) = (cast::<_, Tensor<A<I>, 4>>(cos).unwrap_or_else(same), cast::<_, Tensor<A<I>, 4>>(sin).unwrap_or_else(same));
        Ok(cast::<_, Tensor<B, 4>>(on_autodiff::<I, NoCheckpointing>(x, cos, sin, self.0)).unwrap_or_else(|_| unreachable!("Autodiff<I> is B")))
    }
}

#[derive(Debug)]
struct RopeBackward;

impl<B: Backend> Backward<B, 1> for RopeBackward {
    /// `(cos, sin)`.
    type State = (FloatTensor<B>, FloatTensor<B>);

    fn backward(self, ops: Ops<Self::State, 1>, grads: &mut Gradients, _checkpointer: &mut Checkpointer) {
        let [node_x] = ops.parents;
        let g = grads.consume::<B>(&ops.node);
        if let Some(node) = node_x {
            let (cos, sin) = ops.state;
            grads.register::<B>(node.id, backward_prim::<B>(g, cos, sin));
        }
    }
}

/// cos and sin are constants: no gradient flows to them.
fn on_autodiff<I: Backend, C: CheckpointStrategy>(x: Tensor<Autodiff<I, C>, 3>, cos: Tensor<Autodiff<I, C>, 4>, sin: Tensor<Autodiff<I, C>, 4>, heads: usize) -> Tensor<Autodiff<I, C>, 4> {
    let x = x.into_primitive().tensor();
    let (cos, sin) = (cos.inner(), sin.inner());
    let y = forward_prim::<I>(x.primitive.clone(), prim(cos.clone()), prim(sin.clone()), heads);
    let out = match RopeBackward.prepare::<C>([x.node.clone()]).compute_bound().stateful() {
        OpsKind::Tracked(prep) => prep.finish((prim(cos), prim(sin)), y),
        OpsKind::UnTracked(prep) => prep.finish(y),
    };
    float(out)
}

#[cfg(test)]
mod tests {
    use super::rotary_heads;
    use crate::model::rope::{apply_rotary, PositionIds, Rotary};
    use burn::backend::{Autodiff, NdArray};
    use burn::tensor::{Distribution, Tensor};

    type Cpu = NdArray<f32>;
    type A = Autodiff<Cpu>;

    /// The operation's output and input gradient equal autodiff through the tensor ops on the
    /// head-transposed view (real RoPE angles, 3 heads of 8 at 5 positions, batch 2), and the
    /// tape-free call gives the same output.
    #[test]
    fn equals_autodiff_through_the_ops() {
        let dev = Default::default();
        let (b, s, n, d) = (2, 5, 3, 8);
        let (cos, sin) = Rotary::new(d, 10_000.0, None).cos_sin::<A>(&PositionIds::text(b, s, 4), &dev);
        let x0 = Tensor::<Cpu, 3>::random([b, s, n * d], Distribution::Normal(0.0, 1.0), &dev);
        let w = Tensor::<Cpu, 4>::random([b, n, s, d], Distribution::Normal(0.0, 1.0), &dev);
        let run = |one_op: bool| {
            let x = Tensor::<A, 3>::from_inner(x0.clone()).require_grad();
            let y = if one_op { rotary_heads(x.clone(), n, &cos, &sin) } else { apply_rotary(x.clone().reshape([b, s, n, d]).swap_dims(1, 2), &cos, &sin) };
            let grads = (y.clone() * Tensor::from_inner(w.clone())).sum().backward();
            (y.inner(), x.grad(&grads).unwrap())
        };
        let ((y, dx), (want_y, want_dx)) = (run(true), run(false));
        assert_eq!(y.dims(), [b, n, s, d]);
        assert!(crate::model::autodiff_op::rel_l2(&y, &want_y) < 1e-6, "y");
        assert!(crate::model::autodiff_op::rel_l2(&dx, &want_dx) < 1e-6, "dx");
        let plain = rotary_heads(x0, n, &cos.inner(), &sin.inner());
        assert!(crate::model::autodiff_op::rel_l2(&plain, &want_y) < 1e-6, "tape-free");
    }
}
