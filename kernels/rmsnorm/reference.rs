//! Plain CPU reference of RMSNorm and its input gradient, f64 inside (the rounding of the
//! normalized row to the storage dtype, which the forward does before the weight's product, is
//! the caller's `round`).

/// `1 / sqrt(mean(x^2) + eps)` of one row.
fn rstd(x: &[f32], eps: f64) -> f64 {
    let ms = x.iter().map(|&v| v as f64 * v as f64).sum::<f64>() / x.len() as f64;
    1.0 / (ms + eps).sqrt()
}

/// `y = round(x r) * w` per row of `x [rows, w.len()]`, `round` the storage dtype's rounding.
pub fn rmsnorm_forward(x: &[f32], w: &[f32], eps: f64, round: impl Fn(f32) -> f32) -> Vec<f32> {
    let h = w.len();
    assert_eq!(x.len() % h, 0, "rmsnorm reference: x is rows x {h}");
    let mut y = Vec::with_capacity(x.len());
    for row in x.chunks(h) {
        let r = rstd(row, eps);
        for (&v, &wi) in row.iter().zip(w) {
            y.push(round((round((v as f64 * r) as f32) as f64 * wi as f64) as f32));
        }
    }
    y
}

/// The input gradient of [`rmsnorm_forward`] (without its roundings) for the output gradient
/// `dy`: `dx = r dn - x r^3 mean(dn x)`, `dn = dy w`.
pub fn rmsnorm_backward(x: &[f32], w: &[f32], dy: &[f32], eps: f64) -> Vec<f32> {
    let h = w.len();
    assert_eq!(x.len(), dy.len(), "rmsnorm reference: x and dy lengths");
    x.chunks(h)
        .zip(dy.chunks(h))
        .flat_map(|(row, g)| {
            let r = rstd(row, eps);
            let dn: Vec<f64> = g.iter().zip(w).map(|(&g, &w)| g as f64 * w as f64).collect();
            let dot = dn.iter().zip(row).map(|(d, &v)| d * v as f64).sum::<f64>() / h as f64;
            row.iter().zip(dn).map(move |(&v, d)| (r * d - v as f64 * r * r * r * dot) as f32).collect::<Vec<_>>()
        })
        .collect()
}
