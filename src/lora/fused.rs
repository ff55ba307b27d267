//! A QLoRA projection, `y = x W^T + bias + s dropout(x) A^T B^T` for a frozen NF4 `W` (peft
//! `tuners/lora/bnb.py::Linear4bit.forward`), as one autodiff operation whose forward is one
//! NF4 product with the adapter's up-projection and the bias in its epilogue
//! (`medqlora_kernels::gemm::gemm_lora`).
//!
//! Why: as the frozen product, a bias add, the adapter's up-projection `sh B^T` and an add,
//! each projection wrote its `[m, out]` output three more times; for `gate_proj` and
//! `up_proj` at 2,048 tokens that was a 74 us skinny product and a 74 us add each, in the
//! forward and again in the recompute (~0.44 ms of a 7B layer's ~6.4 ms forward, H100 profile
//! of 2026-12-06). The kernel takes `sh B^T` as `rank / 64` more steps of its reduction and
//! adds the bias before its one rounding. The backward is the adapter's ([`super::op`]) plus
//! the frozen product's `dY W`, the sum taken in that product's epilogue (one more pass over
//! `[m, in]` saved per projection).
//!
//! Where the kernel does not take the operands (the CPU, f32, decoding's few rows, a rank
//! that is not a multiple of 64) the same operation computes the separate products, so the
//! CPU tests check its gradients against autodiff through the plain ops.

use super::op::{Branch, Saved};
use crate::model::autodiff_op::{cast, float, on_training_backend, prim, TrainingOp};
use crate::model::linear::{matmul_weight_t, unread_output, OutputUse};
use crate::model::nf4_weight::any;
use crate::model::nf4_weight::ops::Nf4Prims;
use crate::model::nf4_weight::Nf4Weight;
use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::NoCheckpointing;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::backend::Autodiff;
use burn::tensor::backend::Backend;
use burn::tensor::{Int, Tensor};

/// `x [m, in] W^T + bias + s dropout(x) A^T B^T -> [m, out]` in `x`'s dtype for a frozen NF4
/// `w [out, in]`, `bias [out]` (frozen), the dropout `seed` ([`super::dropout::draw_seed`];
/// `None` = no dropout) and f32 `a [r, in]`, `b [out, r]`. Under the training autodiff
/// backends one operation (gradients for `x`, and f32 ones for `a` and `b`); elsewhere the
/// same forward without a tape. With [`OutputUse::TapeOnly`] under a training backend the
/// output's value is left undefined and only the adapter's down-projection is computed (the
/// backward needs nothing else); without a tape the value is always computed.
#[allow(clippy::too_many_arguments)]
pub fn nf4_lora_linear<B: Backend>(x: Tensor<B, 2>, w: &Nf4Weight<B>, bias: Option<Tensor<B, 1>>, seed: Option<Tensor<B, 1, Int>>, a: Tensor<B, 2>, b: Tensor<B, 2>, scaling: f64, dropout: f64, output: OutputUse) -> Tensor<B, 2> {
    let br = Branch::on::<B>(scaling, dropout);
    match on_training_backend(&FusedOp { br, w, bias: bias.as_ref(), output }, (x, seed, a, b)) {
        Ok(y) => y,
        Err((x, seed, a, b)) => forward(br, x, seed.as_ref(), a, b, &w.prims(), bias.as_ref(), OutputUse::Value).0,
    }
}

/// `(y, sh, a, b)`: the projection's output (a fresh, unwritten buffer for
/// [`OutputUse::TapeOnly`]) and what the adapter's backward keeps ([`Branch::down`]).
#[allow(clippy::type_complexity, clippy::too_many_arguments)]
fn forward<I: Backend>(br: Branch, x: Tensor<I, 2>, seed: Option<&Tensor<I, 1, Int>>, a: Tensor<I, 2>, b: Tensor<I, 2>, w: &Nf4Prims<I>, bias: Option<&Tensor<I, 1>>, output: OutputUse) -> (Tensor<I, 2>, Tensor<I, 2>, Tensor<I, 2>, Tensor<I, 2>) {
    let (sh, a, b) = br.down(x.clone(), seed, a, b);
    if output == OutputUse::TapeOnly {
        return (unread_output(x.dims()[0], b.dims()[0], &x), sh, a, b);
    }
    let y = match any::matmul_t_lora(&x, w, &sh, &b, bias) {
        Some(y) => y,
        None => {
            let y = any::matmul_t(x, w);
            let y = match bias {
                Some(bias) => y + bias.clone().unsqueeze_dim(0),
                None => y,
            };
            y + matmul_weight_t(sh.clone(), b.clone())
        }
    };
    (y, sh, a, b)
}

