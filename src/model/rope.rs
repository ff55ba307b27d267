//! Rotary position embeddings with 3-D position ids (M-RoPE).
//!
//! Follows transformers `models/qwen2_5_vl/modeling_qwen2_5_vl.py`:
//! `Qwen2_5_VLRotaryEmbedding.forward` (f32 `inv_freq`, `freqs = pos * inv_freq`,
//! `emb = cat(freqs, freqs)`) and `apply_multimodal_rotary_pos_emb` (the head dimension is cut
//! into `mrope_section * 2` chunks; chunk `i` takes its angle from position row `i % 3`).
//! Plain Qwen2 RoPE (`models/qwen2/modeling_qwen2.py::apply_rotary_pos_emb`) is the case
//! where the three rows (temporal, height, width) are equal, so one code path serves both.

use burn::tensor::{backend::Backend, Tensor, TensorData};

/// Position ids for one batch: `rows[r][b][s]` for r in (temporal, height, width).
#[derive(Debug, Clone, PartialEq)]
pub struct PositionIds {
    /// `[3][batch][seq]`.
    pub rows: [Vec<Vec<i64>>; 3],
}

impl PositionIds {
    /// Text-only positions `start..start+seq` for every batch row (all three rows equal).
    pub fn text(batch: usize, seq: usize, start: usize) -> Self {
        let row: Vec<Vec<i64>> = (0..batch).map(|_| (start..start + seq).map(|p| p as i64).collect()).collect();
        Self { rows: [row.clone(), row.clone(), row] }
    }

    /// `[batch, seq]`.
    pub fn dims(&self) -> [usize; 2] {
        [self.rows[0].len(), self.rows[0].first().map_or(0, Vec::len)]
    }
}

/// Precomputed inverse frequencies and the M-RoPE section layout for one model.
#[derive(Debug, Clone)]
pub struct Rotary {
    inv_freq: Vec<f32>,
    /// For each of the `head_dim / 2` frequencies, which position row (0, 1, 2) drives it.
    row_of_freq: Vec<usize>,
}

impl Rotary {
    /// `head_dim` must be even; `mrope_section` (if any) sums to `head_dim / 2`.
    pub fn new(head_dim: usize, theta: f64, mrope_section: Option<&[usize]>) -> Self {
        let half = head_dim / 2;
        // Same arithmetic as torch: base ** (arange(0, dim, 2) / dim) in f32.
        let inv_freq = (0..half)
            .map(|i| 1.0f32 / (theta as f32).powf((2 * i) as f32 / head_dim as f32))
            .collect();
        let row_of_freq = match mrope_section {
            Some(sec) => sec.iter().enumerate().flat_map(|(row, &n)| std::iter::repeat_n(row, n)).collect(),
            None => vec![0; half],
        };
        Self { inv_freq, row_of_freq }
    }

    /// Returns `(cos, sin)`, each `[batch, 1, seq, head_dim]`, in the device's float dtype.
    pub fn cos_sin<B: Backend>(&self, pos: &PositionIds, device: &B::Device) -> (Tensor<B, 4>, Tensor<B, 4>) {
        let [batch, seq] = pos.dims();
        let half = self.inv_freq.len();
        let dim = 2 * half;
        let mut cos = vec![0f32; batch * seq * dim];
        let mut sin = vec![0f32; batch * seq * dim];
        for b in 0..batch {
            for s in 0..seq {
                let base = (b * seq + s) * dim;
                for (i, (&f, &row)) in self.inv_freq.iter().zip(&self.row_of_freq).enumerate() {
                    let angle = pos.rows[row][b][s] as f32 * f;
                    let (sn, cs) = angle.sin_cos();
                    // emb = cat(freqs, freqs): both halves use frequency i.
                    cos[base + i] = cs;
                    cos[base + half + i] = cs;
                    sin[base + i] = sn;
                    sin[base + half + i] = sn;
                }
            }
        }
        let shape = [batch, 1, seq, dim];
        (
            Tensor::from_data(TensorData::new(cos, shape), device),
            Tensor::from_data(TensorData::new(sin, shape), device),
        )
    }
}

/// `x * cos + rotate_half(x) * sin` with `rotate_half(x) = cat(-x[.., d/2..], x[.., ..d/2])`.
/// `x: [batch, heads, seq, head_dim]`, `cos`/`sin`: `[batch, 1, seq, head_dim]`.
pub fn apply_rotary<B: Backend>(x: Tensor<B, 4>, cos: &Tensor<B, 4>, sin: &Tensor<B, 4>) -> Tensor<B, 4> {
    let d = x.dims()[3];
    let x1 = x.clone().narrow(3, 0, d / 2);
    let x2 = x.clone().narrow(3, d / 2, d / 2);
    let rotated = Tensor::cat(vec![x2.neg(), x1], 3);
    x * cos.clone() + rotated * sin.clone()
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::backend::NdArray;

    #[test]
    fn mrope_with_equal_rows_is_plain_rope() {
        let device = Default::default();
        let plain = Rotary::new(16, 10_000.0, None);
        let mrope = Rotary::new(16, 10_000.0, Some(&[2, 3, 3]));
        let pos = PositionIds::text(2, 5, 7);
        let (c1, s1) = plain.cos_sin::<NdArray>(&pos, &device);
        let (c2, s2) = mrope.cos_sin::<NdArray>(&pos, &device);
        c1.into_data().assert_eq(&c2.into_data(), true);
        s1.into_data().assert_eq(&s2.into_data(), true);
    }

    #[test]
    fn mrope_rows_drive_their_sections() {
        let device = Default::default();
        let r = Rotary::new(8, 100.0, Some(&[1, 1, 2]));
        // Only the width row (2) moves: frequencies 2 and 3 (and their copies 6, 7) change.
        let mut pos = PositionIds::text(1, 1, 0);
        pos.rows[2][0][0] = 5;
        let (cos, _) = r.cos_sin::<NdArray>(&pos, &device);
        let c = cos.into_data().to_vec::<f32>().unwrap();
        for i in [0usize, 1, 4, 5] {
            assert_eq!(c[i], 1.0, "frequency {i} should see position 0");
        }
        for i in [2usize, 3, 6, 7] {
            assert!(c[i] < 1.0, "frequency {i} should see position 5");
        }
    }
}
