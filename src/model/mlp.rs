//! SwiGLU MLP, transformers `models/qwen2/modeling_qwen2.py::Qwen2MLP`:
//! `down_proj(silu(gate_proj(x)) * up_proj(x))`.

use super::linear::{Linear, OutputUse};
use burn::module::Module;
use burn::tensor::{backend::Backend, Tensor};

/// The gated feed-forward block of a decoder layer.
#[derive(Module, Debug)]
pub struct Mlp<B: Backend> {
    /// `[intermediate, hidden]`.
    pub gate_proj: Linear<B>,
    /// `[intermediate, hidden]`.
    pub up_proj: Linear<B>,
    /// `[hidden, intermediate]`.
    pub down_proj: Linear<B>,
}

impl<B: Backend> Mlp<B> {
    /// `x: [batch, seq, hidden] -> [batch, seq, hidden]`.
    pub fn forward(&self, x: Tensor<B, 3>) -> Tensor<B, 3> {
        self.forward_for(x, OutputUse::Value)
    }

    /// [`Self::forward`] with `down_proj`'s output read as `output` says.
    pub fn forward_for(&self, x: Tensor<B, 3>, output: OutputUse) -> Tensor<B, 3> {
        self.down_proj.forward_for(super::swiglu::swiglu(self.gate_proj.forward(x.clone()), self.up_proj.forward(x)), output)
    }
}
