//! The NF4 weight on the device as the kernels take it (Burn's `CubeTensor`s, so the model's
//! tensors are passed without copies), the checks every launch makes, and the `#[cube]`
//! helpers the kernels share: block-scale decoding (double quantization decoded on the fly),
//! nibble extraction, and the row kernels' reductions over a cube.

use crate::nf4::{Nf4Host, ScalesHost, LUT_LEN};
use burn_backend::{DType, Shape};
use burn_cubecl::ops::numeric::empty_device_contiguous_dtype;
use burn_cubecl::tensor::CubeTensor;
use burn_cubecl::CubeRuntime;
use cubecl::prelude::*;

/// Why a kernel cannot take a given problem (callers fall back to the reference path).
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum KernelError {
    /// A shape the kernel's vector loads cannot address.
    #[error("{kernel}: {what}")]
    Shape {
        /// Which kernel.
        kernel: &'static str,
        /// What is wrong.
        what: String,
    },
    /// A dtype the kernel has no instance for.
    #[error("{kernel}: dtype {dtype:?} is not supported")]
    Dtype {
        /// Which kernel.
        kernel: &'static str,
        /// The dtype given.
        dtype: DType,
    },
}

/// Block scales on the device.
#[derive(Debug, Clone)]
pub enum ScalesDevice<R: CubeRuntime> {
    /// `[blocks]` f32.
    F32(CubeTensor<R>),
    /// `[blocks]` u8 codes into the dynamic map, `[ceil(blocks / 256)]` f32 nested scales,
    /// and the offset.
    Double {
        /// u8 codes.
        codes: CubeTensor<R>,
        /// f32 nested scales.
        nested: CubeTensor<R>,
        /// Added after decoding.
        offset: f32,
    },
}

/// A frozen NF4 weight `W[n, k]` on the device.
#[derive(Debug, Clone)]
pub struct Nf4Device<R: CubeRuntime> {
    /// `[(n * k + 1) / 2]` u8, contiguous.
    pub packed: CubeTensor<R>,
    /// Block scales.
    pub scales: ScalesDevice<R>,
    /// `[272]` f32: the NF4 code then the dynamic map ([`crate::nf4::lut`]).
    pub lut: CubeTensor<R>,
    /// Rows (out features).
    pub n: usize,
    /// Columns (in features).
    pub k: usize,
    /// Elements per block (power of two, >= 32).
    pub blocksize: usize,
}

/// A contiguous device tensor holding `bytes`, of `dtype` and `shape`.
pub fn upload_bytes<R: CubeRuntime>(client: &ComputeClient<R>, device: &R::Device, bytes: &[u8], shape: Vec<usize>, dtype: DType) -> CubeTensor<R> {
    let handle = client.create_from_slice(bytes);
    CubeTensor::new_contiguous(client.clone(), device.clone(), Shape::from(shape), handle, dtype)
}

/// An f32 device tensor.
pub fn upload_f32<R: CubeRuntime>(client: &ComputeClient<R>, device: &R::Device, v: &[f32]) -> CubeTensor<R> {
    let bytes: Vec<u8> = v.iter().flat_map(|x| x.to_le_bytes()).collect();
    upload_bytes(client, device, &bytes, vec![v.len()], DType::F32)
}

/// A device tensor of `dtype` (f32, bf16 or f16) holding `v` rounded to it, shape `shape`.
pub fn upload_float<R: CubeRuntime>(client: &ComputeClient<R>, device: &R::Device, v: &[f32], shape: Vec<usize>, dtype: DType) -> CubeTensor<R> {
    let bytes: Vec<u8> = match dtype {
        DType::F32 => v.iter().flat_map(|x| x.to_le_bytes()).collect(),
        DType::BF16 => v.iter().flat_map(|&x| half::bf16::from_f32(x).to_le_bytes()).collect(),
        DType::F16 => v.iter().flat_map(|&x| half::f16::from_f32(x).to_le_bytes()).collect(),
        other => panic!("upload_float: {other:?}"),
    };
    upload_bytes(client, device, &bytes, shape, dtype)
}

/// `v` rounded to `dtype` (bf16 or f16; f32 as is) and back: what a kernel reading `v` from
/// [`upload_float`] sees, so references can be computed on the same values.
pub fn round_to(v: &[f32], dtype: DType) -> Vec<f32> {
    match dtype {
        DType::BF16 => crate::testutil::round_bf16(v),
        DType::F16 => v.iter().map(|&x| half::f16::from_f32(x).to_f32()).collect(),
        _ => v.to_vec(),
    }
}

