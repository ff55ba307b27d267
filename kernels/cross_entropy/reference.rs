//! Plain CPU reference of the vocabulary cross-entropy and its gradient, f64 inside.

/// `(lse, nll)` per row of `logits [rows, vocab]` for next tokens `targets [rows]`: the
/// log-sum-exp and `lse - logits[t]` (NaN for a target outside the vocabulary).
pub fn cross_entropy_forward(logits: &[f32], targets: &[i64], vocab: usize) -> (Vec<f32>, Vec<f32>) {
    assert_eq!(logits.len(), targets.len() * vocab, "cross-entropy reference: logits length");
    let mut lse = Vec::with_capacity(targets.len());
    let mut nll = Vec::with_capacity(targets.len());
    for (row, &t) in logits.chunks(vocab).zip(targets) {
        let max = row.iter().fold(f64::NEG_INFINITY, |m, &x| m.max(x as f64));
        let l = max + row.iter().map(|&x| (x as f64 - max).exp()).sum::<f64>().ln();
        lse.push(l as f32);
        nll.push(if (0..vocab as i64).contains(&t) { (l - row[t as usize] as f64) as f32 } else { f32::NAN });
    }
    (lse, nll)
}

/// `dx = (softmax(x) - onehot(t)) g` for the row losses' gradient `g`, from the forward's `lse`.
pub fn cross_entropy_backward(logits: &[f32], targets: &[i64], lse: &[f32], g: &[f32], vocab: usize) -> Vec<f32> {
    assert_eq!(lse.len(), targets.len(), "cross-entropy reference: one lse per row");
    assert_eq!(g.len(), targets.len(), "cross-entropy reference: one gradient per row");
    logits
        .chunks(vocab)
        .zip(targets.iter().zip(lse).zip(g))
        .flat_map(|(row, ((&t, &l), &g))| {
            row.iter().enumerate().map(move |(j, &x)| {
                let onehot = if j as i64 == t { 1.0 } else { 0.0 };
                (((x as f64 - l as f64).exp() - onehot) * g as f64) as f32
            })
        })
        .collect()
}
