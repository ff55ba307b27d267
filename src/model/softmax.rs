//! Attention's masked softmax and its gradient on one query block's scores, as transformers'
//! `eager_attention_forward` computes it (`models/qwen2/modeling_qwen2.py`): scores scaled,
//! hidden keys at `-inf`, softmax in f32, probabilities back in the compute dtype.
//!
//! On CUDA (feature `cuda`) each is one kernel (`medqlora_kernels::softmax`): as tensor ops
//! the forward is a scale, casts, a mask fill and Burn's softmax over `[heads, rows, keys]` in
//! f32, and the backward twice that, ~5.5 ms per 7B layer at 2,048 tokens on the H200 (Nsight
//! Compute, BENCHMARKS.md). The tensor ops below define the result; the kernels are tested
//! against their reference in the kernel crate and, through attention, against these ops
//! (`tests/attention_blocks.rs`). Rows with every key hidden, which causal attention never
//! has, are zeros in the kernels and NaN in the ops.

use burn::tensor::activation::softmax;
use burn::tensor::backend::Backend;
use burn::tensor::{Bool, DType, Tensor};

/// `softmax(scores * scale)` over the keys `mask` leaves visible.
/// `scores: [b, kv_heads, rep * n, keys]` (query head `kv * rep + r`'s row `i` at
/// `[_, kv, r * n + i]`, the compute dtype), `mask: [b or 1, 1, 1, n, keys]` (`true` = hidden;
/// a narrowed view is fine) -> probabilities of `scores`' shape and dtype.
pub fn masked_softmax<B: Backend>(scores: Tensor<B, 4>, mask: Tensor<B, 5, Bool>, rep: usize, scale: f64) -> Tensor<B, 4> {
    #[cfg(feature = "cuda")]
    let (scores, mask) = match cuda::forward::<B>(scores, mask, rep, scale) {
        Ok(p) => return p,
        Err(back) => back,
    };
    let [b, kvh, rn, t] = scores.dims();
    let dtype = scores.dtype();
    let s = scaled_f32(scores, mask, rep, scale);
    softmax(s, 4).cast(dtype).reshape([b, kvh, rn, t])
}

/// The gradient of [`masked_softmax`] for `dp = dO V^T` (the probabilities' gradient, same
/// shape and dtype as `scores`): `(P, dS)` in that dtype, `P` recomputed from `scores` and
/// `dS = P (dP - rowsum(P dP)) * scale` (the gradient of the unscaled scores).
pub fn masked_softmax_backward<B: Backend>(scores: Tensor<B, 4>, dp: Tensor<B, 4>, mask: Tensor<B, 5, Bool>, rep: usize, scale: f64) -> (Tensor<B, 4>, Tensor<B, 4>) {
    #[cfg(feature = "cuda")]
    let (scores, dp, mask) = match cuda::backward::<B>(scores, dp, mask, rep, scale) {
        Ok(out) => return out,
        Err(back) => back,
    };
    let [b, kvh, rn, t] = scores.dims();
    let dtype = scores.dtype();
    let p = softmax(scaled_f32(scores, mask, rep, scale), 4);
    let dp = dp.cast(DType::F32).reshape([b, kvh, rep, rn / rep, t]);
    let row = (p.clone() * dp.clone()).sum_dim(4);
    let ds = (p.clone() * (dp - row)).cast(dtype).mul_scalar(scale).reshape([b, kvh, rn, t]);
    (p.cast(dtype).reshape([b, kvh, rn, t]), ds)
}

/// Scaled f32 scores `[b, kv_heads, rep, n, keys]` with hidden keys at `-inf`.
fn scaled_f32<B: Backend>(scores: Tensor<B, 4>, mask: Tensor<B, 5, Bool>, rep: usize, scale: f64) -> Tensor<B, 5> {
    let [b, kvh, rn, t] = scores.dims();
    let shape = [b, kvh, rep, rn / rep, t];
    scores.mul_scalar(scale).cast(DType::F32).reshape(shape).mask_fill(mask.expand(shape), f32::NEG_INFINITY)
}

/// The kernels on `CubeTensor<CudaRuntime>` primitives; anything they refuse (another backend,
/// a mask batch that is neither 1 nor the scores' batch) takes the tensor ops.
#[cfg(feature = "cuda")]
mod cuda {
    use crate::model::autodiff_op::{float, prim};
    use crate::model::cuda_tensor::{back, cube, cube_of};
    use burn::tensor::backend::Backend;
    use burn::tensor::{Bool, Tensor};
    use medqlora_kernels::softmax::{self, Rows};

