//! Grouped-query self-attention, transformers `models/qwen2/modeling_qwen2.py::Qwen2Attention`
//! with `eager_attention_forward` (scores scaled by `head_dim^-0.5`, additive mask, softmax in
//! f32, then back to the compute dtype).

use super::kv_cache::KvCache;
use super::linear::Linear;
use super::rope::apply_rotary;
use burn::module::Module;
use burn::tensor::{activation::softmax, backend::Backend, Bool, DType, Tensor};

/// Self-attention with q/k/v bias and no o_proj bias, as in Qwen2.
#[derive(Module, Debug)]
pub struct Attention<B: Backend> {
    /// `[heads * head_dim, hidden]`, with bias.
    pub q_proj: Linear<B>,
    /// `[kv_heads * head_dim, hidden]`, with bias.
    pub k_proj: Linear<B>,
    /// `[kv_heads * head_dim, hidden]`, with bias.
    pub v_proj: Linear<B>,
    /// `[hidden, heads * head_dim]`, no bias.
    pub o_proj: Linear<B>,
    /// Query heads.
    pub num_heads: usize,
    /// Key/value heads.
    pub num_kv_heads: usize,
    /// Width of one head.
    pub head_dim: usize,
}

/// What one attention call needs besides the hidden states.
pub struct AttentionInputs<'a, B: Backend> {
    /// RoPE cosines, `[batch, 1, seq, head_dim]`.
    pub cos: &'a Tensor<B, 4>,
    /// RoPE sines, `[batch, 1, seq, head_dim]`.
    pub sin: &'a Tensor<B, 4>,
    /// `true` where a query may NOT see a key: `[batch or 1, 1, 1, seq, seen + seq]`.
    pub mask: &'a Tensor<B, 5, Bool>,
}

impl<B: Backend> Attention<B> {
    /// `x: [batch, seq, hidden] -> [batch, seq, hidden]`; appends to `cache[layer]` when given.
    pub fn forward(
        &self,
        x: Tensor<B, 3>,
        inputs: &AttentionInputs<'_, B>,
        cache: Option<(&mut KvCache<B>, usize)>,
    ) -> Tensor<B, 3> {
        let [b, s, _] = x.dims();
        let (h, kvh, d) = (self.num_heads, self.num_kv_heads, self.head_dim);
        let heads = |t: Tensor<B, 3>, n: usize| t.reshape([b, s, n, d]).swap_dims(1, 2);
        let q = apply_rotary(heads(self.q_proj.forward(x.clone()), h), inputs.cos, inputs.sin);
        let k = apply_rotary(heads(self.k_proj.forward(x.clone()), kvh), inputs.cos, inputs.sin);
        let v = heads(self.v_proj.forward(x), kvh);
        let (k, v) = match cache {
            Some((cache, layer)) => cache.append(layer, k, v),
            None => (k, v),
        };
        let t = k.dims()[2];
        let rep = h / kvh;
        // Query head i reads kv head i / rep (transformers' repeat_kv): group the queries of one
        // kv head along the sequence axis instead of copying K and V `rep` times.
        let q = q.reshape([b, kvh, rep * s, d]);
        let scores = q.matmul(k.swap_dims(2, 3)).mul_scalar((d as f64).powf(-0.5));
        let dtype = scores.dtype();
        let scores = scores.cast(DType::F32).reshape([b, kvh, rep, s, t]);
        let mask = inputs.mask.clone().expand([b, kvh, rep, s, t]);
        let scores = scores.mask_fill(mask, f32::NEG_INFINITY);
        let probs = softmax(scores, 4).cast(dtype).reshape([b, kvh, rep * s, t]);
        let out = probs.matmul(v).reshape([b, h, s, d]).swap_dims(1, 2).reshape([b, s, h * d]);
        self.o_proj.forward(out)
    }
}
