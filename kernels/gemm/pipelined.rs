//! The forward NF4 GEMM for `K % 64 == 0` (every Qwen2.5 projection), `Y = X W^T`: the same
//! 128 x 128 tile per cube of 8 planes as [`super::kernel`], but software-pipelined.
//!
//! Per 64-wide step of `K` each thread holds the next step's global data in registers
//! (`X`: four 16-byte vectors; `W`: 32 codes in one 16-byte load and their block scale),
//! issued before the current step's tensor-core work, so global latency overlaps the `cmma`
//! products instead of stalling every step. Shared tiles are written and read as 16-byte
//! vectors (the first kernel's scalar stores cost 16 shared-memory instructions per thread
//! per step, with bank conflicts). Twice the reduction per step halves the barriers.
//! Measured against the first kernel in BENCHMARKS.md ("NF4 GEMM, pipelined").

use crate::device::{block_scale, nibble};
use crate::gemm::kernel::{store_tile, zero_accumulators, BM, BN};
use cubecl::prelude::*;

/// Reduction per pipelined step.
pub(crate) const BK64: usize = 64;
/// Row stride of a 64-wide shared tile, in 8-element vectors (64 + 8 padding elements: rows
/// 144 bytes apart spread a warp's 16-byte accesses over the banks, and keep every fragment
/// start 32-byte aligned as `wmma` loads require).
pub(crate) const LDV64: usize = BK64 / 8 + 1;

/// Vector `p` (0..4) of this thread's share of `A[row0 .. row0 + 128, c0 .. c0 + 64]`
/// (row-major `[rows, cols]`, as 8-element vectors); zeros past the last row.
#[cube]
pub(crate) fn load_a64<F: Float>(a: &Array<Vector<F, Const<8>>>, row0: usize, rows: usize, cols: usize, c0: usize, tid: usize, #[comptime] p: usize) -> Vector<F, Const<8>> {
    let v = tid + p * 256;
    let gr = row0 + v / 8;
    let mut val = Vector::<F, Const<8>>::new(F::new(0.0));
    if gr < rows {
        val = a[(gr * cols + c0) / 8 + v % 8];
    }
    val
}

/// Stores [`load_a64`]'s vector `p` into the `[128, 64]` shared tile (stride [`LDV64`]).
#[cube]
pub(crate) fn store_a64<F: Float>(tile: &mut SharedMemory<Vector<F, Const<8>>>, val: Vector<F, Const<8>>, tid: usize, #[comptime] p: usize) {
    let v = tid + p * 256;
    tile[(v / 8) * LDV64 + v % 8] = val;
}

/// Decodes 32 codes (four little-endian words) times `scale` into four 8-element vectors at
/// `tile[at .. at + 4]`.
#[cube]
pub(crate) fn decode32<F: Float>(words: Vector<u32, Const<4>>, scale: f32, table: &SharedMemory<f32>, tile: &mut SharedMemory<Vector<F, Const<8>>>, at: usize) {
    #[unroll]
    for q in 0..4usize {
        let word = words[q];
        let mut vec = Vector::<F, Const<8>>::empty();
        #[unroll]
        for j in 0..8usize {
            vec[j] = F::cast_from(table[nibble(word, j)] * scale);
        }
        tile[at + q] = vec;
    }
}

/// A 16 x 16 operand fragment loaded from a vectorized shared tile at vector offset `start`,
/// element stride `ld`.
#[cube]
pub(crate) fn fragment<F: Float>(tile: &SharedMemory<Vector<F, Const<8>>>, #[comptime] ident: cmma::MatrixIdent, #[comptime] layout: cmma::MatrixLayout, start: usize, #[comptime] ld: usize) -> cmma::Matrix<F> {
    let mat = unsafe { cmma::Matrix::<F>::uninitialized(ident, 16usize, 16usize, 16usize, layout) };
    let rows_v = comptime![ld / 8];
    cmma::load(&mat, &tile.slice(start, start + 15 * rows_v + 2), comptime![ld as u32]);
    mat
}

