//! The adapter's branch `s * dropout(x) A^T B^T` (peft `tuners/lora/layer.py::Linear.forward`)
//! as one autodiff operation with its own backward.
//!
//! Why not Burn's ops under autodiff: every product of the branch is skinny (one side is the
//! rank, 64), and a skinny product as one GEMM leaves most of the GPU idle. On the H200 a
//! `[2048, 3584] x [3584, 64]` product ran on 64 thread blocks at 8.5 TFLOP/s (0.11 ms; 0.62 ms
//! for `down_proj`'s `[2048, 18944]` input), and the backward's `g B`, `g^T h` and `dh^T x`
//! are shaped the same way: about 4 ms of each 7B layer's 51 ms. Here each such product cuts
//! its long reduction into slices multiplied as one batched GEMM and summed in f32 (split-K),
//! so the GPU gets 8-16x the thread blocks. The operation also keeps less for the backward:
//! the input (which the projections sharing it share) and the dropout mask's seed
//! ([`super::dropout`]: four integers, the mask is a hash of them), instead of a mask in the
//! compute dtype plus the dropped input per projection; the dropped input is recomputed.
//! Counting those tensors, a recomputed 7B layer at 2,048 tokens keeps about 0.2 GB less.
//!
//! On the CPU (burn-ndarray, which copies every strided operand before a GEMM) nothing is cut;
//! the tests force the cuts there to check them against autodiff through the plain ops.

use crate::model::autodiff_op::{cast, float, on_training_backend, prim, TrainingOp};
use crate::model::linear::{copies_strided_operands, matmul_weight_t};
use crate::model::split_k::{split_k_parts, split_operand, sum_parts};
use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::{CheckpointStrategy, NoCheckpointing};
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::backend::Autodiff;
use burn::tensor::backend::Backend;
use burn::tensor::ops::{FloatTensor, IntTensor};
use burn::tensor::{DType, Int, Tensor};
use std::marker::PhantomData;

/// Slices of a reduction are at least this long on the GPU (shorter ones cost more in the f32
/// partial sums than the extra thread blocks win).
const GPU_MIN_SLICE: usize = 256;

/// The branch's constants and how its reductions are cut.
#[derive(Debug, Clone, Copy)]
pub(super) struct Branch {
    /// `alpha / r` (or rsLoRA's).
    pub(super) scaling: f64,
    /// Dropout probability (used only with a seed).
    pub(super) dropout: f64,
    /// Shortest slice of a cut reduction; 0 cuts nothing.
    pub(super) min_slice: usize,
}

impl Branch {
    /// Into how many slices a reduction of length `len` is cut: up to 16 ([`split_k_parts`]),
    /// none when `min_slice` is 0.
    fn parts(&self, len: usize) -> usize {
        if self.min_slice == 0 {
            return 1;
        }
        split_k_parts(len, 16, self.min_slice)
    }

    /// `x` with the elements the seed's mask drops zeroed and the rest scaled by `1 / (1 - p)`
    /// (torch's inverted dropout); `x` itself without a seed.
    fn dropped<B: Backend>(&self, x: Tensor<B, 2>, seed: Option<&Tensor<B, 1, Int>>) -> Tensor<B, 2> {
        match seed {
            Some(s) => super::dropout::dropout(x, s, self.dropout),
            None => x,
        }
    }

    /// Slices of the reduction `k` of an `[m, k]` operand's product: [`Self::parts`] when there
    /// are at least `min_slice` rows (a few rows, as in decoding, make a small product, where
    /// the extra launches of the f32 sum would cost more than they win), else 1.
    fn k_parts(&self, m: usize, k: usize) -> usize {
        if m >= self.min_slice { self.parts(k) } else { 1 }
    }

