//! Plain CPU reference of the backward product of a frozen weight.

use crate::nf4::Nf4Host;

/// `dX[m, k] = sum_n dY[m, n] * W[n, k]`, accumulated in f64 and rounded once to f32.
/// `dy` is `[m, w.n]` row-major.
pub fn matmul_dx(dy: &[f32], m: usize, w: &Nf4Host<'_>) -> Vec<f32> {
    assert_eq!(dy.len(), m * w.n, "dy must be [m, n]");
    let dense = crate::dequant::reference::dequantize(w);
    let mut acc = vec![0f64; m * w.k];
    for r in 0..m {
        for c in 0..w.n {
            let g = dy[r * w.n + c] as f64;
            let wr = &dense[c * w.k..(c + 1) * w.k];
            let out = &mut acc[r * w.k..(r + 1) * w.k];
            for (o, &b) in out.iter_mut().zip(wr) {
                *o += g * b as f64;
            }
        }
    }
    acc.into_iter().map(|v| v as f32).collect()
}
