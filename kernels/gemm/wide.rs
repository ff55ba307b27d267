//! The NF4 products with wide planes ([`super::GemmMma::Wide`]), one kernel for both
//! directions: the forward `Y = X W^T` (`K % 64 == 0`) and the backward `dX = dY W`
//! (`N % 64 == 0`, `K % 32 == 0`; launched from [`crate::gemm_dx`]). A 256 x 128 tile per cube
//! of 8 planes (256 threads), each plane a 64 x 64 sub-tile through `ldmatrix` + `mma.sync`
//! ([`super::mma`]), two shared tile sets, and the activation tile (`X` or `dY`) copied
//! global -> shared by `cp.async` instead of through registers. The directions differ only in
//! `W`'s tile (forward: 128 of its rows by one 64-wide step of `K`, `n`-major; backward: one
//! 64-row step of `N` by 128 of its columns, `k`-major, loaded by `ldmatrix.trans`) and in
//! which of `N` and `K` is reduced.
//!
//! Why, against the 16 planes of 64 x 32 of [`super::pipelined`] at 256 rows (the previous
//! default, `--nf4-product fused256-ldmatrix`):
//! - shared-memory reads: a plane reads its 64 rows of `A` once per 64 columns instead of per
//!   32, so per 64-wide step a cube reads 128 KB of fragments instead of 192 KB;
//! - instructions: per plane and step 128 `HMMA`s beside 48 `LDSM`s, where 16 narrow planes
//!   issue 64 beside 32 each, plus each plane's share of the decode and the stores;
//! - registers: the 128 accumulators per lane leave no room to hold the next step's `X` (32
//!   registers per thread at 8 vectors), so `cp.async` writes it into the idle tile set and
//!   the step's closing barrier (an `mbarrier` that also waits for every thread's copies)
//!   makes it visible. `W` still travels through registers: its codes are decoded on the way.
//!
//! The forward can close with a LoRA adapter's up-projection and a bias (`lora`, `added`):
//! `Y = X W^T + H B^T + b`, `H [M, rank]` the adapter's scaled down-projection and `B [N,
//! rank]` in the activations' dtype, taken as `rank / 64` more steps of the reduction whose
//! tiles are copied instead of decoded, and `b` added to the f32 accumulators before the one
//! rounding. As separate launches that was a skinny product writing `[M, N]` and one or two
//! element-wise passes over it (for `gate_proj` at 2,048 tokens, 74 us each, twice per layer
//! and step on an H100). `dX` can close with a whole added term (`added`: the adapter's
//! input gradient, which the backward otherwise added in a pass of its own).
//!
//! A forward whose output has fewer tiles than the GPU has multiprocessors (the 7B `k_proj` /
//! `v_proj` at 2,048 rows: 4 x 8 tiles on 132 SMs, 53-63 TFLOP/s) cuts its reduction into parts
//! along the grid's third dimension ([`launch_wide`], `crate::gemm_dense::plan_parts`): each
//! part writes f32 partials to its own rows of a `[parts * M, N]` buffer, which
//! [`crate::splitk_sum`] adds; part 0 alone takes the adapter's steps and the bias.
//!
//! Per step `kt` (forward names): issue the copies of `X[kt + 1]`, run the products on set
//! `kt % 2` in four 16-wide slices with one word of `W[kt + 1]` (loaded in step `kt - 1`)
//! decoded into the other set after each, load `W[kt + 2]`'s words and scale, then commit
//! the copies and wait at the barrier. Set `(kt + 1) % 2` was last read in step `kt - 1`,
//! before that step's barrier, so both writes are safe.

use super::kernel::{GemmMma, BN};
use crate::device::{empty, KernelError, Nf4Device};
use crate::gemm_dense::plan_parts;
use crate::splitk_sum::{splitk_sum_into, Split};
use burn_backend::DType;
use burn_cubecl::tensor::CubeTensor;
use burn_cubecl::CubeRuntime;
use super::mma::{mma_products_k16, store_mma_tile, store_mma_tile_plus, zero_mma_accumulators};
use super::pipelined::{decode_word, decode_words, BK64, LDV64};
use crate::gemm_dx::pipelined::LDBV;
use crate::device::{finish_scale, load_scale_parts};
use crate::nf4::LUT_LEN;
use cubecl::prelude::barrier::{copy_async, Barrier};
use cubecl::prelude::*;