    /// `scale * x [m, k] w[n, k]^T -> [m, n]` (compute dtype), the reduction over `k` cut into
    /// [`Self::k_parts`] slices.
    fn xwt<B: Backend>(&self, x: Tensor<B, 2>, w: Tensor<B, 2>, scale: f64) -> Tensor<B, 2> {
        let [m, k] = x.dims();
        match self.k_parts(m, k) {
            1 => scaled(matmul_weight_t(x, w), scale),
            p => Self::sliced_xwt(split_operand(x, p), w, scale),
        }
    }

    /// `xs [p, m, k / p]` (column slice `s` of `x` as batch `s`) times `w[n, k]^T`, the slices'
    /// products summed in f32 and scaled ([`sum_parts`]) -> `[m, n]` in `xs`' dtype.
    fn sliced_xwt<B: Backend>(xs: Tensor<B, 3>, w: Tensor<B, 2>, scale: f64) -> Tensor<B, 2> {
        let ([p, m, kp], [n, _]) = (xs.dims(), w.dims());
        let dtype = xs.dtype();
        let ws = w.reshape([n, p, kp]).swap_dims(0, 1).swap_dims(1, 2);
        sum_parts(xs.matmul(ws), 0, scale, dtype).reshape([m, n])
    }

    /// `scale * dropout(x) A^T` for the branch's first product: with a seed and a cut
    /// reduction, the dropout writes the sliced layout itself
    /// ([`super::dropout::dropout_split`]; as a view of the dropped `x` the matmul copied it
    /// first).
    fn dropped_xat<B: Backend>(&self, x: Tensor<B, 2>, seed: Option<&Tensor<B, 1, Int>>, a: Tensor<B, 2>, scale: f64) -> Tensor<B, 2> {
        let [m, k] = x.dims();
        match (seed, self.k_parts(m, k)) {
            (Some(s), p) if p > 1 => Self::sliced_xwt(super::dropout::dropout_split(x, s, self.dropout, p), a, scale),
            _ => self.xwt(self.dropped(x, seed), a, scale),
        }
    }

    /// `a[m, i]^T b[m, j] -> [i, j]` in f32 (a weight gradient), the reduction over `m` cut.
    fn atb<B: Backend>(&self, a: Tensor<B, 2>, b: Tensor<B, 2>) -> Tensor<B, 2> {
        let ([m, i], [_, j]) = (a.dims(), b.dims());
        let p = self.parts(m);
        if p == 1 {
            return a.transpose().matmul(b).cast(DType::F32);
        }
        let a = a.reshape([p, m / p, i]).swap_dims(1, 2);
        sum_parts(a.matmul(b.reshape([p, m / p, j])), 0, 1.0, DType::F32).reshape([i, j])
    }

    /// `(sh, y, a, b)`: `sh = s dropout(x) A^T [m, r]`, the branch `y = sh B^T [m, out]`, and
    /// `A`, `B` in `x`'s dtype (the backward's products take them). The scale goes on the
    /// rank-wide `h` rather than on the `[m, out]` product: one pass over `m x r` elements
    /// instead of `m x out` (`gate_proj`'s `out` is 18,944), folded into the split sum.
    #[allow(clippy::type_complexity)]
    pub(super) fn forward<B: Backend>(&self, x: Tensor<B, 2>, seed: Option<&Tensor<B, 1, Int>>, a: Tensor<B, 2>, b: Tensor<B, 2>) -> (Tensor<B, 2>, Tensor<B, 2>, Tensor<B, 2>, Tensor<B, 2>) {
        let (sh, a, b) = self.down(x, seed, a, b);
        let y = matmul_weight_t(sh.clone(), b.clone());
        (sh, y, a, b)
    }

    /// `(sh, a, b)` of [`Self::forward`] without the up-projection (which the fused NF4
    /// product takes, [`super::fused`]).
    #[allow(clippy::type_complexity)]
    pub(super) fn down<B: Backend>(&self, x: Tensor<B, 2>, seed: Option<&Tensor<B, 1, Int>>, a: Tensor<B, 2>, b: Tensor<B, 2>) -> (Tensor<B, 2>, Tensor<B, 2>, Tensor<B, 2>) {
        let dtype = x.dtype();
        let (a, b) = (a.cast(dtype), b.cast(dtype));
        let sh = self.dropped_xat(x, seed, a.clone(), self.scaling);
        (sh, a, b)
    }

