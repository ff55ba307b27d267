//! The causal attention kernel: one cube of 4 planes per 64 query rows of one query head,
//! tensor-core (`wmma` 16 x 16 x 16) products over 32-key tiles, f32 accumulation.
//!
//! Two passes over the keys a tile may see (up to `t - s + r0 + 64`, the causal limit):
//! the first computes each row's maximum and sum of exponentials (online, in registers), the
//! second the normalized probabilities, rounded to the compute dtype as eager attention rounds
//! them before its product with `V`, and accumulates `P V` in the planes' accumulators. Two
//! passes compute `q k^T` twice (1.5x FlashAttention's products) but need no rescaling of the
//! output accumulators, which `wmma` fragments cannot do per row; the scores never reach
//! global memory. Per plane: 16 query rows, their `q` as `d / 16` A fragments in registers, a
//! 16 x 32 f32 score tile and a 16 x 32 probability tile in shared memory.

use super::reference::Causal;
use crate::device::{empty, numel, KernelError};
use crate::gemm::kernel::zero_accumulators_n;
use crate::gemm::pipelined::fragment;
use burn_backend::{BoolStore, DType};
use burn_cubecl::tensor::CubeTensor;
use burn_cubecl::CubeRuntime;
use cubecl::prelude::*;

/// Query rows per cube (4 planes of 16).
pub(crate) const BR: usize = 64;
/// Keys per tile.
pub(crate) const BC: usize = 32;
/// Row stride of the probability tile, in 8-element vectors (32 + 8 padding elements).
const LDPV: usize = 5;

/// Copies rows `from .. from + 32` of a row-major `[_, d]` matrix (`d / 8` vectors per row,
/// row 0 at vector `first` of `src`) into `tile` (row stride `d + 8` elements); rows `>= valid`
/// are zeros.
#[cube]
#[allow(clippy::too_many_arguments)]
fn load_rows<F: Float>(src: &Array<Vector<F, Const<8>>>, first: usize, from: usize, valid: usize, tile: &mut SharedMemory<Vector<F, Const<8>>>, tid: usize, #[comptime] d: usize) {
    let dv = comptime![d / 8];
    let ldv = comptime![d / 8 + 1];
    let total = comptime![BC * d / 8];
    #[unroll]
    for i in 0..comptime![total.div_ceil(128)] {
        let at = tid + i * 128;
        if at < total {
            let row = at / dv;
            let e = at % dv;
            let mut val = Vector::<F, Const<8>>::new(F::new(0.0));
            if from + row < valid {
                val = src[first + (from + row) * dv + e];
            }
            tile[row * ldv + e] = val;
        }
    }
}

/// `acc[j] = q k^T` for the plane's 16 rows and the tile's keys `16 j .. 16 j + 16`, stored
/// as f32 into the plane's `16 x 32` score tile at `sbase`.
#[cube]
fn scores<F: Float>(qf: &Sequence<cmma::Matrix<F>>, ks: &SharedMemory<Vector<F, Const<8>>>, sacc: &Sequence<cmma::Matrix<f32>>, ss: &mut SharedMemory<f32>, sbase: usize, #[comptime] d: usize) {
    let ldv = comptime![d / 8 + 1];
    #[unroll]
    for j in 0..2usize {
        cmma::fill(sacc.index(j), 0.0f32);
        #[unroll]
        for kk in 0..comptime![d / 16] {
            let b = fragment::<F>(ks, cmma::MatrixIdent::B, cmma::MatrixLayout::ColMajor, j * 16 * ldv + kk * 2, comptime![ldv * 8]);
            cmma::execute::<F, F, f32, f32>(qf.index(kk), &b, sacc.index(j), sacc.index(j));
        }
        let at = sbase + j * 16;
        cmma::store(&mut ss.slice_mut(at, at + 15 * BC + 16), sacc.index(j), comptime![BC as u32], cmma::MatrixLayout::RowMajor);
    }
}

/// Whether this lane's row sees `key`: not hidden by the mask, within the keys, and the row
/// within the queries.
#[cube]
fn visible<M: Int>(mask: &Array<M>, mrow: usize, live: bool, key: usize, t_len: usize) -> bool {
    let mut seen = false;
    if live && key < t_len {
        seen = u32::cast_from(mask[mrow + key]) == 0u32;
    }
    seen
}

/// The scaled score at `at` of the score tile, rounded to `F` first as the product's output is.
#[cube]
fn score<F: Float>(ss: &SharedMemory<f32>, at: usize, scale: f32) -> f32 {
    f32::cast_from(F::cast_from(ss[at])) * scale
}

