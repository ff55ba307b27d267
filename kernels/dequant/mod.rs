//! NF4 -> f32/bf16/f16 dequantization: `W[n, k] = NF4_CODE[code] * scale[block]`, the
//! double-quantized scales decoded on the fly.

pub mod reference;

#[cfg(feature = "launch")]
pub(crate) mod kernel;
#[cfg(feature = "launch")]
pub use kernel::{dequantize, dequantize_into};

#[cfg(test)]
mod tests;