/// Tile rows per cube of the wide kernels.
pub(crate) const WIDE_ROWS: usize = 256;
/// Threads per cube of the wide kernels (8 planes).
pub(crate) const WIDE_THREADS: usize = 256;
/// Columns of a wide plane's sub-tile.
pub(crate) const WIDE_COLS: usize = 64;
/// 32-bit words of `W` per thread per step (the 8,192 codes of a `[128, 64]` tile over 256
/// threads: 32 codes, one 16-byte load).
pub(crate) const WIDE_WORDS: usize = 4;

/// Issues `cp.async` copies of `A[row0 .. row0 + tile_rows, c0 .. c0 + 64]` (row-major
/// `[rows, cols]`, as 8-element vectors) into the `[tile_rows, 64]` shared tile at vector
/// offset `base` (row stride [`LDV64`]): `tile_rows / 32` vectors per thread. Rows past the
/// last copy the last row again (row `r` of the product depends on row `r` of `A` only, and
/// those rows are never stored).
#[cube]
#[allow(clippy::too_many_arguments)]
pub(crate) fn copy_a64_async<F: Float>(
    a: &Array<Vector<F, Const<8>>>,
    tile: &mut SharedMemory<Vector<F, Const<8>>>,
    base: usize,
    row0: usize,
    rows: usize,
    cols: usize,
    c0: usize,
    tid: usize,
    #[comptime] tile_rows: usize,
) {
    #[unroll]
    for p in 0..comptime![tile_rows * 8 / WIDE_THREADS] {
        let v = tid + p * WIDE_THREADS;
        let r = v / 8;
        let gr = min(row0 + r, rows - 1);
        let src = (gr * cols + c0) / 8 + v % 8;
        let dst = base + r * LDV64 + v % 8;
        copy_async::<Vector<F, Const<8>>>(&a.slice(src, src + 1), &mut tile.slice_mut(dst, dst + 1), 8u32);
    }
}

/// The offset in `W`'s codes of a loader thread's first code in tile `t` (see `w_first` in
/// [`gemm_wide_kernel`]).
#[cube]
fn w_offset(first: usize, wr: usize, k: usize, t: usize, #[comptime] dx: bool) -> usize {
    if comptime![dx] {
        (t * BK64 + wr) * k + first
    } else {
        first + t * BK64
    }
}

