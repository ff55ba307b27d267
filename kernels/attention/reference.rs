//! The plain CPU attention the kernel is tested against: eager attention (transformers
//! `eager_attention_forward`) of grouped queries under a causal-plus-padding mask, with the
//! compute dtype's roundings where the model's tensor-op path has them (the scores as the
//! product's output, the probabilities before the product with V, the output).

/// The layout of one causal attention: queries `[batch, kv_heads, rep, s, d]` (query head
/// `kv * rep + r`), keys and values `[batch, kv_heads, t, d]`, mask `[mask_batches, s, t]`
/// (`true`/non-zero = hidden; batch `b` reads mask batch `b % mask_batches`), output like the
/// queries. `t - s` positions come before the queries (a cache); the mask must hide every key
/// after a query's own position (`key > t - s + row`): the kernel does not read those keys.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Causal {
    /// Sequences.
    pub batch: usize,
    /// Key/value heads.
    pub kv_heads: usize,
    /// Query heads per key/value head.
    pub rep: usize,
    /// Query positions.
    pub s: usize,
    /// Key positions (`>= s`).
    pub t: usize,
    /// Head width.
    pub d: usize,
    /// Mask batches: 1 (one mask for every sequence) or `batch`.
    pub mask_batches: usize,
}

impl Causal {
    /// Elements of the queries (and of the output).
    pub fn q_len(&self) -> usize {
        self.batch * self.kv_heads * self.rep * self.s * self.d
    }

    /// Elements of the keys (and of the values).
    pub fn kv_len(&self) -> usize {
        self.batch * self.kv_heads * self.t * self.d
    }

    /// Elements of the mask.
    pub fn mask_len(&self) -> usize {
        self.mask_batches * self.s * self.t
    }
}

/// `softmax(round(q k^T) * scale + mask) -> round -> (.) v -> round` per query row, f32 math;
/// `round` maps an f32 to the nearest value of the compute dtype (identity for f32). A row
/// that sees no key gives zeros.
pub fn causal_attention(q: &[f32], k: &[f32], v: &[f32], mask: &[bool], shape: Causal, scale: f32, round: impl Fn(f32) -> f32) -> Vec<f32> {
    let Causal { batch, kv_heads, rep, s, t, d, mask_batches } = shape;
    let mut out = vec![0f32; shape.q_len()];
    let mut scores = vec![0f32; t];
    for b in 0..batch {
        for kv in 0..kv_heads {
            let kvb = (b * kv_heads + kv) * t * d;
            for r in 0..rep {
                for i in 0..s {
                    let qrow = (((b * kv_heads + kv) * rep + r) * s + i) * d;
                    let mrow = ((b % mask_batches) * s + i) * t;
                    let mut mx = f32::NEG_INFINITY;
                    for j in 0..t {
                        scores[j] = f32::NEG_INFINITY;
                        if !mask[mrow + j] {
                            let dot: f32 = (0..d).map(|e| q[qrow + e] * k[kvb + j * d + e]).sum();
                            scores[j] = round(dot) * scale;
                            mx = mx.max(scores[j]);
                        }
                    }
                    if mx == f32::NEG_INFINITY {
                        continue;
                    }
                    let sum: f32 = scores.iter().map(|&x| (x - mx).exp()).sum();
                    for e in 0..d {
                        let acc: f32 = (0..t).filter(|&j| !mask[mrow + j]).map(|j| round((scores[j] - mx).exp() / sum) * v[kvb + j * d + e]).sum();
                        out[qrow + e] = round(acc);
                    }
                }
            }
        }
    }
    out
}

/// A causal mask `[mask_batches, s, t]` with the first `pads[b]` positions of mask batch `b`
/// hidden from every query but their own (left padding, as a padded batch prefill has: a
/// padding query sees itself, so no row is all-hidden).
pub fn causal_mask(s: usize, t: usize, pads: &[usize]) -> Vec<bool> {
    let seen = t - s;
    pads.iter()
        .flat_map(|&pad| (0..s).flat_map(move |i| (0..t).map(move |j| j > seen + i || (j < pad && j != seen + i))))
        .collect()
}
