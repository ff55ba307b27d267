//! Per-layer key/value cache for incremental decoding.

use burn::tensor::{backend::Backend, Tensor};

/// Keys (after RoPE) and values of every position seen so far, for one decoder layer.
#[derive(Debug, Clone)]
pub struct LayerCache<B: Backend> {
    /// `[batch, kv_heads, seen, head_dim]`.
    pub keys: Tensor<B, 4>,
    /// `[batch, kv_heads, seen, head_dim]`.
    pub values: Tensor<B, 4>,
}

/// The cache of a whole decoder: one entry per layer, empty until the first forward.
#[derive(Debug, Clone)]
pub struct KvCache<B: Backend> {
    layers: Vec<Option<LayerCache<B>>>,
}

impl<B: Backend> KvCache<B> {
    /// An empty cache for `num_layers` layers.
    pub fn new(num_layers: usize) -> Self {
        Self { layers: vec![None; num_layers] }
    }

    /// Number of positions already cached (0 when empty).
    pub fn seq_len(&self) -> usize {
        self.layers.first().and_then(|l| l.as_ref()).map_or(0, |l| l.keys.dims()[2])
    }

    /// Appends this step's keys/values for `layer` and returns the full keys/values.
    /// `keys`, `values`: `[batch, kv_heads, new, head_dim]` -> `[batch, kv_heads, seen + new, head_dim]`.
    pub fn append(&mut self, layer: usize, keys: Tensor<B, 4>, values: Tensor<B, 4>) -> (Tensor<B, 4>, Tensor<B, 4>) {
        let merged = match self.layers[layer].take() {
            None => LayerCache { keys, values },
            Some(old) => LayerCache {
                keys: Tensor::cat(vec![old.keys, keys], 2),
                values: Tensor::cat(vec![old.values, values], 2),
            },
        };
        let out = (merged.keys.clone(), merged.values.clone());
        self.layers[layer] = Some(merged);
        out
    }

    /// Stacks the caches of single prompts (batch 1 each) into one batch, each row
    /// left-padded with zeros to `len` positions (the padding keys are zeros, finite, and
    /// must be masked by the caller). Rows longer than `len` are a caller error.
    pub fn left_padded(rows: Vec<KvCache<B>>, len: usize) -> Self {
        let num_layers = rows.first().map_or(0, |r| r.layers.len());
        let pad = |t: Tensor<B, 4>| {
            let n = t.dims()[2];
            assert!(n <= len, "a row of {n} positions does not fit {len}");
            if n == len {
                t
            } else {
                Tensor::cat(vec![t.clone().narrow(2, 0, 1).zeros_like().repeat_dim(2, len - n), t], 2)
            }
        };
        let mut per_layer: Vec<(Vec<Tensor<B, 4>>, Vec<Tensor<B, 4>>)> = (0..num_layers).map(|_| (Vec::new(), Vec::new())).collect();
        for row in rows {
            for (layer, entry) in row.layers.into_iter().enumerate() {
                let entry = entry.expect("every layer of a prefilled cache is set");
                per_layer[layer].0.push(pad(entry.keys));
                per_layer[layer].1.push(pad(entry.values));
            }
        }
        Self { layers: per_layer.into_iter().map(|(k, v)| Some(LayerCache { keys: Tensor::cat(k, 0), values: Tensor::cat(v, 0) })).collect() }
    }
}