    /// The branch for backend `B`: reductions cut on the GPU, not on the CPU.
    pub(super) fn on<B: Backend>(scaling: f64, dropout: f64) -> Self {
        Branch { scaling, dropout, min_slice: if copies_strided_operands::<B>() { 0 } else { GPU_MIN_SLICE } }
    }
}

/// `x * scale`, without a pass when the scale is 1.
fn scaled<B: Backend>(x: Tensor<B, 2>, scale: f64) -> Tensor<B, 2> {
    if scale == 1.0 { x } else { x.mul_scalar(scale) }
}

/// `s * dropout(x) A^T B^T` for `x: [m, in]` (compute dtype), `seed`: the dropout mask's seed
/// ([`super::dropout::draw_seed`]; `None` = no dropout), f32 `a: [r, in]` and `b: [out, r]` ->
/// `[m, out]` in `x`'s dtype. Under
/// the training autodiff backends it is one operation whose gradients for `a` and `b` come out
/// in f32; elsewhere the same products without a tape.
pub fn lora_branch<B: Backend>(x: Tensor<B, 2>, seed: Option<Tensor<B, 1, Int>>, a: Tensor<B, 2>, b: Tensor<B, 2>, scaling: f64, dropout: f64) -> Tensor<B, 2> {
    let branch = Branch::on::<B>(scaling, dropout);
    match on_training_backend(&LoraOp::<B>(branch, PhantomData), (x, seed, a, b)) {
        Ok(y) => y,
        Err((x, seed, a, b)) => branch.forward(x, seed.as_ref(), a, b).1,
    }
}

/// The operation on the backend `B` it was called with.
struct LoraOp<B>(Branch, PhantomData<B>);

type Args<B> = (Tensor<B, 2>, Option<Tensor<B, 1, Int>>, Tensor<B, 2>, Tensor<B, 2>);

impl<B: Backend> TrainingOp for LoraOp<B> {
    type Args = Args<B>;
    type Out = Tensor<B, 2>;

    fn on<I: Backend>(&self, (x, seed, a, b): Self::Args) -> Result<Self::Out, Self::Args> {
        type A<I> = Autodiff<I, NoCheckpointing>;
        let x = match cast::<_, Tensor<A<I>, 2>>(x) {
            Ok(x) => x,
            Err(x) => return Err((x, seed, a, b)),
        };
        fn same<T, U>(_: T) -> U {
            unreachable!("the branch's tensors share a backend")
        }
        let seed = seed.map(|s| cast::<_, Tensor<A<I>, 1, Int>>(s).unwrap_or_else(same));
        let (a, b) = (cast::<_, Tensor<A<I>, 2>>(a).unwrap_or_else(same), cast::<_, Tensor<A<I>, 2>>(b).unwrap_or_else(same));
        let y = on_autodiff::<I, NoCheckpointing>(self.0, x, seed, a, b);
        Ok(cast::<_, Tensor<B, 2>>(y).unwrap_or_else(|_| unreachable!("Autodiff<I> is B")))
    }
}

/// What the backward keeps: the input, the mask's seed, `s h` and the two weights in the
/// compute dtype (cast once in the forward, not again in the backward).
#[derive(Debug, Clone)]
pub(super) struct Saved<B: Backend> {
    pub(super) x: FloatTensor<B>,
    pub(super) seed: Option<IntTensor<B>>,
    pub(super) sh: FloatTensor<B>,
    pub(super) a: FloatTensor<B>,
    pub(super) b: FloatTensor<B>,
}

#[derive(Debug)]
struct LoraBackward(Branch);

