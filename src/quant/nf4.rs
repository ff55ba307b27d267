//! NF4 exactly as bitsandbytes stores it (`quantize_4bit(quant_type="nf4")`): the CPU
//! reference every GPU kernel is tested against, and the quantizer `medqlora quantize` uses.
//!
//! Follows bitsandbytes 0.50 `csrc/kernels.cu`: `kQuantizeBlockwise<NF4>` (per block:
//! `absmax = max|x|` in f32, `x * (1 / absmax)` mapped by the threshold tree `dQuantizeNF4`,
//! element 2j in the high nibble), `kQuantizeBlockwise<General8bit>` with `dQuantize<0>` (the
//! binary search used for double quantization), and `bitsandbytes/functional.py`
//! (`quantize_4bit`: `offset = mean(absmax)`, `absmax - offset` quantized with blocksize 256).

use super::dynamic_map::DYNAMIC_MAP_SIGNED;

/// The 16 NF4 values (`nf4_dequantization_lut`, index = 4-bit code) and the blocks per nested
/// scale of the double quantization: one definition, shared with the kernels.
pub use medqlora_kernels::nf4::{NESTED_BLOCKSIZE, NF4_CODE};

/// Block sizes bitsandbytes accepts.
pub const VALID_BLOCKSIZES: [usize; 8] = [32, 64, 128, 256, 512, 1024, 2048, 4096];

/// Errors building NF4 data.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum Nf4Error {
    #[error("blocksize {0} is not one of 32, 64, 128, 256, 512, 1024, 2048, 4096 (bitsandbytes' choices)")]
    Blocksize(usize),
    #[error("{what} has {found} entries, expected {expected} for {elements} elements with blocksize {blocksize}")]
    Length { what: &'static str, found: usize, expected: usize, elements: usize, blocksize: usize },
}

/// The per-block scales: plain f32, or double-quantized (`compress_statistics=True`).
#[derive(Debug, Clone, PartialEq)]
pub enum Absmax {
    /// One f32 per block (`weight.absmax` F32).
    F32(Vec<f32>),
    /// `weight.absmax` U8 codes into [`DYNAMIC_MAP_SIGNED`], one f32 scale per 256 blocks
    /// (`nested_absmax`) and the subtracted mean (`nested_offset`).
    Double {
        /// One u8 code per block.
        codes: Vec<u8>,
        /// One f32 per [`NESTED_BLOCKSIZE`] blocks.
        nested_absmax: Vec<f32>,
        /// `mean(absmax)`, added back after decoding.
        offset: f32,
    },
}

/// One quantized tensor in bitsandbytes layout.
#[derive(Debug, Clone, PartialEq)]
pub struct Nf4Tensor {
    /// Logical shape (row-major), e.g. `[out, in]` for a linear weight.
    pub shape: Vec<usize>,
    /// Elements per absmax block.
    pub blocksize: usize,
    /// `(n + 1) / 2` bytes; element 2j in the high nibble of byte j (an odd count ends in the
    /// code of 0.0).
    pub packed: Vec<u8>,
    /// Per-block scales.
    pub absmax: Absmax,
}

/// `dQuantizeNF4`: the nearest NF4 code by the tree of midpoints, ties to the lower code.
/// A NaN (the 0 * inf of an all-zero block) falls through to code 0, as on the GPU.
#[inline]
pub fn quantize_nf4_value(x: f32) -> u8 {
    if x > 0.039_790_15 {
        if x > 0.389_312_54 {
            if x > 0.642_786_9 {
                if x > 0.861_478_4 { 0b1111 } else { 0b1110 }
            } else if x > 0.501_663_4 { 0b1101 } else { 0b1100 }
        } else if x > 0.203_521_25 {
            if x > 0.292_013_77 { 0b1011 } else { 0b1010 }
        } else if x > 0.120_255_25 { 0b1001 } else { 0b1000 }
    } else if x > -0.339_679_43 {
        if x > -0.137_911_73 {
            if x > -0.045_525_018 { 0b0111 } else { 0b0110 }
        } else if x > -0.234_607_4 { 0b0101 } else { 0b0100 }
    } else if x > -0.610_632_9 {
        if x > -0.459_995_27 { 0b0011 } else { 0b0010 }
    } else if x > -0.848_096_4 { 0b0001 } else { 0b0000 }
}

