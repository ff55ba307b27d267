//! The dense products on the wide kernel's core ([`crate::gemm::wide`]): 256 x 128 tiles of 8
//! planes of 64 x 64 through `ldmatrix` + `mma.sync`, two shared tile sets, and both operands
//! copied global -> shared by `cp.async` (nothing to decode). The grid's third dimension cuts
//! the reduction into parts whose f32 partials [`crate::splitk_sum`] adds.

use super::{plan_parts, Direction};
use crate::device::{check_operand, empty, KernelError};
use crate::gemm::kernel::BN;
use crate::gemm::mma::{mma_products_k16, store_mma_tile, zero_mma_accumulators};
use crate::gemm::pipelined::{BK64, LDV64};
use crate::gemm::wide::{copy_a64_async, WIDE_COLS, WIDE_ROWS, WIDE_THREADS};
use crate::gemm_dx::pipelined::LDBV;
use crate::splitk_sum::{splitk_sum_into, Split};
use burn_backend::DType;
use burn_cubecl::tensor::CubeTensor;
use burn_cubecl::CubeRuntime;
use cubecl::prelude::barrier::{copy_async, Barrier};
use cubecl::prelude::*;

/// Issues `cp.async` copies of `W[row0 .. row0 + 64, c0 .. c0 + 128]` (row-major `[rows,
/// cols]`, 8-element vectors) into the `[64, 128]` shared tile at vector offset `base` (row
/// stride [`LDBV`]): the `dX` direction's tile, 64 rows of the reduction by 128 output columns,
/// four vectors per thread. Columns past the last copy the last vector again (those output
/// columns are never stored).
#[cube]
fn copy_b128_async<F: Float>(w: &Array<Vector<F, Const<8>>>, tile: &mut SharedMemory<Vector<F, Const<8>>>, base: usize, row0: usize, cols: usize, c0: usize, tid: usize) {
    let row_vectors = cols / 8;
    #[unroll]
    for p in 0..comptime![BK64 * BN / 8 / WIDE_THREADS] {
        let v = tid + p * WIDE_THREADS;
        let r = v / 16;
        let cv = min(c0 / 8 + v % 16, row_vectors - 1);
        let src = (row0 + r) * row_vectors + cv;
        let dst = base + r * LDBV + v % 16;
        copy_async::<Vector<F, Const<8>>>(&w.slice(src, src + 1), &mut tile.slice_mut(dst, dst + 1), 8u32);
    }
}

/// `Y = X W^T` (`dx` false: `a` is `X[M, K]`, the reduction runs over `K`, `W`'s tile holds 128
/// of its rows) or `dX = dY W` (`dx` true: `a` is `dY[M, N]`, the reduction runs over `N`, the
/// tile holds 64 rows of `W` by 128 of its columns, loaded by `ldmatrix.trans`), `W [N, K]`.
/// Cube `z` reduces the 64-wide steps `z * span ..` (at most `span` of them) and writes its
/// products to rows `z * M ..` of `out` (`[parts * M, cols]`: the partials, or the product
/// itself when there is one part).
#[cube(launch_unchecked)]
#[allow(clippy::too_many_arguments)]
pub(crate) fn gemm_dense_kernel<F: Float, O: Float>(a: &Array<Vector<F, Const<8>>>, w: &Array<Vector<F, Const<8>>>, out: &mut Array<O>, m_rows: usize, n: usize, k: usize, span: usize, #[comptime] dx: bool) {
    let tid = UNIT_POS as usize;
    let a_tile = comptime![WIDE_ROWS * LDV64];
    let w_tile = comptime![if dx { BK64 * LDBV } else { BN * LDV64 }];
    let ldw = comptime![if dx { LDBV } else { LDV64 }];
    let mut xs = SharedMemory::<Vector<F, Const<8>>>::new_aligned(comptime![2 * a_tile], 32usize);
    let mut ws = SharedMemory::<Vector<F, Const<8>>>::new_aligned(comptime![2 * w_tile], 32usize);
    // Initialized by thread 0 and published by a cube barrier.
    let bar = Barrier::shared(WIDE_THREADS as u32, tid == 0);
    sync_cube();

    let plane = tid / 32;
    let lane = tid % 32;
    let wm = plane / 2;
    let wn = plane % 2;
    let m0 = CUBE_POS_Y as usize * WIDE_ROWS;
    let c0 = CUBE_POS_X as usize * BN;
    let part = CUBE_POS_Z as usize;
    let mut macc = zero_mma_accumulators(comptime![4 * WIDE_COLS / 8]);
    // The reduction's length (`a`'s columns) and the output's columns.
    let (red, cols) = if comptime![dx] { (n, k) } else { (k, n) };
    let first = part * span;
    let steps = min(span, red / BK64 - first);

    // Step `s` of this part reduces columns `(first + s) * 64 ..` of `a` against the matching
    // tile of `W`; its copies are issued one step ahead into the other set.
    copy_a64_async::<F>(a, &mut xs, 0, m0, m_rows, red, first * BK64, tid, WIDE_ROWS);
    if comptime![dx] {
        copy_b128_async::<F>(w, &mut ws, 0, first * BK64, k, c0, tid);
    } else {
        copy_a64_async::<F>(w, &mut ws, 0, c0, n, k, first * BK64, tid, BN);
    }
    bar.commit_copy_async();
    bar.arrive_and_wait();

    // Unrolled once per tile set so each copy addresses its set at compile-time offsets.
    for round in 0..(steps + 1) / 2 {
        #[unroll]
        for cur in 0..2usize {
            let s = round * 2 + cur;
            if s < steps {
                let next = 1 - cur;
                if s + 1 < steps {
                    let c = (first + s + 1) * BK64;
                    copy_a64_async::<F>(a, &mut xs, next * a_tile, m0, m_rows, red, c, tid, WIDE_ROWS);
                    if comptime![dx] {
                        copy_b128_async::<F>(w, &mut ws, next * w_tile, c, k, c0, tid);
                    } else {
                        copy_a64_async::<F>(w, &mut ws, next * w_tile, c0, n, k, c, tid, BN);
                    }
                }
                #[unroll]
                for kk in 0..4usize {
                    mma_products_k16::<F>(&xs, cur * a_tile, &ws, cur * w_tile, &mut macc, wm, wn, lane, comptime![!dx], ldw, WIDE_COLS, kk);
                }
                // Every thread's copies into the other set have landed and every plane has
                // read this set before anyone refills it.
                bar.commit_copy_async();
                bar.arrive_and_wait();
            }
        }
    }
    // Part `z`'s rows of `out` are `z * M ..`: the bounds check stops at its last row.
    let base = part * m_rows;
    store_mma_tile::<O>(&macc, out, base + m0 + wm * 64, c0 + wn * WIDE_COLS, base + m_rows, cols, lane, WIDE_COLS);
}

