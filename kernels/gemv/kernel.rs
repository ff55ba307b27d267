//! The decode GEMV. A cube is 4 planes of 32 lanes; each plane owns `R` consecutive output
//! rows `n` and walks their packed rows in 16-byte chunks (32 codes, always inside one block
//! because `K % 32 == 0` and blocks hold >= 32 elements), lane `l` taking chunks `l, l + 32,
//! ...`. Each chunk's codes are looked up once and reused for all `M` rows of `X`; each `X`
//! vector is loaded once and reused for the plane's `R` weight rows. The block scale is
//! applied once per 8 products. A plane sum reduces the lanes.
//!
//! Bytes: `N K / 2` of codes plus the scales, `M K` of `X` (cached), `M N` written. At
//! `M = 1` the kernel is bandwidth-bound; at `M = 8` it does 8 FMAs per 4-bit code on CUDA
//! cores, which the H200's f32 rate cannot feed at full memory bandwidth.

use crate::device::{block_scale, check_operand, empty, nibble, KernelError, Nf4Device};
use burn_backend::DType;
use burn_cubecl::tensor::CubeTensor;
use burn_cubecl::CubeRuntime;
use cubecl::prelude::*;

/// Largest `M` the GEMV takes (decode batch); larger products use the GEMM.
pub const MAX_M: usize = 8;

const PLANES: u32 = 4;

#[cube(launch_unchecked)]
#[allow(clippy::too_many_arguments)]
pub(crate) fn gemv_kernel<F: Float, N: Size>(
    x: &Array<Vector<F, N>>,
    chunks_in: &Array<Vector<u32, Const<4>>>,
    absmax: &Array<f32>,
    qcodes: &Array<u8>,
    lut: &Array<f32>,
    y: &mut Array<F>,
    offset: f32,
    n_rows: usize,
    k: usize,
    block_shift: u32,
    #[comptime] m: usize,
    #[comptime] r: usize,
    #[comptime] double: bool,
) {
    let mut table = SharedMemory::<f32>::new(16usize);
    let tid = (UNIT_POS_Y * 32 + UNIT_POS_X) as usize;
    if tid < 16 {
        table[tid] = lut[tid];
    }
    sync_cube();

    let lane = UNIT_POS_X as usize;
    let n0 = (CUBE_POS_X as usize * PLANES as usize + UNIT_POS_Y as usize) * r;
    if n0 < n_rows {
        let chunks = k / 32;
        let xv_per_word = comptime![8 / x.vector_size()];
        let xvs = x.vector_size();
        let mut acc = Array::<f32>::new(comptime![m * r]);
        #[unroll]
        for i in 0..m * r {
            acc[i] = 0.0;
        }
        let mut rows = Array::<usize>::new(r);
        #[unroll]
        for i in 0..r {
            // Rows past the end repeat the last row (their sums are not stored).
            rows[i] = min(n0 + i, n_rows - 1);
        }
        let mut c = lane;
        while c < chunks {
            let mut codes = Array::<Vector<u32, Const<4>>>::new(r);
            let mut scales = Array::<f32>::new(r);
            #[unroll]
            for i in 0..r {
                codes[i] = chunks_in[rows[i] * chunks + c];
                scales[i] = block_scale((rows[i] * k + c * 32) >> block_shift as usize, absmax, qcodes, lut, offset, double);
            }
            #[unroll]
            for wi in 0..4usize {
                let mut vals = Array::<f32>::new(comptime![8 * r]);
                #[unroll]
                for i in 0..r {
                    let word = codes[i][wi];
                    #[unroll]
                    for j in 0..8usize {
                        vals[i * 8 + j] = table[nibble(word, j)];
                    }
                }
                #[unroll]
                for mi in 0..m {
                    let base = (mi * k + c * 32 + wi * 8) / xvs;
                    let mut xs = Array::<f32>::new(8usize);
                    #[unroll]
                    for t in 0..xv_per_word {
                        let v = x[base + t];
                        #[unroll]
                        for e in 0..xvs {
                            xs[t * xvs + e] = f32::cast_from(v[e]);
                        }
                    }
                    #[unroll]
                    for i in 0..r {
                        let mut dot = 0.0f32;
                        #[unroll]
                        for j in 0..8usize {
                            dot += vals[i * 8 + j] * xs[j];
                        }
                        acc[i * m + mi] += dot * scales[i];
                    }
                }
            }
            c += 32;
        }
        #[unroll]
        for i in 0..r {
            #[unroll]
            for mi in 0..m {
                let s = plane_sum(acc[i * m + mi]);
                if lane == 0 && n0 + i < n_rows {
                    y[mi * n_rows + n0 + i] = F::cast_from(s);
                }
            }
        }
    }
}

