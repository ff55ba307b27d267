//! The fused NF4 GEMM, `Y[M, N] = X[M, K] W^T` with `X` in bf16/f16.
//!
//! A cube (8 planes, 256 threads) computes a 128 x 128 tile of `Y`; each plane a 64 x 32
//! sub-tile as 4 x 2 tensor-core fragments of 16 x 16 with f32 accumulators. Per step of 32
//! along `K`: the cube copies `X[128, 32]` into shared memory, reads `W[128 rows, 32 codes]`
//! (16 codes, 8 bytes per thread), decodes them with the block scale straight into shared
//! memory as bf16/f16 (`W` is never materialized in global memory), then each plane runs 16
//! `cmma` products. The epilogue goes through shared memory so partial tiles (`M` not a
//! multiple of 128) are stored with bounds checks.
//!
//! This kernel serves `K` an odd multiple of 32; for `K % 64 == 0` (every Qwen2.5 projection)
//! [`gemm_into`] launches the software-pipelined [`super::pipelined`] kernel instead, or the
//! wide-plane [`super::wide`] one ([`GemmMma::Wide`], which copies `X` by `cp.async`). What
//! none does yet (why all are slower than cuBLAS-class kernels): `W` through asynchronous
//! copies (its codes are decoded on the way to shared memory), more than two stages, and
//! Hopper's `wgmma`/TMA rather than Ampere-style `mma.sync`.

use super::pipelined::{gemm64_kernel, BK64};
use super::wide::{launch_wide, WideTerms};
use crate::device::{block_scale, check_operand, empty, nibble, KernelError, Nf4Device};
use burn_backend::DType;
use burn_cubecl::tensor::CubeTensor;
use burn_cubecl::CubeRuntime;
use cubecl::prelude::*;

/// Tile rows of `Y` per cube.
pub(crate) const BM: usize = 128;
/// Tile columns of `Y` per cube.
pub(crate) const BN: usize = 128;
/// Reduction step.
pub(crate) const BK: usize = 32;
/// Shared-memory row stride of the 32-wide tiles (padded by 8 to spread banks; a multiple
/// of 8 elements as `wmma` loads require).
pub(crate) const LD: usize = BK + 8;

/// Copies `A[row0 .. row0 + 128, c0 .. c0 + 32]` of a row-major `[rows, cols]` matrix into
/// `tile` (stride [`LD`]), zeros past the last row. Two 16-byte loads per thread.
#[cube]
pub(crate) fn load_a_tile<F: Float>(
    a: &Array<Vector<F, Const<8>>>,
    tile: &mut SharedMemory<F>,
    row0: usize,
    rows: usize,
    cols: usize,
    c0: usize,
    tid: usize,
) {
    #[unroll]
    for p in 0..2usize {
        let v = tid + p * 256;
        let r = v / 4;
        let cv = v % 4;
        let gr = row0 + r;
        let mut val = Vector::<F, Const<8>>::new(F::new(0.0));
        if gr < rows {
            val = a[(gr * cols + c0) / 8 + cv];
        }
        #[unroll]
        for e in 0..8usize {
            tile[r * LD + cv * 8 + e] = val[e];
        }
    }
}

/// Stores the plane's 4 x 2 accumulators (sub-tile at `row0`, `col0` of `Y[rows, cols]`)
/// through a 16 x 16 f32 staging area of shared memory, with bounds checks, as `F`.
#[cube]
#[allow(clippy::too_many_arguments)]
pub(crate) fn store_tile<F: Float>(
    acc: &Sequence<cmma::Matrix<f32>>,
    stage: &mut SharedMemory<f32>,
    y: &mut Array<F>,
    row0: usize,
    col0: usize,
    rows: usize,
    cols: usize,
    plane: usize,
    lane: usize,
) {
    #[unroll]
    for i in 0..4usize {
        #[unroll]
        for j in 0..2usize {
            let base = plane * 256;
            let mut out = stage.slice_mut(base, base + 256);
            cmma::store(&mut out, acc.index(i * 2 + j), 16u32, cmma::MatrixLayout::RowMajor);
            sync_plane();
            #[unroll]
            for t in 0..8usize {
                let e = lane * 8 + t;
                let gr = row0 + i * 16 + e / 16;
                let gc = col0 + j * 16 + e % 16;
                if gr < rows && gc < cols {
                    y[gr * cols + gc] = F::cast_from(stage[base + e]);
                }
            }
            sync_plane();
        }
    }
}

