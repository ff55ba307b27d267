//! The `wgmma` forward against the CPU reference (device): random shapes with partial row
//! tiles, both dtypes, both scale layouts, one part and split reductions, the adapter and bias
//! epilogue (the 7B `k_proj` shape among them); the input gradient with and without its
//! added term (the 7B `k_proj` shape among them); and what each declines.

use super::launch::launch_into;
use super::Mainloop;
use crate::device::{poisoned, read_f32, upload_float, Nf4Device};
use crate::gemm::lora::reference::add_lora_bias;
use crate::gemm::wide::WideTerms;
use crate::gemv::reference::matmul_t;
use crate::testutil::{check_close, cuda, random_nf4, rng, round_bf16, synthetic_map, uniform};
use burn_backend::DType;
use crate::nf4::Nf4Owned;
use rand::rngs::StdRng;
use rand::Rng;

/// bf16 operands: the decoded weight is rounded to bf16 (<= 2^-9 relative each) and the output
/// once more; f32 accumulation (the wide kernel's bound).
const WGMMA_BF16_REL: f64 = 8e-3;
/// f16 operands: 2^-12 per rounding.
const WGMMA_F16_REL: f64 = 2e-3;

fn round(v: Vec<f32>, dtype: DType) -> Vec<f32> {
    if dtype == DType::BF16 {
        round_bf16(&v)
    } else {
        v.iter().map(|&x| half::f16::from_f32(x).to_f32()).collect()
    }
}

/// Even cases bf16, odd f16, with the bound's name and value.
fn dtype_of(case: usize) -> (DType, &'static str, f64) {
    if case % 2 == 0 {
        (DType::BF16, "WGMMA_BF16_REL", WGMMA_BF16_REL)
    } else {
        (DType::F16, "WGMMA_F16_REL", WGMMA_F16_REL)
    }
}

/// A random `[n, k]` NF4 weight in a random scale layout and block size (64 or 128), with the
/// two drawn.
fn random_weight(rng: &mut StdRng, n: usize, k: usize, map: &[f32; 256]) -> (Nf4Owned, bool, usize) {
    let double = rng.random();
    let bs = [64, 128][rng.random_range(0..2)];
    (random_nf4(rng, n, k, bs, double, map), double, bs)
}