/// Causal attention, grouped queries (see [`super::reference::Causal`] for the layout):
/// cube `(x, y, z)` = query tile (longest first), query head within its group, `b * kv_heads +
/// kv`.
#[cube(launch_unchecked)]
#[allow(clippy::too_many_arguments)]
pub(crate) fn causal_attention_kernel<F: Float, M: Int>(
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
) {
    let dv = comptime![d / 8];
    let ldv = comptime![d / 8 + 1];
    let tid = UNIT_POS as usize;
    let plane = tid / 32;
    let lane = tid % 32;
    let tiles = (s_len + BR - 1) / BR;
    let r0 = (tiles - 1 - CUBE_POS_X as usize) * BR;
    let head = CUBE_POS_Z as usize * rep + CUBE_POS_Y as usize;
    let bh = CUBE_POS_Z as usize;
    let seen = t_len - s_len;

    let mut ks = SharedMemory::<Vector<F, Const<8>>>::new_aligned(comptime![BC * (d / 8 + 1)], 32usize);
    let mut vs = SharedMemory::<Vector<F, Const<8>>>::new_aligned(comptime![BC * (d / 8 + 1)], 32usize);
    let mut ss = SharedMemory::<f32>::new_aligned(comptime![4 * 16 * BC], 32usize);
    let mut ps = SharedMemory::<Vector<F, Const<8>>>::new_aligned(comptime![4 * 16 * LDPV], 32usize);

    // The tile's queries: rows 0..32 staged in `ks`, 32..64 in `vs`, then into fragments.
    let q_first = head * s_len * dv;
    load_rows::<F>(q, q_first, r0, s_len, &mut ks, tid, d);
    load_rows::<F>(q, q_first, r0 + BC, s_len, &mut vs, tid, d);
    sync_cube();
    let mut qf = Sequence::<cmma::Matrix<F>>::new();
    #[unroll]
    for kk in 0..comptime![d / 16] {
        let start = (plane % 2) * 16 * ldv + kk * 2;
        let frag = unsafe { cmma::Matrix::<F>::uninitialized(cmma::MatrixIdent::A, 16usize, 16usize, 16usize, cmma::MatrixLayout::RowMajor) };
        let end = start + 15 * ldv + 2;
        if plane < 2 {
            cmma::load(&frag, &ks.slice(start, end), comptime![(ldv * 8) as u32]);
        } else {
            cmma::load(&frag, &vs.slice(start, end), comptime![(ldv * 8) as u32]);
        }
        qf.push(frag);
    }
    sync_cube();

    let sacc = zero_accumulators_n(2usize);
    let sbase = plane * 16 * BC;
    // This lane's row (two lanes per row, 16 columns each) and its mask row.
    let row = lane / 2;
    let half = lane % 2;
    let qi = r0 + plane * 16 + row;
    let live = qi < s_len;
    let mut mrow = 0usize;
    if live {
        mrow = (((bh / kv_heads) % mask_batches) * s_len + qi) * t_len;
    }
    let kv_first = bh * t_len * dv;
    let keys_end = min(t_len, seen + r0 + BR);
    let key_tiles = (keys_end + BC - 1) / BC;

    // Pass 1: each row's maximum and sum of exponentials over its visible keys.
    // `f32::min_value()` until a key is seen: its exponential against any score is 0.
    let mut mx = f32::min_value();
    let mut sum = 0.0f32;
    for kt in 0..key_tiles {
        load_rows::<F>(k, kv_first, kt * BC, t_len, &mut ks, tid, d);
        sync_cube();
        scores::<F>(&qf, &ks, &sacc, &mut ss, sbase, d);
        sync_plane();
        #[unroll]
        for c in 0..16usize {
            let col = half * 16 + c;
            if visible::<M>(mask, mrow, live, kt * BC + col, t_len) {
                let x = score::<F>(&ss, sbase + row * BC + col, scale);
                if x > mx {
                    sum = sum * f32::exp(mx - x) + 1.0;
                    mx = x;
                } else {
                    sum += f32::exp(x - mx);
                }
            }
        }
        sync_cube();
    }
    // The row's two halves.
    let mx2 = plane_shuffle_xor(mx, 1u32);
    let sum2 = plane_shuffle_xor(sum, 1u32);
    let top = max(mx, mx2);
    let mut inv = 0.0f32;
    if sum + sum2 > 0.0 {
        inv = 1.0 / (sum * f32::exp(mx - top) + sum2 * f32::exp(mx2 - top));
    }

    // Pass 2: P = exp(S - max) / sum in F, out += P V.
    let oacc = zero_accumulators_n(comptime![d / 16]);
    let pbase = plane * 16 * LDPV;
    for kt in 0..key_tiles {
        load_rows::<F>(k, kv_first, kt * BC, t_len, &mut ks, tid, d);
        load_rows::<F>(v, kv_first, kt * BC, t_len, &mut vs, tid, d);
        sync_cube();
        scores::<F>(&qf, &ks, &sacc, &mut ss, sbase, d);
        sync_plane();
        #[unroll]
        for h in 0..2usize {
            let mut pv = Vector::<F, Const<8>>::empty();
            #[unroll]
            for e in 0..8usize {
                let col = half * 16 + h * 8 + e;
                let mut p = 0.0f32;
                if visible::<M>(mask, mrow, live, kt * BC + col, t_len) {
                    p = f32::exp(score::<F>(&ss, sbase + row * BC + col, scale) - top) * inv;
                }
                pv[e] = F::cast_from(p);
            }
            ps[pbase + row * LDPV + half * 2 + h] = pv;
        }
        sync_plane();
        #[unroll]
        for kk in 0..2usize {
            let a = fragment::<F>(&ps, cmma::MatrixIdent::A, cmma::MatrixLayout::RowMajor, pbase + kk * 2, comptime![LDPV * 8]);
            #[unroll]
            for c in 0..comptime![d / 16] {
                let b = fragment::<F>(&vs, cmma::MatrixIdent::B, cmma::MatrixLayout::RowMajor, kk * 16 * ldv + c * 2, comptime![ldv * 8]);
                cmma::execute::<F, F, f32, f32>(&a, &b, oacc.index(c), oacc.index(c));
            }
        }
        sync_cube();
    }

    // Out: each 16 x 16 accumulator through the plane's score tile, rows past the queries
    // not stored.
    let out_row = head * s_len;
    #[unroll]
    for c in 0..comptime![d / 16] {
        cmma::store(&mut ss.slice_mut(sbase, sbase + 256), oacc.index(c), 16u32, cmma::MatrixLayout::RowMajor);
        sync_plane();
        #[unroll]
        for i in 0..8usize {
            let e = lane * 8 + i;
            let oq = r0 + plane * 16 + e / 16;
            if oq < s_len {
                out[(out_row + oq) * d + c * 16 + e % 16] = F::cast_from(ss[sbase + e]);
            }
        }
        sync_plane();
    }
}

