//! Causal attention in one pass over the keys (FlashAttention-2's forward, Dao 2023, Algorithm
//! 1): per plane 16 query rows, per step a 64-key tile of `K` and `V` in shared memory, the
//! scores `S = q k^T` and the output `O += P V` as `mma.sync.m16n8k16` products with operands
//! from `ldmatrix` ([`crate::gemm::mma`]'s layouts), and the softmax online in registers.
//!
//! Why, against the two-pass `wmma` kernel ([`super::kernel`]): `wmma` fragments hide which
//! lane holds which element, so that kernel could not rescale its output accumulators per row
//! and computed `q k^T` twice (a max-and-sum pass, then a normalized pass), going through
//! shared memory for every score. With `mma.sync` the accumulator layout is the PTX ISA's
//! ("Matrix Fragments for mma.m16n8k16": lane `l` holds rows `l / 4` and `l / 4 + 8`, columns
//! `2 (l % 4) + {0, 1}` of each 16 x 8 tile), so each lane rescales its own rows, and a score
//! tile's accumulators are already the A fragments of the `P V` product (two 16 x 8 tiles
//! make one 16 x 16 A fragment): the scores never leave registers. The next tile's keys and
//! values are copied global -> shared by `cp.async` while the current one is used.
//!
//! Rounding: scores are rounded to the storage dtype before scaling (as eager attention's
//! product output is), probabilities `exp(s - running max)` are rounded to it before their
//! product with `V`, the row sum and the output stay f32, and the output is divided by the
//! sum at the end. Eager attention normalizes before rounding instead; the two differ by a
//! rounding step on some elements (the tests' bound).

use super::kernel::{check_mask, check_operands, launch_attention, BR, NAME};
use super::reference::Causal;
use crate::device::{empty, KernelError};
use crate::gemm::mma::zero_mma_accumulators;
use burn_backend::DType;
use burn_cubecl::tensor::CubeTensor;
use burn_cubecl::CubeRuntime;
use cubecl::prelude::barrier::{copy_async, Barrier};
use cubecl::prelude::*;

/// Keys per tile.
pub(crate) const FLASH_KEYS: usize = 64;
/// Threads per cube: 4 planes of 16 query rows ([`BR`] rows).
const THREADS: usize = 128;

/// Issues `cp.async` copies of rows `from .. from + 64` of a row-major `[_, d]` matrix (`d / 8`
/// vectors per row, row 0 at vector `first` of `src`) into `tile` at vector offset `base`, row
/// stride `d / 8 + 1` vectors. Rows `>= valid` copy row `valid - 1` again: the mask hides
/// those keys, and a query row past the queries is never stored.
#[cube]
#[allow(clippy::too_many_arguments)]
fn copy_rows_async<F: Float>(src: &Array<Vector<F, Const<8>>>, first: usize, from: usize, valid: usize, tile: &mut SharedMemory<Vector<F, Const<8>>>, base: usize, tid: usize, #[comptime] d: usize) {
    let dv = comptime![d / 8];
    let ldv = comptime![d / 8 + 1];
    let total = comptime![FLASH_KEYS * d / 8];
    #[unroll]
    for i in 0..comptime![total.div_ceil(THREADS)] {
        let at = tid + i * THREADS;
        if at < total {
            let row = at / dv;
            let e = at % dv;
            let s = first + min(from + row, valid - 1) * dv + e;
            let t = base + row * ldv + e;
            copy_async::<Vector<F, Const<8>>>(&src.slice(s, s + 1), &mut tile.slice_mut(t, t + 1), 8u32);
        }
    }
}

/// Whether live query row `qi` sees `key`: by mask row `mrow` (`masked`), or causally (key
/// position at most the row's, `seen` cached keys before the queries).
#[cube]
#[allow(clippy::too_many_arguments)]
fn sees<M: Int>(mask: &Array<M>, mrow: usize, live: bool, key: usize, t_len: usize, qi: usize, seen: usize, #[comptime] masked: bool) -> bool {
    let mut visible = false;
    if live && key < t_len {
        if comptime![masked] {
            visible = u32::cast_from(mask[mrow + key]) == 0u32;
        } else {
            visible = key <= seen + qi;
        }
    }
    visible
}

