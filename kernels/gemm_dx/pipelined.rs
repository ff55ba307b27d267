//! The backward product for `N % 64 == 0` and `K % 32 == 0` (every Qwen2.5 projection),
//! `dX = dY W`, pipelined like [`crate::gemm::pipelined`]: per 64-row step of `W` each thread
//! holds the next step's `dY` vectors and 32 codes of `W` (one 16-byte load, one block) in
//! registers while the tensor cores work on the current step, and shared tiles are written as
//! 16-byte vectors. The tile height and the tensor-core path are comptime parameters as in
//! the forward kernel ([`crate::gemm::GemmConfig`]; at 256 rows the W loader takes 16 codes
//! per thread; `ldmatrix` loads this kernel's `k`-major `W` tile transposed), and so are the
//! shared tile stages (two: the next step fills the idle set after the products).

use crate::device::block_scale;
use crate::gemm::kernel::{store_tile, zero_accumulators_n, BN};
use crate::gemm::mma::{mma_products, store_mma_tile, zero_mma_accumulators};
use crate::gemm::pipelined::{decode_words, load_a64, store_a64, wmma_products, BK64, LDV64};
use cubecl::prelude::*;

/// Row stride of the decoded `W[64, 128]` tile, in 8-element vectors (128 + 8 elements).
pub(crate) const LDBV: usize = BN / 8 + 1;

