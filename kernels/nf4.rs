//! The NF4 weight as the kernels see it, on the host: a borrowed view of the bitsandbytes
//! layout, the block-scale decoding, and the 272-entry lookup table the kernels read (16 NF4
//! values followed by the 256-entry signed dynamic map of the double quantization).
//!
//! This crate does not depend on `medqlora`; the root crate's tests check that these views
//! decode exactly like its bitsandbytes-exact reference (`src/quant/nf4.rs`).

/// The 16 NF4 values (bitsandbytes' `nf4_dequantization_lut`), index = 4-bit code.
pub const NF4_CODE: [f32; 16] = [
    -1.0,
    -0.6961928009986877,
    -0.5250730514526367,
    -0.39491748809814453,
    -0.28444138169288635,
    -0.18477343022823334,
    -0.09105003625154495,
    0.0,
    0.07958029955625534,
    0.16093020141124725,
    0.24611230194568634,
    0.33791524171829224,
    0.44070982933044434,
    0.5626170039176941,
    0.7229568362236023,
    1.0,
];

/// Blocks per nested (second-level) scale of the double quantization.
pub const NESTED_BLOCKSIZE: usize = 256;

/// Entries of the kernels' lookup table: [`NF4_CODE`] then the dynamic map.
pub const LUT_LEN: usize = 16 + 256;

/// The kernels' lookup table: the NF4 code, then the signed dynamic map (`dyn_map`, the
/// caller's, so that this crate holds no second copy of it to drift).
pub fn lut(dyn_map: &[f32; 256]) -> Vec<f32> {
    NF4_CODE.iter().chain(dyn_map.iter()).copied().collect()
}

/// Per-block scales, borrowed.
#[derive(Debug, Clone, Copy)]
pub enum ScalesHost<'a> {
    /// One f32 per block.
    F32(&'a [f32]),
    /// Double-quantized: `scale[b] = map[codes[b]] * nested[b / 256] + offset`.
    Double {
        /// One u8 per block.
        codes: &'a [u8],
        /// One f32 per 256 blocks.
        nested: &'a [f32],
        /// Added back after decoding (`mean(absmax)` at quantization).
        offset: f32,
        /// The signed 8-bit dynamic map.
        map: &'a [f32; 256],
    },
}

/// An NF4 weight `W[n, k]` in bitsandbytes layout, borrowed.
#[derive(Debug, Clone, Copy)]
pub struct Nf4Host<'a> {
    /// `(n * k + 1) / 2` bytes.
    pub packed: &'a [u8],
    /// Block scales.
    pub scales: ScalesHost<'a>,
    /// Rows (out features).
    pub n: usize,
    /// Columns (in features).
    pub k: usize,
    /// Elements per block (a power of two, 32..=4096).
    pub blocksize: usize,
}

impl Nf4Host<'_> {
    /// The f32 scale of block `b`.
    #[inline]
    pub fn scale(&self, b: usize) -> f32 {
        match self.scales {
            ScalesHost::F32(a) => a[b],
            ScalesHost::Double { codes, nested, offset, map } => map[codes[b] as usize] * nested[b / NESTED_BLOCKSIZE] + offset,
        }
    }

    /// The 4-bit code of flattened element `i`.
    #[inline]
    pub fn code(&self, i: usize) -> u8 {
        let byte = self.packed[i / 2];
        if i % 2 == 0 { byte >> 4 } else { byte & 0x0F }
    }

    /// Element `i` of the flattened weight, in f32: `NF4_CODE[code] * scale` (the same two
    /// f32 roundings as bitsandbytes' `kDequantizeBlockwise`).
    #[inline]
    pub fn value(&self, i: usize) -> f32 {
        NF4_CODE[self.code(i) as usize] * self.scale(i / self.blocksize)
    }

    /// Number of blocks.
    pub fn num_blocks(&self) -> usize {
        (self.n * self.k).div_ceil(self.blocksize)
    }
}

/// Owned scales (test data).
#[derive(Debug, Clone)]
pub enum ScalesOwned {
    /// One f32 per block.
    F32(Vec<f32>),
    /// Double-quantized (see [`ScalesHost::Double`]).
    Double {
        /// One u8 per block.
        codes: Vec<u8>,
        /// One f32 per 256 blocks.
        nested: Vec<f32>,
        /// Added back after decoding.
        offset: f32,
        /// The signed dynamic map.
        map: Box<[f32; 256]>,
    },
}

/// An owned NF4 weight (test data); [`Nf4Owned::view`] borrows it.
#[derive(Debug, Clone)]
pub struct Nf4Owned {
    /// Packed codes.
    pub packed: Vec<u8>,
    /// Block scales.
    pub scales: ScalesOwned,
    /// Rows.
    pub n: usize,
    /// Columns.
    pub k: usize,
    /// Elements per block.
    pub blocksize: usize,
}

impl Nf4Owned {
    /// Borrows as the kernels' host view.
    pub fn view(&self) -> Nf4Host<'_> {
        let scales = match &self.scales {
            ScalesOwned::F32(a) => ScalesHost::F32(a),
            ScalesOwned::Double { codes, nested, offset, map } => ScalesHost::Double { codes, nested, offset: *offset, map },
        };
        Nf4Host { packed: &self.packed, scales, n: self.n, k: self.k, blocksize: self.blocksize }
    }
}
