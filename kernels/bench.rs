//! `medqlora bench kernels`: times the NF4 kernels at the Qwen2.5-VL-7B language-model
//! shapes next to, in the same process, the device's copy bandwidth and Burn's bf16 matmul
//! on the dequantized weight.
//!
//! Method: a warm-up launch (NVRTC compilation), then `reps` back-to-back launches between
//! two device synchronizations, host clock; the median of 3 such rounds. Weights rotate over
//! enough copies to exceed the H200's 50 MB L2, so GEMV and dequant read device memory, not
//! cache. Bytes count each operand read once and each output written once.

use crate::device::{empty, upload_float, Nf4Device};
use crate::nf4::{Nf4Owned, ScalesOwned};
use burn_backend::DType;
use burn_cubecl::kernel::matmul::{matmul, MatmulStrategy};
use burn_cubecl::tensor::CubeTensor;
use burn_cubecl::CubeRuntime;
use cubecl::prelude::*;
use rand::Rng;
use std::time::Instant;

/// One line of the table.
#[derive(Debug, Clone)]
pub struct BenchRow {
    /// What ran.
    pub op: String,
    /// Rows of `X`.
    pub m: usize,
    /// Rows of `W` (out features).
    pub n: usize,
    /// Columns of `W` (in features).
    pub k: usize,
    /// Median time of one launch, microseconds.
    pub us: f64,
    /// Bytes moved per launch / time.
    pub gbs: f64,
    /// `2 M N K` / time (0 for a copy or dequant).
    pub tflops: f64,
    /// The comparison this row is judged by.
    pub note: String,
}

/// The language-model linear shapes `(N, K)` of Qwen2.5-VL-7B: q/o, k/v, gate/up, down.
pub const SHAPES: [(usize, usize); 4] = [(3584, 3584), (512, 3584), (18944, 3584), (3584, 18944)];
/// Token counts: decode (1, 8), prefill/training (2048, 8192).
pub const MS: [usize; 4] = [1, 8, 2048, 8192];

const L2_BYTES: usize = 50 << 20;

#[cube(launch_unchecked)]
fn copy_kernel(src: &Array<Vector<u32, Const<4>>>, dst: &mut Array<Vector<u32, Const<4>>>, len: usize) {
    if ABSOLUTE_POS < len {
        dst[ABSOLUTE_POS] = src[ABSOLUTE_POS];
    }
}

fn sync<R: CubeRuntime>(client: &ComputeClient<R>) {
    cubecl::future::block_on(client.sync()).expect("device sync");
}

/// Median over 3 rounds of the mean time of `reps` launches of `f(i)` (i = launch index).
fn time_us<R: CubeRuntime>(client: &ComputeClient<R>, reps: usize, mut f: impl FnMut(usize)) -> f64 {
    f(0);
    sync(client);
    let mut rounds: Vec<f64> = (0..3)
        .map(|_| {
            let t = Instant::now();
            for i in 0..reps {
                f(i);
            }
            sync(client);
            t.elapsed().as_secs_f64() * 1e6 / reps as f64
        })
        .collect();
    rounds.sort_by(f64::total_cmp);
    rounds[1]
}

/// Device copy bandwidth (read + write bytes / time) over a 2 GiB buffer.
pub fn copy_bandwidth<R: CubeRuntime>(client: &ComputeClient<R>) -> BenchRow {
    let bytes = 1usize << 30;
    let src = client.create_from_slice(&vec![0x5Au8; bytes]);
    let dst = client.empty(bytes);
    let len = bytes / 16;
    let dim = CubeDim::new_1d(256);
    let count = cubecl::calculate_cube_count_elemwise(client, len, dim);
    let us = time_us(client, 20, |_| unsafe {
        copy_kernel::launch_unchecked::<R>(
            client,
            count.clone(),
            dim,
            ArrayArg::from_raw_parts(src.clone(), len),
            ArrayArg::from_raw_parts(dst.clone(), len),
            len,
        )
    });
    BenchRow { op: "device copy (1 GiB -> 1 GiB)".into(), m: 0, n: 0, k: 0, us, gbs: 2.0 * bytes as f64 / us / 1e3, tflops: 0.0, note: "ceiling for memory-bound kernels".into() }
}

