//! The dense products against the CPU reference (device): both directions, both dtypes,
//! partial tiles, the reduction cut into a given number of parts and into the automatic one,
//! poisoned outputs; refusals of what the kernel does not take.

#[cfg(feature = "cuda")]
mod device {
    use crate::device::{poisoned, read_f32, upload_float};
    use crate::gemm_dense::reference::{matmul_dx, matmul_t};
    use crate::gemm_dense::{gemm_dense, gemm_dense_into, Direction};
    use crate::testutil::{assert_close, cuda, rng, round_bf16, uniform};
    use burn_backend::DType;
    use rand::Rng;

    /// bf16 operands are exact inputs here (rounded on the host); the sums run in f32 (and the
    /// parts' sum in f32) and the output is rounded once: ~2^-9 relative per element.
    const DENSE_BF16_REL: f64 = 6e-3;
    /// f16: 2^-12 per rounding.
    const DENSE_F16_REL: f64 = 1e-3;

    #[test]
    fn dense_products_match_reference() {
        let Some((client, device)) = cuda() else { return };
        let mut rng = rng("dense gemm");
        let round = |v: Vec<f32>, dtype: DType| if dtype == DType::BF16 { round_bf16(&v) } else { v.iter().map(|&x| half::f16::from_f32(x).to_f32()).collect() };
        // (product, m, n, k, parts): the 7B k/v forward (auto: 4 parts), a head-like input
        // gradient (long reduction, few cubes: auto cuts it), random shapes with partial
        // tiles, one part and three, a part count that leaves the last part short.
        let cases = [
            (Direction::Forward, 2048, 512, 3584, None),
            (Direction::InputGrad, 256, 64 * 200, 512, None),
            (Direction::Forward, rng.random_range(1..300), rng.random_range(1..300), 64 * rng.random_range(1..12), Some(1)),
            (Direction::InputGrad, rng.random_range(1..300), 64 * rng.random_range(3..12), 8 * rng.random_range(1..60), Some(3)),
            (Direction::Forward, rng.random_range(1..300), rng.random_range(1..300), 64 * 7, Some(3)),
            (Direction::InputGrad, rng.random_range(1..300), 64, 8 * rng.random_range(1..60), None),
        ];
        for (case, (product, m, n, k, parts)) in cases.into_iter().enumerate() {
            let (dtype, name, bound) = if case % 2 == 0 { (DType::BF16, "DENSE_BF16_REL", DENSE_BF16_REL) } else { (DType::F16, "DENSE_F16_REL", DENSE_F16_REL) };
            let w = round(uniform(&mut rng, n * k, 1.0), dtype);
            let (a_cols, out_cols) = match product {
                Direction::Forward => (k, n),
                Direction::InputGrad => (n, k),
            };
            let a = round(uniform(&mut rng, m * a_cols, 1.0), dtype);
            let want = match product {
                Direction::Forward => matmul_t(&a, &w, m, n, k),
                Direction::InputGrad => matmul_dx(&a, &w, m, n, k),
            };
            let ad = upload_float(&client, &device, &a, vec![m, a_cols], dtype);
            let wd = upload_float(&client, &device, &w, vec![n, k], dtype);
            let out = poisoned(&client, &device, vec![m, out_cols], dtype);
            gemm_dense_into(&ad, &wd, product, parts, &out).unwrap();
            let what = format!("dense {product:?} {dtype:?} M={m} N={n} K={k} parts={parts:?}");
            assert_close(&what, &read_f32(&out), &want, name, bound);
        }
        let bf = |rows: usize, cols: usize, rng: &mut rand::rngs::StdRng| upload_float(&client, &device, &uniform(rng, rows * cols, 1.0), vec![rows, cols], DType::BF16);
        let (x, w) = (bf(8, 96, &mut rng), bf(40, 96, &mut rng));
        assert!(gemm_dense(&x, &w, Direction::Forward, None).is_err(), "K = 96 is not a multiple of 64");
        let (dy, w) = (bf(8, 40, &mut rng), bf(40, 64, &mut rng));
        assert!(gemm_dense(&dy, &w, Direction::InputGrad, None).is_err(), "N = 40 is not a multiple of 64");
        let w16 = upload_float(&client, &device, &uniform(&mut rng, 40 * 64, 1.0), vec![40, 64], DType::F16);
        assert!(gemm_dense(&bf(8, 64, &mut rng), &w16, Direction::Forward, None).is_err(), "W of another dtype");
    }
}