#[cube(launch_unchecked)]
#[allow(clippy::too_many_arguments)]
pub(crate) fn gemm64_kernel<F: Float>(
    x: &Array<Vector<F, Const<8>>>,
    words: &Array<Vector<u32, Const<4>>>,
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
    let tid = UNIT_POS as usize;
    let mut table = SharedMemory::<f32>::new(16usize);
    if tid < 16 {
        table[tid] = lut[tid];
    }
    let mut xs = SharedMemory::<Vector<F, Const<8>>>::new_aligned(BM * LDV64, 32usize);
    let mut ws = SharedMemory::<Vector<F, Const<8>>>::new_aligned(BN * LDV64, 32usize);
    let mut stage = SharedMemory::<f32>::new_aligned(2048usize, 32usize);
    sync_cube();

    let plane = tid / 32;
    let lane = tid % 32;
    let wm = plane / 4;
    let wn = plane % 4;
    let m0 = CUBE_POS_Y as usize * BM;
    let n0 = CUBE_POS_X as usize * BN;
    let acc = zero_accumulators();

    // W loader: row `wr` of the tile, codes `wh * 32 .. wh * 32 + 32` of the step (one block,
    // as blocks hold >= 32 aligned elements). Rows past `N` decode zeros (scale 0).
    let wr = tid / 2;
    let wh = tid % 2;
    let gn = n0 + wr;
    let live = gn < n_cols;
    let row_base = gn * k + wh * 32;

    let mut x0 = load_a64::<F>(x, m0, m_rows, k, 0, tid, 0usize);
    let mut x1 = load_a64::<F>(x, m0, m_rows, k, 0, tid, 1usize);
    let mut x2 = load_a64::<F>(x, m0, m_rows, k, 0, tid, 2usize);
    let mut x3 = load_a64::<F>(x, m0, m_rows, k, 0, tid, 3usize);
    let mut wv = Vector::<u32, Const<4>>::new(0u32);
    let mut scale = 0.0f32;
    if live {
        wv = words[row_base / 32];
        scale = block_scale(row_base >> block_shift as usize, absmax, qcodes, lut, offset, double);
    }

    let k_tiles = k / BK64;
    for kt in 0..k_tiles {
        store_a64::<F>(&mut xs, x0, tid, 0usize);
        store_a64::<F>(&mut xs, x1, tid, 1usize);
        store_a64::<F>(&mut xs, x2, tid, 2usize);
        store_a64::<F>(&mut xs, x3, tid, 3usize);
        decode32::<F>(wv, scale, &table, &mut ws, wr * LDV64 + wh * 4);
        sync_cube();

        // The next step's loads are in flight during this step's products.
        if kt + 1 < k_tiles {
            let k0 = (kt + 1) * BK64;
            x0 = load_a64::<F>(x, m0, m_rows, k, k0, tid, 0usize);
            x1 = load_a64::<F>(x, m0, m_rows, k, k0, tid, 1usize);
            x2 = load_a64::<F>(x, m0, m_rows, k, k0, tid, 2usize);
            x3 = load_a64::<F>(x, m0, m_rows, k, k0, tid, 3usize);
            if live {
                let e0 = row_base + k0;
                wv = words[e0 / 32];
                scale = block_scale(e0 >> block_shift as usize, absmax, qcodes, lut, offset, double);
            }
        }

        #[unroll]
        for kk in 0..4usize {
            let b0 = fragment::<F>(&ws, cmma::MatrixIdent::B, cmma::MatrixLayout::ColMajor, (wn * 32) * LDV64 + kk * 2, comptime![LDV64 * 8]);
            let b1 = fragment::<F>(&ws, cmma::MatrixIdent::B, cmma::MatrixLayout::ColMajor, (wn * 32 + 16) * LDV64 + kk * 2, comptime![LDV64 * 8]);
            #[unroll]
            for i in 0..4usize {
                let a = fragment::<F>(&xs, cmma::MatrixIdent::A, cmma::MatrixLayout::RowMajor, (wm * 64 + i * 16) * LDV64 + kk * 2, comptime![LDV64 * 8]);
                cmma::execute::<F, F, f32, f32>(&a, &b0, acc.index(i * 2), acc.index(i * 2));
                cmma::execute::<F, F, f32, f32>(&a, &b1, acc.index(i * 2 + 1), acc.index(i * 2 + 1));
            }
        }
        sync_cube();
    }
    store_tile::<F>(&acc, &mut stage, y, m0 + wm * 64, n0 + wn * 32, m_rows, n_cols, plane, lane);
}
