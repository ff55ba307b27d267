//! The dropout kernel: one thread per vector of up to 16 bytes of `x`, the mask hashed per
//! element from the seed (see the module docs and [`super::reference`]).

use super::reference::threshold;
use crate::device::{elementwise_plan, empty, numel, vector_arg, with_float, ElementwiseLaunch, KernelError};
use burn_backend::DType;
use burn_cubecl::tensor::CubeTensor;
use burn_cubecl::CubeRuntime;
use cubecl::prelude::*;

/// [`super::reference::mix`].
#[cube]
fn mix(x: u32) -> u32 {
    let mut h = x ^ (x >> 16u32);
    h *= 0x7feb_352du32;
    h ^= h >> 15u32;
    h *= 0x846c_a68bu32;
    h ^ (h >> 16u32)
}

/// Vector `v` of `x` dropped: the seed's four integers to the key, then each element's hash
/// of its flat index against the threshold.
#[cube]
fn dropped_vector<F: Float, N: Size>(xv: Vector<F, N>, v: usize, seed: &Array<i32>, threshold: u32, scale: f32) -> Vector<F, N> {
    let lo = u32::cast_from(seed[0]) & 0xffffu32;
    let hi = u32::cast_from(seed[1]) & 0xffffu32;
    let k0 = mix(lo | (hi << 16u32));
    let k1 = (u32::cast_from(seed[2]) & 0xffffu32) | ((u32::cast_from(seed[3]) & 0xffffu32) << 16u32);
    let mut out = Vector::<F, N>::empty();
    #[unroll]
    for j in 0..xv.vector_size() {
        let i = u32::cast_from(v * xv.vector_size() + j);
        let mut val = 0.0f32;
        if mix(mix(i ^ k0) ^ k1) >= threshold {
            val = f32::cast_from(xv[j]) * scale;
        }
        out[j] = F::cast_from(val);
    }
    out
}

#[cube(launch_unchecked)]
pub(crate) fn dropout_kernel<F: Float, N: Size>(x: &Array<Vector<F, N>>, seed: &Array<i32>, y: &mut Array<Vector<F, N>>, vectors: usize, threshold: u32, scale: f32) {
    let v = ABSOLUTE_POS;
    if v < vectors {
        y[v] = dropped_vector(x[v], v, seed, threshold, scale);
    }
}

/// [`dropout_kernel`] writing `x [rows, cols]` as `[cols / width, rows, width]`: column
/// slice `s` of width `width` becomes batch `s` (a vector never straddles two slices).
#[cube(launch_unchecked)]
#[allow(clippy::too_many_arguments)]
pub(crate) fn dropout_split_kernel<F: Float, N: Size>(
    x: &Array<Vector<F, N>>,
    seed: &Array<i32>,
    y: &mut Array<Vector<F, N>>,
    vectors: usize,
    threshold: u32,
    scale: f32,
    rows: usize,
    cols: usize,
    width: usize,
) {
    let v = ABSOLUTE_POS;
    if v < vectors {
        let xv = x[v];
        let e = v * xv.vector_size();
        let (r, c) = (e / cols, e % cols);
        y[(((c / width) * rows + r) * width + c % width) / xv.vector_size()] = dropped_vector(xv, v, seed, threshold, scale);
    }
}

/// `x` dropped with probability `p` under `seed` into a new contiguous tensor of `x`'s shape
/// and dtype (f32, bf16 or f16); `x` contiguous, `seed` four contiguous i32.
pub fn dropout<R: CubeRuntime>(x: &CubeTensor<R>, seed: &CubeTensor<R>, p: f64) -> Result<CubeTensor<R>, KernelError> {
    let y = empty(x, x.meta.shape().iter().copied().collect(), x.dtype);
    dropout_into(x, seed, &y, p)?;
    Ok(y)
}

