//! Causal attention as one autodiff operation that keeps only its inputs.
//!
//! Under Burn's autodiff, [`super::attention::attend_causal`] built from tensor ops keeps every
//! query block's f32 probabilities and their bf16 copy for the backward: for a 7B layer at
//! 2,048 tokens that is ~0.44 GB, held from the layer's forward through its backward, and it
//! is what the recomputed layer of a checkpointed step adds most besides the MLP. This
//! operation keeps q, k, v (alive anyway: the projections' outputs) and recomputes each block's
//! probabilities in the backward (FlashAttention's backward, at the granularity of Burn ops):
//! per block `S = q k^T * d^-0.5`, `P = softmax(S)` in f32, `dV += P^T dO`, `dP = dO V^T`,
//! `dS = P * (dP - rowsum(P * dP))`, `dQ = dS K * d^-0.5`, `dK += dS^T Q * d^-0.5`, with the
//! same dtype changes as the tensor-op version's gradients (matmuls in the compute dtype,
//! softmax and its gradient in f32, [`super::softmax`]: one kernel on CUDA), so the two agree
//! to rounding (tested).
//!
//! Used on the autodiff backends the trainer runs ([`super::autodiff_op`]); any other backend
//! takes the tensor-op version.

use super::attention::{attend_causal_ops, block_keys, block_matmul, block_rows};
use super::attention_kernel::{attention_kernel, fused_causal, AttentionKernel};
use super::autodiff_op::{cast, float, on_training_backend, TrainingOp};
use super::softmax::masked_softmax_backward;
use super::split_k::sum_parts;
use burn::backend::autodiff::checkpoint::strategy::NoCheckpointing;
use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::backend::Autodiff;
use burn::tensor::backend::Backend;
use burn::tensor::ops::{BoolTensor, FloatTensor};
use burn::tensor::{Bool, Tensor};
use std::any::Any;

/// Gradients of [`super::attention::attend_causal_ops`] w.r.t. `q [b, kvh, rep, s, d]`, `k, v [b, kvh, t, d]`
/// for the output gradient `dout [b, kvh, rep, s, d]`, recomputing the probabilities block
/// by block (the forward's blocks, [`super::attention::query_blocks`]).
pub fn attention_backward<B: Backend>(
    q: Tensor<B, 5>,
    k: Tensor<B, 4>,
    v: Tensor<B, 4>,
    mask: Tensor<B, 5, Bool>,
    dout: Tensor<B, 5>,
    block: usize,
) -> (Tensor<B, 5>, Tensor<B, 4>, Tensor<B, 4>) {
    let [b, kvh, rep, s, d] = q.dims();
    let t = k.dims()[2];
    let scale = (d as f64).powf(-0.5);
    let mut dk = k.zeros_like();
    let mut dv = v.zeros_like();
    let blocks = super::attention::query_blocks(s, t - s, block);
    let mut dqs = Vec::with_capacity(blocks.len());
    for (r0, n, keys) in blocks {
        let qb = block_rows(&q, r0, n);
        let (kb, vb, m) = block_keys(&k, &v, &mask, r0, n, keys);
        let scores = block_matmul(qb.clone(), kb.clone().swap_dims(2, 3));
        let dob = block_rows(&dout, r0, n);
        let dp = block_matmul(dob.clone(), vb.swap_dims(2, 3));
        let (pd, ds) = masked_softmax_backward(scores, dp, m, rep, scale);
        let dvb = group_atb(pd, dob, rep);
        dqs.push(block_matmul(ds.clone(), kb).reshape([b, kvh, rep, n, d]));
        let dkb = group_atb(ds, qb, rep);
        let range = [0..b, 0..kvh, 0..keys, 0..d];
        dk = dk.clone().slice_assign(range.clone(), dk.slice(range.clone()) + dkb);
        dv = dv.clone().slice_assign(range.clone(), dv.slice(range) + dvb);
    }
    (Tensor::cat(dqs, 3), dk, dv)
}