#[test]
fn forward_matches_reference() {
    let Some((client, device)) = cuda() else { return };
    let mut rng = rng("wgmma forward");
    let map = synthetic_map();
    // (M, N, K, rank, bias, parts): the 7B k_proj at 2,048 tokens (split automatically), random
    // shapes with a partial last row tile, one step of the reduction, a forced uneven split.
    let cases = [
        (2048, 512, 3584, 64, true, None),
        (rng.random_range(1..600), 128 * rng.random_range(1..4), 64 * rng.random_range(1..12), 0, false, Some(1)),
        (rng.random_range(1..600), 128 * rng.random_range(1..4), 64, 0, true, Some(1)),
        (rng.random_range(257..600), 256, 64 * rng.random_range(7..12), 128, true, Some(3)),
        (rng.random_range(1..300), 384, 64 * rng.random_range(2..12), 64, false, Some(2)),
        (rng.random_range(1..300), 128, 64 * rng.random_range(2..6), 0, false, None),
    ];
    // Every case runs before the test fails, so that one run shows which variants are wrong.
    let mut failures = Vec::new();
    for (case, (m, n, k, rank, biased, parts)) in cases.into_iter().enumerate() {
        let (dtype, name, bound) = dtype_of(case);
        let (w, double, bs) = random_weight(&mut rng, n, k, &map);
        let x = round(uniform(&mut rng, m * k, 1.0), dtype);
        // The adapter's term of the same order as the base product's, so an error in it shows.
        let h = round(uniform(&mut rng, m * rank, 1.0), dtype);
        let b = round(uniform(&mut rng, n * rank, 0.5), dtype);
        let bias = round(uniform(&mut rng, n, 2.0), dtype);
        let mut want = matmul_t(&x, m, &w.view());
        add_lora_bias(&mut want, m, n, (rank > 0).then_some((&h[..], &b[..], rank)), biased.then_some(&bias[..]));
        let dev = Nf4Device::upload(&client, &device, &w.view(), &map);
        let xd = upload_float(&client, &device, &x, vec![m, k], dtype);
        let adapter = (rank > 0).then(|| (upload_float(&client, &device, &h, vec![m, rank], dtype), upload_float(&client, &device, &b, vec![n, rank], dtype)));
        let biasd = upload_float(&client, &device, &bias, vec![n], dtype);
        let terms = WideTerms { lora: adapter.as_ref().map(|(h, b)| (h, b, rank)), added: biased.then_some(&biasd) };
        let shift = dev.check("wgmma test").unwrap();
        for mainloop in [Mainloop::Shared, Mainloop::Registers] {
            let y = poisoned(&client, &device, vec![m, n], dtype);
            launch_into("wgmma test", &xd, &dev, &y, terms, shift, false, parts, mainloop).unwrap();
            let what = format!("wgmma {mainloop:?} {dtype:?} M={m} N={n} K={k} rank={rank} bias={biased} parts={parts:?} double={double} blocksize={bs}");
            failures.extend(check_close(&what, &read_f32(&y), &want, name, bound).err());
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn declines_what_it_does_not_take() {
    let Some((client, device)) = cuda() else { return };
    let mut rng = rng("wgmma declines");
    let map = synthetic_map();
    let none = WideTerms { lora: None, added: None };
    for (n, k, bs, dtype) in [(192, 128, 64, DType::BF16), (128, 96, 32, DType::BF16), (128, 128, 32, DType::BF16), (128, 128, 64, DType::F32)] {
        let w = random_nf4(&mut rng, n, k, bs, false, &map);
        let dev = Nf4Device::upload(&client, &device, &w.view(), &map);
        let xd = upload_float(&client, &device, &uniform(&mut rng, 8 * k, 1.0), vec![8, k], dtype);
        let y = poisoned(&client, &device, vec![8, n], dtype);
        let shift = dev.check("wgmma test").unwrap();
        assert!(launch_into("wgmma test", &xd, &dev, &y, none, shift, false, None, Mainloop::DEFAULT).is_err(), "N {n} K {k} blocks {bs} {dtype:?}");
    }
}

#[test]
fn input_gradient_matches_reference() {
    use crate::gemm_dx::reference::matmul_dx;
    let Some((client, device)) = cuda() else { return };
    let mut rng = rng("wgmma dx");
    let map = synthetic_map();
    // (M, N, K, addend): the 7B k_proj's dX at 2,048 tokens, a 56-step reduction (the 7B
    // down_proj's own would keep the CPU reference busy for minutes), random shapes with a
    // partial last row tile and one step of the reduction.
    let cases = [
        (2048, 512, 3584, true),
        (512, 3584, 1024, false),
        (rng.random_range(1..600), 64 * rng.random_range(1..12), 128 * rng.random_range(1..4), false),
        (rng.random_range(1..600), 64, 128 * rng.random_range(1..4), true),
        (rng.random_range(257..600), 64 * rng.random_range(2..12), 256, true),
    ];
    let mut failures = Vec::new();
    for (case, (m, n, k, added)) in cases.into_iter().enumerate() {
        let (dtype, name, bound) = dtype_of(case);
        let (w, double, bs) = random_weight(&mut rng, n, k, &map);
        let dy = round(uniform(&mut rng, m * n, 1.0), dtype);
        let add = round(uniform(&mut rng, m * k, 1.0), dtype);
        let mut want = matmul_dx(&dy, m, &w.view());
        if added {
            want.iter_mut().zip(&add).for_each(|(w, a)| *w += a);
        }
        let dev = Nf4Device::upload(&client, &device, &w.view(), &map);
        let dyd = upload_float(&client, &device, &dy, vec![m, n], dtype);
        let addd = upload_float(&client, &device, &add, vec![m, k], dtype);
        let terms = WideTerms { lora: None, added: added.then_some(&addd) };
        let shift = dev.check("wgmma test").unwrap();
        let dx = poisoned(&client, &device, vec![m, k], dtype);
        launch_into("wgmma test", &dyd, &dev, &dx, terms, shift, true, None, Mainloop::Shared).unwrap();
        let what = format!("wgmma dX {dtype:?} M={m} N={n} K={k} addend={added} double={double} blocksize={bs}");
        failures.extend(check_close(&what, &read_f32(&dx), &want, name, bound).err());
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    // The registers mainloop has no dX; K = 192 is not whole tiles.
    let w = random_nf4(&mut rng, 64, 192, 64, false, &map);
    let dev = Nf4Device::upload(&client, &device, &w.view(), &map);
    let dyd = upload_float(&client, &device, &uniform(&mut rng, 8 * 64, 1.0), vec![8, 64], DType::BF16);
    let dx = poisoned(&client, &device, vec![8, 192], DType::BF16);
    let none = WideTerms { lora: None, added: None };
    assert!(launch_into("wgmma test", &dyd, &dev, &dx, none, 6, true, None, Mainloop::Shared).is_err(), "K = 192");
    let w = random_nf4(&mut rng, 64, 128, 64, false, &map);
    let dev = Nf4Device::upload(&client, &device, &w.view(), &map);
    let dx = poisoned(&client, &device, vec![8, 128], DType::BF16);
    assert!(launch_into("wgmma test", &dyd, &dev, &dx, none, 6, true, None, Mainloop::Registers).is_err(), "registers mainloop");
}