    /// The kernels' row layout for `scores: [b, kvh, rep * n, t]` and `mask: [bm, 1, 1, n, t]`.
    fn layout(scores: [usize; 4], mask: [usize; 5], rep: usize) -> Option<Rows> {
        let [b, kvh, rn, t] = scores;
        let [bm, _, _, n, keys] = mask;
        (rep > 0 && rn == rep * n && keys == t && (bm == 1 || bm == b)).then_some(Rows { rows: b * kvh * rn, keys: t, n, group: kvh * rn, mask_batches: bm })
    }

    type Refused<B> = (Tensor<B, 4>, Tensor<B, 5, Bool>);

    pub(super) fn forward<B: Backend>(scores: Tensor<B, 4>, mask: Tensor<B, 5, Bool>, rep: usize, scale: f64) -> Result<Tensor<B, 4>, Refused<B>> {
        let Some(rows) = layout(scores.dims(), mask.dims(), rep) else { return Err((scores, mask)) };
        let s = match cube(prim(scores)) {
            Ok(s) => s,
            Err(s) => return Err((float(s), mask)),
        };
        let m = cube_of(mask.into_primitive());
        match softmax::masked_softmax(&s, &m, rows, scale as f32) {
            Ok(p) => Ok(float(back(p))),
            Err(_) => Err((float(back(s)), Tensor::from_primitive(back(m)))),
        }
    }

    type RefusedBackward<B> = (Tensor<B, 4>, Tensor<B, 4>, Tensor<B, 5, Bool>);

    pub(super) fn backward<B: Backend>(scores: Tensor<B, 4>, dp: Tensor<B, 4>, mask: Tensor<B, 5, Bool>, rep: usize, scale: f64) -> Result<(Tensor<B, 4>, Tensor<B, 4>), RefusedBackward<B>> {
        let Some(rows) = layout(scores.dims(), mask.dims(), rep) else { return Err((scores, dp, mask)) };
        let s = match cube(prim(scores)) {
            Ok(s) => s,
            Err(s) => return Err((float(s), dp, mask)),
        };
        let g = cube_of(prim(dp));
        let m = cube_of(mask.into_primitive());
        match softmax::masked_softmax_backward(&s, &g, &m, rows, scale as f32) {
            Ok((p, ds)) => Ok((float(back(p)), float(back(ds)))),
            Err(_) => Err((float(back(s)), float(back(g)), Tensor::from_primitive(back(m)))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{masked_softmax, masked_softmax_backward};
    use crate::model::text::causal_mask;
    use burn::backend::NdArray;
    use burn::tensor::{Distribution, Tensor};

    type B = NdArray<f32>;

    /// The ops equal the kernels' reference (`medqlora_kernels::softmax::reference`, f64) on
    /// the model's layout: rows `[b, kvh, rep * n]`, a causal mask after cached keys shared by
    /// every head. The CUDA kernels are tested against that same reference.
    #[test]
    fn ops_match_the_kernel_reference() {
        use medqlora_kernels::softmax::{reference, Rows};
        let dev = Default::default();
        let (b, kvh, rep, n, past) = (1, 2, 3, 5, 4);
        let t = past + n;
        let scores = Tensor::<B, 4>::random([b, kvh, rep * n, t], Distribution::Normal(0.0, 3.0), &dev);
        let dp = Tensor::<B, 4>::random([b, kvh, rep * n, t], Distribution::Normal(0.0, 1.0), &dev);
        let mask = causal_mask::<B>(n, past, &dev);
        let scale = 0.3;
        let layout = Rows { rows: b * kvh * rep * n, keys: t, n, group: kvh * rep * n, mask_batches: 1 };
        let v = |x: Tensor<B, 4>| x.into_data().to_vec::<f32>().unwrap();
        let m: Vec<bool> = mask.clone().into_data().to_vec::<bool>().unwrap();
        let want_p = reference::masked_softmax(&v(scores.clone()), &m, layout, scale as f32);
        let (want_p2, want_ds) = reference::masked_softmax_backward(&v(scores.clone()), &v(dp.clone()), &m, layout, scale as f32);
        let p = masked_softmax(scores.clone(), mask.clone(), rep, scale);
        let (p2, ds) = masked_softmax_backward(scores, dp, mask, rep, scale);
        let close = |got: Vec<f32>, want: &[f32], what: &str| {
            let e = medqlora_kernels::testutil::rel_l2(&got, want);
            assert!(e < 1e-6, "{what}: relative L2 {e:e}");
        };
        close(v(p), &want_p, "P");
        close(v(p2), &want_p2, "backward P");
        close(v(ds), &want_ds, "dS");
    }
}