/// Causal attention of grouped queries (layout: [`super::reference::Causal`]); cube `(x, y,
/// z)` = query tile of [`BR`] rows (longest first), query head within its group, `b *
/// kv_heads + kv`, as [`super::kernel`]'s.
#[cube(launch_unchecked)]
#[allow(clippy::too_many_arguments)]
pub(crate) fn flash_attention_kernel<F: Float, M: Int>(
    q: &Array<Vector<F, Const<8>>>,
    k: &Array<Vector<F, Const<8>>>,
    v: &Array<Vector<F, Const<8>>>,
    mask: &Array<M>,
    out: &mut Array<F>,
    s_len: usize,
    t_len: usize,
    kv_heads: usize,
    rep: usize,
    mask_batches: usize,
    scale: f32,
    #[comptime] d: usize,
    #[comptime] masked: bool,
) {
    let ldv = comptime![d / 8 + 1];
    let kv_tile = comptime![FLASH_KEYS * (d / 8 + 1)];
    let tid = UNIT_POS as usize;
    let plane = tid / 32;
    let lane = tid % 32;
    let tiles = (s_len + BR - 1) / BR;
    let r0 = (tiles - 1 - CUBE_POS_X as usize) * BR;
    let head = CUBE_POS_Z as usize * rep + CUBE_POS_Y as usize;
    let bh = CUBE_POS_Z as usize;
    let seen = t_len - s_len;

    let mut qs = SharedMemory::<Vector<F, Const<8>>>::new_aligned(comptime![BR * (d / 8 + 1)], 32usize);
    let mut ks = SharedMemory::<Vector<F, Const<8>>>::new_aligned(comptime![2 * FLASH_KEYS * (d / 8 + 1)], 32usize);
    let mut vs = SharedMemory::<Vector<F, Const<8>>>::new_aligned(comptime![2 * FLASH_KEYS * (d / 8 + 1)], 32usize);
    let bar = Barrier::shared(THREADS as u32, tid == 0);
    sync_cube();

    let kv_first = bh * t_len * comptime![d / 8];
    let keys_end = min(t_len, seen + r0 + BR);
    let key_tiles = (keys_end + FLASH_KEYS - 1) / FLASH_KEYS;
    copy_rows_async::<F>(q, head * s_len * comptime![d / 8], r0, s_len, &mut qs, 0, tid, d);
    copy_rows_async::<F>(k, kv_first, 0, t_len, &mut ks, 0, tid, d);
    copy_rows_async::<F>(v, kv_first, 0, t_len, &mut vs, 0, tid, d);
    bar.commit_copy_async();
    bar.arrive_and_wait();

    let def = cmma::MmaDefinition::<F, F, f32>::new(16usize, 8usize, 16usize);
    // The plane's 16 query rows as A fragments, one per 16 columns of the head.
    let mut qf = Sequence::<Array<Vector<F, Const<2>>>>::new();
    #[unroll]
    for kk in 0..comptime![d / 16] {
        let at = (plane * 16 + lane % 16) * ldv + kk * 2 + lane / 16;
        qf.push(def.load_matrix::<Vector<F, Const<8>>, Const<2>>(&qs.slice(at, at + 1), cmma::MatrixIdent::A, 4usize, false));
    }

    // This lane's rows (`g` and `g + 8` of the plane's 16) and its mask rows.
    let g = lane / 4;
    let c2 = (lane % 4) * 2;
    let qa = r0 + plane * 16 + g;
    let qb = qa + 8;
    let (live_a, live_b) = (qa < s_len, qb < s_len);
    let mbase = ((bh / kv_heads) % mask_batches) * s_len;
    let mrow_a = (mbase + min(qa, s_len - 1)) * t_len;
    let mrow_b = (mbase + min(qb, s_len - 1)) * t_len;
    // Running maxima (`f32::min_value()` until a key is seen) and this lane's share of the
    // row sums (the 4 lanes of a row are summed at the end).
    let mut mx_a = f32::min_value();
    let mut mx_b = f32::min_value();
    let mut sum_a = 0.0f32;
    let mut sum_b = 0.0f32;
    let mut oacc = zero_mma_accumulators(comptime![d / 8]);

    for kt in 0..key_tiles {
        let cur = kt % 2;
        if kt + 1 < key_tiles {
            let nxt = (1 - cur) * kv_tile;
            copy_rows_async::<F>(k, kv_first, (kt + 1) * FLASH_KEYS, t_len, &mut ks, nxt, tid, d);
            copy_rows_async::<F>(v, kv_first, (kt + 1) * FLASH_KEYS, t_len, &mut vs, nxt, tid, d);
        }
        let kb = cur * kv_tile;
        // S = q k^T: 8 tiles of 16 x 8 keys.
        let mut sacc = zero_mma_accumulators(comptime![FLASH_KEYS / 8]);
        #[unroll]
        for kk in 0..comptime![d / 16] {
            #[unroll]
            for j in 0..comptime![FLASH_KEYS / 8] {
                let at = kb + (j * 8 + lane % 8) * ldv + kk * 2 + (lane % 16) / 8;
                let b = def.load_matrix::<Vector<F, Const<8>>, Const<2>>(&ks.slice(at, at + 1), cmma::MatrixIdent::B, 2usize, false);
                def.execute_inplace(qf.index(kk), &b, sacc.index_mut(j));
            }
        }
        // Scaled, masked scores (hidden: `f32::min_value()`) and the tile's row maxima.
        let mut tmax_a = f32::min_value();
        let mut tmax_b = f32::min_value();
        #[unroll]
        for j in 0..comptime![FLASH_KEYS / 8] {
            let acc = sacc.index_mut(j);
            #[unroll]
            for e in 0..4usize {
                let key = kt * FLASH_KEYS + j * 8 + c2 + comptime![e % 2];
                let raw = f32::cast_from(F::cast_from(acc[e][0])) * scale;
                if comptime![e < 2] {
                    let x = select(sees::<M>(mask, mrow_a, live_a, key, t_len, qa, seen, masked), raw, f32::min_value());
                    acc[e] = Vector::new(x);
                    tmax_a = max(tmax_a, x);
                } else {
                    let x = select(sees::<M>(mask, mrow_b, live_b, key, t_len, qb, seen, masked), raw, f32::min_value());
                    acc[e] = Vector::new(x);
                    tmax_b = max(tmax_b, x);
                }
            }
        }
        tmax_a = max(tmax_a, plane_shuffle_xor(tmax_a, 1u32));
        tmax_a = max(tmax_a, plane_shuffle_xor(tmax_a, 2u32));
        tmax_b = max(tmax_b, plane_shuffle_xor(tmax_b, 1u32));
        tmax_b = max(tmax_b, plane_shuffle_xor(tmax_b, 2u32));
        let new_a = max(mx_a, tmax_a);
        let new_b = max(mx_b, tmax_b);
        // While a row has seen no key both maxima are `min_value()`: the factor is then 1 on
        // zeros.
        let corr_a = f32::exp(mx_a - new_a);
        let corr_b = f32::exp(mx_b - new_b);
        mx_a = new_a;
        mx_b = new_b;
        sum_a *= corr_a;
        sum_b *= corr_b;
        #[unroll]
        for j in 0..comptime![d / 8] {
            let acc = oacc.index_mut(j);
            acc[0] = Vector::new(acc[0][0] * corr_a);
            acc[1] = Vector::new(acc[1][0] * corr_a);
            acc[2] = Vector::new(acc[2][0] * corr_b);
            acc[3] = Vector::new(acc[3][0] * corr_b);
        }
        // P = exp(S - max) in F, 16 keys per A fragment; O += P V.
        #[unroll]
        for kk in 0..comptime![FLASH_KEYS / 16] {
            let mut pa = Array::<Vector<F, Const<2>>>::new(4usize);
            #[unroll]
            for h in 0..2usize {
                let acc = sacc.index(kk * 2 + h);
                #[unroll]
                for r in 0..2usize {
                    let mut pair = Vector::<F, Const<2>>::empty();
                    #[unroll]
                    for c in 0..2usize {
                        let x = acc[r * 2 + c][0];
                        let mut p = 0.0f32;
                        if comptime![r == 0] {
                            if x > f32::min_value() {
                                p = f32::exp(x - mx_a);
                            }
                            sum_a += p;
                        } else {
                            if x > f32::min_value() {
                                p = f32::exp(x - mx_b);
                            }
                            sum_b += p;
                        }
                        pair[c] = F::cast_from(p);
                    }
                    pa[h * 2 + r] = pair;
                }
            }
            #[unroll]
            for j in 0..comptime![d / 8] {
                let at = kb + (kk * 16 + lane % 16) * ldv + j;
                let b = def.load_matrix::<Vector<F, Const<8>>, Const<2>>(&vs.slice(at, at + 1), cmma::MatrixIdent::B, 2usize, true);
                def.execute_inplace(&pa, &b, oacc.index_mut(j));
            }
        }
        bar.commit_copy_async();
        bar.arrive_and_wait();
    }

    // The row sums over their 4 lanes; rows that saw no key are zeros.
    sum_a += plane_shuffle_xor(sum_a, 1u32);
    sum_a += plane_shuffle_xor(sum_a, 2u32);
    sum_b += plane_shuffle_xor(sum_b, 1u32);
    sum_b += plane_shuffle_xor(sum_b, 2u32);
    let inv_a = select(sum_a > 0.0, 1.0 / sum_a, 0.0f32);
    let inv_b = select(sum_b > 0.0, 1.0 / sum_b, 0.0f32);
    let out_row = head * s_len;
    #[unroll]
    for j in 0..comptime![d / 8] {
        let acc = oacc.index(j);
        #[unroll]
        for c in 0..2usize {
            let col = j * 8 + c2 + c;
            if live_a {
                out[(out_row + qa) * d + col] = F::cast_from(acc[c][0] * inv_a);
            }
            if live_b {
                out[(out_row + qb) * d + col] = F::cast_from(acc[2 + c][0] * inv_b);
            }
        }
    }
}

