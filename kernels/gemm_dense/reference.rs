//! Plain CPU reference of the dense products (f64 sums, rounded once to f32).

/// `Y[m, n] = sum_k X[m, k] W[n, k]` for row-major `x [m, k]`, `w [n, k]`.
pub fn matmul_t(x: &[f32], w: &[f32], m: usize, n: usize, k: usize) -> Vec<f32> {
    assert_eq!((x.len(), w.len()), (m * k, n * k), "x must be [m, k] and w [n, k]");
    let mut y = vec![0f32; m * n];
    for r in 0..m {
        let xr = &x[r * k..(r + 1) * k];
        for c in 0..n {
            let wr = &w[c * k..(c + 1) * k];
            y[r * n + c] = xr.iter().zip(wr).map(|(&a, &b)| a as f64 * b as f64).sum::<f64>() as f32;
        }
    }
    y
}

/// `dX[m, k] = sum_n dY[m, n] W[n, k]` for row-major `dy [m, n]`, `w [n, k]`.
pub fn matmul_dx(dy: &[f32], w: &[f32], m: usize, n: usize, k: usize) -> Vec<f32> {
    assert_eq!((dy.len(), w.len()), (m * n, n * k), "dy must be [m, n] and w [n, k]");
    let mut acc = vec![0f64; m * k];
    for r in 0..m {
        for j in 0..n {
            let g = dy[r * n + j] as f64;
            for (o, &wv) in acc[r * k..(r + 1) * k].iter_mut().zip(&w[j * k..(j + 1) * k]) {
                *o += g * wv as f64;
            }
        }
    }
    acc.into_iter().map(|v| v as f32).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::{rng, uniform};

    /// The two products are each other's transpose: `dY W = (W^T dY^T)^T`, i.e. `matmul_t` of
    /// `dY` against `W^T` (as `[k, n]` rows); and a one-hot row picks a row of `W`.
    #[test]
    fn input_grad_is_the_transposed_forward() {
        let mut rng = rng("dense reference");
        let (m, n, k) = (5, 7, 9);
        let dy = uniform(&mut rng, m * n, 1.0);
        let w = uniform(&mut rng, n * k, 1.0);
        let wt: Vec<f32> = (0..k * n).map(|i| w[(i % n) * k + i / n]).collect();
        let a = matmul_dx(&dy, &w, m, n, k);
        let b = matmul_t(&dy, &wt, m, k, n);
        for (x, y) in a.iter().zip(&b) {
            assert!((x - y).abs() <= 1e-6 * y.abs().max(1.0), "{x} vs {y}");
        }
        let mut onehot = vec![0f32; n];
        onehot[3] = 1.0;
        assert_eq!(matmul_dx(&onehot, &w, 1, n, k), w[3 * k..4 * k].to_vec());
    }
}