fn random_weight(rng: &mut impl Rng, n: usize, k: usize, map: &[f32; 256]) -> Nf4Owned {
    // Random bytes and scales: speed does not depend on the values, only on not being zeros.
    let blocks = n * k / 64;
    Nf4Owned {
        packed: (0..n * k / 2).map(|_| rng.random()).collect(),
        scales: ScalesOwned::Double {
            codes: (0..blocks).map(|_| rng.random()).collect(),
            nested: (0..blocks.div_ceil(256)).map(|_| rng.random_range(0.005..0.015)).collect(),
            offset: 0.02,
            map: Box::new(*map),
        },
        n,
        k,
        blocksize: 64,
    }
}

/// Runs the whole table: copy bandwidth, then per shape dequant, GEMV (M <= 8), fused GEMM
/// and backward dX (both tile heights at M >= 2048; also M = 8 for the 128-row GEMM), and
/// Burn's bf16 matmul on the dequantized weight for every M. `ms` and `shapes` narrow the
/// sweep.
pub fn run<R: CubeRuntime>(client: &ComputeClient<R>, device: &R::Device, shapes: &[(usize, usize)], ms: &[usize], map: &[f32; 256], mut print: impl FnMut(&BenchRow)) -> Vec<BenchRow> {
    let mut rows = Vec::new();
    let mut push = |row: BenchRow, rows: &mut Vec<BenchRow>| {
        print(&row);
        rows.push(row);
    };
    let copy = copy_bandwidth(client);
    let copy_gbs = copy.gbs;
    push(copy, &mut rows);
    let mut rng = rand::rng();
    for &(n, k) in shapes {
        let host = random_weight(&mut rng, n, k, map);
        let wbytes = n * k / 2 + n * k / 64 + 4 * (n * k / 64 / 256);
        let copies = L2_BYTES.div_ceil(wbytes).clamp(2, 16) * 2;
        let ws: Vec<Nf4Device<R>> = (0..copies).map(|_| Nf4Device::upload(client, device, &host.view(), map)).collect();
        let mb = |b: usize, us: f64| b as f64 / us / 1e3;

        // Dequantize to bf16.
        let outs: Vec<CubeTensor<R>> = (0..2).map(|_| empty(&ws[0].packed, vec![n, k], DType::BF16)).collect();
        let us = time_us(client, 20, |i| crate::dequant::dequantize_into(&ws[i % copies], &outs[i % 2]).unwrap());
        let bytes = wbytes + 2 * n * k;
        push(BenchRow { op: "nf4 dequant -> bf16".into(), m: 0, n, k, us, gbs: mb(bytes, us), tflops: 0.0, note: format!("{:.0}% of copy", 100.0 * mb(bytes, us) / copy_gbs) }, &mut rows);
        let dense = outs[0].clone();
        drop(outs);

        for &m in ms {
            let x = upload_float(client, device, &(0..m * k).map(|_| rng.random_range(-1.0f32..1.0)).collect::<Vec<_>>(), vec![m, k], DType::BF16);
            let flops = 2.0 * m as f64 * n as f64 * k as f64;
            // Burn's bf16 matmul (the default cubecl strategy, no autotune: autotuning every
            // shape costs minutes of device time) on the dequantized weight, X W^T.
            let burn_tflops = {
                let mut wt = dense.clone();
                wt.meta.swap(0, 1);
                let reps = if m >= 2048 { 5 } else { 20 };
                let us = time_us(client, reps, |_| {
                    matmul(x.clone(), wt.clone(), None, MatmulStrategy::Cube, DType::BF16).unwrap();
                });
                let bytes = 2 * (m * k + n * k + m * n);
                push(BenchRow { op: "burn bf16 matmul (dense W)".into(), m, n, k, us, gbs: mb(bytes, us), tflops: flops / us / 1e6, note: String::new() }, &mut rows);
                flops / us / 1e6
            };
            if m <= crate::gemv::MAX_M {
                let ys: Vec<CubeTensor<R>> = (0..2).map(|_| empty(&x, vec![m, n], DType::BF16)).collect();
                let us = time_us(client, 50, |i| crate::gemv::gemv_into(&x, &ws[i % copies], &ys[i % 2]).unwrap());
                let bytes = wbytes + 2 * (m * k + m * n);
                push(BenchRow { op: "nf4 gemv".into(), m, n, k, us, gbs: mb(bytes, us), tflops: flops / us / 1e6, note: format!("{:.0}% of copy", 100.0 * mb(bytes, us) / copy_gbs) }, &mut rows);
            }
            if m >= 8 {
                let ys: Vec<CubeTensor<R>> = (0..2).map(|_| empty(&x, vec![m, n], DType::BF16)).collect();
                let reps = if m >= 2048 { 5 } else { 20 };
                let us = time_us(client, reps, |i| crate::gemm::gemm_into(&x, &ws[i % copies], &ys[i % 2]).unwrap());
                let bytes = wbytes + 2 * (m * k + m * n);
                let t = flops / us / 1e6;
                push(BenchRow { op: "nf4 fused gemm".into(), m, n, k, us, gbs: mb(bytes, us), tflops: t, note: format!("{:.0}% of burn bf16", 100.0 * t / burn_tflops) }, &mut rows);
                if m >= 2048 {
                    // A QLoRA projection's forward: the rank-64 adapter and a bias in the
                    // epilogue; the note compares with the plain product just timed.
                    const RANK: usize = 64;
                    let uniform = |len: usize, rng: &mut rand::rngs::ThreadRng| (0..len).map(|_| rng.random_range(-1.0f32..1.0)).collect::<Vec<_>>();
                    let h = upload_float(client, device, &uniform(m * RANK, &mut rng), vec![m, RANK], DType::BF16);
                    let b = upload_float(client, device, &uniform(n * RANK, &mut rng), vec![n, RANK], DType::BF16);
                    let bias = upload_float(client, device, &uniform(n, &mut rng), vec![n], DType::BF16);
                    let epilogue = crate::gemm::GemmEpilogue { lora: Some((&h, &b)), bias: Some(&bias) };
                    let wide = crate::gemm::GemmConfig { rows: crate::gemm::GemmRows::R256, mma: crate::gemm::GemmMma::Wide, stages: crate::gemm::GemmStages::Two };
                    let wus = time_us(client, 5, |i| crate::gemm::gemm_into_with(&x, &ws[i % copies], &ys[i % 2], wide).unwrap());
                    let lus = time_us(client, 5, |i| crate::gemm::gemm_lora_into(&x, &ws[i % copies], epilogue, &ys[i % 2]).unwrap());
                    let lflops = flops + 2.0 * (m * n * RANK) as f64;
                    push(BenchRow { op: "nf4 fused gemm + lora r64 + bias (r256 wide)".into(), m, n, k, us: lus, gbs: mb(bytes + 2 * (m + n) * RANK + 2 * n, lus), tflops: lflops / lus / 1e6, note: format!("{:+.1}% time vs r256 wide alone ({wus:.1} us)", 100.0 * (lus / wus - 1.0)) }, &mut rows);
                    // The same product in one part (no split-K), against the automatic split
                    // just timed as `r256 wide alone`.
                    let shift = ws[0].blocksize.trailing_zeros();
                    let none = crate::gemm::wide::WideTerms { lora: None, added: None };
                    let ous = time_us(client, 5, |i| crate::gemm::wide::launch_wide_parts("bench", &x, &ws[i % copies], &ys[i % 2], none, shift, false, Some(1), crate::gemm::GemmMma::Wide).unwrap());
                    push(BenchRow { op: "nf4 fused gemm, r256 wide, one part".into(), m, n, k, us: ous, gbs: mb(bytes, ous), tflops: flops / ous / 1e6, note: format!("the automatic split: {wus:.1} us ({:.2}x)", ous / wus) }, &mut rows);
                    // The forward on Hopper's warpgroup MMA (`--nf4-product fused256-wgmma`),
                    // plain and with the adapter and bias, against the wide kernel's.
                    let wg = crate::gemm::GemmConfig { mma: crate::gemm::GemmMma::Wgmma, ..wide };
                    let gus = time_us(client, 5, |i| crate::gemm::gemm_into_with(&x, &ws[i % copies], &ys[i % 2], wg).unwrap());
                    push(BenchRow { op: "nf4 fused gemm, wgmma".into(), m, n, k, us: gus, gbs: mb(bytes, gus), tflops: flops / gus / 1e6, note: format!("{:.2}x r256 wide ({wus:.1} us)", wus / gus) }, &mut rows);
                    // Its other mainloop: fragments decoded into registers, not overlapped.
                    let rus = time_us(client, 5, |i| crate::gemm_wgmma::try_launch("bench", &x, &ws[i % copies], &ys[i % 2], none, shift, false, None, crate::gemm_wgmma::Mainloop::Registers).expect("CUDA, whole tiles").unwrap());
                    push(BenchRow { op: "nf4 fused gemm, wgmma, registers mainloop".into(), m, n, k, us: rus, gbs: mb(bytes, rus), tflops: flops / rus / 1e6, note: format!("{:.2}x the shared-memory mainloop", gus / rus) }, &mut rows);
                    let glus = time_us(client, 5, |i| crate::gemm::gemm_lora_into_with(&x, &ws[i % copies], epilogue, &ys[i % 2], crate::gemm::GemmMma::Wgmma).unwrap());
                    push(BenchRow { op: "nf4 fused gemm + lora r64 + bias (wgmma)".into(), m, n, k, us: glus, gbs: mb(bytes + 2 * (m + n) * RANK + 2 * n, glus), tflops: lflops / glus / 1e6, note: format!("{:.2}x r256 wide's ({lus:.1} us)", lus / glus) }, &mut rows);
                }
            }
            if m >= 2048 {
                let ys: Vec<CubeTensor<R>> = (0..2).map(|_| empty(&x, vec![m, n], DType::BF16)).collect();
                // The default is timed above.
                for config in crate::gemm::GemmConfig::ALL.into_iter().filter(|c| *c != crate::gemm::GemmConfig::default()) {
                    let what = config.name();
                    let us = time_us(client, 5, |i| crate::gemm::gemm_into_with(&x, &ws[i % copies], &ys[i % 2], config).unwrap());
                    let bytes = wbytes + 2 * (m * k + m * n);
                    let t = flops / us / 1e6;
                    push(BenchRow { op: format!("nf4 fused gemm, {what}"), m, n, k, us, gbs: mb(bytes, us), tflops: t, note: format!("{:.0}% of burn bf16", 100.0 * t / burn_tflops) }, &mut rows);
                }
            }
            if m >= 2048 {
                let dy = upload_float(client, device, &(0..m * n).map(|_| rng.random_range(-1.0f32..1.0)).collect::<Vec<_>>(), vec![m, n], DType::BF16);
                let dxs: Vec<CubeTensor<R>> = (0..2).map(|_| empty(&x, vec![m, k], DType::BF16)).collect();
                let us = time_us(client, 5, |i| crate::gemm_dx::gemm_dx_into(&dy, &ws[i % copies], &dxs[i % 2]).unwrap());
                let bytes = wbytes + 2 * (m * k + m * n);
                let t = flops / us / 1e6;
                push(BenchRow { op: "nf4 fused gemm dX = dY W".into(), m, n, k, us, gbs: mb(bytes, us), tflops: t, note: format!("{:.0}% of burn bf16 (fwd)", 100.0 * t / burn_tflops) }, &mut rows);
                // The QLoRA projection's dX: the adapter's input gradient added in the epilogue
                // (r256 wide, against the same kernel without it).
                let wide = crate::gemm::GemmConfig { rows: crate::gemm::GemmRows::R256, mma: crate::gemm::GemmMma::Wide, stages: crate::gemm::GemmStages::Two };
                let wus = time_us(client, 5, |i| crate::gemm_dx::gemm_dx_into_with(&dy, &ws[i % copies], &dxs[i % 2], wide).unwrap());
                let addend = upload_float(client, device, &(0..m * k).map(|_| rng.random_range(-1.0f32..1.0)).collect::<Vec<_>>(), vec![m, k], DType::BF16);
                let aus = time_us(client, 5, |i| crate::gemm::gemm_dx_add_into(&dy, &ws[i % copies], &addend, &dxs[i % 2]).unwrap());
                push(BenchRow { op: "nf4 fused gemm dX = dY W + D (r256 wide)".into(), m, n, k, us: aus, gbs: mb(bytes + 2 * m * k, aus), tflops: flops / aus / 1e6, note: format!("{:+.1}% time vs r256 wide alone ({wus:.1} us)", 100.0 * (aus / wus - 1.0)) }, &mut rows);
                // dX on Hopper's warpgroup MMA (`--nf4-product fused256-wgmma`), plain and
                // with the added term, against the wide kernel's.
                let wg = crate::gemm::GemmConfig { mma: crate::gemm::GemmMma::Wgmma, ..wide };
                let gus = time_us(client, 5, |i| crate::gemm_dx::gemm_dx_into_with(&dy, &ws[i % copies], &dxs[i % 2], wg).unwrap());
                push(BenchRow { op: "nf4 fused gemm dX = dY W, wgmma".into(), m, n, k, us: gus, gbs: mb(bytes, gus), tflops: flops / gus / 1e6, note: format!("{:.2}x r256 wide ({wus:.1} us)", wus / gus) }, &mut rows);
                let shift = ws[0].blocksize.trailing_zeros();
                let terms = crate::gemm::wide::WideTerms { lora: None, added: Some(&addend) };
                let gaus = time_us(client, 5, |i| crate::gemm::wide::launch_wide("bench", &dy, &ws[i % copies], &dxs[i % 2], terms, shift, true, crate::gemm::GemmMma::Wgmma).unwrap());
                push(BenchRow { op: "nf4 fused gemm dX = dY W + D (wgmma)".into(), m, n, k, us: gaus, gbs: mb(bytes + 2 * m * k, gaus), tflops: flops / gaus / 1e6, note: format!("{:.2}x r256 wide's ({aus:.1} us)", aus / gaus) }, &mut rows);
                for config in crate::gemm::GemmConfig::ALL.into_iter().filter(|c| *c != crate::gemm::GemmConfig::default()) {
                    let what = config.name();
                    let us = time_us(client, 5, |i| crate::gemm_dx::gemm_dx_into_with(&dy, &ws[i % copies], &dxs[i % 2], config).unwrap());
                    let t = flops / us / 1e6;
                    push(BenchRow { op: format!("nf4 fused gemm dX = dY W, {what}"), m, n, k, us, gbs: mb(bytes, us), tflops: t, note: format!("{:.0}% of burn bf16 (fwd)", 100.0 * t / burn_tflops) }, &mut rows);
                }
            }
        }
    }
    rows
}

