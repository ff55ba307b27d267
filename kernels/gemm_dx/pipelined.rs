//! The backward product for `N % 64 == 0` and `K % 32 == 0` (every Qwen2.5 projection),
//! `dX = dY W`, pipelined like [`crate::gemm::pipelined`]: per 64-row step of `W` each thread
//! holds the next step's `dY` vectors and 32 codes of `W` (one 16-byte load, one block) in
//! registers while the tensor cores work on the current step, and shared tiles are written as
//! 16-byte vectors.

use crate::device::block_scale;
use crate::gemm::kernel::{store_tile, zero_accumulators, BM, BN};
use crate::gemm::pipelined::{decode32, fragment, load_a64, store_a64, BK64, LDV64};
use cubecl::prelude::*;

/// Row stride of the decoded `W[64, 128]` tile, in 8-element vectors (128 + 8 elements).
const LDBV: usize = BN / 8 + 1;

#[cube(launch_unchecked)]
#[allow(clippy::too_many_arguments)]
pub(crate) fn gemm_dx64_kernel<F: Float>(
    dy: &Array<Vector<F, Const<8>>>,
    words: &Array<Vector<u32, Const<4>>>,
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
) {
    let tid = UNIT_POS as usize;
    let mut table = SharedMemory::<f32>::new(16usize);
    if tid < 16 {
        table[tid] = lut[tid];
    }
    let mut gs = SharedMemory::<Vector<F, Const<8>>>::new_aligned(BM * LDV64, 32usize);
    let mut ws = SharedMemory::<Vector<F, Const<8>>>::new_aligned(BK64 * LDBV, 32usize);
    let mut stage = SharedMemory::<f32>::new_aligned(2048usize, 32usize);
    sync_cube();

    let plane = tid / 32;
    let lane = tid % 32;
    let wm = plane / 4;
    let wn = plane % 4;
    let m0 = CUBE_POS_Y as usize * BM;
    let c0 = CUBE_POS_X as usize * BN;
    let acc = zero_accumulators();

    // W loader: row `wr` of the 64-row step, columns `c0 + wseg * 32 ..` (32 codes, one block).
    let wr = tid / 4;
    let wseg = tid % 4;
    let gc = c0 + wseg * 32;
    let live = gc < k;

    let mut g0 = load_a64::<F>(dy, m0, m_rows, n, 0, tid, 0usize);
    let mut g1 = load_a64::<F>(dy, m0, m_rows, n, 0, tid, 1usize);
    let mut g2 = load_a64::<F>(dy, m0, m_rows, n, 0, tid, 2usize);
    let mut g3 = load_a64::<F>(dy, m0, m_rows, n, 0, tid, 3usize);
    let mut wv = Vector::<u32, Const<4>>::new(0u32);
    let mut scale = 0.0f32;
    if live {
        let e0 = wr * k + gc;
        wv = words[e0 / 32];
        scale = block_scale(e0 >> block_shift as usize, absmax, qcodes, lut, offset, double);
    }

    let n_tiles = n / BK64;
    for nt in 0..n_tiles {
        store_a64::<F>(&mut gs, g0, tid, 0usize);
        store_a64::<F>(&mut gs, g1, tid, 1usize);
        store_a64::<F>(&mut gs, g2, tid, 2usize);
        store_a64::<F>(&mut gs, g3, tid, 3usize);
        decode32::<F>(wv, scale, &table, &mut ws, wr * LDBV + wseg * 4);
        sync_cube();

        if nt + 1 < n_tiles {
            let r0 = (nt + 1) * BK64;
            g0 = load_a64::<F>(dy, m0, m_rows, n, r0, tid, 0usize);
            g1 = load_a64::<F>(dy, m0, m_rows, n, r0, tid, 1usize);
            g2 = load_a64::<F>(dy, m0, m_rows, n, r0, tid, 2usize);
            g3 = load_a64::<F>(dy, m0, m_rows, n, r0, tid, 3usize);
            if live {
                let e0 = (r0 + wr) * k + gc;
                wv = words[e0 / 32];
                scale = block_scale(e0 >> block_shift as usize, absmax, qcodes, lut, offset, double);
            }
        }

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
        sync_cube();
    }
    store_tile::<F>(&acc, &mut stage, dx, m0 + wm * 64, c0 + wn * 32, m_rows, k, plane, lane);
}
