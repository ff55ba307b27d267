//! The RMSNorm kernels: one cube of [`ROW_THREADS`] threads per row (a 7B row is 3,584
//! elements, 7 KB in bf16), each thread striding over the row in vectors (16 bytes when the
//! hidden size and the handles' offsets allow); the row's sums are reduced through shared
//! memory ([`crate::device::cube_sum`]) and the second pass reads the row from cache.

use crate::device::{cube_sum, empty, numel, with_float, KernelError, ROW_THREADS};
use burn_backend::DType;
use burn_cubecl::tensor::CubeTensor;
use burn_cubecl::CubeRuntime;
use cubecl::calculate_cube_count_elemwise;
use cubecl::prelude::*;

/// Sum over the cube of `a * b` over this thread's vectors of the row at `base`.
#[cube]
fn row_dot<F: Float, N: Size>(a: &Array<Vector<F, N>>, b: &Array<Vector<F, N>>, base: usize, vectors: usize, red: &mut SharedMemory<f32>) -> f32 {
    let mut acc = 0.0f32;
    let mut v = UNIT_POS as usize;
    while v < vectors {
        let p = Vector::<f32, N>::cast_from(a[base + v]) * Vector::<f32, N>::cast_from(b[base + v]);
        #[unroll]
        for j in 0..p.vector_size() {
            acc += p[j];
        }
        v += ROW_THREADS;
    }
    cube_sum(red, acc)
}

#[cube(launch_unchecked)]
pub(crate) fn rmsnorm_forward_kernel<F: Float, N: Size>(x: &Array<Vector<F, N>>, w: &Array<Vector<F, N>>, y: &mut Array<Vector<F, N>>, rows: usize, vectors: usize, hidden: f32, eps: f32) {
    let row = CUBE_POS;
    // Uniform over the cube, so the barriers inside stay convergent.
    if row < rows {
        let mut red = SharedMemory::<f32>::new(ROW_THREADS);
        let base = row * vectors;
        let ss = row_dot(x, x, base, vectors, &mut red);
        let denom = Vector::<f32, N>::new(f32::sqrt(ss / hidden + eps));
        let mut v = UNIT_POS as usize;
        while v < vectors {
            // Rounded to the storage dtype before the weight's product, as transformers does.
            let n = Vector::<F, N>::cast_from(Vector::<f32, N>::cast_from(x[base + v]) / denom);
            y[base + v] = Vector::<F, N>::cast_from(Vector::<f32, N>::cast_from(n) * Vector::<f32, N>::cast_from(w[v]));
            v += ROW_THREADS;
        }
    }
}

#[cube(launch_unchecked)]
#[allow(clippy::too_many_arguments)]
pub(crate) fn rmsnorm_backward_kernel<F: Float, N: Size>(
    x: &Array<Vector<F, N>>,
    w: &Array<Vector<F, N>>,
    dy: &Array<Vector<F, N>>,
    dx: &mut Array<Vector<F, N>>,
    rows: usize,
    vectors: usize,
    hidden: f32,
    eps: f32,
) {
    let row = CUBE_POS;
    if row < rows {
        let mut red = SharedMemory::<f32>::new(ROW_THREADS);
        let base = row * vectors;
        let ss = row_dot(x, x, base, vectors, &mut red);
        // mean(dn x) with dn = dy w.
        let mut acc = 0.0f32;
        let mut v = UNIT_POS as usize;
        while v < vectors {
            let p = Vector::<f32, N>::cast_from(dy[base + v]) * Vector::<f32, N>::cast_from(w[v]) * Vector::<f32, N>::cast_from(x[base + v]);
            #[unroll]
            for j in 0..p.vector_size() {
                acc += p[j];
            }
            v += ROW_THREADS;
        }
        let dot = cube_sum(&mut red, acc) / hidden;
        let r = 1.0 / f32::sqrt(ss / hidden + eps);
        let rv = Vector::<f32, N>::new(r);
        let cv = Vector::<f32, N>::new(r * r * r * dot);
        let mut v = UNIT_POS as usize;
        while v < vectors {
            let dn = Vector::<f32, N>::cast_from(dy[base + v]) * Vector::<f32, N>::cast_from(w[v]);
            dx[base + v] = Vector::<F, N>::cast_from(rv * dn - Vector::<f32, N>::cast_from(x[base + v]) * cv);
            v += ROW_THREADS;
        }
    }
}