fn check<R: CubeRuntime>(x: &CubeTensor<R>, w: &Nf4Device<R>) -> Result<(usize, u32), KernelError> {
    const NAME: &str = "nf4 gemv";
    let shift = w.check(NAME)?;
    let m = check_operand(NAME, x, None, w.k)?;
    if m == 0 || m > MAX_M {
        return Err(KernelError::Shape { kernel: NAME, what: format!("M = {m} is not in 1..={MAX_M}") });
    }
    if w.k % 32 != 0 {
        return Err(KernelError::Shape { kernel: NAME, what: format!("K = {} is not a multiple of 32", w.k) });
    }
    Ok((m, shift))
}

/// `Y[M, N] = X[M, K] W^T` for `1 <= M <= 8`, `K % 32 == 0`; `X` contiguous f32/bf16/f16,
/// `Y` of the same dtype.
pub fn gemv<R: CubeRuntime>(x: &CubeTensor<R>, w: &Nf4Device<R>) -> Result<CubeTensor<R>, KernelError> {
    let (m, _) = check(x, w)?;
    let y = empty(x, vec![m, w.n], x.dtype);
    gemv_into(x, w, &y)?;
    Ok(y)
}

/// [`gemv`] into a given contiguous `[M, N]` output.
pub fn gemv_into<R: CubeRuntime>(x: &CubeTensor<R>, w: &Nf4Device<R>, y: &CubeTensor<R>) -> Result<(), KernelError> {
    const NAME: &str = "nf4 gemv";
    let (m, shift) = check(x, w)?;
    check_operand(NAME, y, Some(m), w.n)?;
    if y.dtype != x.dtype {
        return Err(KernelError::Dtype { kernel: NAME, dtype: y.dtype });
    }
    // Two rows per plane once M > 1: each X vector then feeds two weight rows.
    let r = if m == 1 { 1 } else { 2 };
    let cubes = w.n.div_ceil(PLANES as usize * r) as u32;
    let client = w.client();
    let (absmax, qcodes, offset, double) = w.scale_args();
    let vector = 16 / x.dtype.size();
    let x_arg = unsafe { ArrayArg::from_raw_parts(x.handle.clone(), m * w.k / vector) };
    let y_arg = unsafe { ArrayArg::from_raw_parts(y.handle.clone(), m * w.n) };
    let chunks = unsafe { ArrayArg::from_raw_parts(w.packed.handle.clone(), w.n * w.k / 32) };
    let (count, dim) = (CubeCount::Static(cubes, 1, 1), CubeDim::new_2d(32, PLANES));
    unsafe {
        match x.dtype {
            DType::F32 => gemv_kernel::launch_unchecked::<f32, R>(
                client, count, dim, vector, x_arg, chunks, absmax, qcodes, w.lut_arg(), y_arg, offset, w.n, w.k, shift, m, r, double,
            ),
            DType::BF16 => gemv_kernel::launch_unchecked::<half::bf16, R>(
                client, count, dim, vector, x_arg, chunks, absmax, qcodes, w.lut_arg(), y_arg, offset, w.n, w.k, shift, m, r, double,
            ),
            DType::F16 => gemv_kernel::launch_unchecked::<half::f16, R>(
                client, count, dim, vector, x_arg, chunks, absmax, qcodes, w.lut_arg(), y_arg, offset, w.n, w.k, shift, m, r, double,
            ),
            dtype => return Err(KernelError::Dtype { kernel: NAME, dtype }),
        }
    }
    Ok(())
}
