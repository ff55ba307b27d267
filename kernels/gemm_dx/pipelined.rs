//! The backward product for `N % 64 == 0` and `K % 32 == 0` (every Qwen2.5 projection),
//! `dX = dY W`, pipelined like [`crate::gemm::pipelined`]: per 64-row step of `W` each thread
//! holds the next step's `dY` vectors and 32 codes of `W` (one 16-byte load, one block) in
//! registers while the tensor cores work on the current step, and shared tiles are written as
//! 16-byte vectors. The tile height and the tensor-core path are comptime parameters as in
//! the forward kernel ([`crate::gemm::GemmConfig`]; at 256 rows the W loader takes 16 codes
//! per thread; `ldmatrix` loads this kernel's `k`-major `W` tile transposed).

use crate::device::block_scale;
use crate::gemm::kernel::{store_tile, zero_accumulators_n, BN};
use crate::gemm::mma::{mma_products, store_mma_tile, zero_mma_accumulators};
use crate::gemm::pipelined::{decode_words, fragment, load_a64, store_a64, BK64, LDV64};
use cubecl::prelude::*;

/// Row stride of the decoded `W[64, 128]` tile, in 8-element vectors (128 + 8 elements).
const LDBV: usize = BN / 8 + 1;

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
) {
    // `rows` (128 or 256) tile rows: 2 * rows threads, rows / 64 planes along M by 4 along K;
    // `W` (4 or 2) words per thread of the W loader; `mma`: the tensor-core step by
    // `ldmatrix` + `mma.sync` (`crate::gemm::mma`) instead of `wmma`.
    let threads = comptime![2 * rows];
    let codes = 8 * W::value();
    let segs = BN / codes;
    let tid = UNIT_POS as usize;
    let mut table = SharedMemory::<f32>::new(16usize);
    if tid < 16 {
        table[tid] = lut[tid];
    }
    let mut gs = SharedMemory::<Vector<F, Const<8>>>::new_aligned(rows * LDV64, 32usize);
    let mut ws = SharedMemory::<Vector<F, Const<8>>>::new_aligned(BK64 * LDBV, 32usize);
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

    let n_tiles = n / BK64;
    for nt in 0..n_tiles {
        store_a64::<F>(&mut gs, g0, tid, threads, 0usize);
        store_a64::<F>(&mut gs, g1, tid, threads, 1usize);
        store_a64::<F>(&mut gs, g2, tid, threads, 2usize);
        store_a64::<F>(&mut gs, g3, tid, threads, 3usize);
        decode_words::<F, W>(wv, W::value(), scale, &table, &mut ws, wr * LDBV + wseg * W::value());
        sync_cube();

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
            mma_products::<F>(&gs, &ws, &mut macc, wm, wn, lane, false, LDBV);
        } else {
            #[unroll]
            for kk in 0..4usize {
                let b0 = fragment::<F>(&ws, cmma::MatrixIdent::B, cmma::MatrixLayout::RowMajor, kk * 16 * LDBV + wn * 4, comptime![LDBV * 8]);
                let b1 = fragment::<F>(&ws, cmma::MatrixIdent::B, cmma::MatrixLayout::RowMajor, kk * 16 * LDBV + wn * 4 + 2, comptime![LDBV * 8]);
                #[unroll]
                for i in 0..4usize {
                    let a = fragment::<F>(&gs, cmma::MatrixIdent::A, cmma::MatrixLayout::RowMajor, (wm * 64 + i * 16) * LDV64 + kk * 2, comptime![LDV64 * 8]);
                    cmma::execute::<F, F, f32, f32>(&a, &b0, acc.index(i * 2), acc.index(i * 2));
                    cmma::execute::<F, F, f32, f32>(&a, &b1, acc.index(i * 2 + 1), acc.index(i * 2 + 1));
                }
            }
        }
        sync_cube();
    }
    if comptime![mma] {
        store_mma_tile::<F>(&macc, dx, m0 + wm * 64, c0 + wn * 32, m_rows, k, lane);
    } else {
        let mut stage = SharedMemory::<f32>::new_aligned(threads / 32 * 256, 32usize);
        store_tile::<F>(&acc, &mut stage, dx, m0 + wm * 64, c0 + wn * 32, m_rows, k, plane, lane);
    }
}
