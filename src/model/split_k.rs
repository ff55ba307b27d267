//! Split-K products: a long reduction cut into slices multiplied as one batched GEMM (more
//! thread blocks for a skinny product), and the f32 sum over the slices' partial products
//! that closes it ([`sum_parts`]: on CUDA one kernel, `medqlora_kernels::splitk_sum`; a cast,
//! `sum_dim`, a scale and a cast back as tensor ops, which a 7B training step launched
//! thousands of times).

use burn::tensor::backend::Backend;
use burn::tensor::{DType, Tensor};

/// Slices of a split-K reduction (the LoRA branch's skinny products, `lora::op`; the frozen
/// head's input gradient, [`super::frozen_matmul`]) are multiples of this. Why 64, not the 16
/// of a tensor-core step: with 16, `down_proj`'s input (18,944) was cut into slices of 1,184
/// (a multiple of 32, not of 64), and only `down_proj.lora_B`'s gradient came out non-finite
/// in the 7B bench on an H100 (bf16, from step 0 or 2, later layers only), where every other
/// adapter (slices of 448 = 7 x 64) stayed finite; the f32 branch test passes at both widths,
/// so the bf16 product on those slices is the suspect. With 64, 18,944 is cut in 8 slices of
/// 2,368.
const SLICE_ALIGN: usize = 64;

/// Into how many slices a reduction of length `len` is cut: the most of `most`, `most / 2`,
/// ..., 2 (`most` a power of two) whose slices are multiples of [`SLICE_ALIGN`] and at least
/// `min_slice` long, else 1.
pub(crate) fn split_k_parts(len: usize, most: usize, min_slice: usize) -> usize {
    std::iter::successors(Some(most), |p| Some(p / 2))
        .take_while(|&p| p >= 2)
        .find(|&p| len % p == 0 && (len / p) % SLICE_ALIGN == 0 && len / p >= min_slice)
        .unwrap_or(1)
}

/// `scale * x.sum_dim(dim)` with the sum in f32 (`x`'s partials widened exactly), in `out`
/// dtype; `dim` keeps size 1 as in `sum_dim`.
pub(crate) fn sum_parts<B: Backend, const D: usize>(x: Tensor<B, D>, dim: usize, scale: f64, out: DType) -> Tensor<B, D> {
    #[cfg(feature = "cuda")]
    let x = match cuda::sum_parts::<B, D>(x, dim, scale, out) {
        Ok(y) => return y,
        Err(x) => x,
    };
    let s = x.cast(DType::F32).sum_dim(dim);
    let s = if scale == 1.0 { s } else { s.mul_scalar(scale) };
    s.cast(out)
}

/// `x [rows, cols]` as `[parts, rows, cols / parts]` (column slice `s` as batch `s`): a
/// split-K product's cut operand. On CUDA one kernel writes that layout
/// (`medqlora_kernels::splitk_sum::splitk_operand`; as a view Burn's matmul copied it at
/// ~0.8 TB/s first); elsewhere the view.
pub(crate) fn split_operand<B: Backend>(x: Tensor<B, 2>, parts: usize) -> Tensor<B, 3> {
    #[cfg(feature = "cuda")]
    let x = match cuda::split_operand::<B>(x, parts) {
        Ok(y) => return y,
        Err(x) => x,
    };
    let [rows, cols] = x.dims();
    x.reshape([rows, parts, cols / parts]).swap_dims(0, 1)
}

#[cfg(feature = "cuda")]
mod cuda {
    use crate::model::autodiff_op::{float, prim};
    use crate::model::cuda_tensor::{back, cube};
    use burn::tensor::backend::Backend;
    use burn::tensor::{DType, Tensor};
    use medqlora_kernels::splitk_sum::{splitk_operand, splitk_sum, Split};

    pub(super) fn split_operand<B: Backend>(x: Tensor<B, 2>, parts: usize) -> Result<Tensor<B, 3>, Tensor<B, 2>> {
        let c = match cube(prim(x)) {
            Ok(c) => c,
            Err(p) => return Err(float(p)),
        };
        match splitk_operand(&c, parts) {
            Ok(y) => Ok(float::<B, 3>(back(y))),
            Err(_) => Err(float::<B, 2>(back(c))),
        }
    }

    pub(super) fn sum_parts<B: Backend, const D: usize>(x: Tensor<B, D>, dim: usize, scale: f64, out: DType) -> Result<Tensor<B, D>, Tensor<B, D>> {
        let dims = x.dims();
        let split = Split { outer: dims[..dim].iter().product(), parts: dims[dim], inner: dims[dim + 1..].iter().product() };
        let c = match cube(prim(x)) {
            Ok(c) => c,
            Err(p) => return Err(float(p)),
        };
        let mut shape = dims;
        shape[dim] = 1;
        match splitk_sum(&c, split, scale as f32, out) {
            Ok(y) => Ok(float::<B, 1>(back(y)).reshape(shape)),
            Err(_) => Err(float::<B, D>(back(c))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::backend::NdArray;
    use burn::tensor::Distribution;

    #[test]
    fn parts_are_aligned_slices() {
        assert_eq!(split_k_parts(18_944, 16, 256), 8, "down_proj's input: 8 slices of 2,368");
        assert_eq!(split_k_parts(3_584, 16, 256), 8, "hidden: 8 slices of 448");
        assert_eq!(split_k_parts(100, 16, 1), 1, "no aligned cut");
    }

    #[test]
    fn sum_parts_is_a_scaled_f32_sum() {
        let x = Tensor::<NdArray<f32>, 3>::random([2, 5, 7], Distribution::Normal(0.0, 1.0), &Default::default());
        let got = sum_parts(x.clone(), 1, 0.5, DType::F32);
        let want = x.sum_dim(1).mul_scalar(0.5);
        assert_eq!(got.dims(), [2, 1, 7]);
        assert!(crate::model::autodiff_op::rel_l2(&got, &want) < 1e-7);
    }
}
