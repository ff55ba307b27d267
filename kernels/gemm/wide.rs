//! The forward NF4 GEMM with wide planes ([`super::GemmMma::Wide`]), `Y = X W^T` for
//! `K % 64 == 0`: a 256 x 128 tile per cube of 8 planes (256 threads), each plane a 64 x 64
//! sub-tile through `ldmatrix` + `mma.sync` ([`super::mma`]), two shared tile sets, and the
//! `X` tile copied global -> shared by `cp.async` instead of through registers.
//!
//! Why, against the 16 planes of 64 x 32 of [`super::pipelined`] at 256 rows (the previous
//! default, `--nf4-product fused256-ldmatrix`):
//! - shared-memory reads: a plane reads its 64 rows of `A` once per 64 columns instead of per
//!   32, so per 64-wide step a cube reads 128 KB of fragments instead of 192 KB;
//! - instructions: per plane and step 128 `HMMA`s beside 48 `LDSM`s, where 16 narrow planes
//!   issue 64 beside 32 each, plus each plane's share of the decode and the stores;
//! - registers: the 128 accumulators per lane leave no room to hold the next step's `X` (32
//!   registers per thread at 8 vectors), so `cp.async` writes it into the idle tile set and
//!   the step's closing barrier (an `mbarrier` that also waits for every thread's copies)
//!   makes it visible. `W` still travels through registers: its codes are decoded on the way.
//!
//! Per step `kt`: issue the copies of `X[kt + 1]` and the loads of `W[kt + 1]`'s words, run
//! the products on set `kt % 2`, decode `W[kt + 1]` into the other set, then commit the copies
//! and wait at the barrier. Set `(kt + 1) % 2` was last read in step `kt - 1`, before that
//! step's barrier, so both writes are safe.

use super::kernel::BN;
use super::mma::{mma_products, store_mma_tile, zero_mma_accumulators};
use super::pipelined::{decode_words, BK64, LDV64};
use crate::device::block_scale;
use cubecl::prelude::barrier::{copy_async, Barrier};
use cubecl::prelude::*;

/// Tile rows per cube of the wide kernels.
pub(crate) const WIDE_ROWS: usize = 256;
/// Threads per cube of the wide kernels (8 planes).
pub(crate) const WIDE_THREADS: usize = 256;
/// Columns of a wide plane's sub-tile.
pub(crate) const WIDE_COLS: usize = 64;
/// 32-bit words of `W` per thread per step (the 8,192 codes of a `[128, 64]` tile over 256
/// threads: 32 codes, one 16-byte load).
pub(crate) const WIDE_WORDS: usize = 4;

/// Issues `cp.async` copies of `A[row0 .. row0 + 256, c0 .. c0 + 64]` (row-major `[rows,
/// cols]`, as 8-element vectors) into the `[256, 64]` shared tile at vector offset `base`
/// (row stride [`LDV64`]): 8 vectors per thread. Rows past the last copy the last row again
/// (row `r` of the product depends on row `r` of `A` only, and those rows are never stored).
#[cube]
#[allow(clippy::too_many_arguments)]
pub(crate) fn copy_a64_async<F: Float>(a: &Array<Vector<F, Const<8>>>, tile: &mut SharedMemory<Vector<F, Const<8>>>, base: usize, row0: usize, rows: usize, cols: usize, c0: usize, tid: usize) {
    #[unroll]
    for p in 0..8usize {
        let v = tid + p * WIDE_THREADS;
        let r = v / 8;
        let gr = min(row0 + r, rows - 1);
        let src = (gr * cols + c0) / 8 + v % 8;
        let dst = base + r * LDV64 + v % 8;
        copy_async::<Vector<F, Const<8>>>(&a.slice(src, src + 1), &mut tile.slice_mut(dst, dst + 1), 8u32);
    }
}