impl<B: Backend> Backward<B, 3> for LoraBackward {
    /// See [`Saved`].
    type State = Saved<B>;

    fn backward(self, ops: Ops<Self::State, 3>, grads: &mut Gradients, _checkpointer: &mut Checkpointer) {
        let [node_x, node_a, node_b] = ops.parents;
        let g = float::<B, 2>(grads.consume::<B>(&ops.node));
        let want = [node_x.is_some(), node_a.is_some(), node_b.is_some()];
        for (node, grad) in [node_x, node_a, node_b].into_iter().zip(self.0.grads(g, ops.state, want)) {
            if let (Some(node), Some(grad)) = (node, grad) {
                grads.register::<B>(node.id, prim(grad));
            }
        }
    }
}

impl Branch {
    /// The branch's gradients `[dx, dA, dB]` for the output gradient `g [m, out]` (those
    /// `want`ed; `dA`, `dB` in f32).
    pub(super) fn grads<B: Backend>(&self, g: Tensor<B, 2>, saved: Saved<B>, want: [bool; 3]) -> [Option<Tensor<B, 2>>; 3] {
        let Saved { x, seed, sh, a, b } = saved;
        let seed = seed.map(Tensor::<B, 1, Int>::from_primitive);
        // d(s h B^T)/dh = s g B: g [m, out] times B [out, r], the reduction over out cut.
        let dh = self.xwt(g.clone(), float::<B, 2>(b).transpose(), self.scaling);
        // d(sh B^T)/dB = g^T (s h).
        let db = want[2].then(|| self.atb(g, float::<B, 2>(sh)));
        let da = want[1].then(|| self.atb(dh.clone(), self.dropped(float::<B, 2>(x.clone()), seed.as_ref())));
        let dx = want[0].then(|| self.dropped(dh.matmul(float::<B, 2>(a)), seed.as_ref()));
        [dx, da, db]
    }
}

