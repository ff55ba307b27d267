//! The masked-softmax kernels: one cube of [`THREADS`] threads per score row. Each thread
//! strides over the row in vectors (16 bytes when the keys and the handles' offsets allow),
//! the row's max, sum and `rowsum(P dP)` are reduced through shared memory
//! ([`crate::device::cube_sum`]), and every pass after the first reads the row from cache: a
//! 2,048-key bf16 row is 4 KB. The max is taken over the raw scores and the scale applied inside the
//! exponential, which needs `scale > 0` (attention's `head_dim^-0.5`; checked).

use super::reference::Rows;
use crate::device::{cube_max, cube_sum, empty, numel, with_float, KernelError, ROW_THREADS};
use burn_backend::{BoolStore, DType};
use burn_cubecl::tensor::CubeTensor;
use burn_cubecl::CubeRuntime;
use cubecl::calculate_cube_count_elemwise;
use cubecl::prelude::*;

/// Threads per row.
const THREADS: usize = ROW_THREADS;

/// The mask row that score row `row` reads (see the module docs).
#[cube]
fn mask_base(row: usize, n: usize, group: usize, mask_batches: usize) -> usize {
    ((row / group) % mask_batches) * n + row % n
}

/// Max of the row's visible raw scores (`f32::MIN` when none is visible).
#[cube]
fn row_max<F: Float, M: Int, N: Size>(s: &Array<Vector<F, N>>, mask: &Array<Vector<M, N>>, sb: usize, mb: usize, vectors: usize, red: &mut SharedMemory<f32>) -> f32 {
    let width = s.vector_size();
    let mut mx = f32::min_value();
    let mut v = UNIT_POS as usize;
    while v < vectors {
        let sv = s[sb + v];
        let mv = mask[mb + v];
        #[unroll]
        for j in 0..width {
            if u32::cast_from(mv[j]) == 0u32 {
                mx = max(mx, f32::cast_from(sv[j]));
            }
        }
        v += THREADS;
    }
    cube_max(red, mx)
}

/// `1 / sum(exp((s - mx) scale))` over the visible keys, 0 when none is visible.
#[cube]
fn row_inv_sum<F: Float, M: Int, N: Size>(s: &Array<Vector<F, N>>, mask: &Array<Vector<M, N>>, sb: usize, mb: usize, vectors: usize, mx: f32, scale: f32, red: &mut SharedMemory<f32>) -> f32 {
    let width = s.vector_size();
    let mut sum = 0.0f32;
    let mut v = UNIT_POS as usize;
    while v < vectors {
        let sv = s[sb + v];
        let mv = mask[mb + v];
        #[unroll]
        for j in 0..width {
            if u32::cast_from(mv[j]) == 0u32 {
                sum += f32::exp((f32::cast_from(sv[j]) - mx) * scale);
            }
        }
        v += THREADS;
    }
    let total = cube_sum(red, sum);
    let mut inv = 0.0f32;
    if total > 0.0 {
        inv = 1.0 / total;
    }
    inv
}

/// The probabilities of one vector of the row, in f32.
#[cube]
fn probs<F: Float, M: Int, N: Size>(sv: Vector<F, N>, mv: Vector<M, N>, mx: f32, scale: f32, inv: f32) -> Vector<f32, N> {
    let mut out = Vector::<f32, N>::empty();
    #[unroll]
    for j in 0..sv.vector_size() {
        let mut pj = 0.0f32;
        if u32::cast_from(mv[j]) == 0u32 {
            pj = f32::exp((f32::cast_from(sv[j]) - mx) * scale) * inv;
        }
        out[j] = pj;
    }
    out
}

#[cube(launch_unchecked)]
#[allow(clippy::too_many_arguments)]
pub(crate) fn masked_softmax_kernel<F: Float, M: Int, N: Size>(
    s: &Array<Vector<F, N>>,
    mask: &Array<Vector<M, N>>,
    p: &mut Array<Vector<F, N>>,
    rows: usize,
    vectors: usize,
    n: usize,
    group: usize,
    mask_batches: usize,
    scale: f32,
) {
    let row = CUBE_POS;
    // Uniform over the cube, so the barriers inside stay convergent.
    if row < rows {
        let mut red = SharedMemory::<f32>::new(THREADS);
        let sb = row * vectors;
        let mb = mask_base(row, n, group, mask_batches) * vectors;
        let mx = row_max(s, mask, sb, mb, vectors, &mut red);
        let inv = row_inv_sum(s, mask, sb, mb, vectors, mx, scale, &mut red);
        let mut v = UNIT_POS as usize;
        while v < vectors {
            p[sb + v] = Vector::<F, N>::cast_from(probs(s[sb + v], mask[mb + v], mx, scale, inv));
            v += THREADS;
        }
    }
}

