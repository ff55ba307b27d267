//! GEMV: the reference against a plain dot product (CPU), the kernel against the reference
//! for every M in 1..=8 on random weights and inputs (device).

use super::reference::matmul_t;
use crate::testutil::{random_nf4, rel_l2, rng, synthetic_map, uniform};

#[test]
fn reference_is_x_times_dequantized_w_transposed() {
    let mut rng = rng("gemv reference");
    let w = random_nf4(&mut rng, 5, 96, 32, true, &synthetic_map());
    let x = uniform(&mut rng, 2 * 96, 1.0);
    let y = matmul_t(&x, 2, &w.view());
    let dense = crate::dequant::reference::dequantize(&w.view());
    for r in 0..2 {
        for c in 0..5 {
            let expect: f32 = (0..96).map(|i| x[r * 96 + i] * dense[c * 96 + i]).sum();
            assert!((y[r * 5 + c] - expect).abs() <= 1e-5 * (1.0 + expect.abs()), "[{r}, {c}]");
        }
    }
    assert!(rel_l2(&y, &y) == 0.0);
}

#[cfg(feature = "cuda")]
mod device {
    use crate::device::{poisoned, read_f32, upload_float, Nf4Device};
    use crate::gemv::{gemv_into, reference::matmul_t, MAX_M};
    use crate::testutil::{assert_close, cuda, random_nf4, rng, round_bf16, synthetic_map, uniform};
    use burn_backend::DType;
    use rand::Rng;

    /// f32: the same products summed in another order (lanes, then a plane sum).
    const GEMV_F32_REL: f64 = 1e-5;
    /// bf16 input and output: the output rounding (<= 2^-9 relative) dominates; inputs are
    /// rounded to bf16 before the reference sees them.
    const GEMV_BF16_REL: f64 = 5e-3;

    #[test]
    fn kernel_matches_reference_for_every_decode_batch() {
        let Some((client, device)) = cuda() else { return };
        let mut rng = rng("gemv kernel");
        let map = synthetic_map();
        for m in 1..=MAX_M {
            for (dtype, name, bound) in [(DType::F32, "GEMV_F32_REL", GEMV_F32_REL), (DType::BF16, "GEMV_BF16_REL", GEMV_BF16_REL)] {
                let double = rng.random();
                // N not a multiple of the rows a cube covers; K a multiple of 32 only.
                let n = rng.random_range(1..300);
                let k = 32 * rng.random_range(1..120);
                let bs = [32, 64, 128][rng.random_range(0..3)];
                let w = random_nf4(&mut rng, n, k, bs, double, &map);
                let x = round_bf16(&uniform(&mut rng, m * k, 1.0));
                let dev = Nf4Device::upload(&client, &device, &w.view(), &map);
                let xd = upload_float(&client, &device, &x, vec![m, k], dtype);
                let y = poisoned(&client, &device, vec![m, n], dtype);
                gemv_into(&xd, &dev, &y).unwrap();
                let what = format!("gemv {dtype:?} double={double} M={m} N={n} K={k}");
                assert_close(&what, &read_f32(&y), &matmul_t(&x, m, &w.view()), name, bound);
            }
        }
    }

    #[test]
    fn kernel_matches_reference_at_a_model_shape() {
        let Some((client, device)) = cuda() else { return };
        let mut rng = rng("gemv model shape");
        let map = synthetic_map();
        let (n, k) = (512, 3584);
        let w = random_nf4(&mut rng, n, k, 64, true, &map);
        let x = round_bf16(&uniform(&mut rng, k, 1.0));
        let dev = Nf4Device::upload(&client, &device, &w.view(), &map);
        let xd = upload_float(&client, &device, &x, vec![1, k], DType::BF16);
        let y = poisoned(&client, &device, vec![1, n], DType::BF16);
        gemv_into(&xd, &dev, &y).unwrap();
        assert_close("gemv bf16 [1, 3584] x [512, 3584]^T", &read_f32(&y), &matmul_t(&x, 1, &w.view()), "GEMV_BF16_REL", GEMV_BF16_REL);
    }
}