/// `Y = X W^T` (`dx` false: `a` is `X[M, K]`, `out` is `Y[M, N]`, the reduction runs over `K`
/// and `W`'s tile holds 128 of its rows, `n`-major) or `dX = dY W` (`dx` true: `a` is
/// `dY[M, N]`, `out` is `dX[M, K]`, the reduction runs over `N` and the tile holds 64 rows of
/// `W` by 128 of its columns, `k`-major, which `ldmatrix` loads transposed).
#[cube(launch_unchecked)]
#[allow(clippy::too_many_arguments)]
pub(crate) fn gemm_wide_kernel<F: Float, W: Size, O: Float>(
    a: &Array<Vector<F, Const<8>>>,
    words: &Array<Vector<u32, W>>,
    absmax: &Array<f32>,
    qcodes: &Array<u8>,
    lut: &Array<f32>,
    out: &mut Array<O>,
    lora_h: &Array<Vector<F, Const<8>>>,
    lora_b: &Array<Vector<F, Const<8>>>,
    addend: &Array<F>,
    offset: f32,
    m_rows: usize,
    n: usize,
    k: usize,
    block_shift: u32,
    rank: usize,
    span: usize,
    #[comptime] double: bool,
    #[comptime] dx: bool,
    #[comptime] lora: bool,
    #[comptime] added: bool,
) {
    let codes = 8 * W::value();
    // Loader threads per tile row of `W`: a forward row is one 64-wide step of `K`, a dX row
    // the tile's 128 columns.
    let per_row = if comptime![dx] { BN / codes } else { BK64 / codes };
    let tid = UNIT_POS as usize;
    // The NF4 codes, and with double quantization the block codes' map too: the scale then
    // needs no global load that depends on another.
    let mut table = SharedMemory::<f32>::new(comptime![if double { LUT_LEN } else { 16 }]);
    if tid < 16 {
        table[tid] = lut[tid];
    }
    if comptime![double] {
        table[16 + tid] = lut[16 + tid];
    }
    let a_tile = comptime![WIDE_ROWS * LDV64];
    let w_tile = comptime![if dx { BK64 * LDBV } else { BN * LDV64 }];
    let ldw = comptime![if dx { LDBV } else { LDV64 }];
    let mut xs = SharedMemory::<Vector<F, Const<8>>>::new_aligned(comptime![2 * a_tile], 32usize);
    let mut ws = SharedMemory::<Vector<F, Const<8>>>::new_aligned(comptime![2 * w_tile], 32usize);
    // Initialized by thread 0 and published by a cube barrier.
    let bar = Barrier::shared(WIDE_THREADS as u32, tid == 0);
    sync_cube();

    let plane = tid / 32;
    let lane = tid % 32;
    let wm = plane / 2;
    let wn = plane % 2;
    let m0 = CUBE_POS_Y as usize * WIDE_ROWS;
    let c0 = CUBE_POS_X as usize * BN;
    // The reduction's part: 64-wide steps `first .. first + steps`.
    let part = CUBE_POS_Z as usize;
    let mut macc = zero_mma_accumulators(comptime![4 * WIDE_COLS / 8]);

    // W loader: `codes` consecutive codes of one block per step, `w_first` the offset of this
    // thread's at step 0 (forward: row `c0 + wr` of `W`, codes `wq * codes ..` of the step;
    // dX: the step's row `wr`, columns `c0 + wq * codes ..`). Past `N` (forward) or `K` (dX)
    // nothing is loaded and zeros are decoded (scale 0).
    let wr = tid / per_row;
    let wq = tid % per_row;
    let (live, w_first, w_at) = if comptime![dx] {
        let gc = c0 + wq * codes;
        (gc < k, gc, wr * LDBV + wq * W::value())
    } else {
        let gn = c0 + wr;
        (gn < n, gn * k + wq * codes, wr * LDV64 + wq * W::value())
    };
    // The reduction's length (`a`'s columns) and the output's columns.
    let (red, cols) = if comptime![dx] { (n, k) } else { (k, n) };
    let first = part * span;
    let steps = min(span, red / BK64 - first);

    // `W`'s words and block scale travel two steps ahead: step `kt` decodes those of tile
    // `kt + 1`, loaded at the end of step `kt - 1`, so their global latency passes during the
    // barrier instead of stalling the first decode. The scale is finished from its raw parts
    // (block code and nested scale, or the scale) only where it is first used, for the same
    // reason.
    copy_a64_async::<F>(a, &mut xs, 0, m0, m_rows, red, first * BK64, tid, WIDE_ROWS);
    let mut wv = Vector::<u32, W>::new(0u32);
    let mut code = 0u32;
    let mut raw = 0.0f32;
    if live {
        let e0 = w_offset(w_first, wr, k, first, dx);
        wv = words[e0 / codes];
        let parts = load_scale_parts(e0 >> block_shift as usize, absmax, qcodes, double);
        code = parts.0;
        raw = parts.1;
    }
    let scale = finish_scale(code, raw, &table, offset, live, double);
    decode_words::<F, W>(wv, W::value(), scale, &table, &mut ws, w_at);
    if live && steps > 1 {
        let e0 = w_offset(w_first, wr, k, first + 1, dx);
        wv = words[e0 / codes];
        let parts = load_scale_parts(e0 >> block_shift as usize, absmax, qcodes, double);
        code = parts.0;
        raw = parts.1;
    }
    bar.commit_copy_async();
    bar.arrive_and_wait();

    // Unrolled once per tile set so each copy addresses its set at compile-time offsets.
    for round in 0..(steps + 1) / 2 {
        #[unroll]
        for cur in 0..2usize {
            let kt = round * 2 + cur;
            if kt < steps {
                let next = 1 - cur;
                if kt + 1 < steps {
                    copy_a64_async::<F>(a, &mut xs, next * a_tile, m0, m_rows, red, (first + kt + 1) * BK64, tid, WIDE_ROWS);
                }
                let scale = finish_scale(code, raw, &table, offset, live, double);
                // Word `kk` of the next tile (launched with W = WIDE_WORDS = 4: one word per
                // slice) is decoded after the products' 16-wide slice `kk`, so the decode's
                // arithmetic issues between the slices' `HMMA`s instead of after all of them.
                // Unguarded on the last step: that decode lands in a set no one reads again.
                #[unroll]
                for kk in 0..4usize {
                    mma_products_k16::<F>(&xs, cur * a_tile, &ws, cur * w_tile, &mut macc, wm, wn, lane, comptime![!dx], ldw, WIDE_COLS, kk);
                    decode_word::<F>(wv[kk], scale, &table, &mut ws, next * w_tile + w_at + kk);
                }
                if live && kt + 2 < steps {
                    let e0 = w_offset(w_first, wr, k, first + kt + 2, dx);
                    wv = words[e0 / codes];
                    let parts = load_scale_parts(e0 >> block_shift as usize, absmax, qcodes, double);
                    code = parts.0;
                    raw = parts.1;
                }
                bar.commit_copy_async();
                bar.arrive_and_wait();
            }
        }
    }
    // Part 0 alone adds the epilogue's terms (a split forward's other parts write bare
    // partials); `part` is uniform over the cube, so the barriers below stay uniform.
    let lead = part == 0;
    if comptime![lora] {
        // The adapter's up-projection as more steps of the reduction (forward only): `h [M,
        // rank]` (scaled already) against `B [N, rank]`, both 16-bit and copied as they are.
        // Every plane has passed the main loop's last barrier, so set 0 is free.
        let mut adapter_steps = rank / BK64;
        if !lead {
            adapter_steps = 0usize;
        }
        for e in 0..adapter_steps {
            copy_a64_async::<F>(lora_h, &mut xs, 0, m0, m_rows, rank, e * BK64, tid, WIDE_ROWS);
            copy_a64_async::<F>(lora_b, &mut ws, 0, c0, n, rank, e * BK64, tid, BN);
            bar.commit_copy_async();
            bar.arrive_and_wait();
            #[unroll]
            for kk in 0..4usize {
                mma_products_k16::<F>(&xs, 0, &ws, 0, &mut macc, wm, wn, lane, true, LDV64, WIDE_COLS, kk);
            }
            // The next slice's copies overwrite set 0: every plane's reads first.
            sync_cube();
        }
    }
    // Part `z`'s rows of `out` are `z * M ..` (`out` is `[parts * M, cols]`).
    let base = part * m_rows;
    if comptime![added] {
        if lead {
            // The forward adds a bias `[N]` to every row, `dX` (never split) a whole `[M, K]`
            // term.
            store_mma_tile_plus::<F, O>(&macc, out, addend, m0 + wm * 64, c0 + wn * WIDE_COLS, m_rows, cols, lane, WIDE_COLS, dx);
        } else {
            store_mma_tile::<O>(&macc, out, base + m0 + wm * 64, c0 + wn * WIDE_COLS, base + m_rows, cols, lane, WIDE_COLS);
        }
    } else {
        store_mma_tile::<O>(&macc, out, base + m0 + wm * 64, c0 + wn * WIDE_COLS, base + m_rows, cols, lane, WIDE_COLS);
    }
}

