//! Plain CPU reference of the NF4 dequantization.

use crate::nf4::Nf4Host;

/// `W[n, k]` in f32, row-major: `NF4_CODE[code] * scale[block]` for every element.
pub fn dequantize(w: &Nf4Host<'_>) -> Vec<f32> {
    (0..w.n * w.k).map(|i| w.value(i)).collect()
}
