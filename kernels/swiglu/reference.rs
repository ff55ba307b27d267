//! Plain CPU reference of SwiGLU and its gradients, f64 inside.

fn sigmoid(x: f64) -> f64 {
    // exp(-x) overflows to inf for x < -709: 1 / inf = 0, the right limit.
    1.0 / (1.0 + (-x).exp())
}

/// `y = g sigmoid(g) u`, elementwise (`g` and `u` of the same length).
pub fn swiglu_forward(g: &[f32], u: &[f32]) -> Vec<f32> {
    assert_eq!(g.len(), u.len(), "swiglu reference: g and u lengths");
    g.iter()
        .zip(u)
        .map(|(&g, &u)| {
            let g = g as f64;
            (g * sigmoid(g) * u as f64) as f32
        })
        .collect()
}

/// The gradients of [`swiglu_forward`] for the output gradient `dh`: `(dg, du)` with
/// `s = sigmoid(g)`, `du = dh g s`, `dg = dh u s (1 + g (1 - s))`.
pub fn swiglu_backward(g: &[f32], u: &[f32], dh: &[f32]) -> (Vec<f32>, Vec<f32>) {
    assert!(g.len() == u.len() && g.len() == dh.len(), "swiglu reference: g, u and dh lengths");
    let mut dg = Vec::with_capacity(g.len());
    let mut du = Vec::with_capacity(g.len());
    for ((&g, &u), &dh) in g.iter().zip(u).zip(dh) {
        let (g, u, dh) = (g as f64, u as f64, dh as f64);
        let s = sigmoid(g);
        du.push((dh * g * s) as f32);
        dg.push((dh * u * s * (1.0 + g * (1.0 - s))) as f32);
    }
    (dg, du)
}