fn on_autodiff<I: Backend, C: CheckpointStrategy>(
    br: Branch,
    x: Tensor<Autodiff<I, C>, 2>,
    seed: Option<Tensor<Autodiff<I, C>, 1, Int>>,
    a: Tensor<Autodiff<I, C>, 2>,
    b: Tensor<Autodiff<I, C>, 2>,
) -> Tensor<Autodiff<I, C>, 2> {
    let (x, a, b) = (x.into_primitive().tensor(), a.into_primitive().tensor(), b.into_primitive().tensor());
    let seed = seed.map(|s| Tensor::<I, 1, Int>::from_primitive(s.into_primitive()));
    let (sh, y, ac, bc) = br.forward(float::<I, 2>(x.primitive.clone()), seed.as_ref(), float(a.primitive.clone()), float(b.primitive.clone()));
    let out = match LoraBackward(br).prepare::<C>([x.node.clone(), a.node.clone(), b.node.clone()]).compute_bound().stateful() {
        OpsKind::Tracked(prep) => {
            let saved = Saved { x: x.primitive, seed: seed.map(Tensor::into_primitive), sh: prim(sh), a: prim(ac), b: prim(bc) };
            prep.finish(saved, prim(y))
        }
        OpsKind::UnTracked(prep) => prep.finish(prim(y)),
    };
    float(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::backend::NdArray;
    use burn::tensor::{Bool, Distribution};

    type Cpu = NdArray<f32>;
    type A = Autodiff<Cpu>;

    /// The operation's output and its gradients for `x`, `A` and `B` equal Burn's autodiff
    /// through the plain ops (inverted dropout, two products, scaling), with the reductions cut
    /// (`min_slice` 16: `in` 512 in 8 slices, `out` 128 in 2, 256 rows in 4) and uncut, with and
    /// without dropout (the plain ops drop with the mask the seed stands for, built on the
    /// host). `B` is random, not PEFT's zeros, so every gradient is non-zero.
    #[test]
    fn equals_autodiff_through_the_plain_ops() {
        let dev = Default::default();
        let (m, k, n, r, p) = (256, 512, 128, 8, 0.25);
        let x0 = Tensor::<Cpu, 2>::random([m, k], Distribution::Normal(0.0, 1.0), &dev);
        let a0 = Tensor::<Cpu, 2>::random([r, k], Distribution::Normal(0.0, 0.2), &dev);
        let b0 = Tensor::<Cpu, 2>::random([n, r], Distribution::Normal(0.0, 0.2), &dev);
        let w = Tensor::<Cpu, 2>::random([m, n], Distribution::Normal(0.0, 1.0), &dev);
        let seed = crate::lora::dropout::draw_seed::<Cpu>(&dev);
        let run = |min_slice: Option<usize>, seed: Option<Tensor<Cpu, 1, Int>>| {
            let x = Tensor::<A, 2>::from_inner(x0.clone()).require_grad();
            let a = Tensor::<A, 2>::from_inner(a0.clone()).require_grad();
            let b = Tensor::<A, 2>::from_inner(b0.clone()).require_grad();
            // The plain ops drop with the mask the seed stands for, built on the host.
            let drop = seed.as_ref().map(|s| Tensor::<A, 2, Bool>::from_inner(crate::lora::dropout::drop_mask(s, [m, k].into(), p, &dev)));
            let seed = seed.map(Tensor::<A, 1, Int>::from_inner);
            let y = match min_slice {
                Some(min_slice) => {
                    let br = Branch { scaling: 0.5, dropout: p, min_slice };
                    LoraOp::<A>(br, PhantomData).on::<Cpu>((x.clone(), seed, a.clone(), b.clone())).expect("autodiff backend")
                }
                None => {
                    let xd = match drop {
                        Some(d) => x.clone().mask_fill(d, 0.0).div_scalar(1.0 - p),
                        None => x.clone(),
                    };
                    xd.matmul(a.clone().transpose()).matmul(b.clone().transpose()).mul_scalar(0.5)
                }
            };
            let grads = (y.clone() * Tensor::from_inner(w.clone())).sum().backward();
            [y.inner(), x.grad(&grads).unwrap(), a.grad(&grads).unwrap(), b.grad(&grads).unwrap()]
        };
        let br = Branch { scaling: 0.5, dropout: p, min_slice: 16 };
        assert_eq!([br.parts(k), br.parts(n), br.parts(m)], [8, 2, 4], "the cuts this test covers");
        for seed in [None, Some(seed)] {
            let want = run(None, seed.clone());
            for min_slice in [0, 16] {
                let got = run(Some(min_slice), seed.clone());
                for (what, g, w) in ["y", "dx", "dA", "dB"].iter().zip(&got).zip(&want).map(|((a, b), c)| (a, b, c)) {
                    let e = crate::model::autodiff_op::rel_l2(g, w);
                    assert!(e < 1e-5, "{what} (min_slice {min_slice}, dropout {}): relative L2 {e:e}", seed.is_some());
                }
            }
        }
    }

    /// Without autodiff the same function gives the forward (the tape-free path of training
    /// and generation).
    #[test]
    fn tape_free_forward_matches() {
        let dev = Default::default();
        let x = Tensor::<Cpu, 2>::random([5, 12], Distribution::Normal(0.0, 1.0), &dev);
        let a = Tensor::<Cpu, 2>::random([4, 12], Distribution::Normal(0.0, 1.0), &dev);
        let b = Tensor::<Cpu, 2>::random([7, 4], Distribution::Normal(0.0, 1.0), &dev);
        let y = lora_branch(x.clone(), None, a.clone(), b.clone(), 2.0, 0.0);
        let want = x.matmul(a.transpose()).matmul(b.transpose()).mul_scalar(2.0);
        assert!(crate::model::autodiff_op::rel_l2(&y, &want) < 1e-6);
    }
}
