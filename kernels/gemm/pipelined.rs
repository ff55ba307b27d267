//! The forward NF4 GEMM for `K % 64 == 0` (every Qwen2.5 projection), `Y = X W^T`: the same
//! 128 x 128 tile per cube of 8 planes as [`super::kernel`], but software-pipelined; or, by
//! the comptime `rows` ([`super::GemmRows`]), 256 x 128 per cube of 16 planes, each plane the
//! same 64 x 32 sub-tile.
//!
//! Why two heights: compiled for sm_90a (`tools/cuda-check.sh`), both hold 16 warps per H200
//! SM (the 128-row cube at 128 registers in bf16, two cubes; the 512-thread cube bounded at 128
//! by `__launch_bounds__(512)`), but each decoded `W` tile of the 256-row cube feeds twice the
//! rows (half the decode work per product); its W loader takes 16 codes (two words) per thread
//! instead of 32. The 128-row cube sits exactly at the two-cube limit: it took 130 registers
//! before past-the-end rows were re-read instead of zeroed ([`load_a64`]).
//!
//! Per 64-wide step of `K` each thread holds the next step's global data in registers
//! (`X`: four 16-byte vectors; `W`: 32 codes in one 16-byte load and their block scale),
//! issued before the current step's tensor-core work, so global latency overlaps the `cmma`
//! products instead of stalling every step. Shared tiles are written and read as 16-byte
//! vectors (the first kernel's scalar stores cost 16 shared-memory instructions per thread
//! per step, with bank conflicts). Twice the reduction per step halves the barriers.
//! Measured against the first kernel in BENCHMARKS.md ("NF4 GEMM, pipelined").
//!
//! With two stages ([`super::GemmStages::Two`]) the shared tiles are doubled: a plane stores
//! and decodes the next step into the idle set right after its products on the current one,
//! and one barrier per step remains instead of two. Why: a 512-thread cube is alone on its SM,
//! so with one set every plane waits at a barrier while the tiles are filled and no tensor
//! work runs then; with two, planes that finish their products early fill the tiles while
//! the others still compute.

use crate::device::{block_scale, nibble};
use crate::gemm::kernel::{store_tile, zero_accumulators_n, BN};
use crate::gemm::mma::{mma_products, store_mma_tile, zero_mma_accumulators};
use cubecl::prelude::*;

/// Reduction per pipelined step.
pub(crate) const BK64: usize = 64;
/// Row stride of a 64-wide shared tile, in 8-element vectors (64 + 8 padding elements: rows
/// 144 bytes apart spread a warp's 16-byte accesses over the banks, and keep every fragment
/// start 32-byte aligned as `wmma` loads require).
pub(crate) const LDV64: usize = BK64 / 8 + 1;

/// Vector `p` (0..4) of this thread's share of `A[row0 .. row0 + threads / 2, c0 .. c0 + 64]`
/// (row-major `[rows, cols]`, as 8-element vectors) for a cube of `threads`. Tile rows past
/// the last read the last row again: row `r` of the product depends on row `r` of `A` only,
/// and rows past the last are never stored, so they need no zeros. The predicate and zeroed
/// registers cost ~50 of a step's instructions per plane (SASS, `tools/sass-loop.sh`) and the
/// two registers that kept the 128-row forward kernel to one cube per SM.
#[cube]
#[allow(clippy::too_many_arguments)]
pub(crate) fn load_a64<F: Float>(a: &Array<Vector<F, Const<8>>>, row0: usize, rows: usize, cols: usize, c0: usize, tid: usize, #[comptime] threads: usize, #[comptime] p: usize) -> Vector<F, Const<8>> {
    let v = tid + p * threads;
    let gr = min(row0 + v / 8, rows - 1);
    a[(gr * cols + c0) / 8 + v % 8]
}

/// Stores [`load_a64`]'s vectors 0..4 into the `[threads / 2, 64]` shared tile (stride
/// [`LDV64`]) at vector offset `base`.
#[cube]
#[allow(clippy::too_many_arguments)]
pub(crate) fn store_a64<F: Float>(
    tile: &mut SharedMemory<Vector<F, Const<8>>>,
    base: usize,
    v0: Vector<F, Const<8>>,
    v1: Vector<F, Const<8>>,
    v2: Vector<F, Const<8>>,
    v3: Vector<F, Const<8>>,
    tid: usize,
    #[comptime] threads: usize,
) {
    let at = base + (tid / 8) * LDV64 + tid % 8;
    // Vector `tid + p * threads` sits `p * threads / 8` rows further.
    let rows = comptime![threads / 8 * LDV64];
    tile[at] = v0;
    tile[at + rows] = v1;
    tile[at + 2 * rows] = v2;
    tile[at + 3 * rows] = v3;
}