/// Rows and the vector width, after checking that `w` is `[hidden]` and every row operand a
/// contiguous `[.., hidden]` tensor of `w`'s dtype (f32, bf16 or f16) with `like`'s element
/// count: the largest of 16 bytes' worth, 4, 2, 1 elements that divides `hidden` and every
/// handle's offset.
fn check<R: CubeRuntime>(kernel: &'static str, w: &CubeTensor<R>, operands: &[(&str, &CubeTensor<R>)]) -> Result<(usize, usize), KernelError> {
    if !matches!(w.dtype, DType::F32 | DType::BF16 | DType::F16) {
        return Err(KernelError::Dtype { kernel, dtype: w.dtype });
    }
    let wdims: Vec<usize> = w.meta.shape().iter().copied().collect();
    let [hidden] = wdims[..] else {
        return Err(KernelError::Shape { kernel, what: format!("weight is {wdims:?}, expected [hidden]") });
    };
    let elem = w.dtype.size();
    let len = numel(operands[0].1);
    let mut vector = 16 / elem;
    for (name, t) in [("weight", w)].into_iter().chain(operands.iter().copied()) {
        let dims: Vec<usize> = t.meta.shape().iter().copied().collect();
        let rows_ok = name == "weight" || (dims.last() == Some(&hidden) && numel(t) == len);
        if !rows_ok || t.dtype != w.dtype || !t.is_contiguous() {
            return Err(KernelError::Shape { kernel, what: format!("{name} is {:?} {dims:?} (contiguous: {}), expected contiguous {:?} [.., {hidden}]", t.dtype, t.is_contiguous(), w.dtype) });
        }
        let offset = t.handle.offset_start.unwrap_or(0) as usize;
        if offset % elem != 0 {
            return Err(KernelError::Shape { kernel, what: format!("{name} starts at byte {offset}, not a whole {:?} element", t.dtype) });
        }
        while hidden % vector != 0 || (offset / elem) % vector != 0 {
            vector /= 2;
        }
    }
    Ok((if hidden == 0 { 0 } else { len / hidden }, vector))
}

fn arg<R: CubeRuntime>(t: &CubeTensor<R>, vectors: usize) -> ArrayArg<R> {
    unsafe { ArrayArg::from_raw_parts(t.handle.clone(), vectors) }
}

/// `y = round(x / sqrt(mean(x^2) + eps)) * w` over the last axis: a new contiguous tensor of
/// `x`'s shape; `x` contiguous `[.., hidden]`, `w` `[hidden]`, one dtype.
pub fn rmsnorm_forward<R: CubeRuntime>(x: &CubeTensor<R>, w: &CubeTensor<R>, eps: f32) -> Result<CubeTensor<R>, KernelError> {
    let y = empty(x, x.meta.shape().iter().copied().collect(), x.dtype);
    rmsnorm_forward_into(x, w, eps, &y)?;
    Ok(y)
}

/// [`rmsnorm_forward`] into `y` (contiguous, `x`'s shape and dtype; tests pass a poisoned one).
pub fn rmsnorm_forward_into<R: CubeRuntime>(x: &CubeTensor<R>, w: &CubeTensor<R>, eps: f32, y: &CubeTensor<R>) -> Result<(), KernelError> {
    const NAME: &str = "rmsnorm forward";
    let (rows, vector) = check(NAME, w, &[("x", x), ("y", y)])?;
    if rows == 0 {
        return Ok(());
    }
    let hidden = numel(w);
    let vectors = hidden / vector;
    let client = &x.client;
    let count = calculate_cube_count_elemwise(client, rows, CubeDim::new_1d(1));
    with_float!(w.dtype, NAME, F => unsafe {
        rmsnorm_forward_kernel::launch_unchecked::<F, R>(
            client, count, CubeDim::new_1d(ROW_THREADS as u32), vector,
            arg(x, rows * vectors), arg(w, vectors), arg(y, rows * vectors), rows, vectors, hidden as f32, eps,
        )
    });
    Ok(())
}

/// The input gradient of [`rmsnorm_forward`] for the output gradient `dy` (`x`'s shape and
/// dtype): a new contiguous tensor.
pub fn rmsnorm_backward<R: CubeRuntime>(x: &CubeTensor<R>, w: &CubeTensor<R>, dy: &CubeTensor<R>, eps: f32) -> Result<CubeTensor<R>, KernelError> {
    let dx = empty(x, x.meta.shape().iter().copied().collect(), x.dtype);
    rmsnorm_backward_into(x, w, dy, eps, &dx)?;
    Ok(dx)
}

/// [`rmsnorm_backward`] into `dx` (contiguous, `x`'s shape and dtype).
pub fn rmsnorm_backward_into<R: CubeRuntime>(x: &CubeTensor<R>, w: &CubeTensor<R>, dy: &CubeTensor<R>, eps: f32, dx: &CubeTensor<R>) -> Result<(), KernelError> {
    const NAME: &str = "rmsnorm backward";
    let (rows, vector) = check(NAME, w, &[("x", x), ("dy", dy), ("dx", dx)])?;
    if rows == 0 {
        return Ok(());
    }
    let hidden = numel(w);
    let vectors = hidden / vector;
    let client = &x.client;
    let count = calculate_cube_count_elemwise(client, rows, CubeDim::new_1d(1));
    with_float!(w.dtype, NAME, F => unsafe {
        rmsnorm_backward_kernel::launch_unchecked::<F, R>(
            client, count, CubeDim::new_1d(ROW_THREADS as u32), vector,
            arg(x, rows * vectors), arg(w, vectors), arg(dy, rows * vectors), arg(dx, rows * vectors), rows, vectors, hidden as f32, eps,
        )
    });
    Ok(())
}
