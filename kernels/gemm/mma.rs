//! The pipelined NF4 GEMMs' tensor-core step through `ldmatrix` and `mma.sync.m16n8k16`
//! (cubecl's manual MMA), instead of `wmma` fragments ([`super::GemmMma::Ldmatrix`]).
//!
//! Why: compiled for sm_90a, each `wmma::load_matrix_sync` from our shared tiles became four
//! 32-bit generic loads (`LD.E` through 64-bit addresses: the compiler loses the shared state
//! space through the `wmma` API), 96 per plane per 64-wide step beside 64 `HMMA`s. One
//! `ldmatrix` (`LDSM`) loads an 8 x 8 matrix per lane octet from a shared-memory address, so a
//! 16 x 16 A fragment is one instruction and a 16 x 8 B fragment one: 32 per step. In the
//! 256-row kernel's loop that is 276 instructions per plane per step instead of 437
//! (`tools/sass-loop.sh`), `HMMA` 23% of them instead of 15%.
//!
//! Layouts (PTX ISA, "Matrix Fragments for mma.m16n8k16"): lane `t` of a plane holds
//! - A (16 x 16, row-major): rows `t / 4` and `t / 4 + 8`, columns `2 (t % 4) + {0, 1}` and
//!   those plus 8, from `ldmatrix.x4` with lane `l` addressing row `l % 16`, columns
//!   `(l / 16) * 8 ..`;
//! - B (16 x 8, "col"): column `t / 4`, rows `2 (t % 4) + {0, 1}` and those plus 8. The
//!   forward tile holds `W` rows (`k` contiguous): `ldmatrix.x2` untransposed, each addressed
//!   16-byte row one `n` with 8 consecutive `k`, lane `l` addressing `n = l % 8`,
//!   `k = ((l % 16) / 8) * 8 ..`. The backward tile holds rows of `k` (`n` contiguous):
//!   `ldmatrix.x2.trans`, lane `l` addressing row `k = l % 16`;
//! - the f32 accumulator (16 x 8): rows `t / 4` (c0, c1) and `t / 4 + 8` (c2, c3), columns
//!   `2 (t % 4) + {0, 1}`.

use super::pipelined::LDV64;
use cubecl::prelude::*;

/// A plane's accumulators: its 64 x 32 sub-tile as 4 x 4 m16n8 tiles of four f32 each (the
/// same 64 registers per lane as the `wmma` path's 4 x 2 16 x 16 tiles; a wide plane's 64 x
/// 64, 4 x 8 tiles), or none for `count = 0`.
#[cube]
pub(crate) fn zero_mma_accumulators(#[comptime] count: usize) -> Sequence<Array<Vector<f32, Const<1>>>> {
    let mut acc = Sequence::<Array<Vector<f32, Const<1>>>>::new();
    #[unroll]
    for _ in 0..count {
        let mut a = Array::<Vector<f32, Const<1>>>::new(4usize);
        #[unroll]
        for e in 0..4usize {
            a[e] = Vector::new(0.0f32);
        }
        acc.push(a);
    }
    acc
}

/// One 64-wide step of the plane's products, `acc += A[rows wm*64 .., 64] B[64, cols
/// wn*plane_cols ..]` (`plane_cols` 32, or 64 for the wide planes of [`super::wide`]):
/// `A` from `xs` at vector offset `xbase` (`[rows, 64]`, row stride [`LDV64`] vectors), `B`
/// from `ws` at `wbase`, row stride `ldw` vectors, either `n`-major (`w_rows_are_n`: the
/// forward product's `[128, 64]` rows of `W`, so `B = W^T`) or `k`-major (the backward product's `[64, 128]` rows of `W`, loaded by
/// `ldmatrix.trans`: lane `l` addresses row `k = l % 16` of its 8-column block).
#[cube]
#[allow(clippy::too_many_arguments)]
pub(crate) fn mma_products<F: Float>(
    xs: &SharedMemory<Vector<F, Const<8>>>,
    xbase: usize,
    ws: &SharedMemory<Vector<F, Const<8>>>,
    wbase: usize,
    acc: &mut Sequence<Array<Vector<f32, Const<1>>>>,
    wm: usize,
    wn: usize,
    lane: usize,
    #[comptime] w_rows_are_n: bool,
    #[comptime] ldw: usize,
    #[comptime] plane_cols: usize,
) {
    #[unroll]
    for kk in 0..4usize {
        mma_products_k16::<F>(xs, xbase, ws, wbase, acc, wm, wn, lane, w_rows_are_n, ldw, plane_cols, kk);
    }
}