/// Checks the operands against `shape` and returns the mask's element size.
fn check<R: CubeRuntime>(q: &CubeTensor<R>, k: &CubeTensor<R>, v: &CubeTensor<R>, mask: &CubeTensor<R>, out: &CubeTensor<R>, shape: Causal, scale: f32) -> Result<usize, KernelError> {
    check_operands(q, k, v, out, shape, scale)?;
    check_mask(mask, shape)
}

/// Checks `q`, `k`, `v`, `out` and `scale` against `shape`.
pub(crate) fn check_operands<R: CubeRuntime>(q: &CubeTensor<R>, k: &CubeTensor<R>, v: &CubeTensor<R>, out: &CubeTensor<R>, shape: Causal, scale: f32) -> Result<(), KernelError> {
    let shape_err = |what: String| KernelError::Shape { kernel: NAME, what };
    let Causal { batch, s, t, d, mask_batches, .. } = shape;
    if !(scale > 0.0 && scale.is_finite()) {
        return Err(shape_err(format!("scale {scale} must be positive and finite")));
    }
    if d % 16 != 0 || d == 0 || d > MAX_HEAD_DIM {
        return Err(shape_err(format!("head dim {d} is not a multiple of 16 in 16..={MAX_HEAD_DIM}")));
    }
    if s == 0 || t < s || !(mask_batches == 1 || mask_batches == batch) {
        return Err(shape_err(format!("{s} queries, {t} keys, {mask_batches} mask batches for {batch} sequences")));
    }
    if !matches!(q.dtype, DType::BF16 | DType::F16) {
        return Err(KernelError::Dtype { kernel: NAME, dtype: q.dtype });
    }
    for (name, x, len) in [("q", q, shape.q_len()), ("k", k, shape.kv_len()), ("v", v, shape.kv_len()), ("out", out, shape.q_len())] {
        let offset = x.handle.offset_start.unwrap_or(0) as usize;
        if x.dtype != q.dtype || numel(x) != len || !x.is_contiguous() || offset % 16 != 0 {
            let dims: Vec<usize> = x.meta.shape().iter().copied().collect();
            return Err(shape_err(format!("{name} is {:?} {dims:?} (contiguous: {}, byte offset {offset}), expected a contiguous {:?} tensor of {len} elements on a 16-byte boundary", x.dtype, x.is_contiguous(), q.dtype)));
        }
    }
    Ok(())
}

