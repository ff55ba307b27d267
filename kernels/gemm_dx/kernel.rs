//! The fused backward product `dX[M, K] = dY[M, N] W` of a frozen NF4 weight, `dY` in
//! bf16/f16.
//!
//! Same structure as [`crate::gemm`] (a 128 x 128 output tile per cube of 8 planes, 4 x 2
//! cmma fragments per plane, f32 accumulators), but the reduction runs over the rows of `W`:
//! per step the cube decodes `W[32 rows, 128 columns]` (one 8-byte load of 16 codes per
//! thread, each 16-code run inside one block) into a row-major shared tile that feeds the
//! tensor cores as a row-major `B` operand. `W` is never materialized in global memory.
//! This kernel serves the shapes the pipelined [`super::pipelined`] one does not (`N` an odd
//! multiple of 32 or `K` not a multiple of 32); [`gemm_dx_into`] picks.

use super::pipelined::gemm_dx64_kernel;
use crate::gemm::wide::{launch_wide, WideTerms};
use crate::device::{block_scale, check_operand, empty, nibble, KernelError, Nf4Device};
use crate::gemm::kernel::{launch_nf4_gemm, load_a_tile, store_tile, zero_accumulators, BK, BM, BN, LD};
use crate::gemm::pipelined::BK64;
use crate::gemm::GemmConfig;
use burn_backend::DType;
use burn_cubecl::tensor::CubeTensor;
use burn_cubecl::CubeRuntime;
use cubecl::prelude::*;

/// Row stride of the decoded `W[32, 128]` tile (padded by 8).
const LDB: usize = BN + 8;

#[cube(launch_unchecked)]
#[allow(clippy::too_many_arguments)]
pub(crate) fn gemm_dx_kernel<F: Float>(
    dy: &Array<Vector<F, Const<8>>>,
    words: &Array<Vector<u32, Const<2>>>,
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
    let mut gs = SharedMemory::<F>::new_aligned(BM * LD, 32usize);
    let mut ws = SharedMemory::<F>::new_aligned(BK * LDB, 32usize);
    let mut stage = SharedMemory::<f32>::new_aligned(2048usize, 32usize);
    sync_cube();

    let plane = tid / 32;
    let lane = tid % 32;
    let wm = plane / 4;
    let wn = plane % 4;
    let m0 = CUBE_POS_Y as usize * BM;
    let c0 = CUBE_POS_X as usize * BN;
    let acc = zero_accumulators();

    // W loader: row `wr` of the 32-row step, columns `c0 + ws16 * 16 ..` (16 codes).
    let wr = tid / 8;
    let wseg = tid % 8;
    let gc = c0 + wseg * 16;

    let n_tiles = n / BK;
    for nt in 0..n_tiles {
        let r0 = nt * BK;
        load_a_tile::<F>(dy, &mut gs, m0, m_rows, n, r0, tid);
        if gc < k {
            let e0 = (r0 + wr) * k + gc;
            let wv = words[e0 / 16];
            let scale = block_scale(e0 >> block_shift as usize, absmax, qcodes, lut, offset, double);
            #[unroll]
            for wi in 0..2usize {
                let word = wv[wi];
                #[unroll]
                for j in 0..8usize {
                    ws[wr * LDB + wseg * 16 + wi * 8 + j] = F::cast_from(table[nibble(word, j)] * scale);
                }
            }
        } else {
            #[unroll]
            for j in 0..16usize {
                ws[wr * LDB + wseg * 16 + j] = F::new(0.0);
            }
        }
        sync_cube();

        #[unroll]
        for kk in 0..2usize {
            let mut bs = Sequence::<cmma::Matrix<F>>::new();
            #[unroll]
            for j in 0..2usize {
                let start = kk * 16 * LDB + wn * 32 + j * 16;
                bs.push(cmma::Matrix::<F>::from_slice(
                    cmma::MatrixIdent::B,
                    16usize,
                    16usize,
                    16usize,
                    cmma::MatrixLayout::RowMajor,
                    &ws.slice(start, start + 15 * LDB + 16),
                    comptime![LDB as u32],
                ));
            }
            #[unroll]
            for i in 0..4usize {
                let start = (wm * 64 + i * 16) * LD + kk * 16;
                let a = cmma::Matrix::<F>::from_slice(
                    cmma::MatrixIdent::A,
                    16usize,
                    16usize,
                    16usize,
                    cmma::MatrixLayout::RowMajor,
                    &gs.slice(start, start + 15 * LD + 16),
                    comptime![LD as u32],
                );
                #[unroll]
                for j in 0..2usize {
                    cmma::execute::<F, F, f32, f32>(&a, bs.index(j), acc.index(i * 2 + j), acc.index(i * 2 + j));
                }
            }
        }
        sync_cube();
    }
    store_tile::<F>(&acc, &mut stage, dx, m0 + wm * 64, c0 + wn * 32, m_rows, k, plane, lane);
}

