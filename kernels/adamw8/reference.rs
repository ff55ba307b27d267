//! The plain CPU reference of the 8-bit blockwise AdamW step, and the two dynamic maps.
//!
//! Follows bitsandbytes 0.50.2 `kOptimizerStatic8bit2StateBlockwise` (ADAM with decoupled
//! weight decay): decode `m = map_s[code] * absmax_m`, `v = map_u[code] * absmax_v`; update
//! `m = b1 m + (1 - b1) g`, `v = b2 v + (1 - b2) g^2`; `p *= 1 - lr wd`;
//! `p -= step_size m / (sqrt(v) + eps_hat)` with `step_size = lr sqrt(1 - b2^t) / (1 - b1^t)`
//! and `eps_hat = eps sqrt(1 - b2^t)` (torch's AdamW rewritten as bitsandbytes does); then the
//! new absmax of each block and the nearest code of `m / absmax`, `v / absmax`.
//! The code search is exact nearest (ties to the lower code); bitsandbytes' `quantize_2D`
//! search can differ from it only at a midpoint between two codes.

/// Elements per absmax block (bitsandbytes' blockwise 8-bit optimizers use 256).
pub const BLOCK: usize = 256;

/// Tensors smaller than this keep 32-bit moments (bitsandbytes' `min_8bit_size`).
pub const MIN_8BIT_SIZE: usize = 4096;

/// Hyper-parameters of one step, as the kernel takes them (f32, bias corrections folded in).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Adam8Step {
    /// First-moment decay.
    pub beta1: f32,
    /// Second-moment decay.
    pub beta2: f32,
    /// `lr * sqrt(1 - beta2^t) / (1 - beta1^t)`.
    pub step_size: f32,
    /// `eps * sqrt(1 - beta2^t)`.
    pub eps_hat: f32,
    /// `1 - lr * weight_decay`.
    pub decay: f32,
}

impl Adam8Step {
    /// For update number `t` (1-based), computed in f64 then rounded once.
    pub fn new(lr: f64, beta1: f64, beta2: f64, eps: f64, weight_decay: f64, t: usize) -> Self {
        let t = t as i32;
        let bias1 = 1.0 - beta1.powi(t);
        let bias2_sqrt = (1.0 - beta2.powi(t)).sqrt();
        Self {
            beta1: beta1 as f32,
            beta2: beta2 as f32,
            step_size: (lr * bias2_sqrt / bias1) as f32,
            eps_hat: (eps * bias2_sqrt) as f32,
            decay: (1.0 - lr * weight_decay) as f32,
        }
    }
}

/// `torch.linspace(start, end, steps)` in f32: the first half counted up from `start`, the
/// second half down from `end`. torch's vectorized CPU kernel rounds some entries one ulp
/// differently, so the maps below match bitsandbytes' to within two ulps per entry (they are
/// medqlora's own optimizer state, never exchanged with bitsandbytes).
fn linspace_f32(start: f32, end: f32, steps: usize) -> Vec<f32> {
    let step = (end - start) / (steps - 1) as f32;
    let half = steps / 2;
    (0..steps).map(|i| if i < half { start + step * i as f32 } else { end - step * (steps - i - 1) as f32 }).collect()
}

/// bitsandbytes' `create_dynamic_map(signed, max_exponent_bits=7, total_bits=8)`, sorted
/// ascending: `signed` is the first moment's map (also double quantization's), unsigned the
/// second moment's (values in [0, 1]).
pub fn dynamic_map(signed: bool) -> [f32; 256] {
    const MAX_EXP: i32 = 7;
    let mut data: Vec<f32> = Vec::with_capacity(256);
    for i in 0..MAX_EXP {
        let items = if signed { (1usize << i) + 1 } else { (1usize << (i + 1)) + 1 };
        let b = linspace_f32(0.1, 1.0, items);
        // 10 ** (-(7 - 1) + i) is a Python float; torch multiplies in f32.
        let scale = 10f64.powi(-(MAX_EXP - 1) + i) as f32;
        for w in b.windows(2) {
            let mean = (w[0] + w[1]) / 2.0;
            data.push(scale * mean);
            if signed {
                data.push(-(scale * mean));
            }
        }
    }
    data.push(0.0);
    data.push(1.0);
    while data.len() < 256 {
        data.push(0.0);
    }
    data.sort_by(|a, b| a.total_cmp(b));
    let mut out = [0f32; 256];
    out.copy_from_slice(&data);
    out
}