#[cube(launch_unchecked)]
#[allow(clippy::too_many_arguments)]
pub(crate) fn gemm_wide_kernel<F: Float, W: Size>(
    x: &Array<Vector<F, Const<8>>>,
    words: &Array<Vector<u32, W>>,
    absmax: &Array<f32>,
    qcodes: &Array<u8>,
    lut: &Array<f32>,
    y: &mut Array<F>,
    offset: f32,
    m_rows: usize,
    n_cols: usize,
    k: usize,
    block_shift: u32,
    #[comptime] double: bool,
) {
    let codes = 8 * W::value();
    let parts = BK64 / codes;
    let tid = UNIT_POS as usize;
    let mut table = SharedMemory::<f32>::new(16usize);
    if tid < 16 {
        table[tid] = lut[tid];
    }
    let x_tile = comptime![WIDE_ROWS * LDV64];
    let w_tile = comptime![BN * LDV64];
    let mut xs = SharedMemory::<Vector<F, Const<8>>>::new_aligned(comptime![2 * x_tile], 32usize);
    let mut ws = SharedMemory::<Vector<F, Const<8>>>::new_aligned(comptime![2 * w_tile], 32usize);
    // Initialized by thread 0 and published by a cube barrier.
    let bar = Barrier::shared(WIDE_THREADS as u32, tid == 0);
    sync_cube();

    let plane = tid / 32;
    let lane = tid % 32;
    let wm = plane / 2;
    let wn = plane % 2;
    let m0 = CUBE_POS_Y as usize * WIDE_ROWS;
    let n0 = CUBE_POS_X as usize * BN;
    let mut macc = zero_mma_accumulators(comptime![4 * WIDE_COLS / 8]);

    // W loader: row `wr` of the tile, codes `wq * codes .. (wq + 1) * codes` of the step (one
    // block). Rows past `N` decode zeros (scale 0).
    let wr = tid / parts;
    let wq = tid % parts;
    let gn = n0 + wr;
    let live = gn < n_cols;
    let row_base = gn * k + wq * codes;
    let w_at = wr * LDV64 + wq * W::value();

    copy_a64_async::<F>(x, &mut xs, 0, m0, m_rows, k, 0, tid);
    let mut wv = Vector::<u32, W>::new(0u32);
    let mut scale = 0.0f32;
    if live {
        wv = words[row_base / codes];
        scale = block_scale(row_base >> block_shift as usize, absmax, qcodes, lut, offset, double);
    }
    decode_words::<F, W>(wv, W::value(), scale, &table, &mut ws, w_at);
    bar.commit_copy_async();
    bar.arrive_and_wait();

    let k_tiles = k / BK64;
    // Unrolled once per tile set so each copy addresses its set at compile-time offsets.
    for round in 0..(k_tiles + 1) / 2 {
        #[unroll]
        for cur in 0..2usize {
            let kt = round * 2 + cur;
            if kt < k_tiles {
                let more = kt + 1 < k_tiles;
                let next = 1 - cur;
                if more {
                    let k0 = (kt + 1) * BK64;
                    copy_a64_async::<F>(x, &mut xs, next * x_tile, m0, m_rows, k, k0, tid);
                    if live {
                        let e0 = row_base + k0;
                        wv = words[e0 / codes];
                        scale = block_scale(e0 >> block_shift as usize, absmax, qcodes, lut, offset, double);
                    }
                }
                mma_products::<F>(&xs, cur * x_tile, &ws, cur * w_tile, &mut macc, wm, wn, lane, true, LDV64, WIDE_COLS);
                if more {
                    decode_words::<F, W>(wv, W::value(), scale, &table, &mut ws, next * w_tile + w_at);
                }
                bar.commit_copy_async();
                bar.arrive_and_wait();
            }
        }
    }
    store_mma_tile::<F>(&macc, y, m0 + wm * 64, n0 + wn * WIDE_COLS, m_rows, n_cols, lane, WIDE_COLS);
}