/// The 16-wide slice `kk` (0..4) of [`mma_products`]' step: separate so that a caller can put
/// other work between the slices (the wide kernel decodes the next tile of `W` there, so its
/// arithmetic issues while the tensor cores run instead of after them).
#[cube]
#[allow(clippy::too_many_arguments)]
pub(crate) fn mma_products_k16<F: Float>(
    xs: &SharedMemory<Vector<F, Const<8>>>,
    xbase: usize,
    ws: &SharedMemory<Vector<F, Const<8>>>,
    wbase: usize,
    acc: &mut Sequence<Array<Vector<f32, Const<1>>>>,
    wm: usize,
    wn: usize,
    lane: usize,
    #[comptime] w_rows_are_n: bool,
    #[comptime] ldw: usize,
    #[comptime] plane_cols: usize,
    #[comptime] kk: usize,
) {
    let blocks = comptime![plane_cols / 8];
    let def = cmma::MmaDefinition::<F, F, f32>::new(16usize, 8usize, 16usize);
    let a_row = wm * 64 + lane % 16;
    let a_half = lane / 16;
    // This lane's B row address, and the steps to the next 8 columns and the next 16 `k`.
    let mut b_base = wbase + (lane % 16) * ldw + wn * blocks;
    if comptime![w_rows_are_n] {
        b_base = wbase + (wn * plane_cols + lane % 8) * ldw + (lane % 16) / 8;
    }
    let j_step = comptime![if w_rows_are_n { 8 * ldw } else { 1 }];
    let kk_step = comptime![if w_rows_are_n { 2 } else { 16 * ldw }];
    let mut bs = Sequence::<Array<Vector<F, Const<2>>>>::new();
    #[unroll]
    for j in 0..blocks {
        let at = b_base + j * j_step + kk * kk_step;
        bs.push(def.load_matrix::<Vector<F, Const<8>>, Const<2>>(&ws.slice(at, at + 1), cmma::MatrixIdent::B, 2usize, comptime![!w_rows_are_n]));
    }
    #[unroll]
    for i in 0..4usize {
        let at = xbase + (a_row + i * 16) * LDV64 + kk * 2 + a_half;
        let a = def.load_matrix::<Vector<F, Const<8>>, Const<2>>(&xs.slice(at, at + 1), cmma::MatrixIdent::A, 4usize, false);
        #[unroll]
        for j in 0..blocks {
            def.execute_inplace(&a, bs.index(j), acc.index_mut(i * blocks + j));
        }
    }
}

/// Stores the plane's accumulators (the 64 x `plane_cols` sub-tile at `row0`, `col0` of
/// `Y[rows, cols]`) as `F`, straight from registers, with bounds checks.
#[cube]
#[allow(clippy::too_many_arguments)]
pub(crate) fn store_mma_tile<F: Float>(acc: &Sequence<Array<Vector<f32, Const<1>>>>, y: &mut Array<F>, row0: usize, col0: usize, rows: usize, cols: usize, lane: usize, #[comptime] plane_cols: usize) {
    let blocks = comptime![plane_cols / 8];
    let r = lane / 4;
    let c = (lane % 4) * 2;
    #[unroll]
    for i in 0..4usize {
        #[unroll]
        for j in 0..blocks {
            let a = acc.index(i * blocks + j);
            #[unroll]
            for e in 0..4usize {
                let gr = row0 + i * 16 + r + comptime![(e / 2) * 8];
                let gc = col0 + j * 8 + c + comptime![e % 2];
                if gr < rows && gc < cols {
                    y[gr * cols + gc] = F::cast_from(a[e][0]);
                }
            }
        }
    }
}

/// [`store_mma_tile`] adding a term (in `F`) to each accumulator before the rounding to `O`:
/// `add[row, col]` of a `[rows, cols]` matrix (`matrix`), else `add[col]` (a bias).
#[cube]
#[allow(clippy::too_many_arguments)]
pub(crate) fn store_mma_tile_plus<F: Float, O: Float>(
    acc: &Sequence<Array<Vector<f32, Const<1>>>>,
    y: &mut Array<O>,
    add: &Array<F>,
    row0: usize,
    col0: usize,
    rows: usize,
    cols: usize,
    lane: usize,
    #[comptime] plane_cols: usize,
    #[comptime] matrix: bool,
) {
    let blocks = comptime![plane_cols / 8];
    let r = lane / 4;
    let c = (lane % 4) * 2;
    #[unroll]
    for i in 0..4usize {
        #[unroll]
        for j in 0..blocks {
            let a = acc.index(i * blocks + j);
            #[unroll]
            for e in 0..4usize {
                let gr = row0 + i * 16 + r + comptime![(e / 2) * 8];
                let gc = col0 + j * 8 + c + comptime![e % 2];
                if gr < rows && gc < cols {
                    let at = if comptime![matrix] { gr * cols + gc } else { gc };
                    y[gr * cols + gc] = O::cast_from(a[e][0] + f32::cast_from(add[at]));
                }
            }
        }
    }
}
