//! 4-bit NormalFloat quantization in the bitsandbytes format (CPU reference and file layout).

pub mod bnb_io;
pub mod convert;
pub mod dynamic_map;
pub mod nf4;

pub use nf4::{Absmax, Nf4Error, Nf4Tensor};