#[cube(launch_unchecked)]
#[allow(clippy::too_many_arguments)]
pub(crate) fn masked_softmax_backward_kernel<F: Float, M: Int, N: Size>(
    s: &Array<Vector<F, N>>,
    dp: &Array<Vector<F, N>>,
    mask: &Array<Vector<M, N>>,
    p: &mut Array<Vector<F, N>>,
    ds: &mut Array<Vector<F, N>>,
    rows: usize,
    vectors: usize,
    n: usize,
    group: usize,
    mask_batches: usize,
    scale: f32,
) {
    let row = CUBE_POS;
    if row < rows {
        let mut red = SharedMemory::<f32>::new(THREADS);
        let sb = row * vectors;
        let mb = mask_base(row, n, group, mask_batches) * vectors;
        let mx = row_max(s, mask, sb, mb, vectors, &mut red);
        let inv = row_inv_sum(s, mask, sb, mb, vectors, mx, scale, &mut red);
        // P is written (rounded to the storage dtype, as the tensor-op path casts it for
        // `dV = P^T dO`) while `rowsum(P dP)` accumulates from the f32 values.
        let mut dot = 0.0f32;
        let mut v = UNIT_POS as usize;
        while v < vectors {
            let pv = probs(s[sb + v], mask[mb + v], mx, scale, inv);
            let gv = Vector::<f32, N>::cast_from(dp[sb + v]);
            p[sb + v] = Vector::<F, N>::cast_from(pv);
            #[unroll]
            for j in 0..pv.vector_size() {
                dot += pv[j] * gv[j];
            }
            v += THREADS;
        }
        let dot = cube_sum(&mut red, dot);
        let mut v = UNIT_POS as usize;
        while v < vectors {
            let pv = probs(s[sb + v], mask[mb + v], mx, scale, inv);
            let gv = Vector::<f32, N>::cast_from(dp[sb + v]);
            ds[sb + v] = Vector::<F, N>::cast_from(pv * (gv - Vector::<f32, N>::new(dot)) * Vector::<f32, N>::new(scale));
            v += THREADS;
        }
    }
}

/// Element size of the mask's storage, or why it is not taken.
fn mask_elem(kernel: &'static str, mask: &CubeTensor<impl CubeRuntime>) -> Result<usize, KernelError> {
    match mask.dtype {
        DType::Bool(BoolStore::U8) | DType::U8 => Ok(1),
        DType::Bool(BoolStore::U32) | DType::U32 => Ok(4),
        dtype => Err(KernelError::Dtype { kernel, dtype }),
    }
}

/// The vector width every operand allows, after checking shapes, dtypes and contiguity: the
/// largest of 16 bytes' worth (of the wider of the float and mask elements), 4, 2, 1 that
/// divides the keys and every handle's offset.
fn check<R: CubeRuntime>(kernel: &'static str, layout: Rows, scale: f32, mask: &CubeTensor<R>, floats: &[(&str, &CubeTensor<R>)]) -> Result<usize, KernelError> {
    let Rows { rows, keys, n, group, mask_batches } = layout;
    let shape_err = |what: String| KernelError::Shape { kernel, what };
    if !(scale > 0.0 && scale.is_finite()) {
        return Err(shape_err(format!("scale {scale} must be positive and finite (the max is taken before scaling)")));
    }
    if n == 0 || group == 0 || mask_batches == 0 || group % n != 0 || rows % group != 0 || (rows / group) % mask_batches != 0 {
        return Err(shape_err(format!("rows {rows} are not batches x group {group} (heads x n = {n}) with mask batches {mask_batches} dividing the batches")));
    }
    let melem = mask_elem(kernel, mask)?;
    let like = floats[0].1;
    if !matches!(like.dtype, DType::F32 | DType::BF16 | DType::F16) {
        return Err(KernelError::Dtype { kernel, dtype: like.dtype });
    }
    let elem = like.dtype.size();
    let last = |t: &CubeTensor<R>| t.meta.shape().iter().last().copied();
    if numel(mask) != mask_batches * n * keys || last(mask) != Some(keys) || !mask.is_contiguous() {
        let dims: Vec<usize> = mask.meta.shape().iter().copied().collect();
        return Err(shape_err(format!("mask is {dims:?} (contiguous: {}), expected contiguous [{mask_batches}, {n}, {keys}]", mask.is_contiguous())));
    }
    let mut vector = 16 / elem.max(melem);
    let moffset = mask.handle.offset_start.unwrap_or(0) as usize;
    while keys % vector != 0 || moffset % (melem * vector) != 0 {
        vector /= 2;
    }
    for (name, t) in floats {
        if numel(t) != rows * keys || last(t) != Some(keys) || t.dtype != like.dtype || !t.is_contiguous() {
            let dims: Vec<usize> = t.meta.shape().iter().copied().collect();
            return Err(shape_err(format!("{name} is {:?} {dims:?} (contiguous: {}), expected contiguous {:?} [{rows}, {keys}]", t.dtype, t.is_contiguous(), like.dtype)));
        }
        let offset = t.handle.offset_start.unwrap_or(0) as usize;
        if offset % elem != 0 {
            return Err(shape_err(format!("{name} starts at byte {offset}, not a whole {:?} element", t.dtype)));
        }
        while (offset / elem) % vector != 0 {
            vector /= 2;
        }
    }
    Ok(vector)
}

