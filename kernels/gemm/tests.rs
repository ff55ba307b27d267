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

    /// 2 x 8 output tiles against 16 steps of the reduction: on a GPU of more than 16 SMs the
    /// wide forward cuts it in two (f32 partials and their sum).
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

    /// The wide kernel closed by an adapter's up-projection and / or a bias against the dense
    /// reference plus the same terms: ranks 64 and 128, partial tiles, both dtypes, the 7B
    /// `q_proj` shape (bias and adapter); refusals of what the kernel does not take.
    #[test]
    fn lora_epilogue_matches_reference() {
        use crate::gemm::lora::reference::add_lora_bias;
        use crate::gemm::{gemm_lora, gemm_lora_into, GemmEpilogue};
        let Some((client, device)) = cuda() else { return };
        let mut rng = rng("gemm lora epilogue");
        let map = synthetic_map();
        let round = |v: Vec<f32>, dtype: DType| if dtype == DType::BF16 { round_bf16(&v) } else { v.iter().map(|&x| half::f16::from_f32(x).to_f32()).collect() };
        let cases = [(2048, 512, 3584, 64, true, true), (rng.random_range(1..300), rng.random_range(1..300), 64 * rng.random_range(1..12), 128, true, false), (rng.random_range(1..300), rng.random_range(1..300), 192, 64, true, true), (300, 200, 128, 0, false, true)];
        for (case, (m, n, k, rank, lora, biased)) in cases.into_iter().enumerate() {
            let (dtype, name, bound) = if case % 2 == 0 { (DType::BF16, "GEMM_BF16_REL", GEMM_BF16_REL) } else { (DType::F16, "GEMM_F16_REL", GEMM_F16_REL) };
            let w = random_nf4(&mut rng, n, k, 64, case % 2 == 0, &map);
            let x = round(uniform(&mut rng, m * k, 1.0), dtype);
            // The adapter's term of the same order as the base product's, so an error in it shows.
            let h = round(uniform(&mut rng, m * rank, 1.0), dtype);
            let b = round(uniform(&mut rng, n * rank, 0.5), dtype);
            let bias = round(uniform(&mut rng, n, 2.0), dtype);
            let mut want = matmul_t(&x, m, &w.view());
            add_lora_bias(&mut want, m, n, lora.then_some((&h[..], &b[..], rank)), biased.then_some(&bias[..]));
            let dev = Nf4Device::upload(&client, &device, &w.view(), &map);
            let xd = upload_float(&client, &device, &x, vec![m, k], dtype);
            let (hd, bd) = (upload_float(&client, &device, &h, vec![m, rank], dtype), upload_float(&client, &device, &b, vec![n, rank], dtype));
            let biasd = upload_float(&client, &device, &bias, vec![n], dtype);
            let epilogue = GemmEpilogue { lora: lora.then_some((&hd, &bd)), bias: biased.then_some(&biasd) };
            let y = poisoned(&client, &device, vec![m, n], dtype);
            gemm_lora_into(&xd, &dev, epilogue, &y).unwrap();
            let what = format!("gemm + lora {dtype:?} M={m} N={n} K={k} rank={rank} lora={lora} bias={biased}");
            assert_close(&what, &read_f32(&y), &want, name, bound);
            assert!(gemm_lora(&xd, &dev, GemmEpilogue { lora: None, bias: None }).is_err(), "nothing to add");
        }
        let (m, n, k) = (40, 64, 128);
        let w = random_nf4(&mut rng, n, k, 64, false, &map);
        let dev = Nf4Device::upload(&client, &device, &w.view(), &map);
        let xd = upload_float(&client, &device, &uniform(&mut rng, m * k, 1.0), vec![m, k], DType::BF16);
        let h32 = upload_float(&client, &device, &uniform(&mut rng, m * 32, 1.0), vec![m, 32], DType::BF16);
        let b32 = upload_float(&client, &device, &uniform(&mut rng, n * 32, 1.0), vec![n, 32], DType::BF16);
        assert!(gemm_lora(&xd, &dev, GemmEpilogue { lora: Some((&h32, &b32)), bias: None }).is_err(), "rank 32");
        let bias_f16 = upload_float(&client, &device, &uniform(&mut rng, n, 1.0), vec![n], DType::F16);
        assert!(gemm_lora(&xd, &dev, GemmEpilogue { lora: None, bias: Some(&bias_f16) }).is_err(), "bias of another dtype");
    }

    /// `dY W + D` in one launch against the reference product plus `D`: the 7B `k_proj`'s
    /// input gradient (N 512, K 3,584), random shapes with partial tiles, both dtypes.
    #[test]
    fn dx_addend_matches_reference() {
        use crate::gemm::{gemm_dx_add, gemm_dx_add_into};
        use crate::gemm_dx::reference::matmul_dx;
        let Some((client, device)) = cuda() else { return };
        let mut rng = rng("gemm dx addend");
        let map = synthetic_map();
        let round = |v: Vec<f32>, dtype: DType| if dtype == DType::BF16 { round_bf16(&v) } else { v.iter().map(|&x| half::f16::from_f32(x).to_f32()).collect() };
        let cases = [(2048, 512, 3584), (rng.random_range(1..300), 64 * rng.random_range(1..6), 32 * rng.random_range(1..20)), (rng.random_range(1..300), 64, 160)];
        for (case, (m, n, k)) in cases.into_iter().enumerate() {
            let (dtype, name, bound) = if case % 2 == 0 { (DType::BF16, "GEMM_BF16_REL", GEMM_BF16_REL) } else { (DType::F16, "GEMM_F16_REL", GEMM_F16_REL) };
            let w = random_nf4(&mut rng, n, k, 64, case % 2 == 1, &map);
            let dy = round(uniform(&mut rng, m * n, 1.0), dtype);
            let add = round(uniform(&mut rng, m * k, 1.0), dtype);
            let want: Vec<f32> = matmul_dx(&dy, m, &w.view()).iter().zip(&add).map(|(a, b)| a + b).collect();
            let dev = Nf4Device::upload(&client, &device, &w.view(), &map);
            let (dyd, addd) = (upload_float(&client, &device, &dy, vec![m, n], dtype), upload_float(&client, &device, &add, vec![m, k], dtype));
            let dx = poisoned(&client, &device, vec![m, k], dtype);
            gemm_dx_add_into(&dyd, &dev, &addd, &dx).unwrap();
            assert_close(&format!("gemm dx + addend {dtype:?} M={m} N={n} K={k}"), &read_f32(&dx), &want, name, bound);
        }
        let w = random_nf4(&mut rng, 96, 64, 64, false, &map);
        let dev = Nf4Device::upload(&client, &device, &w.view(), &map);
        let dyd = upload_float(&client, &device, &uniform(&mut rng, 8 * 96, 1.0), vec![8, 96], DType::BF16);
        let addd = upload_float(&client, &device, &uniform(&mut rng, 8 * 64, 1.0), vec![8, 64], DType::BF16);
        assert!(gemm_dx_add(&dyd, &dev, &addd).is_err(), "N = 96 is not a multiple of 64");
    }
}
