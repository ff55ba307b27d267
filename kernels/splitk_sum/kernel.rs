//! The split-K kernels. The sum: one thread per output vector of up to 16 bytes of the
//! partials' dtype, looping over the parts (a warp reads 512 contiguous bytes of each part).
//! The operand: one thread per vector of the input, written to its slice.

use super::reference::Split;
use crate::device::{elementwise_plan, empty, numel, vector_arg, with_float, ElementwiseLaunch, KernelError};
use burn_backend::DType;
use burn_cubecl::tensor::CubeTensor;
use burn_cubecl::CubeRuntime;
use cubecl::prelude::*;

#[cube(launch_unchecked)]
pub(crate) fn splitk_sum_kernel<F: Float, O: Float, N: Size>(x: &Array<Vector<F, N>>, out: &mut Array<Vector<O, N>>, parts: usize, inner: usize, len: usize, scale: f32) {
    let i = ABSOLUTE_POS;
    if i < len {
        let (o, j) = (i / inner, i % inner);
        let base = o * parts * inner + j;
        let mut acc = Vector::<f32, N>::new(0.0);
        for p in 0..parts {
            acc += Vector::<f32, N>::cast_from(x[base + p * inner]);
        }
        out[i] = Vector::<O, N>::cast_from(acc * Vector::<f32, N>::new(scale));
    }
}

/// `scale * sum_p x[o, p, i]` as a new contiguous `[outer * inner]` tensor of `out_dtype`
/// (f32, bf16 or f16), for contiguous partials `x` of `split`'s size (any shape; f32, bf16 or
/// f16). The caller reshapes.
pub fn splitk_sum<R: CubeRuntime>(x: &CubeTensor<R>, split: Split, scale: f32, out_dtype: DType) -> Result<CubeTensor<R>, KernelError> {
    let out = empty(x, vec![split.outer * split.inner], out_dtype);
    splitk_sum_into(x, split, scale, &out)?;
    Ok(out)
}

/// [`splitk_sum`] into `out` (contiguous, `outer * inner` elements; tests pass a poisoned one).
pub fn splitk_sum_into<R: CubeRuntime>(x: &CubeTensor<R>, split: Split, scale: f32, out: &CubeTensor<R>) -> Result<(), KernelError> {
    const NAME: &str = "split-K sum";
    let Split { outer, parts, inner } = split;
    let bad = |what: String| Err(KernelError::Shape { kernel: NAME, what });
    if numel(x) != outer * parts * inner || !x.is_contiguous() {
        return bad(format!("partials hold {} elements (contiguous: {}), expected contiguous {outer} x {parts} x {inner}", numel(x), x.is_contiguous()));
    }
    if numel(out) != outer * inner || !out.is_contiguous() {
        return bad(format!("output holds {} elements (contiguous: {}), expected contiguous {outer} x {inner}", numel(out), out.is_contiguous()));
    }
    if parts == 0 {
        return bad("no partials to sum".into());
    }
    // Widest vector (16 bytes of the wider dtype, 4, 2, 1) that divides `inner` and both offsets.
    let (xe, oe) = (x.dtype.size(), out.dtype.size());
    let mut vector = 16 / xe.max(oe);
    let (xo, oo) = (x.handle.offset_start.unwrap_or(0) as usize, out.handle.offset_start.unwrap_or(0) as usize);
    if xo % xe != 0 || oo % oe != 0 {
        return bad("an operand starts mid-element".into());
    }
    while inner % vector != 0 || (xo / xe) % vector != 0 || (oo / oe) % vector != 0 {
        vector /= 2;
    }
    let len = outer * inner / vector;
    if len == 0 {
        return Ok(());
    }
    let client = &x.client;
    let dim = CubeDim::new_1d(256);
    let count = cubecl::calculate_cube_count_elemwise(client, len, dim);
    let arg = |t: &CubeTensor<R>, n: usize| unsafe { ArrayArg::from_raw_parts(t.handle.clone(), n) };
    with_float!(x.dtype, NAME, F => with_float!(out.dtype, NAME, O => unsafe {
        splitk_sum_kernel::launch_unchecked::<F, O, R>(client, count, dim, vector, arg(x, outer * parts * inner / vector), arg(out, len), parts, inner / vector, len, scale)
    }));
    Ok(())
}