/// Decodes `count` little-endian words of 8 codes each, times `scale`, into 8-element vectors
/// at `tile[at .. at + count]`.
#[cube]
pub(crate) fn decode_words<F: Float, W: Size>(words: Vector<u32, W>, #[comptime] count: usize, scale: f32, table: &SharedMemory<f32>, tile: &mut SharedMemory<Vector<F, Const<8>>>, at: usize) {
    #[unroll]
    for q in 0..count {
        decode_word::<F>(words[q], scale, table, tile, at + q);
    }
}

/// Decodes one little-endian word of 8 codes, times `scale`, into the vector `tile[at]`.
#[cube]
pub(crate) fn decode_word<F: Float>(word: u32, scale: f32, table: &SharedMemory<f32>, tile: &mut SharedMemory<Vector<F, Const<8>>>, at: usize) {
    let mut vec = Vector::<F, Const<8>>::empty();
    #[unroll]
    for j in 0..8usize {
        vec[j] = F::cast_from(table[nibble(word, j)] * scale);
    }
    tile[at] = vec;
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

/// One 64-wide step of the plane's `wmma` products, `acc += A[rows wm*64 .., 64] B[64, cols
/// wn*32 ..]`: `A` from `xs` at vector offset `xbase` (`[rows, 64]`, stride [`LDV64`]), `B` from
/// `ws` at `wbase`, row stride `ldw` vectors, `n`-major (`w_rows_are_n`: the forward product's
/// rows of `W`, so `B = W^T`, read column-major) or `k`-major (the backward product's).
#[cube]
#[allow(clippy::too_many_arguments)]
pub(crate) fn wmma_products<F: Float>(
    xs: &SharedMemory<Vector<F, Const<8>>>,
    xbase: usize,
    ws: &SharedMemory<Vector<F, Const<8>>>,
    wbase: usize,
    acc: &Sequence<cmma::Matrix<f32>>,
    wm: usize,
    wn: usize,
    #[comptime] w_rows_are_n: bool,
    #[comptime] ldw: usize,
) {
    let layout = comptime![if w_rows_are_n { cmma::MatrixLayout::ColMajor } else { cmma::MatrixLayout::RowMajor }];
    // Vector offsets of the plane's two 16-column halves of B, and of the next 16 `k`.
    let mut b_base = wbase + wn * 4;
    if comptime![w_rows_are_n] {
        b_base = wbase + wn * 32 * ldw;
    }
    let half_step = comptime![if w_rows_are_n { 16 * ldw } else { 2 }];
    let kk_step = comptime![if w_rows_are_n { 2 } else { 16 * ldw }];
    #[unroll]
    for kk in 0..4usize {
        let b0 = fragment::<F>(ws, cmma::MatrixIdent::B, layout, b_base + kk * kk_step, comptime![ldw * 8]);
        let b1 = fragment::<F>(ws, cmma::MatrixIdent::B, layout, b_base + kk * kk_step + half_step, comptime![ldw * 8]);
        #[unroll]
        for i in 0..4usize {
            let a = fragment::<F>(xs, cmma::MatrixIdent::A, cmma::MatrixLayout::RowMajor, xbase + (wm * 64 + i * 16) * LDV64 + kk * 2, comptime![LDV64 * 8]);
            cmma::execute::<F, F, f32, f32>(&a, &b0, acc.index(i * 2), acc.index(i * 2));
            cmma::execute::<F, F, f32, f32>(&a, &b1, acc.index(i * 2 + 1), acc.index(i * 2 + 1));
        }
    }
}

#[cube(launch_unchecked)]
#[allow(clippy::too_many_arguments)]
pub(crate) fn gemm64_kernel<F: Float, W: Size>(
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
    #[comptime] rows: usize,
    #[comptime] mma: bool,
    #[comptime] stages: usize,
) {
    // `rows` (128 or 256) tile rows: 2 * rows threads, rows / 64 planes along M by 4 along N;
    // `W` (4 or 2) words per thread of the W loader; `mma`: the tensor-core step by
    // `ldmatrix` + `mma.sync` (`super::mma`) instead of `wmma`; `stages` (1 or 2) shared
    // tile sets (`super::GemmStages`).
    let threads = comptime![2 * rows];
    let codes = 8 * W::value();
    let parts = BK64 / codes;
    let tid = UNIT_POS as usize;
    let mut table = SharedMemory::<f32>::new(16usize);
    if tid < 16 {
        table[tid] = lut[tid];
    }
    let x_tile = comptime![rows * LDV64];
    let w_tile = comptime![BN * LDV64];
    let mut xs = SharedMemory::<Vector<F, Const<8>>>::new_aligned(comptime![stages * x_tile], 32usize);
    let mut ws = SharedMemory::<Vector<F, Const<8>>>::new_aligned(comptime![stages * w_tile], 32usize);
    sync_cube();

    let plane = tid / 32;
    let lane = tid % 32;
    let wm = plane / 4;
    let wn = plane % 4;
    let m0 = CUBE_POS_Y as usize * rows;
    let n0 = CUBE_POS_X as usize * BN;
    // One of the two accumulator sets is empty.
    let acc = zero_accumulators_n(comptime![if mma { 0usize } else { 8usize }]);
    let mut macc = zero_mma_accumulators(comptime![if mma { 16usize } else { 0usize }]);

    // W loader: row `wr` of the tile, codes `wq * codes .. (wq + 1) * codes` of the step (one
    // block, as blocks hold >= 32 aligned elements). Rows past `N` decode zeros (scale 0).
    let wr = tid / parts;
    let wq = tid % parts;
    let gn = n0 + wr;
    let live = gn < n_cols;
    let row_base = gn * k + wq * codes;
    let w_at = wr * LDV64 + wq * W::value();

    let mut x0 = load_a64::<F>(x, m0, m_rows, k, 0, tid, threads, 0usize);
    let mut x1 = load_a64::<F>(x, m0, m_rows, k, 0, tid, threads, 1usize);
    let mut x2 = load_a64::<F>(x, m0, m_rows, k, 0, tid, threads, 2usize);
    let mut x3 = load_a64::<F>(x, m0, m_rows, k, 0, tid, threads, 3usize);
    let mut wv = Vector::<u32, W>::new(0u32);
    let mut scale = 0.0f32;
    if live {
        wv = words[row_base / codes];
        scale = block_scale(row_base >> block_shift as usize, absmax, qcodes, lut, offset, double);
    }
    if comptime![stages == 2] {
        store_a64::<F>(&mut xs, 0, x0, x1, x2, x3, tid, threads);
        decode_words::<F, W>(wv, W::value(), scale, &table, &mut ws, w_at);
        sync_cube();
    }

    let k_tiles = k / BK64;
    // Two stages: the step is unrolled once per tile set, so each copy reads and fills its set
    // at compile-time offsets (with `kt % 2` they were computed at run time: 345 against 317
    // instructions per step at 256 rows, `tools/sass-loop.sh`). One stage: one copy.
    // (`wmma` keeps the run-time set: unrolled, its 128-row cube took 170 registers, one cube
    // per SM instead of two.)
    let copies = comptime![if mma { stages } else { 1usize }];
    let rounds = if comptime![copies == 2] { (k_tiles + 1) / 2 } else { k_tiles };
    for round in 0..rounds {
        #[unroll]
        for copy in 0..copies {
            let kt = round * copies + copy;
            let mut cur = 0usize;
            if comptime![copies == 2] {
                cur = copy;
            }
            if comptime![stages == 2 && copies == 1] {
                cur = kt % 2;
            }
            let mut step = true;
            if comptime![copies == 2] {
                step = kt < k_tiles;
            }
            if step {
                // One stage: fill the tiles, wait, compute, wait. Two: compute on tile set `cur`
                // while the other is filled with the next step, one barrier per step.
                if comptime![stages == 1] {
                    store_a64::<F>(&mut xs, 0, x0, x1, x2, x3, tid, threads);
                    decode_words::<F, W>(wv, W::value(), scale, &table, &mut ws, w_at);
                    sync_cube();
                }

                // The next step's loads are in flight during this step's products.
                if kt + 1 < k_tiles {
                    let k0 = (kt + 1) * BK64;
                    x0 = load_a64::<F>(x, m0, m_rows, k, k0, tid, threads, 0usize);
                    x1 = load_a64::<F>(x, m0, m_rows, k, k0, tid, threads, 1usize);
                    x2 = load_a64::<F>(x, m0, m_rows, k, k0, tid, threads, 2usize);
                    x3 = load_a64::<F>(x, m0, m_rows, k, k0, tid, threads, 3usize);
                    if live {
                        let e0 = row_base + k0;
                        wv = words[e0 / codes];
                        scale = block_scale(e0 >> block_shift as usize, absmax, qcodes, lut, offset, double);
                    }
                }

                if comptime![mma] {
                    mma_products::<F>(&xs, cur * x_tile, &ws, cur * w_tile, &mut macc, wm, wn, lane, true, LDV64, 32usize);
                } else {
                    wmma_products::<F>(&xs, cur * x_tile, &ws, cur * w_tile, &acc, wm, wn, true, LDV64);
                }
                if comptime![stages == 2] {
                    if kt + 1 < k_tiles {
                        let next = 1 - cur;
                        store_a64::<F>(&mut xs, next * x_tile, x0, x1, x2, x3, tid, threads);
                        decode_words::<F, W>(wv, W::value(), scale, &table, &mut ws, next * w_tile + w_at);
                    }
                }
                sync_cube();
            }
        }
    }
    if comptime![mma] {
        store_mma_tile::<F>(&macc, y, m0 + wm * 64, n0 + wn * 32, m_rows, n_cols, lane, 32usize);
    } else {
        let mut stage = SharedMemory::<f32>::new_aligned(threads / 32 * 256, 32usize);
        store_tile::<F>(&acc, &mut stage, y, m0 + wm * 64, n0 + wn * 32, m_rows, n_cols, plane, lane);
    }
}
