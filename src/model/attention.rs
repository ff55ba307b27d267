//! Grouped-query self-attention, transformers `models/qwen2/modeling_qwen2.py::Qwen2Attention`
//! with `eager_attention_forward` (scores scaled by `head_dim^-0.5`, additive mask, softmax in
//! f32, then back to the compute dtype).
//!
//! Long queries are taken in blocks of about [`QUERY_BLOCK`] rows ([`query_blocks`]; the block
//! structure of FlashAttention, at the granularity of Burn ops): the mask is always causal, so
//! queries `r0..r1` read only the keys `0..seen + r1`. For a sequence attending to itself this skips
//! the upper triangle, which eager attention computes and then masks (about half of the
//! score work), and the largest tensors, the f32 scores and the probabilities that autodiff
//! keeps for the backward, shrink to one block's rows and the keys it reads (the sum over
//! blocks is about half of the `[heads, seq, seq]` of eager attention). Every row's
//! softmax sees the same unmasked scores as before, so the result is the eager one.

use super::kv_cache::KvCache;
use super::linear::Linear;
use super::rope_op::rotary_heads;
use super::softmax::masked_softmax;
use burn::module::Module;
use burn::tensor::{backend::Backend, Bool, Tensor};

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
    /// `mask` is exactly the causal one (query `i` sees keys `0 ..= seen + i`, no padding):
    /// CUDA's one-pass attention kernel then computes it instead of reading it.
    pub causal_only: bool,
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
        let q = rotary_heads(self.q_proj.forward(x.clone()), h, inputs.cos, inputs.sin);
        let k = rotary_heads(self.k_proj.forward(x.clone()), kvh, inputs.cos, inputs.sin);
        let v = heads(self.v_proj.forward(x), kvh);
        let (k, v) = match cache {
            Some((cache, layer)) => cache.append(layer, k, v),
            None => (k, v),
        };
        // Query head i reads kv head i / rep (transformers' repeat_kv): group the queries of one
        // kv head along the sequence axis instead of copying K and V `rep` times.
        let q = q.reshape([b, kvh, h / kvh, s, d]);
        let out = attend_causal(q, k, v, inputs.mask, inputs.causal_only, QUERY_BLOCK);
        self.o_proj.forward(out.reshape([b, h, s, d]).swap_dims(1, 2).reshape([b, s, h * d]))
    }
}

/// Query rows per block of [`attend_causal`] in the model's attention.
pub const QUERY_BLOCK: usize = 512;

/// Softmax attention of grouped queries, `block` query rows at a time.
/// `q: [b, kv_heads, rep, s, d]` (query head `kv * rep + r` at `[_, kv, r]`), `k, v:
/// [b, kv_heads, seen + s, d]`, `mask: [b or 1, 1, 1, s, seen + s]`, `true` = hidden, causal
/// (a query never sees a later position) -> `[b, kv_heads, rep, s, d]`.
///
/// Under autodiff (training) this is one operation that keeps only q, k, v and recomputes the
/// probabilities in its backward ([`super::attention_grad`]); otherwise
/// [`attend_causal_untracked`]. `causal_only`: `mask` is exactly the causal one
/// ([`AttentionInputs::causal_only`]).
pub fn attend_causal<B: Backend>(q: Tensor<B, 5>, k: Tensor<B, 4>, v: Tensor<B, 4>, mask: &Tensor<B, 5, Bool>, causal_only: bool, block: usize) -> Tensor<B, 5> {
    match super::attention_grad::try_autodiff(q, k, v, mask, causal_only, block) {
        Ok(out) => out,
        Err((q, k, v)) => attend_causal_untracked(q, k, v, mask, causal_only, block),
    }
}

/// [`attend_causal`] without a tape: the fused kernel where it takes the operands (CUDA,
/// bf16/f16, [`super::attention_kernel`]), else [`attend_causal_ops`].
pub fn attend_causal_untracked<B: Backend>(q: Tensor<B, 5>, k: Tensor<B, 4>, v: Tensor<B, 4>, mask: &Tensor<B, 5, Bool>, causal_only: bool, block: usize) -> Tensor<B, 5> {
    match super::attention_kernel::fused_causal(q, k, v, mask, causal_only) {
        Ok(out) => out,
        Err((q, k, v)) => attend_causal_ops(q, k, v, mask, block),
    }
}

