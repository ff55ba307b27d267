//! The 8-bit AdamW step on the device: one cube of 256 threads per absmax block, a thread per
//! element. Each thread decodes its two codes (maps in shared memory), updates the moments and
//! the weight in f32 registers, then the cube reduces the block's new absmax (plane max, then
//! across the 8 planes through shared memory) and each thread stores its re-quantized codes.
//! Everything is read once and written once: 4 + 4 + 1 + 1 bytes in, 4 + 1 + 1 out per element.

use super::reference::{Adam8Step, BLOCK};
use crate::device::{empty, numel, upload_f32, KernelError};
use burn_backend::DType;
use burn_cubecl::tensor::CubeTensor;
use burn_cubecl::CubeRuntime;
use cubecl::prelude::*;

/// Nearest code of `x` in `map[base .. base + 256]` (ascending): the reference's bisection.
#[cube]
fn nearest_code(map: &SharedMemory<f32>, base: usize, x: f32) -> u32 {
    let mut lo = 0usize;
    let mut step = 128usize;
    #[unroll]
    for _ in 0..8u32 {
        let mid = lo + step;
        if map[base + mid] <= x {
            lo = mid;
        }
        step /= 2;
    }
    if lo < 255 {
        if map[base + lo + 1] - x < x - map[base + lo] {
            lo += 1;
        }
    }
    lo as u32
}

#[cube(launch_unchecked)]
#[allow(clippy::too_many_arguments)]
pub(crate) fn adamw8_kernel(
    p_in: &Array<f32>,
    g: &Array<f32>,
    m_in: &Array<u8>,
    v_in: &Array<u8>,
    am_in: &Array<f32>,
    av_in: &Array<f32>,
    maps: &Array<f32>,
    p_out: &mut Array<f32>,
    m_out: &mut Array<u8>,
    v_out: &mut Array<u8>,
    am_out: &mut Array<f32>,
    av_out: &mut Array<f32>,
    n: usize,
    beta1: f32,
    beta2: f32,
    step_size: f32,
    eps_hat: f32,
    decay: f32,
) {
    let mut map = SharedMemory::<f32>::new(512usize);
    let mut red = SharedMemory::<f32>::new(16usize);
    let tid = UNIT_POS as usize;
    map[tid] = maps[tid];
    map[tid + 256] = maps[tid + 256];
    sync_cube();

    let b = CUBE_POS_X as usize;
    let i = b * 256 + tid;
    let am = am_in[b];
    let av = av_in[b];
    let mut mn = 0.0f32;
    let mut vn = 0.0f32;
    if i < n {
        let gi = g[i];
        let mo = map[u32::cast_from(m_in[i]) as usize] * am;
        let vo = map[256 + u32::cast_from(v_in[i]) as usize] * av;
        mn = beta1 * mo + (1.0 - beta1) * gi;
        vn = beta2 * vo + (1.0 - beta2) * (gi * gi);
        p_out[i] = p_in[i] * decay - step_size * (mn / (f32::sqrt(vn) + eps_hat));
    }
    // Planes are 32 lanes on CUDA: 8 per cube.
    let pm = plane_max(f32::abs(mn));
    let pv = plane_max(vn);
    if tid % 32 == 0 {
        red[tid / 32] = pm;
        red[8 + tid / 32] = pv;
    }
    sync_cube();
    let mut bm = red[0];
    let mut bv = red[8];
    #[unroll]
    for q in 1..8usize {
        bm = max(bm, red[q]);
        bv = max(bv, red[8 + q]);
    }
    if i < n {
        let mut xm = 0.0f32;
        let mut xv = 0.0f32;
        if bm > 0.0 {
            xm = mn / bm;
        }
        if bv > 0.0 {
            xv = vn / bv;
        }
        m_out[i] = u8::cast_from(nearest_code(&map, 0, xm));
        v_out[i] = u8::cast_from(nearest_code(&map, 256, xv));
    }
    if tid == 0 {
        am_out[b] = bm;
        av_out[b] = bv;
    }
}