/// `x^T y` per kv head for `x: [b, kvh, rep * n, t]`, `y: [b, kvh, rep * n, e]` (rows grouped
/// by query head, [`block_rows`]) -> `[b, kvh, t, e]` in `x`'s dtype: the sum over the group's
/// query heads of their own products, taken as `rep` batched products summed in f32.
///
/// Why not one product: its output `[t, e]` per kv head is small (1,024 x 128 at 2,048 tokens)
/// and its reduction long (`rep * n` = 7,168), so Burn's matmul ran it on 64 thread blocks
/// (179 us for each of dK and dV of a 1,024-row block in the H100 profile of 2026-12-06);
/// split by query head it has `rep` times the blocks.
fn group_atb<B: Backend>(x: Tensor<B, 4>, y: Tensor<B, 4>, rep: usize) -> Tensor<B, 4> {
    let ([b, kvh, rows, t], e) = (x.dims(), y.dims()[3]);
    if rep == 1 {
        return block_matmul(x.swap_dims(2, 3), y);
    }
    let dtype = x.dtype();
    let x = x.reshape([b * kvh, rep, rows / rep, t]).swap_dims(2, 3);
    let y = y.reshape([b * kvh, rep, rows / rep, e]);
    sum_parts(block_matmul(x, y), 1, 1.0, dtype).reshape([b, kvh, t, e])
}

/// The operation's backward: its saved inputs and the block size.
#[derive(Debug)]
struct CausalAttentionBackward;

/// What the backward keeps: the inputs (handles shared with the forward) and the block.
#[derive(Debug, Clone)]
struct Saved<B: Backend> {
    q: FloatTensor<B>,
    k: FloatTensor<B>,
    v: FloatTensor<B>,
    mask: BoolTensor<B>,
    block: usize,
}

impl<B: Backend> Backward<B, 3> for CausalAttentionBackward {
    type State = Saved<B>;

    fn backward(self, ops: Ops<Self::State, 3>, grads: &mut Gradients, _checkpointer: &mut Checkpointer) {
        let [node_q, node_k, node_v] = ops.parents;
        let dout = float::<B, 5>(grads.consume::<B>(&ops.node));
        let st = ops.state;
        let (dq, dk, dv) =
            attention_backward(float::<B, 5>(st.q), float::<B, 4>(st.k), float::<B, 4>(st.v), Tensor::from_primitive(st.mask), dout, st.block);
        if let Some(node) = node_q {
            grads.register::<B>(node.id, dq.into_primitive().tensor());
        }
        if let Some(node) = node_k {
            grads.register::<B>(node.id, dk.into_primitive().tensor());
        }
        if let Some(node) = node_v {
            grads.register::<B>(node.id, dv.into_primitive().tensor());
        }
    }
}

/// The operation on `Autodiff<B, C>`: forward on `B` without a tape, one node for autodiff.
fn on_autodiff<B: Backend, C: CheckpointStrategy>(
    q: Tensor<Autodiff<B, C>, 5>,
    k: Tensor<Autodiff<B, C>, 4>,
    v: Tensor<Autodiff<B, C>, 4>,
    mask: &Tensor<Autodiff<B, C>, 5, Bool>,
    causal_only: bool,
    block: usize,
) -> Tensor<Autodiff<B, C>, 5> {
    let (q, k, v) = (q.into_primitive().tensor(), k.into_primitive().tensor(), v.into_primitive().tensor());
    let mask_inner: BoolTensor<B> = mask.clone().into_primitive();
    // The one-pass kernel (0.35-0.55 ms at the 7B training shape), else the block-wise ops:
    // the two-pass kernel took 1.38 ms for what Burn's autotuned products and the softmax
    // kernel do in ~0.75 (`medqlora bench kernels --attention`, H100, 2026-12-06).
    let (qf, kf, vf) = (float::<B, 5>(q.primitive.clone()), float::<B, 4>(k.primitive.clone()), float::<B, 4>(v.primitive.clone()));
    let mask_t = Tensor::from_primitive(mask_inner.clone());
    let fused = if attention_kernel() == AttentionKernel::Flash { fused_causal(qf, kf, vf, &mask_t, causal_only) } else { Err((qf, kf, vf)) };
    let out = match fused {
        Ok(out) => out,
        Err((qf, kf, vf)) => attend_causal_ops::<B>(qf, kf, vf, &mask_t, block),
    }
    .into_primitive()
    .tensor();
    let parents = [q.node.clone(), k.node.clone(), v.node.clone()];
    let out = match CausalAttentionBackward.prepare::<C>(parents).compute_bound().stateful() {
        OpsKind::Tracked(prep) => {
            prep.finish(Saved { q: q.primitive, k: k.primitive, v: v.primitive, mask: mask_inner, block }, out)
        }
        OpsKind::UnTracked(prep) => prep.finish(out),
    };
    float(out)
}