/// `dQuantize<0>` of bitsandbytes' `kernels.cu`: a 7-step binary search in a sorted 256-entry
/// code, then the nearest of (lower, pivot, upper) by midpoints — ties go to the pivot.
#[inline]
pub fn quantize_8bit_value(code: &[f32; 256], x: f32) -> u8 {
    let (mut pivot, mut upper_pivot, mut lower_pivot) = (127usize, 255usize, 0usize);
    let (mut lower, mut upper) = (-1.0f32, 1.0f32);
    let mut val = code[pivot];
    let mut step = 64;
    while step > 0 {
        if x > val {
            lower_pivot = pivot;
            lower = val;
            pivot += step;
        } else {
            upper_pivot = pivot;
            upper = val;
            pivot -= step;
        }
        val = code[pivot];
        step >>= 1;
    }
    if upper_pivot == 255 {
        upper = code[upper_pivot];
    }
    if lower_pivot == 0 {
        lower = code[lower_pivot];
    }
    if x > val {
        if x > (upper + val) * 0.5 { upper_pivot as u8 } else { pivot as u8 }
    } else if x < (lower + val) * 0.5 {
        lower_pivot as u8
    } else {
        pivot as u8
    }
}

fn block_absmax(block: &[f32]) -> f32 {
    block.iter().fold(f32::MIN, |m, v| m.max(v.abs()))
}

/// `kQuantizeBlockwise<General8bit>`: `(codes, absmax per block)`.
pub fn quantize_blockwise_8bit(x: &[f32], blocksize: usize, code: &[f32; 256]) -> (Vec<u8>, Vec<f32>) {
    let mut codes = Vec::with_capacity(x.len());
    let mut absmax = Vec::with_capacity(x.len().div_ceil(blocksize));
    for block in x.chunks(blocksize) {
        let m = block_absmax(block);
        let inv = 1.0 / m;
        absmax.push(m);
        codes.extend(block.iter().map(|&v| quantize_8bit_value(code, v * inv)));
    }
    (codes, absmax)
}

/// `kDequantizeBlockwise<General8bit>`: `code[q] * absmax[block]`.
pub fn dequantize_blockwise_8bit(codes: &[u8], absmax: &[f32], blocksize: usize, code: &[f32; 256]) -> Vec<f32> {
    codes.iter().enumerate().map(|(i, &q)| code[q as usize] * absmax[i / blocksize]).collect()
}

/// `mean(absmax)` as the f32 that torch's reduction returns for these sizes: the f64 sum
/// rounded once (torch accumulates blockwise in wider precision; see tests/nf4_bnb.rs for the
/// measured agreement).
pub fn mean_f32(v: &[f32]) -> f32 {
    (v.iter().map(|&x| x as f64).sum::<f64>() / v.len() as f64) as f32
}

/// Quantizes `x` (row-major, any float source already widened to f32) to NF4.
pub fn quantize(x: &[f32], shape: &[usize], blocksize: usize, double_quant: bool) -> Result<Nf4Tensor, Nf4Error> {
    if !VALID_BLOCKSIZES.contains(&blocksize) {
        return Err(Nf4Error::Blocksize(blocksize));
    }
    let n: usize = shape.iter().product();
    if x.len() != n {
        return Err(Nf4Error::Length { what: "input", found: x.len(), expected: n, elements: n, blocksize });
    }
    let mut packed = vec![0u8; n.div_ceil(2)];
    let mut absmax = vec![0f32; n.div_ceil(blocksize)];
    // Blocks are independent and start at even indices (blocksize >= 32), so threads own
    // disjoint ranges of bytes and scales; the result does not depend on the thread count.
    let threads = if n >= 1 << 20 { std::thread::available_parallelism().map_or(1, |t| t.get()) } else { 1 };
    let per = absmax.len().div_ceil(threads).max(1);
    std::thread::scope(|scope| {
        let parts = x.chunks(per * blocksize).zip(packed.chunks_mut(per * blocksize / 2)).zip(absmax.chunks_mut(per));
        for ((xs, bytes), scales) in parts {
            scope.spawn(move || quantize_range(xs, blocksize, bytes, scales));
        }
    });
    let absmax = if double_quant { double_quantize(&absmax) } else { Absmax::F32(absmax) };
    Ok(Nf4Tensor { shape: shape.to_vec(), blocksize, packed, absmax })
}