#[cube(launch_unchecked)]
#[allow(clippy::too_many_arguments)]
pub(crate) fn gemm_dx64_kernel<F: Float, W: Size>(
    dy: &Array<Vector<F, Const<8>>>,
    words: &Array<Vector<u32, W>>,
    absmax: &Array<f32>,
    qcodes: &Array<u8>,
    lut: &Array<f32>,
    dx: &mut Array<F>,
    offset: f32,
    m_rows: usize,
    n: usize,
    k: usize,
    block_shift: u32,
    #[comptime] double: bool,
    #[comptime] rows: usize,
    #[comptime] mma: bool,
    #[comptime] stages: usize,
) {
    // `rows` (128 or 256) tile rows: 2 * rows threads, rows / 64 planes along M by 4 along K;
    // `W` (4 or 2) words per thread of the W loader; `mma`: the tensor-core step by
    // `ldmatrix` + `mma.sync` (`crate::gemm::mma`) instead of `wmma`; `stages` (1 or 2)
    // shared tile sets.
    let threads = comptime![2 * rows];
    let codes = 8 * W::value();
    let segs = BN / codes;
    let tid = UNIT_POS as usize;
    let mut table = SharedMemory::<f32>::new(16usize);
    if tid < 16 {
        table[tid] = lut[tid];
    }
    let g_tile = comptime![rows * LDV64];
    let w_tile = comptime![BK64 * LDBV];
    let mut gs = SharedMemory::<Vector<F, Const<8>>>::new_aligned(comptime![stages * g_tile], 32usize);
    let mut ws = SharedMemory::<Vector<F, Const<8>>>::new_aligned(comptime![stages * w_tile], 32usize);
    sync_cube();

    let plane = tid / 32;
    let lane = tid % 32;
    let wm = plane / 4;
    let wn = plane % 4;
    let m0 = CUBE_POS_Y as usize * rows;
    let c0 = CUBE_POS_X as usize * BN;
    // One of the two accumulator sets is empty.
    let acc = zero_accumulators_n(comptime![if mma { 0usize } else { 8usize }]);
    let mut macc = zero_mma_accumulators(comptime![if mma { 16usize } else { 0usize }]);

    // W loader: row `wr` of the 64-row step, columns `c0 + wseg * codes ..` (one block).
    let wr = tid / segs;
    let wseg = tid % segs;
    let gc = c0 + wseg * codes;
    let live = gc < k;
    let w_at = wr * LDBV + wseg * W::value();

    let mut g0 = load_a64::<F>(dy, m0, m_rows, n, 0, tid, threads, 0usize);
    let mut g1 = load_a64::<F>(dy, m0, m_rows, n, 0, tid, threads, 1usize);
    let mut g2 = load_a64::<F>(dy, m0, m_rows, n, 0, tid, threads, 2usize);
    let mut g3 = load_a64::<F>(dy, m0, m_rows, n, 0, tid, threads, 3usize);
    let mut wv = Vector::<u32, W>::new(0u32);
    let mut scale = 0.0f32;
    if live {
        let e0 = wr * k + gc;
        wv = words[e0 / codes];
        scale = block_scale(e0 >> block_shift as usize, absmax, qcodes, lut, offset, double);
    }
    if comptime![stages == 2] {
        store_a64::<F>(&mut gs, 0, g0, g1, g2, g3, tid, threads);
        decode_words::<F, W>(wv, W::value(), scale, &table, &mut ws, w_at);
        sync_cube();
    }

    let n_tiles = n / BK64;
    // Two stages unrolled once per tile set, as in the forward kernel (`gemm::pipelined`).
    // (`wmma` keeps the run-time set: unrolled, its 128-row cube took 170 registers, one cube
    // per SM instead of two.)
    let copies = comptime![if mma { stages } else { 1usize }];
    let rounds = if comptime![copies == 2] { (n_tiles + 1) / 2 } else { n_tiles };
    for round in 0..rounds {
        #[unroll]
        for copy in 0..copies {
            let nt = round * copies + copy;
            let mut cur = 0usize;
            if comptime![copies == 2] {
                cur = copy;
            }
            if comptime![stages == 2 && copies == 1] {
                cur = nt % 2;
            }
            let mut step = true;
            if comptime![copies == 2] {
                step = nt < n_tiles;
            }
            if step {
                if comptime![stages == 1] {
                    store_a64::<F>(&mut gs, 0, g0, g1, g2, g3, tid, threads);
                    decode_words::<F, W>(wv, W::value(), scale, &table, &mut ws, w_at);
                    sync_cube();
                }

                if nt + 1 < n_tiles {
                    let r0 = (nt + 1) * BK64;
                    g0 = load_a64::<F>(dy, m0, m_rows, n, r0, tid, threads, 0usize);
                    g1 = load_a64::<F>(dy, m0, m_rows, n, r0, tid, threads, 1usize);
                    g2 = load_a64::<F>(dy, m0, m_rows, n, r0, tid, threads, 2usize);
                    g3 = load_a64::<F>(dy, m0, m_rows, n, r0, tid, threads, 3usize);
                    if live {
                        let e0 = (r0 + wr) * k + gc;
                        wv = words[e0 / codes];
                        scale = block_scale(e0 >> block_shift as usize, absmax, qcodes, lut, offset, double);
                    }
                }

                if comptime![mma] {
                    mma_products::<F>(&gs, cur * g_tile, &ws, cur * w_tile, &mut macc, wm, wn, lane, false, LDBV, 32usize);
                } else {
                    wmma_products::<F>(&gs, cur * g_tile, &ws, cur * w_tile, &acc, wm, wn, false, LDBV);
                }
                if comptime![stages == 2] {
                    if nt + 1 < n_tiles {
                        let next = 1 - cur;
                        store_a64::<F>(&mut gs, next * g_tile, g0, g1, g2, g3, tid, threads);
                        decode_words::<F, W>(wv, W::value(), scale, &table, &mut ws, next * w_tile + w_at);
                    }
                }
                sync_cube();
            }
        }
    }
    if comptime![mma] {
        store_mma_tile::<F>(&macc, dx, m0 + wm * 64, c0 + wn * 32, m_rows, k, lane, 32usize);
    } else {
        let mut stage = SharedMemory::<f32>::new_aligned(threads / 32 * 256, 32usize);
        store_tile::<F>(&acc, &mut stage, dx, m0 + wm * 64, c0 + wn * 32, m_rows, k, plane, lane);
    }
}