fn arg<R: CubeRuntime>(t: &CubeTensor<R>, len: usize) -> ArrayArg<R> {
    unsafe { ArrayArg::from_raw_parts(t.handle.clone(), len) }
}

/// Runs `$launch` with `$m` naming the mask's storage type (u8 or u32; checked before).
macro_rules! with_mask {
    ($mask:expr, $m:ident => $launch:expr) => {
        if $mask.dtype.size() == 1 {
            type $m = u8;
            $launch
        } else {
            type $m = u32;
            $launch
        }
    };
}

/// `P = softmax(S * scale)` over the keys `mask` leaves visible (see the module docs for the
/// layout): a new contiguous tensor of `s`'s shape and dtype.
pub fn masked_softmax<R: CubeRuntime>(s: &CubeTensor<R>, mask: &CubeTensor<R>, layout: Rows, scale: f32) -> Result<CubeTensor<R>, KernelError> {
    let p = empty(s, s.meta.shape().iter().copied().collect(), s.dtype);
    masked_softmax_into(s, mask, layout, scale, &p)?;
    Ok(p)
}

/// [`masked_softmax`] into `p` (contiguous, `s`'s shape and dtype; tests pass a poisoned one).
pub fn masked_softmax_into<R: CubeRuntime>(s: &CubeTensor<R>, mask: &CubeTensor<R>, layout: Rows, scale: f32, p: &CubeTensor<R>) -> Result<(), KernelError> {
    const NAME: &str = "masked softmax";
    let vector = check(NAME, layout, scale, mask, &[("scores", s), ("probabilities", p)])?;
    if layout.rows * layout.keys == 0 {
        return Ok(());
    }
    let vectors = layout.keys / vector;
    let client = &s.client;
    let count = calculate_cube_count_elemwise(client, layout.rows, CubeDim::new_1d(1));
    let (len, mlen) = (layout.rows * vectors, numel(mask) / vector);
    let Rows { rows, n, group, mask_batches, .. } = layout;
    with_float!(s.dtype, NAME, F => with_mask!(mask, M => unsafe {
        masked_softmax_kernel::launch_unchecked::<F, M, R>(
            client, count, CubeDim::new_1d(THREADS as u32), vector,
            arg(s, len), arg(mask, mlen), arg(p, len), rows, vectors, n, group, mask_batches, scale,
        )
    }));
    Ok(())
}

/// The gradient of [`masked_softmax`] for the output gradient `dp`: new contiguous `(P, dS)`
/// with `dS = P (dP - rowsum(P dP)) scale`, `P` recomputed from `s`.
pub fn masked_softmax_backward<R: CubeRuntime>(s: &CubeTensor<R>, dp: &CubeTensor<R>, mask: &CubeTensor<R>, layout: Rows, scale: f32) -> Result<(CubeTensor<R>, CubeTensor<R>), KernelError> {
    let shape: Vec<usize> = s.meta.shape().iter().copied().collect();
    let p = empty(s, shape.clone(), s.dtype);
    let ds = empty(s, shape, s.dtype);
    masked_softmax_backward_into(s, dp, mask, layout, scale, &p, &ds)?;
    Ok((p, ds))
}

/// [`masked_softmax_backward`] into `p` and `ds` (contiguous, `s`'s shape and dtype).
pub fn masked_softmax_backward_into<R: CubeRuntime>(
    s: &CubeTensor<R>,
    dp: &CubeTensor<R>,
    mask: &CubeTensor<R>,
    layout: Rows,
    scale: f32,
    p: &CubeTensor<R>,
    ds: &CubeTensor<R>,
) -> Result<(), KernelError> {
    const NAME: &str = "masked softmax backward";
    let vector = check(NAME, layout, scale, mask, &[("scores", s), ("dP", dp), ("probabilities", p), ("dS", ds)])?;
    if layout.rows * layout.keys == 0 {
        return Ok(());
    }
    let vectors = layout.keys / vector;
    let client = &s.client;
    let count = calculate_cube_count_elemwise(client, layout.rows, CubeDim::new_1d(1));
    let (len, mlen) = (layout.rows * vectors, numel(mask) / vector);
    let Rows { rows, n, group, mask_batches, .. } = layout;
    with_float!(s.dtype, NAME, F => with_mask!(mask, M => unsafe {
        masked_softmax_backward_kernel::launch_unchecked::<F, M, R>(
            client, count, CubeDim::new_1d(THREADS as u32), vector,
            arg(s, len), arg(dp, len), arg(mask, mlen), arg(p, len), arg(ds, len), rows, vectors, n, group, mask_batches, scale,
        )
    }));
    Ok(())
}
