//! Plain CPU reference of `Y = X W^T` (used for the GEMV and the fused GEMM alike).

use crate::nf4::Nf4Host;

/// `Y[m, n] = sum_k X[m, k] * W[n, k]`, accumulated in f64 and rounded once to f32.
/// `x` is `[m, w.k]` row-major.
pub fn matmul_t(x: &[f32], m: usize, w: &Nf4Host<'_>) -> Vec<f32> {
    assert_eq!(x.len(), m * w.k, "x must be [m, k]");
    let dense = crate::dequant::reference::dequantize(w);
    let mut y = vec![0f32; m * w.n];
    for r in 0..m {
        let xr = &x[r * w.k..(r + 1) * w.k];
        for c in 0..w.n {
            let wr = &dense[c * w.k..(c + 1) * w.k];
            y[r * w.n + c] = xr.iter().zip(wr).map(|(&a, &b)| a as f64 * b as f64).sum::<f64>() as f32;
        }
    }
    y
}