const NAME: &str = "dense gemm";

/// [`super::gemm_dense`] into a given contiguous output (`[M, N]` forward, `[M, K]` input
/// gradient; tests pass a poisoned one).
pub fn gemm_dense_into<R: CubeRuntime>(a: &CubeTensor<R>, w: &CubeTensor<R>, product: Direction, parts: Option<usize>, out: &CubeTensor<R>) -> Result<(), KernelError> {
    let bad = |what: String| Err(KernelError::Shape { kernel: NAME, what });
    let wd: Vec<usize> = w.meta.shape().iter().copied().collect();
    let [n, k] = wd[..] else {
        return bad(format!("W {wd:?} is not a [N, K] matrix"));
    };
    let dx = product == Direction::InputGrad;
    let (red, cols) = if dx { (n, k) } else { (k, n) };
    check_operand(NAME, w, Some(n), k)?;
    let m = check_operand(NAME, a, None, red)?;
    check_operand(NAME, out, Some(m), cols)?;
    if !matches!(a.dtype, DType::BF16 | DType::F16) || w.dtype != a.dtype || out.dtype != a.dtype {
        return Err(KernelError::Dtype { kernel: NAME, dtype: if w.dtype != a.dtype { w.dtype } else { out.dtype } });
    }
    // Whole 64-wide reduction steps; 16-byte rows and starts for `cp.async`.
    if red == 0 || red % BK64 != 0 || k % 8 != 0 {
        return bad(format!("the reduction ({red}) is not a positive multiple of {BK64}, or K = {k} of 8"));
    }
    if [a, w].iter().any(|t| t.handle.offset_start.unwrap_or(0) % 16 != 0) {
        return bad("an operand does not start on 16 bytes".into());
    }
    if m == 0 || cols == 0 {
        return Ok(());
    }
    let client = &a.client;
    let cubes = cols.div_ceil(BN) * m.div_ceil(WIDE_ROWS);
    let sms = client.properties().hardware.num_streaming_multiprocessors.unwrap_or(1) as usize;
    let (parts, span) = plan_parts(red / BK64, cubes, sms, parts);
    let count = CubeCount::Static(cols.div_ceil(BN) as u32, m.div_ceil(WIDE_ROWS) as u32, parts as u32);
    let dim = CubeDim::new_1d(WIDE_THREADS as u32);
    let arg = |t: &CubeTensor<R>, len: usize| unsafe { ArrayArg::from_raw_parts(t.handle.clone(), len) };
    macro_rules! launch {
        ($o:ty, $out:expr, $len:expr) => {
            unsafe {
                match a.dtype {
                    DType::BF16 => gemm_dense_kernel::launch_unchecked::<half::bf16, $o, R>(client, count, dim, arg(a, m * red / 8), arg(w, n * k / 8), arg($out, $len), m, n, k, span, dx),
                    DType::F16 => gemm_dense_kernel::launch_unchecked::<half::f16, $o, R>(client, count, dim, arg(a, m * red / 8), arg(w, n * k / 8), arg($out, $len), m, n, k, span, dx),
                    dtype => return Err(KernelError::Dtype { kernel: NAME, dtype }),
                }
            }
        };
    }
    if parts == 1 {
        match a.dtype {
            DType::BF16 => launch!(half::bf16, out, m * cols),
            _ => launch!(half::f16, out, m * cols),
        }
        return Ok(());
    }
    let partials = empty(a, vec![parts * m, cols], DType::F32);
    launch!(f32, &partials, parts * m * cols);
    splitk_sum_into(&partials, Split { outer: 1, parts, inner: m * cols }, 1.0, out)
}