fn check<R: CubeRuntime>(dy: &CubeTensor<R>, w: &Nf4Device<R>) -> Result<(usize, u32), KernelError> {
    const NAME: &str = "nf4 gemm dx";
    let shift = w.check(NAME)?;
    let m = check_operand(NAME, dy, None, w.n)?;
    if w.n % BK != 0 || w.k % 16 != 0 {
        return Err(KernelError::Shape { kernel: NAME, what: format!("N = {} must be a multiple of {BK} and K = {} of 16", w.n, w.k) });
    }
    if !matches!(dy.dtype, DType::BF16 | DType::F16) {
        return Err(KernelError::Dtype { kernel: NAME, dtype: dy.dtype });
    }
    Ok((m, shift))
}

/// `dX[M, K] = dY[M, N] W`, `dY` contiguous bf16/f16, `N % 32 == 0`, `K % 16 == 0`; `dX` of
/// `dY`'s dtype.
pub fn gemm_dx<R: CubeRuntime>(dy: &CubeTensor<R>, w: &Nf4Device<R>) -> Result<CubeTensor<R>, KernelError> {
    gemm_dx_with(dy, w, GemmConfig::default())
}

/// [`gemm_dx`] with a chosen tiling and tensor-core path (for `N % 64 == 0`, `K % 32 == 0`;
/// other shapes take the first kernel's 128 rows and `wmma` either way).
pub fn gemm_dx_with<R: CubeRuntime>(dy: &CubeTensor<R>, w: &Nf4Device<R>, config: GemmConfig) -> Result<CubeTensor<R>, KernelError> {
    let (m, _) = check(dy, w)?;
    let dx = empty(dy, vec![m, w.k], dy.dtype);
    gemm_dx_into_with(dy, w, &dx, config)?;
    Ok(dx)
}

/// [`gemm_dx`] into a given contiguous `[M, K]` output.
pub fn gemm_dx_into<R: CubeRuntime>(dy: &CubeTensor<R>, w: &Nf4Device<R>, dx: &CubeTensor<R>) -> Result<(), KernelError> {
    gemm_dx_into_with(dy, w, dx, GemmConfig::default())
}

/// [`gemm_dx_into`] with a chosen tiling and tensor-core path (see [`gemm_dx_with`]).
pub fn gemm_dx_into_with<R: CubeRuntime>(dy: &CubeTensor<R>, w: &Nf4Device<R>, dx: &CubeTensor<R>, config: GemmConfig) -> Result<(), KernelError> {
    const NAME: &str = "nf4 gemm dx";
    let (m, shift) = check(dy, w)?;
    check_operand(NAME, dx, Some(m), w.k)?;
    if dx.dtype != dy.dtype {
        return Err(KernelError::Dtype { kernel: NAME, dtype: dx.dtype });
    }
    let client = w.client();
    let (absmax, qcodes, offset, double) = w.scale_args();
    let dy_arg = unsafe { ArrayArg::from_raw_parts(dy.handle.clone(), m * w.n / 8) };
    let dx_arg = unsafe { ArrayArg::from_raw_parts(dx.handle.clone(), m * w.k) };
    if w.n % BK64 == 0 && w.k % 32 == 0 && matches!(config.mma, crate::gemm::GemmMma::Wide | crate::gemm::GemmMma::Wgmma) {
        return launch_wide(NAME, dy, w, dx, WideTerms { lora: None, added: None }, shift, true, config.mma);
    }
    if w.n % BK64 == 0 && w.k % 32 == 0 {
        let (bm, wvec) = config.rows.rows_and_words();
        let count = CubeCount::Static(w.k.div_ceil(BN) as u32, m.div_ceil(bm) as u32, 1);
        let words = w.words_arg(wvec);
        let mma = config.mma == crate::gemm::GemmMma::Ldmatrix;
        let stages = config.stages.count();
        launch_nf4_gemm!(gemm_dx64_kernel, NAME, dy.dtype, client, count, CubeDim::new_1d(2 * bm as u32), wvec, dy_arg, words, absmax, qcodes, w.lut_arg(), dx_arg, offset, m, w.n, w.k, shift, double, bm, mma, stages);
        return Ok(());
    }
    let count = CubeCount::Static(w.k.div_ceil(BN) as u32, m.div_ceil(BM) as u32, 1);
    let dim = CubeDim::new_1d(256);
    let words = w.words_arg(2);
    launch_nf4_gemm!(gemm_dx_kernel, NAME, dy.dtype, client, count, dim, dy_arg, words, absmax, qcodes, w.lut_arg(), dx_arg, offset, m, w.n, w.k, shift, double);
    Ok(())
}
