//! The one linear-layer abstraction of the model. Every projection (`q_proj` … `down_proj`,
//! `lm_head`) is a [`Linear`]: the weight format (dense or NF4) and the optional LoRA adapter
//! live here, so the decoder code never knows how a weight is stored.
//!
//! Weights keep the Hugging Face layout `[out_features, in_features]` and the HF parameter
//! names; `y = x W^T + b` like `torch.nn.Linear`.

use super::nf4_weight::Nf4Weight;
use crate::lora::LoraAdapter;
use crate::quant::nf4::Nf4Tensor;
use burn::module::{Module, Param};
use burn::tensor::{backend::Backend, Tensor};

/// How the frozen weight is stored.
#[derive(Module, Debug)]
pub enum LinearWeight<B: Backend> {
    /// Dense `[out, in]` in the compute dtype.
    Dense(Param<Tensor<B, 2>>),
    /// NF4 in the bitsandbytes layout, dequantized per product.
    Nf4(Nf4Weight<B>),
}

/// A linear layer in HF layout whose weight is dense or NF4.
#[derive(Module, Debug)]
pub struct Linear<B: Backend> {
    /// `[out_features, in_features]`, as stored in HF checkpoints.
    pub weight: LinearWeight<B>,
    /// `[out_features]`, when the layer has a bias (Qwen2 q/k/v do, o_proj and the MLP do not).
    pub bias: Option<Param<Tensor<B, 1>>>,
    /// The trainable low-rank update, on targeted modules only.
    pub lora: Option<LoraAdapter<B>>,
}

impl<B: Backend> Linear<B> {
    /// Wraps loaded tensors. Base weights are frozen: training only ever updates adapters.
    pub fn frozen(weight: Tensor<B, 2>, bias: Option<Tensor<B, 1>>) -> Self {
        Self {
            weight: LinearWeight::Dense(Param::from_tensor(weight).set_require_grad(false)),
            bias: bias.map(|b| Param::from_tensor(b).set_require_grad(false)),
            lora: None,
        }
    }

    /// A frozen NF4 layer: the packed codes and scales go to the device as they are.
    pub fn nf4(weight: &Nf4Tensor, bias: Option<Tensor<B, 1>>, device: &B::Device) -> Self {
        Self {
            weight: LinearWeight::Nf4(Nf4Weight::from_host(weight, device)),
            bias: bias.map(|b| Param::from_tensor(b).set_require_grad(false)),
            lora: None,
        }
    }

    /// `[out_features, in_features]`.
    pub fn dims(&self) -> [usize; 2] {
        match &self.weight {
            LinearWeight::Dense(w) => w.val().dims(),
            LinearWeight::Nf4(w) => w.shape,
        }
    }

    /// Bytes the weight and bias occupy on the device.
    pub fn resident_bytes(&self) -> usize {
        let bias = self.bias.as_ref().map_or(0, |b| b.val().dims()[0] * b.val().dtype().size());
        bias + match &self.weight {
            LinearWeight::Dense(w) => w.val().shape().num_elements() * w.val().dtype().size(),
            LinearWeight::Nf4(w) => w.resident_bytes(),
        }
    }

    /// The weight as a dense tensor (dequantized when stored as NF4).
    pub fn dense_weight(&self) -> Tensor<B, 2> {
        match &self.weight {
            LinearWeight::Dense(w) => w.val(),
            LinearWeight::Nf4(w) => w.dequantize(),
        }
    }

    /// Replaces an NF4 weight by its dequantized values, stored dense and frozen: the same
    /// numbers without decoding them on every call (memory: 2-4 bytes per weight instead of ~0.5).
    pub fn dequantize_in_place(&mut self) {
        if let LinearWeight::Nf4(w) = &self.weight {
            self.weight = LinearWeight::Dense(Param::from_tensor(w.dequantize()).set_require_grad(false));
        }
    }

    /// `x: [batch, seq, in] -> [batch, seq, out]`.
    pub fn forward(&self, x: Tensor<B, 3>) -> Tensor<B, 3> {
        self.forward_for(x, OutputUse::Value)
    }