/// The 8-bit state of one tensor on the device (layout of [`super::reference::Adam8State`]).
#[derive(Debug, Clone)]
pub struct Adam8Device<R: CubeRuntime> {
    /// `[n]` u8 first-moment codes.
    pub m: CubeTensor<R>,
    /// `[n]` u8 second-moment codes.
    pub v: CubeTensor<R>,
    /// `[ceil(n / 256)]` f32.
    pub absmax_m: CubeTensor<R>,
    /// `[ceil(n / 256)]` f32.
    pub absmax_v: CubeTensor<R>,
}

fn check<R: CubeRuntime>(name: &'static str, t: &CubeTensor<R>, dtype: DType, len: usize) -> Result<(), KernelError> {
    if t.dtype != dtype || numel(t) != len || !t.is_contiguous() {
        return Err(KernelError::Shape { kernel: "adamw8", what: format!("{name} is {:?} x {} (contiguous: {}), expected {dtype:?} x {len}", t.dtype, numel(t), t.is_contiguous()) });
    }
    Ok(())
}

/// One step: returns the new f32 weight `p` and state; the inputs are left as they were, so a
/// caller may keep them until the step is accepted. `p` and `g` are f32 with `n` elements each.
pub fn adamw8_step<R: CubeRuntime>(p: &CubeTensor<R>, g: &CubeTensor<R>, state: &Adam8Device<R>, h: &Adam8Step) -> Result<(CubeTensor<R>, Adam8Device<R>), KernelError> {
    let n = numel(p);
    let blocks = n.div_ceil(BLOCK);
    let p_out = empty(p, vec![n], DType::F32);
    let out = Adam8Device {
        m: empty(p, vec![n], DType::U8),
        v: empty(p, vec![n], DType::U8),
        absmax_m: empty(p, vec![blocks], DType::F32),
        absmax_v: empty(p, vec![blocks], DType::F32),
    };
    adamw8_step_into(p, g, state, h, &p_out, &out)?;
    Ok((p_out, out))
}

/// [`adamw8_step`] into given contiguous outputs (tests pass poisoned ones).
pub fn adamw8_step_into<R: CubeRuntime>(
    p: &CubeTensor<R>,
    g: &CubeTensor<R>,
    state: &Adam8Device<R>,
    h: &Adam8Step,
    p_out: &CubeTensor<R>,
    out: &Adam8Device<R>,
) -> Result<(), KernelError> {
    let n = numel(p);
    let blocks = n.div_ceil(BLOCK);
    if n == 0 {
        return Err(KernelError::Shape { kernel: "adamw8", what: "empty tensor".into() });
    }
    for (name, t, dtype, len) in [
        ("p", p, DType::F32, n),
        ("g", g, DType::F32, n),
        ("m", &state.m, DType::U8, n),
        ("v", &state.v, DType::U8, n),
        ("absmax_m", &state.absmax_m, DType::F32, blocks),
        ("absmax_v", &state.absmax_v, DType::F32, blocks),
        ("p_out", p_out, DType::F32, n),
        ("m_out", &out.m, DType::U8, n),
        ("v_out", &out.v, DType::U8, n),
        ("absmax_m_out", &out.absmax_m, DType::F32, blocks),
        ("absmax_v_out", &out.absmax_v, DType::F32, blocks),
    ] {
        check(name, t, dtype, len)?;
    }
    let client = p.client.clone();
    // 2 KiB per launch; the step runs once per tensor per optimizer step.
    let maps = upload_f32(&client, &p.device, &super::reference::maps());
    let arr = |t: &CubeTensor<R>, len: usize| unsafe { ArrayArg::from_raw_parts(t.handle.clone(), len) };
    unsafe {
        adamw8_kernel::launch_unchecked::<R>(
            &client,
            CubeCount::Static(blocks as u32, 1, 1),
            CubeDim::new_1d(256),
            arr(p, n),
            arr(g, n),
            arr(&state.m, n),
            arr(&state.v, n),
            arr(&state.absmax_m, blocks),
            arr(&state.absmax_v, blocks),
            arr(&maps, 512),
            arr(p_out, n),
            arr(&out.m, n),
            arr(&out.v, n),
            arr(&out.absmax_m, blocks),
            arr(&out.absmax_v, blocks),
            n,
            h.beta1,
            h.beta2,
            h.step_size,
            h.eps_hat,
            h.decay,
        );
    }
    Ok(())
}
