//! The SwiGLU kernels: one thread per vector of `N` elements (16 bytes when the length and the
//! handles' offsets allow: 8 bf16/f16 or 4 f32), so a warp moves 512 contiguous bytes per
//! operand. Loads are cast to f32, the sigmoid is `1 / (1 + exp(-g))` in f32 (for `g < -88`
//! `exp` overflows to inf and `s` is 0, the right limit), results are cast back once.

use crate::device::{elementwise_plan, empty, vector_arg as arg, with_float, ElementwiseLaunch, KernelError};
use burn_backend::DType;
use burn_cubecl::tensor::CubeTensor;
use burn_cubecl::CubeRuntime;
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
    let Some(ElementwiseLaunch { vectors, vector, count, dim }) = elementwise_plan(NAME, g, &[("g", g), ("u", u), ("y", y)])? else { return Ok(()) };
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
    let Some(ElementwiseLaunch { vectors, vector, count, dim }) = elementwise_plan(NAME, g, &[("g", g), ("u", u), ("dh", dh), ("dg", dg), ("du", du)])? else { return Ok(()) };
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
