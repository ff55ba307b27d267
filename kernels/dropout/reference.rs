//! The mask and the dropped tensor on the CPU: what the kernel computes, bit for bit.

/// Chris Wellons' `lowbias32` integer hash (a bijection of `u32` with low bias): the
/// kernel's and the reference's only source of randomness.
pub fn mix(mut x: u32) -> u32 {
    x ^= x >> 16;
    x = x.wrapping_mul(0x7feb_352d);
    x ^= x >> 15;
    x = x.wrapping_mul(0x846c_a68b);
    x ^ (x >> 16)
}

/// The per-call key from the seed's four integers (each taken modulo 2^16, as drawn:
/// uniform in `[0, 65536)`, which an f32 uniform sampler gives exactly).
pub fn key(seed: [i64; 4]) -> (u32, u32) {
    let w = seed.map(|v| (v as u32) & 0xffff);
    (mix(w[0] | w[1] << 16), w[2] | w[3] << 16)
}

/// Elements whose hash is below this are dropped: `round(p * 2^32)`, saturated.
pub fn threshold(p: f64) -> u32 {
    (p * 4_294_967_296.0).round().clamp(0.0, u32::MAX as f64) as u32
}

/// Whether element `i` survives under the key: `mix(mix(i ^ k0) ^ k1) >= threshold`.
pub fn keep(i: u32, (k0, k1): (u32, u32), threshold: u32) -> bool {
    mix(mix(i ^ k0) ^ k1) >= threshold
}

/// The keep mask of `n` elements.
pub fn keep_mask(n: usize, seed: [i64; 4], p: f64) -> Vec<bool> {
    let (k, t) = (key(seed), threshold(p));
    (0..n).map(|i| keep(i as u32, k, t)).collect()
}

/// `x` with dropped elements zeroed and kept ones multiplied by `1 / (1 - p)` in f32.
pub fn dropout(x: &[f32], seed: [i64; 4], p: f64) -> Vec<f32> {
    let scale = (1.0 / (1.0 - p)) as f32;
    x.iter().zip(keep_mask(x.len(), seed, p)).map(|(&v, k)| if k { v * scale } else { 0.0 }).collect()
}

/// `x [rows, cols]` (row-major) as `[parts, rows, cols / parts]`: column slice `s` as batch `s`.
pub fn split_columns(x: &[f32], rows: usize, cols: usize, parts: usize) -> Vec<f32> {
    let w = cols / parts;
    (0..parts).flat_map(|s| (0..rows).flat_map(move |r| (0..w).map(move |j| x[r * cols + s * w + j]))).collect()
}