    /// [`Self::forward`] whose output is read as `output` says: with [`OutputUse::TapeOnly`]
    /// the frozen product (NF4 with an adapter, or dense) is not computed (see [`OutputUse`]);
    /// an NF4 projection without an adapter computes its value anyway.
    pub fn forward_for(&self, x: Tensor<B, 3>, output: OutputUse) -> Tensor<B, 3> {
        if let (LinearWeight::Nf4(w), Some(lora)) = (&self.weight, &self.lora) {
            return lora.forward_nf4(x, w, self.bias.as_ref().map(|b| b.val()), output);
        }
        let [b, s, k] = x.dims();
        let [n, _] = self.dims();
        let x2 = x.clone().reshape([b * s, k]);
        let y = match &self.weight {
            // Frozen: under training autodiff only the input gradient, its reduction cut.
            LinearWeight::Dense(w) => super::frozen_matmul::frozen_matmul_t_for(x2, w.val(), output),
            // NF4: the kernels on CUDA (no dense weight kept for backward), else the reference.
            LinearWeight::Nf4(w) => w.matmul_t(x2),
        };
        let y = match &self.bias {
            Some(bias) => y + bias.val().unsqueeze_dim(0),
            None => y,
        };
        let y = y.reshape([b, s, n]);
        match &self.lora {
            Some(lora) => y + lora.forward(x),
            None => y,
        }
    }
}

/// Whether anything reads a forward's output value, or only the autodiff tape behind it.
///
/// The checkpointed step's recompute of a layer ([`crate::train::step`]) reads no output value
/// of the layer's last projection, `down_proj`: the residual add after it needs no values for
/// its backward, and neither does the projection's (`dY W` and the adapter's gradients take the
/// weight, the input and the adapter's rank-wide `h`). So there the frozen product, 0.9 ms of
/// each 7B layer at 2,048 tokens (H100, `bench kernels --rows 2048`), is not computed and the
/// output holds whatever its fresh buffer held.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OutputUse {
    /// The output value is read: compute it.
    Value,
    /// Only the output's gradient path is used: a projection may leave its value undefined.
    TapeOnly,
}

/// The output of a product computed for [`OutputUse::TapeOnly`]: a fresh `[rows, cols]` buffer
/// in `like`'s dtype, never written (debug builds, the tests, fill it with NaN so that any
/// reader of the value shows up as a NaN loss or gradient).
pub(crate) fn unread_output<B: Backend>(rows: usize, cols: usize, like: &Tensor<B, 2>) -> Tensor<B, 2> {
    let options = (&like.device(), like.dtype());
    if cfg!(debug_assertions) {
        Tensor::full([rows, cols], f32::NAN, options)
    } else {
        Tensor::empty([rows, cols], options)
    }
}

/// `x [M, K] @ w[N, K]^T -> [M, N]` for a weight kept in HF `[N, K]` layout.
///
/// On the CPU backend computed as `(w @ x^T)^T`: burn-ndarray copies a non-contiguous operand
/// into a contiguous one before its GEMM, and this way it copies the small activation, not the
/// weight (0.5B CPU decode, debug build: 0.28 -> 0.45 tok/s). Elsewhere `x @ w^T`: the GPU
/// matmul reads a transposed operand in place, and the result comes out row-major. The
/// CPU form's result is a transposed view, which on CUDA made every element-wise op after it
/// (LoRA's scaling, the residual add, their gradients) run unvectorized and uncoalesced:
/// 0.89 ms for one `[2048, 18944]` bf16 scale on the H200, 3.5 ms of each 7B layer's forward.
pub fn matmul_weight_t<B: Backend>(x: Tensor<B, 2>, w: Tensor<B, 2>) -> Tensor<B, 2> {
    if copies_strided_operands::<B>() {
        w.matmul(x.transpose()).transpose()
    } else {
        x.matmul(w.transpose())
    }
}

/// True for burn-ndarray (plain or under autodiff), whose matmul copies strided operands.
pub(crate) fn copies_strided_operands<B: Backend>() -> bool {
    use burn::backend::{Autodiff, NdArray};
    use std::any::TypeId;
    let t = TypeId::of::<B>();
    t == TypeId::of::<NdArray<f32>>() || t == TypeId::of::<Autodiff<NdArray<f32>>>()
}