/// Reads a contiguous f32/bf16/f16 device tensor back as f32.
pub fn read_f32<R: CubeRuntime>(t: &CubeTensor<R>) -> Vec<f32> {
    let bytes = t.client.read_one_unchecked(t.handle.clone());
    match t.dtype {
        DType::F32 => bytes.chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect(),
        DType::BF16 => bytes.chunks_exact(2).map(|b| half::bf16::from_le_bytes([b[0], b[1]]).to_f32()).collect(),
        DType::F16 => bytes.chunks_exact(2).map(|b| half::f16::from_le_bytes([b[0], b[1]]).to_f32()).collect(),
        other => panic!("read_f32: {other:?}"),
    }
}

/// An uninitialized contiguous output filled with NaN (tests poison every output so that an
/// element the kernel skips fails the comparison).
pub fn poisoned<R: CubeRuntime>(client: &ComputeClient<R>, device: &R::Device, shape: Vec<usize>, dtype: DType) -> CubeTensor<R> {
    let n: usize = shape.iter().product();
    upload_float(client, device, &vec![f32::NAN; n], shape, dtype)
}

/// A fresh contiguous output (uninitialized).
pub(crate) fn empty<R: CubeRuntime>(like: &CubeTensor<R>, shape: Vec<usize>, dtype: DType) -> CubeTensor<R> {
    empty_device_contiguous_dtype(like.client.clone(), like.device.clone(), Shape::from(shape), dtype)
}

impl<R: CubeRuntime> Nf4Device<R> {
    /// Uploads a host weight (tests and benchmarks; the model passes its own tensors).
    pub fn upload(client: &ComputeClient<R>, device: &R::Device, w: &Nf4Host<'_>, dyn_map: &[f32; 256]) -> Self {
        let packed = upload_bytes(client, device, w.packed, vec![w.packed.len()], DType::U8);
        let scales = match w.scales {
            ScalesHost::F32(a) => ScalesDevice::F32(upload_f32(client, device, a)),
            ScalesHost::Double { codes, nested, offset, .. } => ScalesDevice::Double {
                codes: upload_bytes(client, device, codes, vec![codes.len()], DType::U8),
                nested: upload_f32(client, device, nested),
                offset,
            },
        };
        let lut = upload_f32(client, device, &crate::nf4::lut(dyn_map));
        Self { packed, scales, lut, n: w.n, k: w.k, blocksize: w.blocksize }
    }

    /// The compute client.
    pub fn client(&self) -> &ComputeClient<R> {
        &self.packed.client
    }

    /// `log2(blocksize)`, after checking the layout the kernels assume.
    pub(crate) fn check(&self, kernel: &'static str) -> Result<u32, KernelError> {
        let bad = |what: String| Err(KernelError::Shape { kernel, what });
        if !self.blocksize.is_power_of_two() || self.blocksize < 32 {
            return bad(format!("blocksize {} is not a power of two >= 32", self.blocksize));
        }
        if (self.n * self.k) % 8 != 0 {
            return bad(format!("{} x {} elements is not a multiple of 8 (whole u32 words)", self.n, self.k));
        }
        // Lengths from the shapes: the allocator rounds handle sizes up.
        if numel(&self.packed) != self.n * self.k / 2 || self.packed.dtype != DType::U8 {
            return bad(format!("packed is {:?} x {}, expected U8 x {}", self.packed.dtype, numel(&self.packed), self.n * self.k / 2));
        }
        if numel(&self.lut) != LUT_LEN || self.lut.dtype != DType::F32 {
            return bad(format!("lut is {:?} x {}, expected F32 x {LUT_LEN}", self.lut.dtype, numel(&self.lut)));
        }
        let blocks = (self.n * self.k).div_ceil(self.blocksize);
        let scales_ok = match &self.scales {
            ScalesDevice::F32(a) => numel(a) == blocks && a.dtype == DType::F32,
            ScalesDevice::Double { codes, nested, .. } => {
                numel(codes) == blocks && codes.dtype == DType::U8 && numel(nested) == blocks.div_ceil(256) && nested.dtype == DType::F32
            }
        };
        if !scales_ok {
            return bad(format!("block scales do not match {blocks} blocks"));
        }
        Ok(self.blocksize.trailing_zeros())
    }

    /// The packed codes as `[n * k / 8]` u32 words (little-endian: byte 0 in bits 0..8).
    pub(crate) fn words_arg(&self, vector: usize) -> ArrayArg<R> {
        unsafe { ArrayArg::from_raw_parts(self.packed.handle.clone(), self.n * self.k / 8 / vector) }
    }

