//! The backward NF4 product with wide planes ([`crate::gemm::GemmMma::Wide`]), `dX = dY W`
//! for `N % 64 == 0` and `K % 32 == 0`: the forward wide kernel's scheme
//! ([`crate::gemm::wide`]: 256 x 128 tiles, 8 planes of 64 x 64 through `ldmatrix` +
//! `mma.sync`, two shared tile sets, `dY` copied by `cp.async`) over 64-row steps of `W`,
//! whose `k`-major tile `ldmatrix` loads transposed.

use super::pipelined::LDBV;
use crate::device::block_scale;
use crate::gemm::kernel::BN;
use crate::gemm::mma::{mma_products, store_mma_tile, zero_mma_accumulators};
use crate::gemm::pipelined::{decode_words, BK64, LDV64};
use crate::gemm::wide::{copy_a64_async, WIDE_COLS, WIDE_ROWS, WIDE_THREADS};
use cubecl::prelude::barrier::Barrier;
use cubecl::prelude::*;

#[cube(launch_unchecked)]
#[allow(clippy::too_many_arguments)]
pub(crate) fn gemm_dx_wide_kernel<F: Float, W: Size>(
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
) {
    let codes = 8 * W::value();
    let segs = BN / codes;
    let tid = UNIT_POS as usize;
    let mut table = SharedMemory::<f32>::new(16usize);
    if tid < 16 {
        table[tid] = lut[tid];
    }
    let g_tile = comptime![WIDE_ROWS * LDV64];
    let w_tile = comptime![BK64 * LDBV];
    let mut gs = SharedMemory::<Vector<F, Const<8>>>::new_aligned(comptime![2 * g_tile], 32usize);
    let mut ws = SharedMemory::<Vector<F, Const<8>>>::new_aligned(comptime![2 * w_tile], 32usize);
    let bar = Barrier::shared(WIDE_THREADS as u32, tid == 0);
    sync_cube();

    let plane = tid / 32;
    let lane = tid % 32;
    let wm = plane / 2;
    let wn = plane % 2;
    let m0 = CUBE_POS_Y as usize * WIDE_ROWS;
    let c0 = CUBE_POS_X as usize * BN;
    let mut macc = zero_mma_accumulators(comptime![4 * WIDE_COLS / 8]);

    // W loader: row `wr` of the 64-row step, columns `c0 + wseg * codes ..` (one block).
    let wr = tid / segs;
    let wseg = tid % segs;
    let gc = c0 + wseg * codes;
    let live = gc < k;
    let w_at = wr * LDBV + wseg * W::value();

    copy_a64_async::<F>(dy, &mut gs, 0, m0, m_rows, n, 0, tid);
    let mut wv = Vector::<u32, W>::new(0u32);
    let mut scale = 0.0f32;
    if live {
        let e0 = wr * k + gc;
        wv = words[e0 / codes];
        scale = block_scale(e0 >> block_shift as usize, absmax, qcodes, lut, offset, double);
    }
    decode_words::<F, W>(wv, W::value(), scale, &table, &mut ws, w_at);
    bar.commit_copy_async();
    bar.arrive_and_wait();

    let n_tiles = n / BK64;
    for round in 0..(n_tiles + 1) / 2 {
        #[unroll]
        for cur in 0..2usize {
            let nt = round * 2 + cur;
            if nt < n_tiles {
                let more = nt + 1 < n_tiles;
                let next = 1 - cur;
                if more {
                    let r0 = (nt + 1) * BK64;
                    copy_a64_async::<F>(dy, &mut gs, next * g_tile, m0, m_rows, n, r0, tid);
                    if live {
                        let e0 = (r0 + wr) * k + gc;
                        wv = words[e0 / codes];
                        scale = block_scale(e0 >> block_shift as usize, absmax, qcodes, lut, offset, double);
                    }
                }
                mma_products::<F>(&gs, cur * g_tile, &ws, cur * w_tile, &mut macc, wm, wn, lane, false, LDBV, WIDE_COLS);
                if more {
                    decode_words::<F, W>(wv, W::value(), scale, &table, &mut ws, next * w_tile + w_at);
                }
                bar.commit_copy_async();
                bar.arrive_and_wait();
            }
        }
    }
    store_mma_tile::<F>(&macc, dx, m0 + wm * 64, c0 + wn * WIDE_COLS, m_rows, k, lane, WIDE_COLS);
}