/// Checks the mask against `shape` and returns its element size (Burn's bool storage).
pub(crate) fn check_mask<R: CubeRuntime>(mask: &CubeTensor<R>, shape: Causal) -> Result<usize, KernelError> {
    let Causal { s, t, mask_batches, .. } = shape;
    let melem = match mask.dtype {
        DType::Bool(BoolStore::U8) | DType::U8 => 1,
        DType::Bool(BoolStore::U32) | DType::U32 => 4,
        dtype => return Err(KernelError::Dtype { kernel: NAME, dtype }),
    };
    if numel(mask) != shape.mask_len() || !mask.is_contiguous() {
        let dims: Vec<usize> = mask.meta.shape().iter().copied().collect();
        return Err(KernelError::Shape { kernel: NAME, what: format!("mask is {dims:?} (contiguous: {}), expected a contiguous [{mask_batches}, {s}, {t}]", mask.is_contiguous()) });
    }
    Ok(melem)
}

/// The kernels' name in errors.
pub(crate) const NAME: &str = "causal attention";

/// Launches an attention kernel of [`causal_attention_kernel`]'s arguments (plus trailing
/// comptime ones) over the checked operands: one cube of `threads` per [`BR`] query rows of
/// one query head, the element types picked from `q`'s dtype and the mask's element size
/// `melem`. Returns from the enclosing function with an error for any other dtype.
macro_rules! launch_attention {
    ($kernel:ident, $threads:expr, $q:expr, $k:expr, $v:expr, $mask:expr, $mask_len:expr, $melem:expr, $out:expr, $shape:expr, $scale:expr $(, $extra:expr)*) => {{
        let Causal { batch, kv_heads, rep, s, t, d, mask_batches } = $shape;
        if batch * kv_heads * rep > 0 {
            let count = CubeCount::Static(s.div_ceil(BR) as u32, rep as u32, (batch * kv_heads) as u32);
            let arg = |x: &CubeTensor<R>, len: usize| unsafe { ArrayArg::from_raw_parts(x.handle.clone(), len) };
            let (ql, kvl) = ($shape.q_len() / 8, $shape.kv_len() / 8);
            let client = &$q.client;
            macro_rules! launch {
                ($f:ty, $m:ty) => {
                    unsafe {
                        $kernel::launch_unchecked::<$f, $m, R>(
                            client, count, CubeDim::new_1d($threads as u32), arg($q, ql), arg($k, kvl), arg($v, kvl), arg($mask, $mask_len), arg($out, $shape.q_len()),
                            s, t, kv_heads, rep, mask_batches, $scale, d $(, $extra)*,
                        )
                    }
                };
            }
            match ($q.dtype, $melem) {
                (DType::BF16, 1) => launch!(half::bf16, u8),
                (DType::BF16, _) => launch!(half::bf16, u32),
                (DType::F16, 1) => launch!(half::f16, u8),
                (DType::F16, _) => launch!(half::f16, u32),
                (dtype, _) => return Err(KernelError::Dtype { kernel: NAME, dtype }),
            }
        }
    }};
}
pub(crate) use launch_attention;

/// Largest head dim taken (the queries' and the output's fragments live in registers).
pub const MAX_HEAD_DIM: usize = 128;

/// Causal attention of grouped queries (layout and rounding: [`super::reference`]): a new
/// contiguous tensor of `q`'s shape and dtype. `q`, `k`, `v` contiguous bf16/f16 (16-byte
/// aligned), `mask` contiguous in Burn's bool storage (u8 or u32), `scale` usually
/// `d^-0.5`.
pub fn causal_attention<R: CubeRuntime>(q: &CubeTensor<R>, k: &CubeTensor<R>, v: &CubeTensor<R>, mask: &CubeTensor<R>, shape: Causal, scale: f32) -> Result<CubeTensor<R>, KernelError> {
    let out = empty(q, q.meta.shape().iter().copied().collect(), q.dtype);
    causal_attention_into(q, k, v, mask, shape, scale, &out)?;
    Ok(out)
}

/// [`causal_attention`] into `out` (contiguous, `q`'s shape and dtype; tests pass a poisoned
/// one).
pub fn causal_attention_into<R: CubeRuntime>(q: &CubeTensor<R>, k: &CubeTensor<R>, v: &CubeTensor<R>, mask: &CubeTensor<R>, shape: Causal, scale: f32, out: &CubeTensor<R>) -> Result<(), KernelError> {
    let melem = check(q, k, v, mask, out, shape, scale)?;
    launch_attention!(causal_attention_kernel, 128, q, k, v, mask, shape.mask_len(), melem, out, shape, scale);
    Ok(())
}

