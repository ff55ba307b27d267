//! The cross-entropy kernels: one cube of [`THREADS`] threads per token row, each thread
//! striding over the row in vectors of up to 16 bytes. The forward keeps a running max and a
//! sum rescaled to it per thread (one exponential per element, one more per vector), then
//! combines the threads' pairs through shared memory ([`crate::device::cube_max`],
//! [`crate::device::cube_sum`]); the thread whose vectors hold the target writes the row's
//! loss. A 152,064-entry bf16 row is 297 KB, so the backward reads the logits again from
//! memory rather than from cache: three passes over the logits in all (two reads, one write).

use crate::device::{cube_max, cube_sum, empty, numel, with_float, KernelError, ROW_THREADS};
use burn_backend::DType;
use burn_cubecl::tensor::CubeTensor;
use burn_cubecl::CubeRuntime;
use cubecl::calculate_cube_count_elemwise;
use cubecl::prelude::*;

/// Threads per row.
const THREADS: usize = ROW_THREADS;

/// The row's target as an element index, or `vocab` (matching no element) when it lies
/// outside `[0, vocab)`.
#[cube]
fn target<I: Int>(targets: &Array<I>, row: usize, vocab: usize) -> usize {
    let tt = targets[row];
    let mut t = vocab;
    if tt >= I::cast_from(0u32) && tt < I::cast_from(vocab) {
        t = usize::cast_from(tt);
    }
    t
}

#[cube(launch_unchecked)]
#[allow(clippy::too_many_arguments)]
pub(crate) fn cross_entropy_forward_kernel<F: Float, I: Int, N: Size>(
    x: &Array<Vector<F, N>>,
    targets: &Array<I>,
    lse: &mut Array<f32>,
    nll: &mut Array<f32>,
    rows: usize,
    vectors: usize,
    vocab: usize,
) {
    let row = CUBE_POS;
    // Uniform over the cube, so the barriers inside stay convergent.
    if row < rows {
        let mut red = SharedMemory::<f32>::new(THREADS);
        let width = x.vector_size();
        let base = row * vectors;
        let t = target(targets, row, vocab);
        let mut m = f32::min_value();
        let mut s = 0.0f32;
        let mut xt = 0.0f32;
        let mut v = UNIT_POS as usize;
        while v < vectors {
            let xv = Vector::<f32, N>::cast_from(x[base + v]);
            let mut vm = m;
            #[unroll]
            for j in 0..width {
                vm = max(vm, xv[j]);
            }
            s *= f32::exp(m - vm);
            m = vm;
            #[unroll]
            for j in 0..width {
                s += f32::exp(xv[j] - m);
                if v * width + j == t {
                    xt = xv[j];
                }
            }
            v += THREADS;
        }
        let mx = cube_max(&mut red, m);
        let l = mx + f32::ln(cube_sum(&mut red, s * f32::exp(m - mx)));
        let tid = UNIT_POS as usize;
        if tid == 0 {
            lse[row] = l;
        }
        if t < vocab {
            if tid == (t / width) % THREADS {
                nll[row] = l - xt;
            }
        } else if tid == 0 {
            // NaN from a run-time 0 / 0 (a NaN literal is not portable C++ source).
            let zero = f32::cast_from(rows) * 0.0;
            nll[row] = zero / zero;
        }
    }
}

#[cube(launch_unchecked)]
#[allow(clippy::too_many_arguments)]
pub(crate) fn cross_entropy_backward_kernel<F: Float, I: Int, N: Size>(
    x: &Array<Vector<F, N>>,
    targets: &Array<I>,
    lse: &Array<f32>,
    g: &Array<f32>,
    dx: &mut Array<Vector<F, N>>,
    rows: usize,
    vectors: usize,
    vocab: usize,
) {
    let row = CUBE_POS;
    if row < rows {
        let width = x.vector_size();
        let base = row * vectors;
        let t = target(targets, row, vocab);
        let (l, gs) = (lse[row], g[row]);
        let mut v = UNIT_POS as usize;
        while v < vectors {
            let xv = Vector::<f32, N>::cast_from(x[base + v]);
            let mut out = Vector::<f32, N>::empty();
            #[unroll]
            for j in 0..width {
                let mut p = f32::exp(xv[j] - l);
                if v * width + j == t {
                    p -= 1.0;
                }
                out[j] = p * gs;
            }
            dx[base + v] = Vector::<F, N>::cast_from(out);
            v += THREADS;
        }
    }
}

/// Runs `$launch` with `$i` naming the targets' integer type (i32, i64 or u32).
macro_rules! with_int {
    ($dtype:expr, $name:expr, $i:ident => $launch:expr) => {
        match $dtype {
            DType::I32 => {
                type $i = i32;
                $launch
            }
            DType::I64 => {
                type $i = i64;
                $launch
            }
            DType::U32 => {
                type $i = u32;
                $launch
            }
            dtype => return Err(KernelError::Dtype { kernel: $name, dtype }),
        }
    };
}