/// [`attend_causal`] from tensor ops (what autodiff would differentiate op by op).
pub fn attend_causal_ops<B: Backend>(q: Tensor<B, 5>, k: Tensor<B, 4>, v: Tensor<B, 4>, mask: &Tensor<B, 5, Bool>, block: usize) -> Tensor<B, 5> {
    let [_, _, _, s, _] = q.dims();
    let t = k.dims()[2];
    let blocks = query_blocks(s, t - s, block);
    let [b, kvh, rep, _, d] = q.dims();
    let mut outs: Vec<Tensor<B, 5>> = blocks
        .into_iter()
        .map(|(r0, n, keys)| {
            let (kb, vb, m) = block_keys(&k, &v, mask, r0, n, keys);
            attend(block_rows(&q, r0, n), kb, vb, m, rep).reshape([b, kvh, rep, n, d])
        })
        .collect();
    if outs.len() == 1 {
        return outs.pop().expect("one block");
    }
    Tensor::cat(outs, 3)
}

/// Positions `0..keys` of keys or values `[b, kv_heads, t, d]` for a block's products: a
/// contiguous copy when they are a strict prefix (see [`super::autodiff_op::contiguous`]: the
/// narrowed view broke Burn's CUDA matmul).
pub fn leading_keys<B: Backend>(x: &Tensor<B, 4>, keys: usize) -> Tensor<B, 4> {
    if keys == x.dims()[2] {
        return x.clone();
    }
    super::autodiff_op::contiguous(x.clone().narrow(2, 0, keys))
}

/// The query blocks `(first row, rows, keys read)` of a causal attention of `s` queries after
/// `seen` cached positions: one block up to `block` rows, else blocks of at most about
/// `block * (seen + s)` scores.
///
/// Queries `r0..r1` need only the keys `0..seen + r1`, so `block`-row blocks each read their
/// own number of keys, and each block's f32 scores and probabilities have their own size.
/// Training allocates from an exact-size pool (`train::step`), where a freed buffer serves
/// only its own size: at 2,048 tokens the four 512-row blocks' temporaries kept 0.88 GB
/// reserved where one block needs 0.35 GB. A sequence of up to four blocks without a prefix is
/// therefore cut into three blocks of one size: the first half of the rows reading the first
/// half of the keys, then two quarters reading all keys (each `s^2 / 4` scores; the keys a
/// quarter reads beyond its last row are hidden by the causal mask). That computes 3/4 of eager
/// attention's scores, against 5/8 for 512-row blocks at 2,048 tokens.
pub fn query_blocks(s: usize, seen: usize, block: usize) -> Vec<(usize, usize, usize)> {
    let block = block.max(1);
    if s <= block {
        return vec![(0, s, seen + s)];
    }
    if seen == 0 && s % 4 == 0 && s <= 4 * block {
        let (half, quarter) = (s / 2, s / 4);
        return vec![(0, half, half), (half, quarter, s), (half + quarter, quarter, s)];
    }
    (0..s).step_by(block).map(|r0| (r0, block.min(s - r0), seen + (r0 + block).min(s))).collect()
}

/// Rows `r0 .. r0 + n` of `x: [b, kvh, rep, s, d]` (queries or their output gradient) as the
/// block's products take them: `[b, kvh, rep * n, d]`.
pub fn block_rows<B: Backend>(x: &Tensor<B, 5>, r0: usize, n: usize) -> Tensor<B, 4> {
    let [b, kvh, rep, _, d] = x.dims();
    x.clone().narrow(3, r0, n).reshape([b, kvh, rep * n, d])
}

/// What the block of query rows `r0 .. r0 + n` multiplies, from `k, v: [b, kvh, t, d]` and
/// `mask: [_, 1, 1, s, t]`: keys and values `0..keys` ([`leading_keys`]) and the block's mask.
/// The forward and the backward ([`super::attention_grad`]) take a block's operands only from
/// here and [`block_rows`].
pub fn block_keys<B: Backend>(k: &Tensor<B, 4>, v: &Tensor<B, 4>, mask: &Tensor<B, 5, Bool>, r0: usize, n: usize, keys: usize) -> (Tensor<B, 4>, Tensor<B, 4>, Tensor<B, 5, Bool>) {
    (leading_keys(k, keys), leading_keys(v, keys), mask.clone().narrow(3, r0, n).narrow(4, 0, keys))
}