/// Quantizes whole blocks of `x` into `packed` (`x.len().div_ceil(2)` bytes, zeroed) and
/// `absmax` (one per block).
fn quantize_range(x: &[f32], blocksize: usize, packed: &mut [u8], absmax: &mut [f32]) {
    for (b, block) in x.chunks(blocksize).enumerate() {
        let m = block_absmax(block);
        let inv = 1.0 / m;
        absmax[b] = m;
        for (j, &v) in block.iter().enumerate() {
            let i = b * blocksize + j;
            let q = quantize_nf4_value(v * inv);
            packed[i / 2] |= if i % 2 == 0 { q << 4 } else { q };
        }
        if block.len() % 2 == 1 {
            // The GPU kernel loads past the end as 0.0 and quantizes it too: an odd count
            // ends in the code of 0.0 (0b0111), not in zero bits.
            packed[x.len() / 2] |= quantize_nf4_value(0.0 * inv);
        }
    }
}

/// Second-level quantization of the block scales, given their mean.
pub fn double_quantize_with_offset(absmax: &[f32], offset: f32) -> Absmax {
    let centered: Vec<f32> = absmax.iter().map(|&a| a - offset).collect();
    let (codes, nested_absmax) = quantize_blockwise_8bit(&centered, NESTED_BLOCKSIZE, &DYNAMIC_MAP_SIGNED);
    Absmax::Double { codes, nested_absmax, offset }
}

/// Second-level quantization of the block scales (`compress_statistics=True`).
pub fn double_quantize(absmax: &[f32]) -> Absmax {
    double_quantize_with_offset(absmax, mean_f32(absmax))
}

