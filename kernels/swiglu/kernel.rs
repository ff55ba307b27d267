//! The SwiGLU kernels: one thread per vector of `N` elements (16 bytes when the length and the
//! handles' offsets allow: 8 bf16/f16 or 4 f32), so a warp moves 512 contiguous bytes per
//! operand. Loads are cast to f32, the sigmoid is `1 / (1 + exp(-g))` in f32 (for `g < -88`
//! `exp` overflows to inf and `s` is 0, the right limit), results are cast back once.

use crate::device::{empty, numel, with_float, KernelError};
use burn_backend::DType;
use burn_cubecl::tensor::CubeTensor;
use burn_cubecl::CubeRuntime;
use cubecl::calculate_cube_count_elemwise;
use cubecl::prelude::*;

#[cube(launch_unchecked)]
pub(crate) fn swiglu_forward_kernel<F: Float, N: Size>(g: &Array<Vector<F, N>>, u: &Array<Vector<F, N>>, y: &mut Array<Vector<F, N>>, len: usize) {
    let i = ABSOLUTE_POS;
    if i < len {
        let gf = Vector::<f32, N>::cast_from(g[i]);
        let uf = Vector::<f32, N>::cast_from(u[i]);
        let one = Vector::<f32, N>::new(1.0);
        let s = one / (one + Vector::exp(Vector::<f32, N>::new(0.0) - gf));
        y[i] = Vector::<F, N>::cast_from(gf * s * uf);
    }
}

#[cube(launch_unchecked)]
pub(crate) fn swiglu_backward_kernel<F: Float, N: Size>(
    g: &Array<Vector<F, N>>,
    u: &Array<Vector<F, N>>,
    dh: &Array<Vector<F, N>>,
    dg: &mut Array<Vector<F, N>>,
    du: &mut Array<Vector<F, N>>,
    len: usize,
) {
    let i = ABSOLUTE_POS;
    if i < len {
        let gf = Vector::<f32, N>::cast_from(g[i]);
        let uf = Vector::<f32, N>::cast_from(u[i]);
        let hf = Vector::<f32, N>::cast_from(dh[i]);
        let one = Vector::<f32, N>::new(1.0);
        let s = one / (one + Vector::exp(Vector::<f32, N>::new(0.0) - gf));
        let hs = hf * s;
        du[i] = Vector::<F, N>::cast_from(hs * gf);
        dg[i] = Vector::<F, N>::cast_from(hs * uf * (one + gf * (one - s)));
    }
}

/// The operands' common element count and vector width, after checking that every tensor is
/// contiguous, of `like`'s shape and dtype (f32, bf16 or f16). The width is the largest of
/// 16 bytes' worth, 4, 2, 1 elements that divides the length and every handle's offset (a
/// narrowed tensor may start mid-allocation), so any length is taken.
fn check<R: CubeRuntime>(kernel: &'static str, like: &CubeTensor<R>, operands: &[(&str, &CubeTensor<R>)]) -> Result<(usize, usize), KernelError> {
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
struct Launch {
    vectors: usize,
    vector: usize,
    count: CubeCount,
    dim: CubeDim,
}

/// [`check`]ed operands' launch, or `None` for empty tensors (nothing to launch).
fn plan<R: CubeRuntime>(kernel: &'static str, like: &CubeTensor<R>, operands: &[(&str, &CubeTensor<R>)]) -> Result<Option<Launch>, KernelError> {
    let (n, vector) = check(kernel, like, operands)?;
    if n == 0 {
        return Ok(None);
    }
    let vectors = n / vector;
    let dim = CubeDim::new_1d(256);
    Ok(Some(Launch { vectors, vector, count: calculate_cube_count_elemwise(&like.client, vectors, dim), dim }))
}

fn arg<R: CubeRuntime>(t: &CubeTensor<R>, vectors: usize) -> ArrayArg<R> {
    unsafe { ArrayArg::from_raw_parts(t.handle.clone(), vectors) }
}

/// `y = silu(g) * u` into a new contiguous tensor; `g` and `u` contiguous, same shape and
/// dtype (f32, bf16 or f16).
pub fn swiglu_forward<R: CubeRuntime>(g: &CubeTensor<R>, u: &CubeTensor<R>) -> Result<CubeTensor<R>, KernelError> {
    let y = empty(g, g.meta.shape().iter().copied().collect(), g.dtype);
    swiglu_forward_into(g, u, &y)?;
    Ok(y)
}

/// [`swiglu_forward`] into `y` (contiguous, the inputs' shape and dtype; tests pass a poisoned one).
pub fn swiglu_forward_into<R: CubeRuntime>(g: &CubeTensor<R>, u: &CubeTensor<R>, y: &CubeTensor<R>) -> Result<(), KernelError> {
    const NAME: &str = "swiglu forward";
    let Some(Launch { vectors, vector, count, dim }) = plan(NAME, g, &[("g", g), ("u", u), ("y", y)])? else { return Ok(()) };
    let client = &g.client;
    with_float!(g.dtype, NAME, F => unsafe {
        swiglu_forward_kernel::launch_unchecked::<F, R>(client, count, dim, vector, arg(g, vectors), arg(u, vectors), arg(y, vectors), vectors)
    });
    Ok(())
}

/// The gradients of [`swiglu_forward`] for the output gradient `dh`: new contiguous
/// `(dg, du)`, all tensors of `g`'s shape and dtype.
pub fn swiglu_backward<R: CubeRuntime>(g: &CubeTensor<R>, u: &CubeTensor<R>, dh: &CubeTensor<R>) -> Result<(CubeTensor<R>, CubeTensor<R>), KernelError> {
    let shape: Vec<usize> = g.meta.shape().iter().copied().collect();
    let dg = empty(g, shape.clone(), g.dtype);
    let du = empty(g, shape, g.dtype);
    swiglu_backward_into(g, u, dh, &dg, &du)?;
    Ok((dg, du))
}

/// [`swiglu_backward`] into `dg` and `du` (contiguous, the inputs' shape and dtype).
pub fn swiglu_backward_into<R: CubeRuntime>(
    g: &CubeTensor<R>,
    u: &CubeTensor<R>,
    dh: &CubeTensor<R>,
    dg: &CubeTensor<R>,
    du: &CubeTensor<R>,
) -> Result<(), KernelError> {
    const NAME: &str = "swiglu backward";
    let Some(Launch { vectors, vector, count, dim }) = plan(NAME, g, &[("g", g), ("u", u), ("dh", dh), ("dg", dg), ("du", du)])? else { return Ok(()) };
    let client = &g.client;
    with_float!(g.dtype, NAME, F => unsafe {
        swiglu_backward_kernel::launch_unchecked::<F, R>(
            client,
            count,
            dim,
            vector,
            arg(g, vectors),
            arg(u, vectors),
            arg(dh, vectors),
            arg(dg, vectors),
            arg(du, vectors),
            vectors,
        )
    });
    Ok(())
}
