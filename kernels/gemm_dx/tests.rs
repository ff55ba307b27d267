//! Backward product: the reference is the adjoint of the forward one (CPU); the fused
//! kernel against the reference on random shapes (device).

use super::reference::matmul_dx;
use crate::dequant::reference::dequantize;
use crate::gemv::reference::matmul_t;
use crate::testutil::{random_nf4, rng, synthetic_map, uniform};

/// `<dY, X W^T> = <dY W, X>` in f64 up to the f32 roundings of the two products, measured
/// against `sum |dY| |W| |X|`: the two sides are sums of signed terms that can cancel to far
/// below that scale, where a bound relative to the result itself fails on honest roundings.
/// The bound is the worst case of those roundings: f32 dot products of K = 80 and N = 48 terms
/// err by at most (81 + 49) u ~ 7.7e-6 of that scale (u = 2^-24); measured runs stay near 1e-9.
const ADJOINT_REL: f64 = 1e-5;

#[test]
fn reference_is_the_adjoint_of_the_forward_product() {
    let mut rng = rng("gemm_dx adjoint");
    let (m, n, k) = (3, 48, 80);
    let w = random_nf4(&mut rng, n, k, 64, true, &synthetic_map());
    let (x, dy) = (uniform(&mut rng, m * k, 1.0), uniform(&mut rng, m * n, 1.0));
    let y = matmul_t(&x, m, &w.view());
    let dx = matmul_dx(&dy, m, &w.view());
    let lhs: f64 = dy.iter().zip(&y).map(|(&a, &b)| a as f64 * b as f64).sum();
    let rhs: f64 = dx.iter().zip(&x).map(|(&a, &b)| a as f64 * b as f64).sum();
    let wd = dequantize(&w.view());
    let mut scale = 0.0f64;
    for r in 0..m {
        for j in 0..n {
            for c in 0..k {
                scale += (dy[r * n + j] as f64 * wd[j * k + c] as f64 * x[r * k + c] as f64).abs();
            }
        }
    }
    let rel = (lhs - rhs).abs() / scale.max(1e-12);
    println!("adjoint identity: {lhs} vs {rhs}, |difference| / sum|dY||W||X| = {rel:.2e} (bound ADJOINT_REL = {ADJOINT_REL:.0e})");
    assert!(rel <= ADJOINT_REL);
}

#[cfg(feature = "cuda")]
mod device {
    use crate::device::{poisoned, read_f32, upload_float, Nf4Device};
    use crate::gemm::GemmConfig;
    use crate::gemm_dx::{gemm_dx_into, gemm_dx_into_with, reference::matmul_dx};
    use crate::testutil::{assert_close, cuda, random_nf4, rng, round_bf16, synthetic_map, uniform};
    use burn_backend::DType;
    use rand::Rng;

    /// bf16 operands, f32 accumulation (see the forward GEMM's bound).
    const GEMM_DX_BF16_REL: f64 = 8e-3;


    #[test]
    fn kernel_matches_reference_on_random_shapes() {
        let Some((client, device)) = cuda() else { return };
        let mut rng = rng("gemm_dx kernel");
        let map = synthetic_map();
        // Four cases per configuration take its kernel (N % 64 == 0, K % 32 == 0); the last
        // four the first kernel (N an odd multiple of 32, or K an odd multiple of 16).
        let pipelined = 4 * GemmConfig::ALL.len();
        for case in 0..pipelined + 4 {
            let m = rng.random_range(1..300);
            let config = GemmConfig::ALL[(case / 4) % GemmConfig::ALL.len()];
            let (n, k) = match case {
                // One step of 64 first in each configuration.
                _ if case < pipelined && case % 4 == 0 => (64, 32 * rng.random_range(1..20)),
                _ if case < pipelined => (64 * rng.random_range(1..10), 32 * rng.random_range(1..20)),
                _ if case < pipelined + 2 => (32 * (2 * rng.random_range(0..10) + 1), 16 * rng.random_range(1..40)),
                _ => (64 * rng.random_range(1..10), 16 * (2 * rng.random_range(0..20) + 1)),
            };
            let double = rng.random();
            let bs = [32, 64][rng.random_range(0..2)];
            let w = random_nf4(&mut rng, n, k, bs, double, &map);
            let dy = round_bf16(&uniform(&mut rng, m * n, 1.0));
            let dev = Nf4Device::upload(&client, &device, &w.view(), &map);
            let dyd = upload_float(&client, &device, &dy, vec![m, n], DType::BF16);
            let dx = poisoned(&client, &device, vec![m, k], DType::BF16);
            gemm_dx_into_with(&dyd, &dev, &dx, config).unwrap();
            let what = format!("gemm_dx bf16 {config:?} double={double} blocksize={bs} M={m} N={n} K={k}");
            assert_close(&what, &read_f32(&dx), &matmul_dx(&dy, m, &w.view()), "GEMM_DX_BF16_REL", GEMM_DX_BF16_REL);
        }
    }

    #[test]
    fn kernel_matches_reference_on_many_tiles() {
        let Some((client, device)) = cuda() else { return };
        let mut rng = rng("gemm_dx many tiles");
        let map = synthetic_map();
        // 16 reduction steps of 64 and a partial last column tile (K = 1056 = 8 * 128 + 32).
        let (m, n, k) = (300, 1024, 1056);
        let w = random_nf4(&mut rng, n, k, 64, true, &map);
        let dy = round_bf16(&uniform(&mut rng, m * n, 1.0));
        let dev = Nf4Device::upload(&client, &device, &w.view(), &map);
        let dyd = upload_float(&client, &device, &dy, vec![m, n], DType::BF16);
        let reference = matmul_dx(&dy, m, &w.view());
        for config in GemmConfig::ALL {
            let dx = poisoned(&client, &device, vec![m, k], DType::BF16);
            gemm_dx_into_with(&dyd, &dev, &dx, config).unwrap();
            assert_close(&format!("gemm_dx bf16 {config:?} M=300 N=1024 K=1056"), &read_f32(&dx), &reference, "GEMM_DX_BF16_REL", GEMM_DX_BF16_REL);
        }
        let dx = poisoned(&client, &device, vec![m, k], DType::BF16);
        gemm_dx_into(&dyd, &dev, &dx).unwrap();
        assert_close("gemm_dx bf16 default M=300 N=1024 K=1056", &read_f32(&dx), &reference, "GEMM_DX_BF16_REL", GEMM_DX_BF16_REL);
    }
}