    /// `(f32 scales or nested scales, u8 codes, offset, double)`; for plain scales the codes
    /// argument is a placeholder the kernel never reads.
    pub(crate) fn scale_args(&self) -> (ArrayArg<R>, ArrayArg<R>, f32, bool) {
        let f32_arg = |t: &CubeTensor<R>| unsafe { ArrayArg::from_raw_parts(t.handle.clone(), numel(t)) };
        match &self.scales {
            ScalesDevice::F32(a) => (f32_arg(a), unsafe { ArrayArg::from_raw_parts(self.packed.handle.clone(), 1) }, 0.0, false),
            ScalesDevice::Double { codes, nested, offset } => {
                (f32_arg(nested), unsafe { ArrayArg::from_raw_parts(codes.handle.clone(), numel(codes)) }, *offset, true)
            }
        }
    }

    /// The lookup table argument.
    pub(crate) fn lut_arg(&self) -> ArrayArg<R> {
        unsafe { ArrayArg::from_raw_parts(self.lut.handle.clone(), LUT_LEN) }
    }
}

/// `log2` of [`ROW_THREADS`].
pub(crate) const ROW_LOG2: usize = 7;
/// Threads of a cube that owns one row (the softmax and RMSNorm kernels).
pub(crate) const ROW_THREADS: usize = 1 << ROW_LOG2;

/// Max (`max`) or sum of every thread's `x` over a cube of [`ROW_THREADS`], returned to every
/// thread, by a tree through `red` (`ROW_THREADS` floats; free again on return), so any plane
/// width works.
#[cube]
fn cube_reduce(red: &mut SharedMemory<f32>, x: f32, #[comptime] max_not_sum: bool) -> f32 {
    let tid = UNIT_POS as usize;
    red[tid] = x;
    sync_cube();
    #[unroll]
    for step in 0..ROW_LOG2 {
        let active = ROW_THREADS >> (step + 1);
        if tid < active {
            if comptime![max_not_sum] {
                red[tid] = max(red[tid], red[tid + active]);
            } else {
                red[tid] += red[tid + active];
            }
        }
        sync_cube();
    }
    let out = red[0];
    sync_cube();
    out
}

/// Max of every thread's `x` over the cube ([`cube_reduce`]).
#[cube]
pub(crate) fn cube_max(red: &mut SharedMemory<f32>, x: f32) -> f32 {
    cube_reduce(red, x, true)
}

/// Sum of every thread's `x` over the cube ([`cube_reduce`]).
#[cube]
pub(crate) fn cube_sum(red: &mut SharedMemory<f32>, x: f32) -> f32 {
    cube_reduce(red, x, false)
}

/// Runs `$launch` with the type alias `$f` naming the element type of `$dtype` (f32, bf16 or
/// f16); other dtypes return [`KernelError::Dtype`] from the enclosing function.
macro_rules! with_float {
    ($dtype:expr, $name:expr, $f:ident => $launch:expr) => {
        match $dtype {
            DType::F32 => {
                type $f = f32;
                $launch
            }
            DType::BF16 => {
                type $f = half::bf16;
                $launch
            }
            DType::F16 => {
                type $f = half::f16;
                $launch
            }
            dtype => return Err(KernelError::Dtype { kernel: $name, dtype }),
        }
    };
}
pub(crate) use with_float;

// Element-wise kernels (SwiGLU, dropout): one thread per vector of up to 16 bytes.

/// The operands' common element count and vector width, after checking that every tensor is
/// contiguous, of `like`'s shape and dtype (f32, bf16 or f16). The width is the largest of
/// 16 bytes' worth, 4, 2, 1 elements that divides the length and every handle's offset (a
/// narrowed tensor may start mid-allocation), so any length is taken.
fn elementwise_check<R: CubeRuntime>(kernel: &'static str, like: &CubeTensor<R>, operands: &[(&str, &CubeTensor<R>)]) -> Result<(usize, usize), KernelError> {
    if !matches!(like.dtype, DType::F32 | DType::BF16 | DType::F16) {
        return Err(KernelError::Dtype { kernel, dtype: like.dtype });
    }
    let shape = like.meta.shape();
    let elem = like.dtype.size();
    let mut vector = 16 / elem;
    let n = numel(like);
    for (name, t) in operands {
        let dims: Vec<usize> = t.meta.shape().iter().copied().collect();
        if t.meta.shape() != shape || t.dtype != like.dtype || !t.is_contiguous() {
            let want: Vec<usize> = shape.iter().copied().collect();
            let what = format!(
                "{name} is {:?} {dims:?} (contiguous: {}), expected contiguous {:?} {want:?}",
                t.dtype,
                t.is_contiguous(),
                like.dtype
            );
            return Err(KernelError::Shape { kernel, what });
        }
        let offset = t.handle.offset_start.unwrap_or(0) as usize;
        if offset % elem != 0 {
            return Err(KernelError::Shape { kernel, what: format!("{name} starts at byte {offset}, not a whole {:?} element", t.dtype) });
        }
        while n % vector != 0 || (offset / elem) % vector != 0 {
            vector /= 2;
        }
    }
    Ok((n, vector))
}

