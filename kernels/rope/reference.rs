//! Plain CPU reference of the rotary embedding, f64 inside, in the input's own layout.

/// `[batch, seq, heads, head_dim]` of a projection's output.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RopeDims {
    /// Batch.
    pub batch: usize,
    /// Positions.
    pub seq: usize,
    /// Heads.
    pub heads: usize,
    /// Head dimension (even).
    pub head_dim: usize,
}

impl RopeDims {
    /// Elements of `x`.
    pub fn len(&self) -> usize {
        self.batch * self.seq * self.heads * self.head_dim
    }

    /// True when `x` has no elements.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// `x cos + rotate_half(x) sin` with `sin` scaled by `sign` (1: the embedding; -1: its
/// gradient), for `x [b, s, n, d]` and `cos, sin [b, s, d]`; same layout out.
pub fn rope(x: &[f32], cos: &[f32], sin: &[f32], dims: RopeDims, sign: f32) -> Vec<f32> {
    let RopeDims { batch, seq, heads, head_dim: d } = dims;
    assert_eq!(x.len(), dims.len(), "rope reference: x length");
    assert_eq!(cos.len(), batch * seq * d, "rope reference: cos length");
    assert_eq!(sin.len(), cos.len(), "rope reference: sin length");
    let half = d / 2;
    let mut y = vec![0f32; x.len()];
    for bs in 0..batch * seq {
        for n in 0..heads {
            let o = (bs * heads + n) * d;
            for j in 0..d {
                let rot = if j < half { -(x[o + j + half] as f64) } else { x[o + j - half] as f64 };
                y[o + j] = (x[o + j] as f64 * cos[bs * d + j] as f64 + rot * sign as f64 * sin[bs * d + j] as f64) as f32;
            }
        }
    }
    y
}

/// `[b, s, n, d]` -> `[b, n, s, d]` (`to_heads`) or back.
pub fn transpose_heads(x: &[f32], dims: RopeDims, to_heads: bool) -> Vec<f32> {
    let RopeDims { batch, seq, heads, head_dim: d } = dims;
    let mut y = vec![0f32; x.len()];
    for b in 0..batch {
        for s in 0..seq {
            for n in 0..heads {
                let bsnd = ((b * seq + s) * heads + n) * d;
                let bnsd = ((b * heads + n) * seq + s) * d;
                let (from, to) = if to_heads { (bsnd, bnsd) } else { (bnsd, bsnd) };
                y[to..to + d].copy_from_slice(&x[from..from + d]);
            }
        }
    }
    y
}