/// The maps as the kernel reads them: signed (256) then unsigned (256).
pub fn maps() -> Vec<f32> {
    let mut v = dynamic_map(true).to_vec();
    v.extend_from_slice(&dynamic_map(false));
    v
}

/// Index of the code nearest to `x` in the ascending `map` (ties to the lower code): a
/// bisection for the last code `<= x`, then the closer of it and the next. The kernel runs
/// the same steps.
pub fn nearest(map: &[f32], x: f32) -> u8 {
    let mut lo = 0usize;
    let mut step = 128usize;
    while step > 0 {
        let mid = lo + step;
        if mid < 256 && map[mid] <= x {
            lo = mid;
        }
        step /= 2;
    }
    if lo < 255 && map[lo + 1] - x < x - map[lo] {
        lo += 1;
    }
    lo as u8
}

/// The 8-bit state of one tensor: a code per element for each moment, an absmax per block.
#[derive(Debug, Clone, PartialEq)]
pub struct Adam8State {
    /// First-moment codes (signed map).
    pub m: Vec<u8>,
    /// Second-moment codes (unsigned map).
    pub v: Vec<u8>,
    /// `[ceil(n / BLOCK)]` first-moment block absmax.
    pub absmax_m: Vec<f32>,
    /// `[ceil(n / BLOCK)]` second-moment block absmax.
    pub absmax_v: Vec<f32>,
}

impl Adam8State {
    /// Zero moments for `n` elements (absmax 0 decodes every code to 0).
    pub fn zeros(n: usize) -> Self {
        let blocks = n.div_ceil(BLOCK);
        Self { m: vec![0; n], v: vec![0; n], absmax_m: vec![0.0; blocks], absmax_v: vec![0.0; blocks] }
    }

    /// The decoded moments `(m, v)` (tests, and checkpoint inspection).
    pub fn decode(&self) -> (Vec<f32>, Vec<f32>) {
        let (s, u) = (dynamic_map(true), dynamic_map(false));
        let m = self.m.iter().enumerate().map(|(i, &c)| s[c as usize] * self.absmax_m[i / BLOCK]).collect();
        let v = self.v.iter().enumerate().map(|(i, &c)| u[c as usize] * self.absmax_v[i / BLOCK]).collect();
        (m, v)
    }
}

/// One step on `p` (f32 master weights) with gradient `g`, in place. The operation order is
/// the kernel's.
pub fn step(p: &mut [f32], g: &[f32], state: &mut Adam8State, h: &Adam8Step) {
    let (smap, umap) = (dynamic_map(true), dynamic_map(false));
    assert_eq!(p.len(), g.len());
    assert_eq!(p.len(), state.m.len());
    for (b, start) in (0..p.len()).step_by(BLOCK).enumerate() {
        let end = (start + BLOCK).min(p.len());
        let (am, av) = (state.absmax_m[b], state.absmax_v[b]);
        let mut mn = [0f32; BLOCK];
        let mut vn = [0f32; BLOCK];
        let (mut bm, mut bv) = (0f32, 0f32);
        for i in start..end {
            let gi = g[i];
            let mo = smap[state.m[i] as usize] * am;
            let vo = umap[state.v[i] as usize] * av;
            let m = h.beta1 * mo + (1.0 - h.beta1) * gi;
            let v = h.beta2 * vo + (1.0 - h.beta2) * (gi * gi);
            p[i] = p[i] * h.decay - h.step_size * (m / (v.sqrt() + h.eps_hat));
            mn[i - start] = m;
            vn[i - start] = v;
            bm = bm.max(m.abs());
            bv = bv.max(v);
        }
        for i in start..end {
            let xm = if bm > 0.0 { mn[i - start] / bm } else { 0.0 };
            let xv = if bv > 0.0 { vn[i - start] / bv } else { 0.0 };
            state.m[i] = nearest(&smap, xm);
            state.v[i] = nearest(&umap, xv);
        }
        state.absmax_m[b] = bm;
        state.absmax_v[b] = bv;
    }
}