/// What a wide launch adds in its epilogue (see [`gemm_wide_kernel`]).
pub(crate) struct WideTerms<'a, R: CubeRuntime> {
    /// The forward's adapter `(h [M, rank], B [N, rank], rank)`.
    pub lora: Option<(&'a CubeTensor<R>, &'a CubeTensor<R>, usize)>,
    /// The forward's bias `[N]`, or `dX`'s `[M, K]` term.
    pub added: Option<&'a CubeTensor<R>>,
}

// By hand: the derives would ask `R: Copy`, and only references are copied.
impl<R: CubeRuntime> Clone for WideTerms<'_, R> {
    fn clone(&self) -> Self {
        *self
    }
}

impl<R: CubeRuntime> Copy for WideTerms<'_, R> {}

/// Launches [`gemm_wide_kernel`] for `a` (`X [M, K]`, or `dY [M, N]` with `dx`) into the
/// contiguous `out` of `a`'s dtype, operands checked by the caller. A forward whose output
/// tiles do not fill the GPU's multiprocessors is cut into `crate::gemm_dense::auto_parts` parts (f32 partials,
/// then one sum); `dX` is never cut (its outputs at the 7B shapes have enough tiles, and its
/// whole-matrix term is added by part 0 only).
/// `mma` [`GemmMma::Wgmma`] sends a product the `wgmma` kernel takes there instead.
#[allow(clippy::too_many_arguments)]
pub(crate) fn launch_wide<R: CubeRuntime>(kernel: &'static str, a: &CubeTensor<R>, w: &Nf4Device<R>, out: &CubeTensor<R>, terms: WideTerms<'_, R>, shift: u32, dx: bool, mma: GemmMma) -> Result<(), KernelError> {
    launch_wide_parts(kernel, a, w, out, terms, shift, dx, None, mma)
}