/// Attention's block products at the 7B training shape (2,048 tokens, 4 kv heads x 7 query
/// heads, head dim 128; the blocks of `model::attention::query_blocks`: 1,024 rows reading
/// 1,024 keys, then 512 rows reading 2,048), each through Burn's autotuned matmul (what the
/// model runs) and through the fixed default kernel (`MatmulStrategy::Cube`), with the relative
/// L2 difference of the two outputs in the note: the products are `q k^T` (also `dO v^T`),
/// `p v` (also `dS k`) and the per-query-head `x^T y` of dK and dV.
pub fn attention_products<R: CubeRuntime>(client: &ComputeClient<R>, device: &R::Device, mut print: impl FnMut(&BenchRow)) -> Vec<BenchRow> {
    let (kvh, rep, d) = (4usize, 7usize, 128usize);
    let mut rng = rand::rng();
    let mut rows = Vec::new();
    let mut rand_t = |shape: Vec<usize>| {
        let n: usize = shape.iter().product();
        upload_float(client, device, &(0..n).map(|_| rng.random_range(-1.0f32..1.0)).collect::<Vec<_>>(), shape, DType::BF16)
    };
    {
        // The fused kernel on the whole causal forward: 28 query heads x 2,048 queries; FLOPs
        // are eager attention's useful half (`2 * 2 * s^2 / 2 * d` per head).
        let (s, t) = (2048usize, 2048usize);
        let shape = crate::attention::Causal { batch: 1, kv_heads: kvh, rep, s, t, d, mask_batches: 1 };
        let (q, k, v) = (rand_t(vec![shape.q_len()]), rand_t(vec![shape.kv_len()]), rand_t(vec![shape.kv_len()]));
        let hidden: Vec<u8> = crate::attention::reference::causal_mask(s, t, &[0]).into_iter().map(u8::from).collect();
        let mask = crate::device::upload_bytes(client, device, &hidden, vec![s * t], DType::Bool(burn_backend::BoolStore::U8));
        let scale = (d as f32).powf(-0.5);
        let us = time_us(client, 10, |_| {
            crate::attention::causal_attention(&q, &k, &v, &mask, shape, scale).unwrap();
        });
        let flops = 2.0 * 2.0 * (s * s / 2 * d * kvh * rep) as f64;
        let bytes = 2 * (2 * shape.q_len() + 2 * shape.kv_len()) + s * t;
        let row = BenchRow { op: format!("attention forward, fused kernel (x{})", kvh * rep), m: s, n: t, k: d, us, gbs: bytes as f64 / us / 1e3, tflops: flops / us / 1e6, note: "whole causal forward; the rows below are its block products as Burn runs them".into() };
        print(&row);
        rows.push(row);
        // The one-pass kernel, reading the mask and computing it.
        for (what, m) in [("mask read", Some(&mask)), ("causal mask computed", None)] {
            let us = time_us(client, 10, |_| {
                crate::attention::flash_attention(&q, &k, &v, m, shape, scale).unwrap();
            });
            let row = BenchRow { op: format!("attention forward, flash kernel, {what} (x{})", kvh * rep), m: s, n: t, k: d, us, gbs: bytes as f64 / us / 1e3, tflops: flops / us / 1e6, note: "whole causal forward, one pass".into() };
            print(&row);
            rows.push(row);
        }
    }
    for (n, keys) in [(1024usize, 1024usize), (512, 2048)] {
        let r = rep * n;
        // (name, lhs, rhs, batch, m, n, k): rhs views are transposed where the model's are.
        let mut k_t = rand_t(vec![1, kvh, keys, d]);
        k_t.meta.swap(2, 3);
        let mut x_t = rand_t(vec![kvh, rep, n, keys]);
        x_t.meta.swap(2, 3);
        let cases = [
            ("attention q k^T", rand_t(vec![1, kvh, r, d]), k_t, kvh, r, keys, d),
            ("attention p v", rand_t(vec![1, kvh, r, keys]), rand_t(vec![1, kvh, keys, d]), kvh, r, d, keys),
            ("attention dK/dV x^T y per head", x_t, rand_t(vec![kvh, rep, n, d]), kvh * rep, keys, d, n),
        ];
        for (name, a, b, batch, m, nn, k) in cases {
            let flops = 2.0 * (batch * m * nn * k) as f64;
            let tuned = matmul(a.clone(), b.clone(), None, MatmulStrategy::Autotune, DType::BF16).unwrap();
            let fixed = matmul(a.clone(), b.clone(), None, MatmulStrategy::Cube, DType::BF16).unwrap();
            let (t, f) = (crate::device::read_f32(&tuned), crate::device::read_f32(&fixed));
            let diff = crate::testutil::rel_l2(&t, &f);
            for (what, tuned) in [("autotuned", true), ("fixed kernel", false)] {
                let us = time_us(client, 10, |_| {
                    let strategy = if tuned { MatmulStrategy::Autotune } else { MatmulStrategy::Cube };
                    matmul(a.clone(), b.clone(), None, strategy, DType::BF16).unwrap();
                });
                let bytes = 2 * batch * (m * k + k * nn + m * nn);
                let row = BenchRow { op: format!("{name}, {what} (x{batch})"), m, n: nn, k, us, gbs: bytes as f64 / us / 1e3, tflops: flops / us / 1e6, note: format!("outputs differ by {diff:.1e}") };
                print(&row);
                rows.push(row);
            }
        }
    }
    rows
}