/// One launch over the operands: vectors, their width, and the grid (256 threads a cube).
pub(crate) struct ElementwiseLaunch {
    /// Vectors to process (one thread each).
    pub(crate) vectors: usize,
    /// Elements per vector.
    pub(crate) vector: usize,
    /// Cubes of the launch.
    pub(crate) count: CubeCount,
    /// Threads per cube.
    pub(crate) dim: CubeDim,
}

/// [`elementwise_check`]ed operands' launch, or `None` for empty tensors (nothing to launch).
pub(crate) fn elementwise_plan<R: CubeRuntime>(kernel: &'static str, like: &CubeTensor<R>, operands: &[(&str, &CubeTensor<R>)]) -> Result<Option<ElementwiseLaunch>, KernelError> {
    let (n, vector) = elementwise_check(kernel, like, operands)?;
    if n == 0 {
        return Ok(None);
    }
    let vectors = n / vector;
    let dim = CubeDim::new_1d(256);
    Ok(Some(ElementwiseLaunch { vectors, vector, count: cubecl::calculate_cube_count_elemwise(&like.client, vectors, dim), dim }))
}

/// `t` as an array of `vectors` vectors (the width is the launch's).
pub(crate) fn vector_arg<R: CubeRuntime>(t: &CubeTensor<R>, vectors: usize) -> ArrayArg<R> {
    unsafe { ArrayArg::from_raw_parts(t.handle.clone(), vectors) }
}

/// Number of elements of a device tensor (by shape).
pub(crate) fn numel<R: CubeRuntime>(t: &CubeTensor<R>) -> usize {
    t.meta.shape().num_elements()
}

/// A contiguous row-major `[rows, cols]` float operand, checked.
pub(crate) fn check_operand<R: CubeRuntime>(kernel: &'static str, t: &CubeTensor<R>, rows: Option<usize>, cols: usize) -> Result<usize, KernelError> {
    let shape = t.meta.shape();
    let dims: Vec<usize> = shape.iter().copied().collect();
    if dims.len() != 2 || dims[1] != cols || rows.is_some_and(|r| r != dims[0]) || !t.is_contiguous() {
        return Err(KernelError::Shape { kernel, what: format!("operand {dims:?} is not a contiguous [rows, {cols}] matrix") });
    }
    Ok(dims[0])
}

/// The f32 scale of block `b`: `absmax[b]`, or with double quantization
/// `lut[16 + codes[b]] * nested[b / 256] + offset`.
#[cube]
pub fn block_scale(b: usize, absmax: &Array<f32>, qcodes: &Array<u8>, lut: &Array<f32>, offset: f32, #[comptime] double: bool) -> f32 {
    if comptime![double] {
        let q = u32::cast_from(qcodes[b]) as usize;
        lut[16 + q] * absmax[b >> 8] + offset
    } else {
        absmax[b]
    }
}

/// The raw parts of block `b`'s scale, loaded for [`finish_scale`]: with double quantization
/// its 8-bit code and its group's nested scale (`absmax[b / 256]`), else 0 and its scale.
/// Split from the arithmetic so that a kernel can issue the loads well before it waits for
/// them.
#[cube]
pub fn load_scale_parts(b: usize, absmax: &Array<f32>, qcodes: &Array<u8>, #[comptime] double: bool) -> (u32, f32) {
    if comptime![double] {
        (u32::cast_from(qcodes[b]), absmax[b >> 8])
    } else {
        (0u32, absmax[b])
    }
}

/// [`block_scale`] from the parts [`load_scale_parts`] loaded, with the 272-entry lookup
/// table in shared memory (`table`; 16 entries suffice without double quantization); 0 where
/// `live` is false (a tile row past the weight's edge decodes to zeros).
#[cube]
pub fn finish_scale(code: u32, raw: f32, table: &SharedMemory<f32>, offset: f32, live: bool, #[comptime] double: bool) -> f32 {
    let mut scale = raw;
    if comptime![double] {
        scale = table[16 + code as usize] * raw + offset;
    }
    select(live, scale, 0.0f32)
}

/// The 4-bit code of element `j` (0..8) of a little-endian packed word: element 2i is the
/// high nibble of byte i.
#[cube]
pub fn nibble(word: u32, #[comptime] j: usize) -> usize {
    let shift = comptime![(j / 2) * 8 + (1 - j % 2) * 4] as u32;
    ((word >> shift) & 15u32) as usize
}