/// Runs the operation when `B` is one of the autodiff backends training uses; gives the
/// inputs back otherwise.
#[allow(clippy::type_complexity)]
pub fn try_autodiff<B: Backend>(
    q: Tensor<B, 5>,
    k: Tensor<B, 4>,
    v: Tensor<B, 4>,
    mask: &Tensor<B, 5, Bool>,
    causal_only: bool,
    block: usize,
) -> Result<Tensor<B, 5>, (Tensor<B, 5>, Tensor<B, 4>, Tensor<B, 4>)> {
    on_training_backend(&Attend { mask, causal_only, block }, (q, k, v))
}

/// The operation with the arguments that are not differentiated.
struct Attend<'a, B: Backend> {
    mask: &'a Tensor<B, 5, Bool>,
    causal_only: bool,
    block: usize,
}

impl<B: Backend> TrainingOp for Attend<'_, B> {
    type Args = (Tensor<B, 5>, Tensor<B, 4>, Tensor<B, 4>);
    type Out = Tensor<B, 5>;

    fn on<I: Backend>(&self, (q, k, v): Self::Args) -> Result<Self::Out, Self::Args> {
        type A<I> = Autodiff<I, NoCheckpointing>;
        let Some(mask) = (self.mask as &dyn Any).downcast_ref::<Tensor<A<I>, 5, Bool>>() else { return Err((q, k, v)) };
        let same = "B is Autodiff<I>: the mask is";
        let q = cast::<_, Tensor<A<I>, 5>>(q).unwrap_or_else(|_| unreachable!("{same}"));
        let k = cast::<_, Tensor<A<I>, 4>>(k).unwrap_or_else(|_| unreachable!("{same}"));
        let v = cast::<_, Tensor<A<I>, 4>>(v).unwrap_or_else(|_| unreachable!("{same}"));
        Ok(cast::<_, Tensor<B, 5>>(on_autodiff::<I, NoCheckpointing>(q, k, v, mask, self.causal_only, self.block)).unwrap_or_else(|_| unreachable!("{same}")))
    }
}

#[cfg(test)]
mod tests {
    use super::try_autodiff;
    use crate::model::text::causal_mask;
    use burn::backend::{Autodiff, NdArray};
    use burn::tensor::{Distribution, Tensor};

    /// The operation is taken on the CPU autodiff backend (which the gradient tests then
    /// check against PEFT end to end) and not on a backend without autodiff.
    #[test]
    fn taken_under_autodiff_only() {
        fn call<B: burn::tensor::backend::Backend>() -> bool {
            let dev = Default::default();
            let q = Tensor::<B, 5>::random([1, 1, 2, 5, 4], Distribution::Normal(0.0, 1.0), &dev);
            let kv = || Tensor::<B, 4>::random([1, 1, 5, 4], Distribution::Normal(0.0, 1.0), &dev);
            try_autodiff(q, kv(), kv(), &causal_mask::<B>(5, 0, &dev), true, 2).is_ok()
        }
        assert!(call::<Autodiff<NdArray<f32>>>());
        assert!(!call::<NdArray<f32>>());
    }
}
