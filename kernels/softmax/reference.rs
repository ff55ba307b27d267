//! Plain CPU reference of the masked softmax and its gradient, f64 inside.

/// Which mask row each score row reads (see the module docs).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rows {
    /// Score rows.
    pub rows: usize,
    /// Keys per row.
    pub keys: usize,
    /// Query rows per head (rows of one mask batch).
    pub n: usize,
    /// Rows per batch: heads times `n`.
    pub group: usize,
    /// Batches of the mask (1: shared by every batch).
    pub mask_batches: usize,
}

impl Rows {
    /// Mask row read by score row `r`.
    pub fn mask_row(&self, r: usize) -> usize {
        ((r / self.group) % self.mask_batches) * self.n + r % self.n
    }
}

/// Row `r`'s probabilities: `softmax(s * scale)` over the visible keys, 0 on hidden ones; a
/// row with no visible key is all zeros.
fn row_probs(s: &[f32], hidden: &[bool], scale: f64) -> Vec<f64> {
    let max = s.iter().zip(hidden).filter(|(_, &h)| !h).map(|(&x, _)| x as f64 * scale).fold(f64::NEG_INFINITY, f64::max);
    let e: Vec<f64> = s.iter().zip(hidden).map(|(&x, &h)| if h { 0.0 } else { (x as f64 * scale - max).exp() }).collect();
    let sum: f64 = e.iter().sum();
    e.into_iter().map(|v| if sum > 0.0 { v / sum } else { 0.0 }).collect()
}

/// `P` for scores `s [rows, keys]` and `mask [mask_batches * n, keys]` (`true` = hidden).
pub fn masked_softmax(s: &[f32], mask: &[bool], layout: Rows, scale: f32) -> Vec<f32> {
    let Rows { rows, keys, .. } = layout;
    assert_eq!(s.len(), rows * keys, "masked softmax reference: scores length");
    assert_eq!(mask.len(), layout.mask_batches * layout.n * keys, "masked softmax reference: mask length");
    (0..rows)
        .flat_map(|r| {
            let m = layout.mask_row(r);
            row_probs(&s[r * keys..(r + 1) * keys], &mask[m * keys..(m + 1) * keys], scale as f64)
        })
        .map(|v| v as f32)
        .collect()
}

/// `(P, dS)` for the output gradient `dp [rows, keys]`: `dS = P (dP - sum(P dP)) scale`.
pub fn masked_softmax_backward(s: &[f32], dp: &[f32], mask: &[bool], layout: Rows, scale: f32) -> (Vec<f32>, Vec<f32>) {
    let Rows { rows, keys, .. } = layout;
    assert_eq!(dp.len(), rows * keys, "masked softmax reference: dP length");
    let mut p_out = Vec::with_capacity(rows * keys);
    let mut ds_out = Vec::with_capacity(rows * keys);
    for r in 0..rows {
        let m = layout.mask_row(r);
        let p = row_probs(&s[r * keys..(r + 1) * keys], &mask[m * keys..(m + 1) * keys], scale as f64);
        let dpr = &dp[r * keys..(r + 1) * keys];
        let dot: f64 = p.iter().zip(dpr).map(|(&p, &g)| p * g as f64).sum();
        for (&p, &g) in p.iter().zip(dpr) {
            p_out.push(p as f32);
            ds_out.push((p * (g as f64 - dot) * scale as f64) as f32);
        }
    }
    (p_out, ds_out)
}