/// A product of a block's operands (`a: [.., m, k]`, `b: [.., k, n]`): Burn's matmul, except
/// in f32 on CUDA, where cubek's fixed default kernel runs it
/// ([`super::autodiff_op::untuned_matmul`]).
///
/// Why: the kernel Burn's autotuning picked for an f32 product of a 599-token sequence's tail
/// block (87 query rows of 2 heads against 599 keys, head dim 16) gave wrong scores on an
/// H100, relative L2 0.997 against the CPU, with a fresh tuning cache too, whatever its keys
/// and rows were padded to; the fixed kernel gave 3e-4 on the same inputs (2026-12-06,
/// `tests/attention_blocks.rs`). bf16 and f16, the dtypes models run in, keep the autotuned
/// kernels: at the 7B training shape they took 70-92 us per product where the fixed kernel
/// took 128-401 (`medqlora bench kernels --attention`), and the same tests check the bf16
/// gradients through them against the CPU at odd lengths (4e-3 at 599 tokens on that H100).
pub fn block_matmul<B: Backend, const D: usize>(a: Tensor<B, D>, b: Tensor<B, D>) -> Tensor<B, D> {
    if a.dtype() == burn::tensor::DType::F32 {
        super::autodiff_op::untuned_matmul(a, b)
    } else {
        a.matmul(b)
    }
}

/// Eager attention of one block: `q: [b, kvh, rep * n, d]` ([`block_rows`]), `k, v:
/// [b, kvh, t, d]`, `mask: [_, 1, 1, n, t]` ([`block_keys`]) -> `[b, kvh, rep * n, d]`.
fn attend<B: Backend>(q: Tensor<B, 4>, k: Tensor<B, 4>, v: Tensor<B, 4>, mask: Tensor<B, 5, Bool>, rep: usize) -> Tensor<B, 4> {
    let d = q.dims()[3];
    let scores = block_matmul(q, k.swap_dims(2, 3));
    let probs = masked_softmax(scores, mask, rep, (d as f64).powf(-0.5));
    block_matmul(probs, v)
}

#[cfg(test)]
mod tests {
    use super::{attend_causal, attend_causal_ops};
    use crate::model::text::causal_mask;
    use burn::backend::{Autodiff, NdArray};
    use burn::tensor::{Bool, Distribution, Tensor, TensorData};

    type A = Autodiff<NdArray<f32>>;

    /// Blocked attention equals one block over the whole sequence, and the single autodiff
    /// operation (`attend_causal` under autodiff, which recomputes the probabilities in its
    /// backward) equals autodiff through the tensor ops: outputs and the gradients of q, k, v,
    /// with and without a cache prefix, with a padding mask on top of causality, for blocks
    /// that divide the sequence and blocks that leave a remainder.
    #[test]
    fn query_blocks_give_the_unblocked_attention_and_gradients() {
        let dev = Default::default();
        let (b, kvh, rep, d) = (2, 2, 3, 8);
        // s = 12 takes the three equal blocks for block sizes 4, 5 and 10 (see query_blocks).
        for (s, seen) in [(11, 0usize), (11, 3), (12, 0)] {
            let t = seen + s;
            let mut mask = causal_mask::<A>(s, seen, &dev).expand([b, 1, 1, s, t]);
            if seen == 0 {
                // Row 1 is left-padded by 2, as a padded batch prefill would be (a padding
                // query sees itself, so no row is all-hidden).
                let pad: Vec<bool> = (0..b).flat_map(|r| (0..s).flat_map(move |q| (0..t).map(move |k| r == 1 && k < 2 && k != q))).collect();
                mask = mask.bool_or(Tensor::<A, 5, Bool>::from_data(TensorData::new(pad, [b, 1, 1, s, t]), &dev));
            }
            let q0 = Tensor::<NdArray<f32>, 5>::random([b, kvh, rep, s, d], Distribution::Normal(0.0, 1.0), &dev);
            let k0 = Tensor::<NdArray<f32>, 4>::random([b, kvh, t, d], Distribution::Normal(0.0, 1.0), &dev);
            let v0 = Tensor::<NdArray<f32>, 4>::random([b, kvh, t, d], Distribution::Normal(0.0, 1.0), &dev);
            let g = Tensor::<NdArray<f32>, 5>::random([b, kvh, rep, s, d], Distribution::Normal(0.0, 1.0), &dev);
            let run = |block: usize, one_op: bool| {
                let q = Tensor::<A, 5>::from_inner(q0.clone()).require_grad();
                let k = Tensor::<A, 4>::from_inner(k0.clone()).require_grad();
                let v = Tensor::<A, 4>::from_inner(v0.clone()).require_grad();
                // The mask is padded when nothing is cached (above): plain causal otherwise.
                let out = if one_op { attend_causal::<A>(q.clone(), k.clone(), v.clone(), &mask, seen != 0, block) } else { attend_causal_ops::<A>(q.clone(), k.clone(), v.clone(), &mask, block) };
                let grads = (out.clone() * Tensor::from_inner(g.clone())).sum().backward();
                let dk: Tensor<NdArray<f32>, 4> = k.grad(&grads).unwrap();
                let dv: Tensor<NdArray<f32>, 4> = v.grad(&grads).unwrap();
                (out.inner(), q.grad(&grads).unwrap(), dk.unsqueeze::<5>(), dv.unsqueeze::<5>())
            };
            let whole = run(s, false);
            for block in [1, 4, 5, 10, s] {
                for one_op in [false, true] {
                    let blocked = run(block, one_op);
                    for (what, x, y) in [("out", &blocked.0, &whole.0), ("dq", &blocked.1, &whole.1), ("dk", &blocked.2, &whole.2), ("dv", &blocked.3, &whole.3)] {
                        let e = crate::model::autodiff_op::rel_l2(x, y);
                        assert!(e < 1e-5, "seen {seen}, block {block}, one op {one_op}: {what} differs by {e:e} (relative L2)");
                    }
                }
            }
        }
    }