/// [`super::causal_attention`] by this kernel: a new contiguous tensor of `q`'s shape and
/// dtype (same operands, checks and errors). `mask: None` is the plain causal mask (query `i`
/// sees keys `0 ..= seen + i`), which the kernel then computes instead of reading.
pub fn flash_attention<R: CubeRuntime>(q: &CubeTensor<R>, k: &CubeTensor<R>, v: &CubeTensor<R>, mask: Option<&CubeTensor<R>>, shape: Causal, scale: f32) -> Result<CubeTensor<R>, KernelError> {
    let out = empty(q, q.meta.shape().iter().copied().collect(), q.dtype);
    flash_attention_into(q, k, v, mask, shape, scale, &out)?;
    Ok(out)
}

/// [`flash_attention`] into `out` (contiguous, `q`'s shape and dtype; tests pass a poisoned
/// one).
pub fn flash_attention_into<R: CubeRuntime>(q: &CubeTensor<R>, k: &CubeTensor<R>, v: &CubeTensor<R>, mask: Option<&CubeTensor<R>>, shape: Causal, scale: f32, out: &CubeTensor<R>) -> Result<(), KernelError> {
    check_operands(q, k, v, out, shape, scale)?;
    // Without a mask the kernel reads none: `q` stands in for the unused argument.
    let (melem, mask, mask_len, masked) = match mask {
        Some(m) => (check_mask(m, shape)?, m, shape.mask_len(), true),
        None => (1, q, shape.q_len(), false),
    };
    launch_attention!(flash_attention_kernel, THREADS, q, k, v, mask, mask_len, melem, out, shape, scale, masked);
    Ok(())
}