/// Eight zeroed 16 x 16 f32 accumulators.
#[cube]
pub(crate) fn zero_accumulators() -> Sequence<cmma::Matrix<f32>> {
    zero_accumulators_n(8usize)
}

/// `count` zeroed 16 x 16 f32 accumulators.
#[cube]
pub(crate) fn zero_accumulators_n(#[comptime] count: usize) -> Sequence<cmma::Matrix<f32>> {
    let mut acc = Sequence::<cmma::Matrix<f32>>::new();
    #[unroll]
    for _ in 0..count {
        acc.push(cmma::Matrix::<f32>::from_value(cmma::MatrixIdent::Accumulator, 16usize, 16usize, 16usize, cmma::MatrixLayout::Undefined, 0.0));
    }
    acc
}

/// Launches one of the fused NF4 GEMM kernels (all four share one parameter list: operand,
/// packed words, scales, LUT, output, offset, rows, N, K, block shift, double) at the operand's
/// dtype, bf16 or f16; another dtype returns [`KernelError::Dtype`] from the calling function.
macro_rules! launch_nf4_gemm {
    ($kernel:ident, $name:expr, $dtype:expr, $client:expr, $count:expr, $dim:expr, $($arg:expr),+ $(,)?) => {
        unsafe {
            match $dtype {
                DType::BF16 => $kernel::launch_unchecked::<half::bf16, R>($client, $count, $dim, $($arg),+),
                DType::F16 => $kernel::launch_unchecked::<half::f16, R>($client, $count, $dim, $($arg),+),
                dtype => return Err(KernelError::Dtype { kernel: $name, dtype }),
            }
        }
    };
}
pub(crate) use launch_nf4_gemm;

