//! RMSNorm as in transformers `models/qwen2/modeling_qwen2.py::Qwen2RMSNorm`: the variance is
//! taken in f32 whatever the compute dtype, the weight is applied in the input dtype.

use burn::module::{Module, Param};
use burn::tensor::{backend::Backend, DType, Tensor};

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
        let dtype = x.dtype();
        let x32 = x.cast(DType::F32);
        let variance = x32.clone().powi_scalar(2).mean_dim(2);
        // A division, not `recip()`: burn-ndarray's in-place recip (taken when the tensor is
        // uniquely owned) is an approximate SIMD reciprocal (measured 3e-5 off the exact one),
        // which made results depend on reference counts and broke bit-exact resume.
        let normed = x32 / (variance + self.eps).sqrt();
        normed.cast(dtype) * self.weight.val().unsqueeze_dim::<2>(0).unsqueeze_dim::<3>(0)
    }
}