/// The operation with the arguments that are not differentiated.
struct FusedOp<'a, B: Backend> {
    br: Branch,
    w: &'a Nf4Weight<B>,
    bias: Option<&'a Tensor<B, 1>>,
    output: OutputUse,
}

type Args<B> = (Tensor<B, 2>, Option<Tensor<B, 1, Int>>, Tensor<B, 2>, Tensor<B, 2>);

impl<B: Backend> TrainingOp for FusedOp<'_, B> {
    type Args = Args<B>;
    type Out = Tensor<B, 2>;

    fn on<I: Backend>(&self, (x, seed, a, b): Self::Args) -> Result<Self::Out, Self::Args> {
        type A<I> = Autodiff<I, NoCheckpointing>;
        let x = match cast::<_, Tensor<A<I>, 2>>(x) {
            Ok(x) => x,
            Err(x) => return Err((x, seed, a, b)),
        };
        fn same<T, U>(_: T) -> U {
            unreachable!("the projection's tensors share a backend")
        }
        let seed = seed.map(|s| Tensor::<I, 1, Int>::from_primitive(cast::<_, Tensor<A<I>, 1, Int>>(s).unwrap_or_else(same).into_primitive()));
        let (a, b) = (cast::<_, Tensor<A<I>, 2>>(a).unwrap_or_else(same), cast::<_, Tensor<A<I>, 2>>(b).unwrap_or_else(same));
        let w = cast::<_, Nf4Prims<A<I>>>(self.w.prims()).unwrap_or_else(same).inner();
        let bias = self.bias.map(|t| cast::<_, Tensor<A<I>, 1>>(t.clone()).unwrap_or_else(same).inner());
        let (x, a, b) = (x.into_primitive().tensor(), a.into_primitive().tensor(), b.into_primitive().tensor());
        let (y, sh, ac, bc) = forward(self.br, float::<I, 2>(x.primitive.clone()), seed.as_ref(), float(a.primitive.clone()), float(b.primitive.clone()), &w, bias.as_ref(), self.output);
        let out = match FusedBackward(self.br).prepare::<NoCheckpointing>([x.node.clone(), a.node.clone(), b.node.clone()]).compute_bound().stateful() {
            OpsKind::Tracked(prep) => {
                let lora = Saved { x: x.primitive, seed: seed.map(Tensor::into_primitive), sh: prim(sh), a: prim(ac), b: prim(bc) };
                prep.finish(FusedSaved { lora, w }, prim(y))
            }
            OpsKind::UnTracked(prep) => prep.finish(prim(y)),
        };
        Ok(cast::<_, Tensor<B, 2>>(float::<A<I>, 2>(out)).unwrap_or_else(same))
    }
}

/// What the backward keeps: the adapter's [`Saved`] and the packed weight (handles shared
/// with the module; no dense copy).
#[derive(Debug, Clone)]
struct FusedSaved<B: Backend> {
    lora: Saved<B>,
    w: Nf4Prims<B>,
}

#[derive(Debug)]
struct FusedBackward(Branch);

impl<B: Backend> Backward<B, 3> for FusedBackward {
    /// See [`FusedSaved`].
    type State = FusedSaved<B>;