#[cube(launch_unchecked)]
#[allow(clippy::too_many_arguments)]
pub(crate) fn gemm_kernel<F: Float>(
    x: &Array<Vector<F, Const<8>>>,
    words: &Array<Vector<u32, Const<2>>>,
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
    let mut xs = SharedMemory::<F>::new_aligned(BM * LD, 32usize);
    let mut ws = SharedMemory::<F>::new_aligned(BN * LD, 32usize);
    let mut stage = SharedMemory::<f32>::new_aligned(2048usize, 32usize);
    sync_cube();

    let plane = tid / 32;
    let lane = tid % 32;
    let wm = plane / 4;
    let wn = plane % 4;
    let m0 = CUBE_POS_Y as usize * BM;
    let n0 = CUBE_POS_X as usize * BN;
    let acc = zero_accumulators();

    // W loader: row `wr` of the tile, codes `wh * 16 .. wh * 16 + 16` of the 32-wide step.
    let wr = tid / 2;
    let wh = tid % 2;
    let gn = n0 + wr;

    let k_tiles = k / BK;
    for kt in 0..k_tiles {
        let k0 = kt * BK;
        load_a_tile::<F>(x, &mut xs, m0, m_rows, k, k0, tid);
        if gn < n_cols {
            let e0 = gn * k + k0 + wh * 16;
            let wv = words[e0 / 16];
            let scale = block_scale(e0 >> block_shift as usize, absmax, qcodes, lut, offset, double);
            #[unroll]
            for wi in 0..2usize {
                let word = wv[wi];
                #[unroll]
                for j in 0..8usize {
                    ws[wr * LD + wh * 16 + wi * 8 + j] = F::cast_from(table[nibble(word, j)] * scale);
                }
            }
        } else {
            #[unroll]
            for j in 0..16usize {
                ws[wr * LD + wh * 16 + j] = F::new(0.0);
            }
        }
        sync_cube();

        #[unroll]
        for kk in 0..2usize {
            let mut bs = Sequence::<cmma::Matrix<F>>::new();
            #[unroll]
            for j in 0..2usize {
                let start = (wn * 32 + j * 16) * LD + kk * 16;
                bs.push(cmma::Matrix::<F>::from_slice(
                    cmma::MatrixIdent::B,
                    16usize,
                    16usize,
                    16usize,
                    cmma::MatrixLayout::ColMajor,
                    &ws.slice(start, start + 15 * LD + 16),
                    comptime![LD as u32],
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
                    &xs.slice(start, start + 15 * LD + 16),
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
    store_tile::<F>(&acc, &mut stage, y, m0 + wm * 64, n0 + wn * 32, m_rows, n_cols, plane, lane);
}

fn check<R: CubeRuntime>(x: &CubeTensor<R>, w: &Nf4Device<R>) -> Result<(usize, u32), KernelError> {
    const NAME: &str = "nf4 gemm";
    let shift = w.check(NAME)?;
    let m = check_operand(NAME, x, None, w.k)?;
    if w.k % BK != 0 {
        return Err(KernelError::Shape { kernel: NAME, what: format!("K = {} is not a multiple of {BK}", w.k) });
    }
    if !matches!(x.dtype, DType::BF16 | DType::F16) {
        return Err(KernelError::Dtype { kernel: NAME, dtype: x.dtype });
    }
    Ok((m, shift))
}

/// `Y[M, N] = X[M, K] W^T`, `X` contiguous bf16/f16, `K % 32 == 0`; `Y` of `X`'s dtype.
pub fn gemm<R: CubeRuntime>(x: &CubeTensor<R>, w: &Nf4Device<R>) -> Result<CubeTensor<R>, KernelError> {
    gemm_with(x, w, GemmConfig::default())
}

/// [`gemm`] with a chosen tiling and tensor-core path.
pub fn gemm_with<R: CubeRuntime>(x: &CubeTensor<R>, w: &Nf4Device<R>, config: GemmConfig) -> Result<CubeTensor<R>, KernelError> {
    let (m, _) = check(x, w)?;
    let y = empty(x, vec![m, w.n], x.dtype);
    gemm_into_with(x, w, &y, config)?;
    Ok(y)
}

/// Tile rows per cube of the pipelined NF4 GEMMs (the forward one when `K % 64 == 0`, the
/// backward `dY W` when `N % 64 == 0` and `K % 32 == 0`); other shapes take the first kernels'
/// 128 rows either way.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum GemmRows {
    /// 128 rows per cube of 256 threads.
    #[default]
    R128,
    /// 256 rows per cube of 512 threads: the same 16 planes per H200 SM as two 128-row
    /// cubes, with half the decode work per product (see the `pipelined` module).
    R256,
}

/// How the pipelined NF4 GEMMs feed the tensor cores.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum GemmMma {
    /// `wmma` 16 x 16 x 16 fragments loaded from shared memory.
    #[default]
    Wmma,
    /// `ldmatrix` loads and `mma.sync.m16n8k16` (see the `mma` module: a fragment per
    /// instruction, from shared addresses).
    Ldmatrix,
    /// As `Ldmatrix` on wide planes: 256-row tiles of 8 planes of 64 x 64 (256 threads), two
    /// tile sets, the activation tile copied by `cp.async` (see the `wide` module). Takes
    /// 256 rows and two stages whatever `rows` and `stages` say.
    Wide,
    /// As `Wide`, with both products on Hopper's warpgroup MMA where the CUDA runtime and the
    /// shape allow ([`crate::gemm_wgmma`]: 128 x 256 tiles, the weight decoded into shared
    /// memory while the previous step's products run); whatever it declines takes the wide
    /// kernel.
    Wgmma,
}

/// How many sets of shared tiles the pipelined NF4 GEMMs cycle through.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum GemmStages {
    /// One set: fill, barrier, products, barrier, per step.
    #[default]
    One,
    /// Two sets: products on one while the next step fills the other, one barrier per step
    /// (twice the shared memory: 110.6 KB for a 256-row forward cube).
    Two,
}

impl GemmStages {
    pub(crate) fn count(self) -> usize {
        match self {
            GemmStages::One => 1,
            GemmStages::Two => 2,
        }
    }
}

/// The pipelined NF4 GEMMs' tile height, tensor-core path and shared-tile stages; shapes the
/// pipelined kernels cannot take run the first kernels (128 rows, `wmma`) whatever this says.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct GemmConfig {
    /// Tile rows per cube.
    pub rows: GemmRows,
    /// How the tensor cores are fed.
    pub mma: GemmMma,
    /// Shared tile sets.
    pub stages: GemmStages,
}

impl GemmConfig {
    /// Short name for reports, e.g. `r256 ldmatrix 2stage` (one stage unnamed).
    pub fn name(&self) -> String {
        match self.mma {
            GemmMma::Wide => return "r256 wide".into(),
            GemmMma::Wgmma => return "r256 wgmma".into(),
            _ => {}
        }
        let rows = if self.rows == GemmRows::R256 { 256 } else { 128 };
        let mma = if self.mma == GemmMma::Ldmatrix { "ldmatrix" } else { "wmma" };
        let stages = if self.stages == GemmStages::Two { " 2stage" } else { "" };
        format!("r{rows} {mma}{stages}")
    }

    /// Every configuration, for tests, benchmarks and the compile check.
    pub const ALL: [GemmConfig; 9] = {
        use GemmMma::{Ldmatrix, Wide, Wmma};
        use GemmRows::{R128, R256};
        use GemmStages::{One, Two};
        [
            GemmConfig { rows: R128, mma: Wmma, stages: One },
            GemmConfig { rows: R256, mma: Wmma, stages: One },
            GemmConfig { rows: R128, mma: Ldmatrix, stages: One },
            GemmConfig { rows: R256, mma: Ldmatrix, stages: One },
            GemmConfig { rows: R128, mma: Wmma, stages: Two },
            GemmConfig { rows: R256, mma: Wmma, stages: Two },
            GemmConfig { rows: R128, mma: Ldmatrix, stages: Two },
            GemmConfig { rows: R256, mma: Ldmatrix, stages: Two },
            GemmConfig { rows: R256, mma: Wide, stages: Two },
        ]
    };
}

impl GemmRows {
    /// (tile rows, words of `W` per thread of the pipelined kernels' W loader: the 64 or 128
    /// codes of a tile row per step split over the threads).
    pub(crate) fn rows_and_words(self) -> (usize, usize) {
        match self {
            GemmRows::R128 => (128, 4),
            GemmRows::R256 => (256, 2),
        }
    }
}

/// [`gemm`] into a given contiguous `[M, N]` output.
pub fn gemm_into<R: CubeRuntime>(x: &CubeTensor<R>, w: &Nf4Device<R>, y: &CubeTensor<R>) -> Result<(), KernelError> {
    gemm_into_with(x, w, y, GemmConfig::default())
}

/// [`gemm_into`] with a chosen tiling and tensor-core path.
pub fn gemm_into_with<R: CubeRuntime>(x: &CubeTensor<R>, w: &Nf4Device<R>, y: &CubeTensor<R>, config: GemmConfig) -> Result<(), KernelError> {
    const NAME: &str = "nf4 gemm";
    let (m, shift) = check(x, w)?;
    check_operand(NAME, y, Some(m), w.n)?;
    if y.dtype != x.dtype {
        return Err(KernelError::Dtype { kernel: NAME, dtype: y.dtype });
    }
    let client = w.client();
    let (absmax, qcodes, offset, double) = w.scale_args();
    let x_arg = unsafe { ArrayArg::from_raw_parts(x.handle.clone(), m * w.k / 8) };
    let y_arg = unsafe { ArrayArg::from_raw_parts(y.handle.clone(), m * w.n) };
    if w.k % BK64 == 0 && matches!(config.mma, GemmMma::Wide | GemmMma::Wgmma) {
        return launch_wide(NAME, x, w, y, WideTerms { lora: None, added: None }, shift, false, config.mma);
    }
    if w.k % BK64 == 0 {
        let (bm, wvec) = config.rows.rows_and_words();
        let count = CubeCount::Static(w.n.div_ceil(BN) as u32, m.div_ceil(bm) as u32, 1);
        let words = w.words_arg(wvec);
        let mma = config.mma == GemmMma::Ldmatrix;
        let stages = config.stages.count();
        launch_nf4_gemm!(gemm64_kernel, NAME, x.dtype, client, count, CubeDim::new_1d(2 * bm as u32), wvec, x_arg, words, absmax, qcodes, w.lut_arg(), y_arg, offset, m, w.n, w.k, shift, double, bm, mma, stages);
        return Ok(());
    }
    let count = CubeCount::Static(w.n.div_ceil(BN) as u32, m.div_ceil(BM) as u32, 1);
    let dim = CubeDim::new_1d(256);
    let words = w.words_arg(2);
    launch_nf4_gemm!(gemm_kernel, NAME, x.dtype, client, count, dim, x_arg, words, absmax, qcodes, w.lut_arg(), y_arg, offset, m, w.n, w.k, shift, double);
    Ok(())
}
