//! Plain CPU references of the split-K operand layout and the split-K sum (f64 inside).

/// How the partials are laid out: `[outer, parts, inner]`, row-major, contiguous.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Split {
    /// Independent groups (1 for a plain split-K product).
    pub outer: usize,
    /// Partials summed per output element.
    pub parts: usize,
    /// Output elements per group.
    pub inner: usize,
}

/// `out[o, i] = scale * sum_p x[o, p, i]`.
pub fn splitk_sum(x: &[f32], split: Split, scale: f32) -> Vec<f32> {
    let Split { outer, parts, inner } = split;
    assert_eq!(x.len(), outer * parts * inner, "split-K sum reference: partials length");
    (0..outer)
        .flat_map(|o| (0..inner).map(move |i| (o, i)))
        .map(|(o, i)| ((0..parts).map(|p| x[(o * parts + p) * inner + i] as f64).sum::<f64>() * scale as f64) as f32)
        .collect()
}

/// `x [rows, cols]` as `[parts, rows, cols / parts]`: `y[s, r, j] = x[r, s * width + j]`.
pub fn splitk_operand(x: &[f32], rows: usize, cols: usize, parts: usize) -> Vec<f32> {
    assert_eq!(x.len(), rows * cols, "split-K operand reference: input length");
    let width = cols / parts;
    (0..parts).flat_map(|s| (0..rows).flat_map(move |r| (0..width).map(move |j| x[r * cols + s * width + j]))).collect()
}
