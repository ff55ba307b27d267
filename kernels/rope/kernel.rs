//! The rotary kernels: one thread per pair `(j, j + d/2)` of one head at one position, so a
//! warp covers a head's first or second half contiguously in both layouts. Input and output
//! are addressed by their own strides (sequence-major or head-major), so the forward and the
//! gradient are one kernel.

use super::reference::RopeDims;
use crate::device::{empty, numel, with_float, KernelError};
use burn_backend::DType;
use burn_cubecl::tensor::CubeTensor;
use burn_cubecl::CubeRuntime;
use cubecl::prelude::*;

#[cube(launch_unchecked)]
#[allow(clippy::too_many_arguments)]
pub(crate) fn rope_kernel<F: Float, C: Float>(
    x: &Array<F>,
    cos: &Array<C>,
    sin: &Array<C>,
    y: &mut Array<F>,
    seq: usize,
    heads: usize,
    half: usize,
    x_heads_first: u32,
    sign: f32,
    len: usize,
) {
    let i = ABSOLUTE_POS;
    if i < len {
        let j = i % half;
        let t = i / half;
        let n = t % heads;
        let bs = t / heads;
        let (b, s) = (bs / seq, bs % seq);
        let d = 2 * half;
        let bsnd = (bs * heads + n) * d + j;
        let bnsd = ((b * heads + n) * seq + s) * d + j;
        let mut xo = bsnd;
        let mut yo = bnsd;
        if x_heads_first == 1u32 {
            xo = bnsd;
            yo = bsnd;
        }
        let co = bs * d + j;
        let x1 = f32::cast_from(x[xo]);
        let x2 = f32::cast_from(x[xo + half]);
        let (c1, c2) = (f32::cast_from(cos[co]), f32::cast_from(cos[co + half]));
        let (s1, s2) = (sign * f32::cast_from(sin[co]), sign * f32::cast_from(sin[co + half]));
        y[yo] = F::cast_from(x1 * c1 - x2 * s1);
        y[yo + half] = F::cast_from(x2 * c2 + x1 * s2);
    }
}

/// `y = rope(x)` moved to head-major layout: `x [b, s, n, d]` contiguous -> new contiguous
/// `[b, n, s, d]` of `x`'s dtype.
pub fn rope_forward<R: CubeRuntime>(x: &CubeTensor<R>, cos: &CubeTensor<R>, sin: &CubeTensor<R>, dims: RopeDims) -> Result<CubeTensor<R>, KernelError> {
    let y = empty(x, vec![dims.batch, dims.heads, dims.seq, dims.head_dim], x.dtype);
    rope_into(x, cos, sin, dims, false, 1.0, &y)?;
    Ok(y)
}

/// The gradient of [`rope_forward`]: `g [b, n, s, d]` contiguous -> new contiguous
/// `[b, s, n, d]`.
pub fn rope_backward<R: CubeRuntime>(g: &CubeTensor<R>, cos: &CubeTensor<R>, sin: &CubeTensor<R>, dims: RopeDims) -> Result<CubeTensor<R>, KernelError> {
    let dx = empty(g, vec![dims.batch, dims.seq, dims.heads, dims.head_dim], g.dtype);
    rope_into(g, cos, sin, dims, true, -1.0, &dx)?;
    Ok(dx)
}

/// The kernel into `out` (contiguous, `x`'s size and dtype): `x` head-major (`[b, n, s, d]`)
/// and `out` sequence-major when `x_heads_first`, else the other way; `sin` scaled by `sign`.
pub fn rope_into<R: CubeRuntime>(x: &CubeTensor<R>, cos: &CubeTensor<R>, sin: &CubeTensor<R>, dims: RopeDims, x_heads_first: bool, sign: f32, out: &CubeTensor<R>) -> Result<(), KernelError> {
    const NAME: &str = "rope";
    let bad = |what: String| Err(KernelError::Shape { kernel: NAME, what });
    let RopeDims { batch, seq, heads, head_dim } = dims;
    if head_dim % 2 != 0 {
        return bad(format!("head dim {head_dim} is odd"));
    }
    for (name, t, len, dtype) in [("x", x, dims.len(), x.dtype), ("output", out, dims.len(), x.dtype), ("cos", cos, batch * seq * head_dim, cos.dtype), ("sin", sin, batch * seq * head_dim, cos.dtype)] {
        if numel(t) != len || t.dtype != dtype || !t.is_contiguous() {
            return bad(format!("{name} is {:?} x {} (contiguous: {}), expected contiguous {dtype:?} x {len}", t.dtype, numel(t), t.is_contiguous()));
        }
    }
    let len = dims.len() / 2;
    if len == 0 {
        return Ok(());
    }
    let client = &x.client;
    let dim = CubeDim::new_1d(256);
    let count = cubecl::calculate_cube_count_elemwise(client, len, dim);
    let arg = |t: &CubeTensor<R>| unsafe { ArrayArg::from_raw_parts(t.handle.clone(), numel(t)) };
    with_float!(x.dtype, NAME, F => with_float!(cos.dtype, NAME, C => unsafe {
        rope_kernel::launch_unchecked::<F, C, R>(client, count, dim, arg(x), arg(cos), arg(sin), arg(out), seq, heads, head_dim / 2, x_heads_first as u32, sign, len)
    }));
    Ok(())
}