/// The dense products (`crate::gemm_dense`) against Burn's bf16 matmul, autotuned (what the
/// model ran before) and its fixed default kernel, same operands: the 7B vocabulary head at a
/// 512-row chunk (`x W^T` over 152,064 rows of `W`, and `dY W` reducing them, the latter also
/// in one part) and the 7B projections at 2,048 rows (a model trained without quantization).
pub fn dense_products<R: CubeRuntime>(client: &ComputeClient<R>, device: &R::Device, mut print: impl FnMut(&BenchRow)) -> Vec<BenchRow> {
    use crate::gemm_dense::{gemm_dense_into, Direction};
    let mut rng = rand::rng();
    let mut rows = Vec::new();
    let mut rand_t = |shape: Vec<usize>| {
        let n: usize = shape.iter().product();
        upload_float(client, device, &(0..n).map(|_| rng.random_range(-1.0f32..1.0)).collect::<Vec<_>>(), shape, DType::BF16)
    };
    let mut cases: Vec<(usize, usize, usize)> = vec![(512, 152_064, 3584)];
    cases.extend(SHAPES.iter().map(|&(n, k)| (2048, n, k)));
    for (m, n, k) in cases {
        let w = rand_t(vec![n, k]);
        let flops = 2.0 * (m * n * k) as f64;
        for product in [Direction::Forward, Direction::InputGrad] {
            let (a_cols, out_cols) = if product == Direction::Forward { (k, n) } else { (n, k) };
            let a = rand_t(vec![m, a_cols]);
            let out = empty(&a, vec![m, out_cols], DType::BF16);
            // Burn's operand as the model hands it: `W^T` a transposed view for the forward.
            let mut b = w.clone();
            if product == Direction::Forward {
                b.meta.swap(0, 1);
            }
            let bytes = 2 * (m * a_cols + n * k + m * out_cols);
            let mut row = |op: String, us: f64, note: String| {
                let row = BenchRow { op, m, n, k, us, gbs: bytes as f64 / us / 1e3, tflops: flops / us / 1e6, note };
                print(&row);
                rows.push(row);
            };
            let reps = 5;
            let burn: Vec<(&str, f64)> = [("autotuned", true), ("fixed kernel", false)]
                .into_iter()
                .map(|(what, tuned)| {
                    let us = time_us(client, reps, |_| {
                        let strategy = if tuned { MatmulStrategy::Autotune } else { MatmulStrategy::Cube };
                        matmul(a.clone(), b.clone(), None, strategy, DType::BF16).unwrap();
                    });
                    (what, us)
                })
                .collect();
            let dir = if product == Direction::Forward { "Y = X W^T" } else { "dX = dY W" };
            for &(what, us) in &burn {
                row(format!("burn bf16 matmul {dir}, {what}"), us, String::new());
            }
            let best = burn.iter().map(|b| b.1).fold(f64::INFINITY, f64::min);
            let mut ours = vec![("parts auto", None)];
            if product == Direction::InputGrad {
                ours.push(("one part", Some(1)));
            }
            for (what, parts) in ours {
                let us = time_us(client, reps, |_| gemm_dense_into(&a, &w, product, parts, &out).unwrap());
                row(format!("dense gemm {dir}, {what}"), us, format!("{:.2}x Burn's faster", best / us));
            }
        }
    }
    rows
}

/// The table's header (the torch script prints the same columns).
pub const HEADER: &str = "| op | M | N | K | us | GB/s | TFLOP/s | note |\n| --- | --- | --- | --- | --- | --- | --- | --- |";

/// One markdown table line.
pub fn format_row(r: &BenchRow) -> String {
    let dim = |v: usize| if v == 0 { "-".to_string() } else { v.to_string() };
    format!("| {} | {} | {} | {} | {:.1} | {:.0} | {:.1} | {} |", r.op, dim(r.m), dim(r.n), dim(r.k), r.us, r.gbs, r.tflops, r.note)
}