    /// Every plan covers each query row once, each block reads at least the keys its last
    /// row may see and no more than exist, and the three-block plan's blocks are one size.
    #[test]
    fn query_block_plans() {
        use super::query_blocks;
        assert_eq!(query_blocks(2048, 0, 512), vec![(0, 1024, 1024), (1024, 512, 2048), (1536, 512, 2048)]);
        assert_eq!(query_blocks(1001, 0, 512), vec![(0, 512, 512), (512, 489, 1001)]);
        assert_eq!(query_blocks(4096, 0, 512).len(), 8, "longer than four blocks: 512-row blocks");
        assert_eq!(query_blocks(300, 7, 512), vec![(0, 300, 307)]);
        for s in 1..70 {
            for seen in [0, 5] {
                for block in [1, 4, 16, 64] {
                    let plan = query_blocks(s, seen, block);
                    let mut next = 0;
                    for &(r0, n, keys) in &plan {
                        assert_eq!(r0, next, "s {s} seen {seen} block {block}: {plan:?}");
                        assert!(n > 0 && keys >= seen + r0 + n && keys <= seen + s, "s {s} seen {seen} block {block}: {plan:?}");
                        next = r0 + n;
                    }
                    assert_eq!(next, s);
                    if seen == 0 && s % 4 == 0 && block < s && s <= 4 * block {
                        assert_eq!(plan.len(), 3);
                        assert!(plan.iter().all(|&(_, n, keys)| n * keys == s * s / 4), "{plan:?}");
                    }
                }
            }
        }
    }

    /// Blocks skip the keys they may not see: a NaN in the value of the last position
    /// reaches every row of eager attention (probability 0 times NaN), but only the rows of
    /// the block that reads that key when blocked.
    #[test]
    fn blocks_read_only_the_keys_they_may_see() {
        let dev = Default::default();
        let (s, d) = (11, 4);
        let q = Tensor::<NdArray<f32>, 5>::random([1, 1, 2, s, d], Distribution::Normal(0.0, 1.0), &dev);
        let k = Tensor::<NdArray<f32>, 4>::random([1, 1, s, d], Distribution::Normal(0.0, 1.0), &dev);
        let v = Tensor::<NdArray<f32>, 4>::random([1, 1, s, d], Distribution::Normal(0.0, 1.0), &dev)
            .slice_assign([0..1, 0..1, s - 1..s, 0..d], Tensor::full([1, 1, 1, d], f32::NAN, &dev));
        let mask = causal_mask::<NdArray<f32>>(s, 0, &dev);
        let nan_rows = |block: usize| -> Vec<usize> {
            let out = attend_causal(q.clone(), k.clone(), v.clone(), &mask, true, block).into_data().to_vec::<f32>().unwrap();
            (0..s).filter(|&r| out[r * d..(r + 1) * d].iter().any(|x| x.is_nan())).collect()
        };
        assert_eq!(nan_rows(s), (0..s).collect::<Vec<_>>(), "eager attention multiplies every row by the masked value");
        assert_eq!(nan_rows(4), vec![8, 9, 10], "blocks 0..4 and 4..8 must not read key 10");
    }
}