/// `(rows, vocab, vector width)` after checking every operand: `x` and `floats` contiguous
/// `[rows, vocab]` of one float dtype, `targets` `rows` integers, `f32s` contiguous f32
/// `[rows]`. The width is the largest of 16 bytes' worth, 4, 2, 1 dividing the vocabulary
/// and every float operand's offset.
fn check<R: CubeRuntime>(kernel: &'static str, x: &CubeTensor<R>, targets: &CubeTensor<R>, floats: &[(&str, &CubeTensor<R>)], f32s: &[(&str, &CubeTensor<R>)]) -> Result<(usize, usize, usize), KernelError> {
    let shape_err = |what: String| KernelError::Shape { kernel, what };
    if !matches!(x.dtype, DType::F32 | DType::BF16 | DType::F16) {
        return Err(KernelError::Dtype { kernel, dtype: x.dtype });
    }
    let dims: Vec<usize> = x.meta.shape().iter().copied().collect();
    let [rows, vocab] = dims[..] else {
        return Err(shape_err(format!("logits are {dims:?}, expected [rows, vocab]")));
    };
    if vocab == 0 {
        return Err(shape_err("an empty vocabulary has no distribution".into()));
    }
    if numel(targets) != rows || !targets.is_contiguous() {
        return Err(shape_err(format!("{} targets (contiguous: {}) for {rows} rows", numel(targets), targets.is_contiguous())));
    }
    let elem = x.dtype.size();
    let mut vector = 16 / elem;
    for (name, t) in std::iter::once(&("logits", x)).chain(floats) {
        let tdims: Vec<usize> = t.meta.shape().iter().copied().collect();
        if tdims != dims || t.dtype != x.dtype || !t.is_contiguous() {
            return Err(shape_err(format!("{name} is {:?} {tdims:?} (contiguous: {}), expected contiguous {:?} {dims:?}", t.dtype, t.is_contiguous(), x.dtype)));
        }
        let offset = t.handle.offset_start.unwrap_or(0) as usize;
        if offset % elem != 0 {
            return Err(shape_err(format!("{name} starts at byte {offset}, not a whole {:?} element", t.dtype)));
        }
        while vocab % vector != 0 || (offset / elem) % vector != 0 {
            vector /= 2;
        }
    }
    for (name, t) in f32s {
        if numel(t) != rows || t.dtype != DType::F32 || !t.is_contiguous() {
            return Err(shape_err(format!("{name} is {:?} x {} (contiguous: {}), expected contiguous F32 x {rows}", t.dtype, numel(t), t.is_contiguous())));
        }
    }
    Ok((rows, vocab, vector))
}

fn arg<R: CubeRuntime>(t: &CubeTensor<R>, len: usize) -> ArrayArg<R> {
    unsafe { ArrayArg::from_raw_parts(t.handle.clone(), len) }
}

/// `(lse, nll)`, new f32 `[rows]` tensors, for logits `x [rows, vocab]` (f32, bf16 or f16)
/// and `targets [rows]` (i32, i64 or u32).
pub fn cross_entropy_forward<R: CubeRuntime>(x: &CubeTensor<R>, targets: &CubeTensor<R>) -> Result<(CubeTensor<R>, CubeTensor<R>), KernelError> {
    let rows = x.meta.shape().iter().next().copied().unwrap_or(0);
    let (lse, nll) = (empty(x, vec![rows], DType::F32), empty(x, vec![rows], DType::F32));
    cross_entropy_forward_into(x, targets, &lse, &nll)?;
    Ok((lse, nll))
}

/// [`cross_entropy_forward`] into `lse` and `nll` (contiguous f32 `[rows]`; tests poison them).
pub fn cross_entropy_forward_into<R: CubeRuntime>(x: &CubeTensor<R>, targets: &CubeTensor<R>, lse: &CubeTensor<R>, nll: &CubeTensor<R>) -> Result<(), KernelError> {
    const NAME: &str = "cross-entropy forward";
    let (rows, vocab, vector) = check(NAME, x, targets, &[], &[("lse", lse), ("nll", nll)])?;
    if rows == 0 {
        return Ok(());
    }
    let vectors = vocab / vector;
    let client = &x.client;
    let count = calculate_cube_count_elemwise(client, rows, CubeDim::new_1d(1));
    with_float!(x.dtype, NAME, F => with_int!(targets.dtype, NAME, I => unsafe {
        cross_entropy_forward_kernel::launch_unchecked::<F, I, R>(
            client, count, CubeDim::new_1d(THREADS as u32), vector,
            arg(x, rows * vectors), arg(targets, rows), arg(lse, rows), arg(nll, rows), rows, vectors, vocab,
        )
    }));
    Ok(())
}

/// `dx = (exp(x - lse) - onehot(targets)) g`: a new tensor of `x`'s shape and dtype, for the
/// forward's `lse` and each row loss's gradient `g` (f32 `[rows]`, on the device).
pub fn cross_entropy_backward<R: CubeRuntime>(x: &CubeTensor<R>, targets: &CubeTensor<R>, lse: &CubeTensor<R>, g: &CubeTensor<R>) -> Result<CubeTensor<R>, KernelError> {
    let dx = empty(x, x.meta.shape().iter().copied().collect(), x.dtype);
    cross_entropy_backward_into(x, targets, lse, g, &dx)?;
    Ok(dx)
}

/// [`cross_entropy_backward`] into `dx` (contiguous, `x`'s shape and dtype).
pub fn cross_entropy_backward_into<R: CubeRuntime>(x: &CubeTensor<R>, targets: &CubeTensor<R>, lse: &CubeTensor<R>, g: &CubeTensor<R>, dx: &CubeTensor<R>) -> Result<(), KernelError> {
    const NAME: &str = "cross-entropy backward";
    let (rows, vocab, vector) = check(NAME, x, targets, &[("dx", dx)], &[("lse", lse), ("g", g)])?;
    if rows == 0 {
        return Ok(());
    }
    let vectors = vocab / vector;
    let client = &x.client;
    let count = calculate_cube_count_elemwise(client, rows, CubeDim::new_1d(1));
    with_float!(x.dtype, NAME, F => with_int!(targets.dtype, NAME, I => unsafe {
        cross_entropy_backward_kernel::launch_unchecked::<F, I, R>(
            client, count, CubeDim::new_1d(THREADS as u32), vector,
            arg(x, rows * vectors), arg(targets, rows), arg(lse, rows), arg(g, rows), arg(dx, rows * vectors), rows, vectors, vocab,
        )
    }));
    Ok(())
}