/// [`dropout`] into `y` (contiguous, `x`'s shape and dtype; tests pass a poisoned one).
pub fn dropout_into<R: CubeRuntime>(x: &CubeTensor<R>, seed: &CubeTensor<R>, y: &CubeTensor<R>, p: f64) -> Result<(), KernelError> {
    const NAME: &str = "dropout";
    check(NAME, x, seed, p)?;
    let Some(ElementwiseLaunch { vectors, vector, count, dim }) = elementwise_plan(NAME, x, &[("x", x), ("y", y)])? else { return Ok(()) };
    let client = &x.client;
    let seed_arg = unsafe { ArrayArg::from_raw_parts(seed.handle.clone(), 4) };
    with_float!(x.dtype, NAME, F => unsafe {
        dropout_kernel::launch_unchecked::<F, R>(client, count, dim, vector, vector_arg(x, vectors), seed_arg, vector_arg(y, vectors), vectors, threshold(p), scale(p))
    });
    Ok(())
}

/// `x [rows, cols]` dropped as [`dropout`] and written as `[parts, rows, cols / parts]`, column
/// slice `s` as batch `s`: the layout of a split-K product's operand, which otherwise takes a
/// copy after the dropout. `cols / parts` must be a multiple of 8.
pub fn dropout_split<R: CubeRuntime>(x: &CubeTensor<R>, seed: &CubeTensor<R>, p: f64, parts: usize) -> Result<CubeTensor<R>, KernelError> {
    const NAME: &str = "dropout split";
    check(NAME, x, seed, p)?;
    let dims: Vec<usize> = x.meta.shape().iter().copied().collect();
    let [rows, cols] = dims[..] else { return Err(KernelError::Shape { kernel: NAME, what: format!("x has shape {dims:?}, expected [rows, cols]") }) };
    if parts == 0 || cols % parts != 0 || (cols / parts) % 8 != 0 {
        return Err(KernelError::Shape { kernel: NAME, what: format!("{cols} columns do not split into {parts} slices of a multiple of 8") });
    }
    let width = cols / parts;
    let y = empty(x, vec![parts, rows, width], x.dtype);
    let Some(ElementwiseLaunch { vectors, vector, count, dim }) = elementwise_plan(NAME, x, &[("x", x)])? else { return Ok(y) };
    let client = &x.client;
    let seed_arg = unsafe { ArrayArg::from_raw_parts(seed.handle.clone(), 4) };
    with_float!(x.dtype, NAME, F => unsafe {
        dropout_split_kernel::launch_unchecked::<F, R>(
            client,
            count,
            dim,
            vector,
            vector_arg(x, vectors),
            seed_arg,
            vector_arg(&y, vectors),
            vectors,
            threshold(p),
            scale(p),
            rows,
            cols,
            width,
        )
    });
    Ok(y)
}

/// `1 / (1 - p)` in f32, as the reference scales.
fn scale(p: f64) -> f32 {
    (1.0 / (1.0 - p)) as f32
}

/// The seed (four contiguous i32), the probability and the size every dropout launch needs.
fn check<R: CubeRuntime>(name: &'static str, x: &CubeTensor<R>, seed: &CubeTensor<R>, p: f64) -> Result<(), KernelError> {
    if seed.dtype != DType::I32 {
        return Err(KernelError::Dtype { kernel: name, dtype: seed.dtype });
    }
    if numel(seed) != 4 || !seed.is_contiguous() {
        return Err(KernelError::Shape { kernel: name, what: format!("the seed has shape {:?}, expected 4 contiguous integers", seed.meta.shape()) });
    }
    if !(0.0..1.0).contains(&p) {
        return Err(KernelError::Shape { kernel: name, what: format!("probability {p} is outside [0, 1)") });
    }
    if numel(x) > u32::MAX as usize {
        return Err(KernelError::Shape { kernel: name, what: format!("{} elements: the mask hashes 32-bit indices", numel(x)) });
    }
    Ok(())
}