/// `x [rows, cols]` written as `[cols / width, rows, width]` (column slice `s` as batch `s`):
/// one thread per vector of `x`, which never straddles two slices.
#[cube(launch_unchecked)]
pub(crate) fn splitk_operand_kernel<F: Float, N: Size>(x: &Array<Vector<F, N>>, y: &mut Array<Vector<F, N>>, vectors: usize, rows: usize, cols: usize, width: usize) {
    let v = ABSOLUTE_POS;
    if v < vectors {
        let xv = x[v];
        let e = v * xv.vector_size();
        let (r, c) = (e / cols, e % cols);
        y[(((c / width) * rows + r) * width + c % width) / xv.vector_size()] = xv;
    }
}

/// `x [rows, cols]` (contiguous; f32, bf16 or f16) as a new contiguous `[parts, rows, cols /
/// parts]` tensor, column slice `s` as batch `s`: the layout a split-K product's batched GEMM
/// takes for the operand whose reduction is cut. `cols / parts` must be a multiple of 8.
pub fn splitk_operand<R: CubeRuntime>(x: &CubeTensor<R>, parts: usize) -> Result<CubeTensor<R>, KernelError> {
    let dims: Vec<usize> = x.meta.shape().iter().copied().collect();
    let (rows, cols) = operand_dims(&dims, parts)?;
    let y = empty(x, vec![parts, rows, cols / parts], x.dtype);
    splitk_operand_into(x, parts, &y)?;
    Ok(y)
}

/// [`splitk_operand`] into `y` (contiguous `[parts, rows, cols / parts]` of `x`'s dtype; tests
/// pass a poisoned one).
pub fn splitk_operand_into<R: CubeRuntime>(x: &CubeTensor<R>, parts: usize, y: &CubeTensor<R>) -> Result<(), KernelError> {
    let dims: Vec<usize> = x.meta.shape().iter().copied().collect();
    let (rows, cols) = operand_dims(&dims, parts)?;
    let ydims: Vec<usize> = y.meta.shape().iter().copied().collect();
    if ydims != [parts, rows, cols / parts] || !y.is_contiguous() || y.dtype != x.dtype {
        return Err(KernelError::Shape { kernel: OPERAND, what: format!("output is {:?} {ydims:?} (contiguous: {}), expected contiguous {:?} {:?}", y.dtype, y.is_contiguous(), x.dtype, [parts, rows, cols / parts]) });
    }
    let Some(ElementwiseLaunch { vectors, vector, count, dim }) = elementwise_plan(OPERAND, x, &[("x", x)])? else { return Ok(()) };
    if (cols / parts) % vector != 0 {
        return Err(KernelError::Shape { kernel: OPERAND, what: format!("slices of {} columns split a vector of {vector}", cols / parts) });
    }
    let yo = y.handle.offset_start.unwrap_or(0) as usize / x.dtype.size();
    if yo % vector != 0 {
        return Err(KernelError::Shape { kernel: OPERAND, what: format!("the output starts at element {yo}, not on a vector of {vector}") });
    }
    with_float!(x.dtype, OPERAND, F => unsafe {
        splitk_operand_kernel::launch_unchecked::<F, R>(&x.client, count, dim, vector, vector_arg(x, vectors), vector_arg(y, vectors), vectors, rows, cols, cols / parts)
    });
    Ok(())
}

const OPERAND: &str = "split-K operand";

/// `[rows, cols]` of a 2-d `x` whose columns split into `parts` slices of a multiple of 8.
fn operand_dims(dims: &[usize], parts: usize) -> Result<(usize, usize), KernelError> {
    let [rows, cols] = dims[..] else { return Err(KernelError::Shape { kernel: OPERAND, what: format!("x has shape {dims:?}, expected [rows, cols]") }) };
    if parts == 0 || cols % parts != 0 || (cols / parts) % 8 != 0 {
        return Err(KernelError::Shape { kernel: OPERAND, what: format!("{cols} columns do not split into {parts} slices of a multiple of 8") });
    }
    Ok((rows, cols))
}
