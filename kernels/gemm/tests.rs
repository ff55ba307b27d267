//! Fused GEMM against the reference on random shapes with partial tiles (device). The
//! reference itself is tested in `gemv::tests` and against the root crate's NF4 reference.

#[cfg(feature = "cuda")]
mod device {
    use crate::device::{poisoned, read_f32, upload_float, Nf4Device};
    use crate::gemm::{gemm_into, gemm_into_with, GemmConfig};
    use crate::gemv::reference::matmul_t;
    use crate::testutil::{assert_close, cuda, random_nf4, rng, round_bf16, synthetic_map, uniform};
    use burn_backend::DType;
    use rand::Rng;

    /// bf16 operands: the decoded weight is rounded to bf16 in shared memory (<= 2^-9
    /// relative each) and the output once more; f32 accumulation.
    const GEMM_BF16_REL: f64 = 8e-3;
    /// f16 operands: 2^-12 per rounding.
    const GEMM_F16_REL: f64 = 2e-3;


    #[test]
    fn kernel_matches_reference_on_random_shapes() {
        let Some((client, device)) = cuda() else { return };
        let mut rng = rng("gemm kernel");
        let map = synthetic_map();
        // Four cases per configuration take its kernel (K % 64 == 0); the last four the first
        // kernel (K an odd multiple of 32).
        let pipelined = 4 * GemmConfig::ALL.len();
        for case in 0..pipelined + 4 {
            let (dtype, name, bound) = if case % 2 == 0 { (DType::BF16, "GEMM_BF16_REL", GEMM_BF16_REL) } else { (DType::F16, "GEMM_F16_REL", GEMM_F16_REL) };
            // Partial tiles in M and N.
            let m = rng.random_range(1..300);
            let n = rng.random_range(1..300);
            // The first case of each configuration takes a single step of 64 (a prologue and no
            // refill of the second stage).
            let k = match case {
                _ if case >= pipelined => 32 * (2 * rng.random_range(0..20) + 1),
                _ if case % 4 == 0 => 64,
                _ => 64 * rng.random_range(1..20),
            };
            let config = GemmConfig::ALL[(case / 4) % GemmConfig::ALL.len()];
            let double = rng.random();
            let bs = [32, 64][rng.random_range(0..2)];
            let w = random_nf4(&mut rng, n, k, bs, double, &map);
            let x = uniform(&mut rng, m * k, 1.0);
            let x = if dtype == DType::BF16 { round_bf16(&x) } else { x.iter().map(|&v| half::f16::from_f32(v).to_f32()).collect() };
            let dev = Nf4Device::upload(&client, &device, &w.view(), &map);
            let xd = upload_float(&client, &device, &x, vec![m, k], dtype);
            let y = poisoned(&client, &device, vec![m, n], dtype);
            gemm_into_with(&xd, &dev, &y, config).unwrap();
            let what = format!("gemm {dtype:?} {config:?} double={double} blocksize={bs} M={m} N={n} K={k}");
            assert_close(&what, &read_f32(&y), &matmul_t(&x, m, &w.view()), name, bound);
        }
    }

    #[test]
    fn kernel_matches_reference_on_many_tiles() {
        let Some((client, device)) = cuda() else { return };
        let mut rng = rng("gemm many tiles");
        let map = synthetic_map();
        let (m, n, k) = (300, 1024, 1024);
        let w = random_nf4(&mut rng, n, k, 64, true, &map);
        let x = round_bf16(&uniform(&mut rng, m * k, 1.0));
        let dev = Nf4Device::upload(&client, &device, &w.view(), &map);
        let xd = upload_float(&client, &device, &x, vec![m, k], DType::BF16);
        let reference = matmul_t(&x, m, &w.view());
        for config in GemmConfig::ALL {
            let y = poisoned(&client, &device, vec![m, n], DType::BF16);
            gemm_into_with(&xd, &dev, &y, config).unwrap();
            assert_close(&format!("gemm bf16 {config:?} M=300 N=1024 K=1024"), &read_f32(&y), &reference, "GEMM_BF16_REL", GEMM_BF16_REL);
        }
        // The default is the 128-row kernel.
        let y = poisoned(&client, &device, vec![m, n], DType::BF16);
        gemm_into(&xd, &dev, &y).unwrap();
        assert_close("gemm bf16 default M=300 N=1024 K=1024", &read_f32(&y), &reference, "GEMM_BF16_REL", GEMM_BF16_REL);
    }
}