impl Nf4Tensor {
    /// Number of logical elements.
    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }

    /// Number of absmax blocks.
    pub fn num_blocks(&self) -> usize {
        self.numel().div_ceil(self.blocksize)
    }

    /// Checks that the packed bytes and scales fit the shape (for data read from disk).
    pub fn validate(&self) -> Result<(), Nf4Error> {
        if !VALID_BLOCKSIZES.contains(&self.blocksize) {
            return Err(Nf4Error::Blocksize(self.blocksize));
        }
        let (n, bs) = (self.numel(), self.blocksize);
        let len = |what, found, expected| {
            if found == expected { Ok(()) } else { Err(Nf4Error::Length { what, found, expected, elements: n, blocksize: bs }) }
        };
        len("packed weight", self.packed.len(), n.div_ceil(2))?;
        match &self.absmax {
            Absmax::F32(a) => len("absmax", a.len(), self.num_blocks()),
            Absmax::Double { codes, nested_absmax, .. } => {
                len("absmax", codes.len(), self.num_blocks())?;
                len("nested_absmax", nested_absmax.len(), self.num_blocks().div_ceil(NESTED_BLOCKSIZE))
            }
        }
    }

    /// The f32 scale of every block (decoding the double quantization if present:
    /// `dyn_map[q] * nested_absmax + offset`).
    pub fn absmax_f32(&self) -> Vec<f32> {
        match &self.absmax {
            Absmax::F32(a) => a.clone(),
            Absmax::Double { codes, nested_absmax, offset } => {
                dequantize_blockwise_8bit(codes, nested_absmax, NESTED_BLOCKSIZE, &DYNAMIC_MAP_SIGNED)
                    .into_iter()
                    .map(|a| a + offset)
                    .collect()
            }
        }
    }

    /// The 4-bit code of element `i`.
    #[inline]
    pub fn code(&self, i: usize) -> u8 {
        let byte = self.packed[i / 2];
        if i % 2 == 0 { byte >> 4 } else { byte & 0x0F }
    }

    /// `NF4_CODE[q] * absmax[block]` for every element, in f32 (row-major, `shape`).
    pub fn dequantize(&self) -> Vec<f32> {
        let absmax = self.absmax_f32();
        (0..self.numel()).map(|i| NF4_CODE[self.code(i) as usize] * absmax[i / self.blocksize]).collect()
    }

    /// Bytes this tensor occupies in memory (codes + scales), as resident on the GPU.
    pub fn resident_bytes(&self) -> usize {
        self.packed.len()
            + match &self.absmax {
                Absmax::F32(a) => 4 * a.len(),
                Absmax::Double { codes, nested_absmax, .. } => codes.len() + 4 * nested_absmax.len() + 4,
            }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tree_is_nearest_code_by_midpoints() {
        // Every threshold of the tree is the midpoint of its neighbours (to f32 rounding).
        for q in 0..15 {
            let mid = (NF4_CODE[q] + NF4_CODE[q + 1]) / 2.0;
            assert_eq!(quantize_nf4_value(mid + 1e-6) as usize, q + 1, "above midpoint {q}");
            assert_eq!(quantize_nf4_value(mid - 1e-6) as usize, q, "below midpoint {q}");
        }
        for (q, &c) in NF4_CODE.iter().enumerate() {
            assert_eq!(quantize_nf4_value(c) as usize, q);
        }
        assert_eq!(quantize_nf4_value(f32::NAN), 0);
    }

    #[test]
    fn roundtrip_error_is_bounded_by_half_the_widest_gap() {
        let mut state = 0x2545F4914F6CDD1Du64;
        let x: Vec<f32> = (0..1000)
            .map(|_| {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                (state >> 40) as f32 / (1u64 << 24) as f32 * 4.0 - 2.0
            })
            .collect();
        for dq in [false, true] {
            let t = quantize(&x, &[10, 100], 64, dq).unwrap();
            t.validate().unwrap();
            assert_eq!(t.packed.len(), 500);
            let y = t.dequantize();
            let absmax = t.absmax_f32();
            for (i, (&a, &b)) in x.iter().zip(&y).enumerate() {
                // Widest NF4 gap is -0.6962 - (-1); double quant adds a small scale error.
                let bound = absmax[i / 64] * 0.1520 * 1.02 + 1e-6;
                assert!((a - b).abs() <= bound, "element {i}: {a} vs {b} (bound {bound})");
            }
        }
    }

    #[test]
    fn odd_counts_end_in_the_code_of_zero() {
        let t = quantize(&[1.0, -1.0, 0.5], &[3], 64, false).unwrap();
        assert_eq!(t.packed, vec![0xF0, 0xC7]);
        assert_eq!(quantize(&[1.0], &[1], 48, false), Err(Nf4Error::Blocksize(48)));
        assert!(matches!(quantize(&[1.0], &[2], 64, false), Err(Nf4Error::Length { .. })));
    }

    #[test]
    fn threaded_quantization_equals_one_pass() {
        let n: usize = 1025 * 1023; // over the threading threshold, odd, last block partial
        let x: Vec<f32> = (0..n).map(|i| ((i as f32 * 0.618_034).fract() - 0.5) * (1.0 + (i % 7) as f32)).collect();
        let t = quantize(&x, &[1025, 1023], 64, false).unwrap();
        let mut packed = vec![0u8; n.div_ceil(2)];
        let mut absmax = vec![0f32; n.div_ceil(64)];
        quantize_range(&x, 64, &mut packed, &mut absmax);
        assert_eq!(t.packed, packed);
        assert_eq!(t.absmax, Absmax::F32(absmax));
    }

    #[test]
    fn binary_search_matches_bitsandbytes_edge_rules() {
        let m = &DYNAMIC_MAP_SIGNED;
        assert_eq!(quantize_8bit_value(m, 1.0), 255);
        assert_eq!(quantize_8bit_value(m, -1.0), 0);
        for (i, &c) in m.iter().enumerate().skip(1).take(253) {
            // Every interior code maps to itself (or its equal twin).
            assert_eq!(m[quantize_8bit_value(m, c) as usize], c, "code {i}");
        }
    }
}