    fn backward(self, ops: Ops<Self::State, 3>, grads: &mut Gradients, _checkpointer: &mut Checkpointer) {
        let [node_x, node_a, node_b] = ops.parents;
        let g = float::<B, 2>(grads.consume::<B>(&ops.node));
        let FusedSaved { lora, w } = ops.state;
        let [dx, da, db] = self.0.grads(g.clone(), lora, [node_x.is_some(), node_a.is_some(), node_b.is_some()]);
        // dY W and the adapter's input gradient, summed in the product's epilogue on CUDA.
        let dx = dx.map(|lora| any::matmul_dx_add(g, &w, lora));
        for (node, grad) in [node_x, node_a, node_b].into_iter().zip([dx, da, db]) {
            if let (Some(node), Some(grad)) = (node, grad) {
                grads.register::<B>(node.id, prim(grad));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::backend::NdArray;
    use burn::tensor::{Bool, Distribution};

    type Cpu = NdArray<f32>;
    type A = Autodiff<Cpu>;

    /// Output and gradients (`x`, `A`, `B`) equal autodiff through the plain ops (the
    /// dequantized weight's product, the bias, inverted dropout, the adapter's two products),
    /// with and without dropout and bias, reductions cut and uncut; `B` random so every
    /// gradient is non-zero. With [`OutputUse::TapeOnly`] the gradients are the same (the
    /// output's value is undefined there, so only the gradients are compared).
    #[test]
    fn equals_autodiff_through_the_plain_ops() {
        let dev = Default::default();
        let (m, k, n, r, p, s) = (64, 256, 96, 8, 0.25, 0.5);
        let dense: Vec<f32> = Tensor::<Cpu, 2>::random([n, k], Distribution::Normal(0.0, 0.05), &dev).into_data().to_vec().unwrap();
        let q = crate::quant::nf4::quantize(&dense, &[n, k], 64, false).expect("quantizable");
        let w = Nf4Weight::<A>::from_host(&q, &dev);
        let wd = Tensor::<A, 2>::from_inner(w.dequantize_reference().inner());
        let x0 = Tensor::<Cpu, 2>::random([m, k], Distribution::Normal(0.0, 1.0), &dev);
        let a0 = Tensor::<Cpu, 2>::random([r, k], Distribution::Normal(0.0, 0.2), &dev);
        let b0 = Tensor::<Cpu, 2>::random([n, r], Distribution::Normal(0.0, 0.2), &dev);
        let bias0 = Tensor::<Cpu, 1>::random([n], Distribution::Normal(0.0, 1.0), &dev);
        let g0 = Tensor::<Cpu, 2>::random([m, n], Distribution::Normal(0.0, 1.0), &dev);
        let seed = crate::lora::dropout::draw_seed::<Cpu>(&dev);
        for (seed, with_bias) in [(None, false), (Some(seed.clone()), true), (Some(seed), false)] {
            let run = |fused: Option<(usize, OutputUse)>| {
                let x = Tensor::<A, 2>::from_inner(x0.clone()).require_grad();
                let a = Tensor::<A, 2>::from_inner(a0.clone()).require_grad();
                let b = Tensor::<A, 2>::from_inner(b0.clone()).require_grad();
                let bias = with_bias.then(|| Tensor::<A, 1>::from_inner(bias0.clone()));
                let y = match fused {
                    Some((min_slice, output)) => {
                        let br = Branch { scaling: s, dropout: p, min_slice };
                        let seed = seed.clone().map(Tensor::<A, 1, Int>::from_inner);
                        FusedOp { br, w: &w, bias: bias.as_ref(), output }.on::<Cpu>((x.clone(), seed, a.clone(), b.clone())).expect("autodiff backend")
                    }
                    None => {
                        let drop = seed.as_ref().map(|sd| Tensor::<A, 2, Bool>::from_inner(crate::lora::dropout::drop_mask(sd, [m, k].into(), p, &dev)));
                        let xd = match drop {
                            Some(d) => x.clone().mask_fill(d, 0.0).div_scalar(1.0 - p),
                            None => x.clone(),
                        };
                        let base = x.clone().matmul(wd.clone().transpose());
                        let base = match bias {
                            Some(bias) => base + bias.unsqueeze_dim(0),
                            None => base,
                        };
                        base + xd.matmul(a.clone().transpose()).matmul(b.clone().transpose()).mul_scalar(s)
                    }
                };
                let grads = (y.clone() * Tensor::from_inner(g0.clone())).sum().backward();
                [y.inner(), x.grad(&grads).unwrap(), a.grad(&grads).unwrap(), b.grad(&grads).unwrap()]
            };
            let want = run(None);
            for (min_slice, output) in [(0, OutputUse::Value), (16, OutputUse::Value), (16, OutputUse::TapeOnly)] {
                let got = run(Some((min_slice, output)));
                let compared = ["y", "dx", "dA", "dB"].iter().zip(&got).zip(&want).map(|((a, b), c)| (a, b, c));
                for (what, g, w) in compared.skip(usize::from(output == OutputUse::TapeOnly)) {
                    let e = crate::model::autodiff_op::rel_l2(g, w);
                    assert!(e < 1e-5, "{what} (min_slice {min_slice}, {output:?}, dropout {}, bias {with_bias}): relative L2 {e:e}", seed.is_some());
                }
            }
        }
    }
}
