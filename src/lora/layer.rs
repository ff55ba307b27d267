//! A LoRA adapter on one frozen linear, as PEFT's `lora.Linear` computes it
//! (peft `tuners/lora/layer.py::Linear.forward`): `y = base(x) + B(A(dropout(x))) * scaling`,
//! `scaling = alpha / r` (rsLoRA: `alpha / sqrt(r)`); `A` kaiming-uniform with a = sqrt(5)
//! (bound `1 / sqrt(in)`), `B` zeros, so a fresh adapter leaves the model unchanged.
//! Parameter names are PEFT's (`lora_A` / `lora_B` in exported files; `lora_a` / `lora_b` here).

use crate::model::linear::OutputUse;
use burn::module::{Module, Param};
use burn::tensor::{backend::Backend, DType, Distribution, Tensor};
use serde::{Deserialize, Serialize};

/// Adapter hyper-parameters (the PEFT `LoraConfig` fields that shape the math).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LoraSpec {
    /// Rank.
    pub r: usize,
    /// Scale numerator.
    pub alpha: f64,
    /// Dropout on the adapter's input (training only).
    pub dropout: f64,
    /// rsLoRA scaling `alpha / sqrt(r)` instead of `alpha / r`.
    #[serde(default)]
    pub use_rslora: bool,
}

impl LoraSpec {
    /// The factor applied to `B(A(x))`.
    pub fn scaling(&self) -> f64 {
        if self.use_rslora { self.alpha / (self.r as f64).sqrt() } else { self.alpha / self.r as f64 }
    }
}

/// The trainable pair `(A, B)` of one linear, f32 whatever the compute dtype.
#[derive(Module, Debug)]
pub struct LoraAdapter<B: Backend> {
    /// `[r, in]`.
    pub lora_a: Param<Tensor<B, 2>>,
    /// `[out, r]`.
    pub lora_b: Param<Tensor<B, 2>>,
    /// `alpha / r` (or rsLoRA's).
    pub scaling: f64,
    /// Probability of zeroing an input element (PEFT `lora_dropout`).
    pub dropout: f64,
    /// Dropout is applied only while this is set ([`LoraAdapter::set_training`]). An explicit
    /// flag rather than Burn's "autodiff means training" rule: the trainer's checkpointed
    /// forward runs without autodiff and must draw the same masks as the recompute.
    #[module(skip)]
    pub training: bool,
}

impl<B: Backend> LoraAdapter<B> {
    /// A fresh adapter with PEFT's initialization, drawn from the backend's RNG.
    pub fn init(in_features: usize, out_features: usize, spec: &LoraSpec, device: &B::Device) -> Self {
        let bound = 1.0 / (in_features as f64).sqrt();
        let a: Tensor<B, 2> = Tensor::random([spec.r, in_features], Distribution::Uniform(-bound, bound), device);
        let a = a.cast(DType::F32);
        Self {
            lora_a: Param::from_tensor(a),
            lora_b: Param::from_tensor(Tensor::zeros([out_features, spec.r], (device, DType::F32))),
            scaling: spec.scaling(),
            dropout: spec.dropout,
            training: false,
        }
    }

    /// The adapter's contribution: `x: [batch, seq, in] -> [batch, seq, out]` (one autodiff
    /// operation under training, [`super::op::lora_branch`]).
    pub fn forward(&self, x: Tensor<B, 3>) -> Tensor<B, 3> {
        let [b, s, k] = x.dims();
        let out = self.lora_b.val().dims()[0];
        let x = x.reshape([b * s, k]);
        // Inverted dropout as torch.nn.Dropout: each input element dropped with probability p,
        // the mask drawn as a seed (`super::dropout`).
        let seed = (self.training && self.dropout > 0.0).then(|| super::dropout::draw_seed::<B>(&x.device()));
        // The f32 weights are the trainer's master copy (no second, compute-dtype copy is
        // kept); the products run in the activations' dtype, the weights' gradients come out f32.
        super::op::lora_branch(x, seed, self.lora_a.val(), self.lora_b.val(), self.scaling, self.dropout).reshape([b, s, out])
    }

    /// The whole projection `base(x) + bias + adapter(x)` for a frozen NF4 base, `x: [batch,
    /// seq, in] -> [batch, seq, out]`: one autodiff operation under training, and on CUDA one
    /// NF4 product with the adapter's up-projection and the bias in its epilogue
    /// ([`super::fused::nf4_lora_linear`]).
    /// With [`OutputUse::TapeOnly`] the frozen product is skipped and the output's value is
    /// undefined (its gradients are the same).
    pub fn forward_nf4(&self, x: Tensor<B, 3>, w: &crate::model::nf4_weight::Nf4Weight<B>, bias: Option<Tensor<B, 1>>, output: OutputUse) -> Tensor<B, 3> {
        let [b, s, k] = x.dims();
        let out = self.lora_b.val().dims()[0];
        let x = x.reshape([b * s, k]);
        let seed = (self.training && self.dropout > 0.0).then(|| super::dropout::draw_seed::<B>(&x.device()));
        super::fused::nf4_lora_linear(x, w, bias, seed, self.lora_a.val(), self.lora_b.val(), self.scaling, self.dropout, output).reshape([b, s, out])
    }

    /// Turns input dropout on (training) or off (evaluation, generation).
    pub fn set_training(&mut self, training: bool) {
        self.training = training;
    }

    /// Trainable parameters: `r * (in + out)`.
    pub fn num_trainable(&self) -> usize {
        let [r, i] = self.lora_a.val().dims();
        r * (i + self.lora_b.val().dims()[0])
    }
}