/// [`launch_wide`] with the forward's parts given (`None`: automatic; `bench kernels` times
/// one part against the split).
#[allow(clippy::too_many_arguments)]
pub(crate) fn launch_wide_parts<R: CubeRuntime>(kernel: &'static str, a: &CubeTensor<R>, w: &Nf4Device<R>, out: &CubeTensor<R>, terms: WideTerms<'_, R>, shift: u32, dx: bool, parts: Option<usize>, mma: GemmMma) -> Result<(), KernelError> {
    #[cfg(feature = "cuda")]
    if mma == GemmMma::Wgmma {
        if let Some(done) = crate::gemm_wgmma::try_launch(kernel, a, w, out, terms, shift, dx, parts, crate::gemm_wgmma::Mainloop::DEFAULT) {
            return done;
        }
    }
    #[cfg(not(feature = "cuda"))]
    let _ = mma;
    let m = a.meta.shape().first().copied().unwrap_or(0);
    let (red, cols) = if dx { (w.n, w.k) } else { (w.k, w.n) };
    let client = w.client();
    let cubes = cols.div_ceil(BN) * m.div_ceil(WIDE_ROWS);
    let sms = client.properties().hardware.num_streaming_multiprocessors.unwrap_or(1) as usize;
    let (parts, span) = plan_parts(red / BK64, cubes, sms, if dx { Some(1) } else { parts });
    let (absmax, qcodes, offset, double) = w.scale_args();
    let arg = |t: &CubeTensor<R>, len: usize| unsafe { ArrayArg::from_raw_parts(t.handle.clone(), len) };
    // Absent terms are never read (comptime off); `a` stands in for their arrays.
    let rank = terms.lora.map_or(0, |l| l.2);
    let (h_arg, b_arg) = match terms.lora {
        Some((h, b, rank)) => (arg(h, m * rank / 8), arg(b, w.n * rank / 8)),
        None => (arg(a, 1), arg(a, 1)),
    };
    let added_arg = terms.added.map_or_else(|| arg(a, 1), |t| arg(t, if dx { m * w.k } else { w.n }));
    let count = CubeCount::Static(cols.div_ceil(BN) as u32, m.div_ceil(WIDE_ROWS) as u32, parts as u32);
    let dim = CubeDim::new_1d(WIDE_THREADS as u32);
    let partials = (parts > 1).then(|| empty(a, vec![parts * m, cols], DType::F32));
    let target = partials.as_ref().unwrap_or(out);
    let out_arg = arg(target, parts * m * cols);
    let (lora, added) = (terms.lora.is_some(), terms.added.is_some());
    macro_rules! go {
        ($f:ty, $o:ty) => {
            unsafe {
                gemm_wide_kernel::launch_unchecked::<$f, $o, R>(
                    client, count, dim, WIDE_WORDS, arg(a, m * red / 8), w.words_arg(WIDE_WORDS), absmax, qcodes, w.lut_arg(), out_arg, h_arg, b_arg, added_arg,
                    offset, m, w.n, w.k, shift, rank, span, double, dx, lora, added,
                )
            }
        };
    }
    match (a.dtype, partials.is_some()) {
        (DType::BF16, false) => go!(half::bf16, half::bf16),
        (DType::BF16, true) => go!(half::bf16, f32),
        (DType::F16, false) => go!(half::f16, half::f16),
        (DType::F16, true) => go!(half::f16, f32),
        (dtype, _) => return Err(KernelError::Dtype { kernel, dtype }),
    }
    match &partials {
        Some(p) => splitk_sum_into(p, Split { outer: 1, parts, inner: m * cols }, 1.0, out),
        None => Ok(()),
    }
}
