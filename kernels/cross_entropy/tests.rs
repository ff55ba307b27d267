//! Cross-entropy: the reference against its defining properties and finite differences (CPU),
//! the kernels against the reference on random logits of the model's and awkward shapes,
//! with targets outside the vocabulary (device; Vulkan on lavapipe in CI, CUDA on the GPU).

use super::reference::{cross_entropy_backward, cross_entropy_forward};
use crate::testutil::{assert_close, rng, uniform};
use rand::rngs::StdRng;
use rand::Rng;

/// Logits uniform in `[-scale, scale)` and targets in the vocabulary.
fn inputs(r: &mut StdRng, rows: usize, vocab: usize, scale: f32) -> (Vec<f32>, Vec<i64>) {
    (uniform(r, rows * vocab, scale), (0..rows).map(|_| r.random_range(0..vocab as i64)).collect())
}

/// Central differences of the f64-inside reference in f32 (step 1e-2 on logits of size ~1).
const CE_FD_REL: f64 = 1e-3;

#[test]
fn reference_loss_is_the_negative_log_softmax_at_the_target() {
    let mut r = rng("cross-entropy reference");
    let (rows, vocab) = (6, 11);
    let (x, t) = inputs(&mut r, rows, vocab, 8.0);
    let (lse, nll) = cross_entropy_forward(&x, &t, vocab);
    for row in 0..rows {
        let xr = &x[row * vocab..(row + 1) * vocab];
        let z: f64 = xr.iter().map(|&v| (v as f64).exp()).sum();
        let want = -((xr[t[row] as usize] as f64).exp() / z).ln();
        assert!((nll[row] as f64 - want).abs() < 1e-5, "row {row}: nll {} vs -log softmax {want}", nll[row]);
        assert!((lse[row] as f64 - z.ln()).abs() < 1e-5, "row {row}: lse");
        assert!(nll[row] > 0.0, "row {row}: a probability below 1 has a positive loss");
    }
    // Shift invariance: adding a constant to a row changes lse, not the loss.
    let shifted: Vec<f32> = x.iter().map(|v| v + 100.0).collect();
    let (lse2, nll2) = cross_entropy_forward(&shifted, &t, vocab);
    for row in 0..rows {
        assert!((nll2[row] - nll[row]).abs() < 1e-4 && (lse2[row] - lse[row] - 100.0).abs() < 1e-3, "row {row}: shift");
    }
    // A target outside the vocabulary: NaN loss.
    let (_, bad) = cross_entropy_forward(&x[..vocab], &[vocab as i64], vocab);
    assert!(bad[0].is_nan());
}

#[test]
fn reference_gradient_matches_finite_differences() {
    let mut r = rng("cross-entropy reference fd");
    let (rows, vocab) = (4, 9);
    let (x, t) = inputs(&mut r, rows, vocab, 2.0);
    let g: Vec<f32> = (0..rows).map(|_| r.random_range(0.1..2.0)).collect();
    let (lse, _) = cross_entropy_forward(&x, &t, vocab);
    let dx = cross_entropy_backward(&x, &t, &lse, &g, vocab);
    let loss = |x: &[f32]| -> f64 { cross_entropy_forward(x, &t, vocab).1.iter().zip(&g).map(|(&v, &g)| v as f64 * g as f64).sum() };
    let fd: Vec<f32> = (0..x.len())
        .map(|i| {
            let (mut plus, mut minus) = (x.clone(), x.clone());
            plus[i] += 1e-2;
            minus[i] -= 1e-2;
            ((loss(&plus) - loss(&minus)) / (plus[i] as f64 - minus[i] as f64)) as f32
        })
        .collect();
    assert_close("cross-entropy reference dx vs finite differences", &dx, &fd, "CE_FD_REL", CE_FD_REL);
    // Each row's gradient sums to zero (softmax sums to one, minus the one-hot).
    for row in dx.chunks(vocab) {
        assert!(row.iter().sum::<f32>().abs() < 1e-6);
    }
}

#[cfg(feature = "launch")]
mod device {
    use super::inputs;
    use crate::cross_entropy::{cross_entropy_backward, cross_entropy_backward_into, cross_entropy_forward, cross_entropy_forward_into, reference};
    use crate::device::{poisoned, read_f32, round_to, upload_bytes, upload_f32, upload_float};
    use crate::testutil::{assert_close, rng};
    use burn_backend::DType;
    use burn_cubecl::tensor::CubeTensor;
    use burn_cubecl::CubeRuntime;
    use cubecl::client::ComputeClient;
    use rand::Rng;

    /// Loss and log-sum-exp: f32 sums over up to 152,064 exponentials against the reference's
    /// f64 math on the same rounded logits (a few ulps per term, mostly cancelling).
    const CE_LOSS_REL: f64 = 1e-5;
    /// The gradient in f32 storage.
    const CE_GRAD_F32_REL: f64 = 1e-5;
    /// The gradient in bf16 / f16 storage: rounded once (half an ulp of bf16 is 2^-9 = 2.0e-3).
    const CE_GRAD_HALF_REL: f64 = 8e-3;


    fn upload_targets<R: CubeRuntime>(client: &ComputeClient<R>, device: &R::Device, t: &[i64], dtype: DType) -> CubeTensor<R> {
        let bytes: Vec<u8> = match dtype {
            DType::I64 => t.iter().flat_map(|v| v.to_le_bytes()).collect(),
            DType::I32 => t.iter().flat_map(|&v| (v as i32).to_le_bytes()).collect(),
            _ => t.iter().flat_map(|&v| (v as u32).to_le_bytes()).collect(),
        };
        upload_bytes(client, device, &bytes, vec![t.len()], dtype)
    }

    /// Both kernels against the reference for each `(float, target)` dtype pair in `runs`, on
    /// `(rows, vocab, logit scale)` cases: Qwen2.5's vocabulary (a few rows; `big` says whether
    /// the device takes it), an odd vocabulary (scalar loads), one entry, and a random shape.
    /// Rows 1 and 2 of each case aim at an out-of-range target (-1 where signed, `vocab`).
    fn kernels_match_reference<R: CubeRuntime>(client: &ComputeClient<R>, device: &R::Device, runs: &[(DType, DType)], big: bool) {
        let mut r = rng("cross-entropy kernels");
        let mut cases = vec![(5, 1003, 6.0), (3, 1, 1.0), (r.random_range(1..40), r.random_range(2..5000), 12.0)];
        if big {
            cases.insert(0, (6, 152_064, 10.0));
        }
        for (rows, vocab, scale) in cases {
            let (x, mut t) = inputs(&mut r, rows, vocab, scale);
            if rows > 2 {
                t[1] = vocab as i64;
                t[2] = -1;
            }
            let g: Vec<f32> = (0..rows).map(|_| r.random_range(0.1..2.0)).collect();
            for &(dtype, tdtype) in runs {
                let mut t = t.clone();
                if tdtype == DType::U32 && rows > 2 {
                    t[2] = u32::MAX as i64; // -1 as u32
                }
                let xr = round_to(&x, dtype);
                let what = format!("{dtype:?} targets {tdtype:?} rows {rows} vocab {vocab}");
                let dxt = upload_float(client, device, &x, vec![rows, vocab], dtype);
                let dt = upload_targets(client, device, &t, tdtype);
                let (lse, nll) = (poisoned(client, device, vec![rows], DType::F32), poisoned(client, device, vec![rows], DType::F32));
                cross_entropy_forward_into(&dxt, &dt, &lse, &nll).unwrap();
                let (wlse, wnll) = reference::cross_entropy_forward(&xr, &t, vocab);
                let (glse, gnll) = (read_f32(&lse), read_f32(&nll));
                assert_close(&format!("cross-entropy lse {what}"), &glse, &wlse, "CE_LOSS_REL", CE_LOSS_REL);
                // Out-of-range rows: NaN both sides; the rest compared.
                let valid: Vec<usize> = (0..rows).filter(|&i| (0..vocab as i64).contains(&t[i])).collect();
                for i in (0..rows).filter(|i| !valid.contains(i)) {
                    assert!(gnll[i].is_nan(), "{what}: row {i}'s target {} is outside the vocabulary, its loss {} should be NaN", t[i], gnll[i]);
                }
                let pick = |v: &[f32]| valid.iter().map(|&i| v[i]).collect::<Vec<_>>();
                assert_close(&format!("cross-entropy nll {what}"), &pick(&gnll), &pick(&wnll), "CE_LOSS_REL", CE_LOSS_REL);

                let (name, bound) = if dtype == DType::F32 { ("CE_GRAD_F32_REL", CE_GRAD_F32_REL) } else { ("CE_GRAD_HALF_REL", CE_GRAD_HALF_REL) };
                let dx = poisoned(client, device, vec![rows, vocab], dtype);
                cross_entropy_backward_into(&dxt, &dt, &lse, &upload_f32(client, device, &g), &dx).unwrap();
                let want = reference::cross_entropy_backward(&xr, &t, &glse, &g, vocab);
                assert_close(&format!("cross-entropy dx {what}"), &read_f32(&dx), &want, name, bound);
            }
        }
    }

    fn allocating_kernels_and_refusals<R: CubeRuntime>(client: &ComputeClient<R>, device: &R::Device) {
        let mut r = rng("cross-entropy allocating");
        let (rows, vocab) = (7, 300);
        let (x, t) = inputs(&mut r, rows, vocab, 4.0);
        let dx_ = upload_float(client, device, &x, vec![rows, vocab], DType::F32);
        let dt = upload_targets(client, device, &t, DType::I32);
        let (lse, nll) = cross_entropy_forward(&dx_, &dt).unwrap();
        let (wlse, wnll) = reference::cross_entropy_forward(&x, &t, vocab);
        assert_close("cross-entropy allocating lse", &read_f32(&lse), &wlse, "CE_LOSS_REL", CE_LOSS_REL);
        assert_close("cross-entropy allocating nll", &read_f32(&nll), &wnll, "CE_LOSS_REL", CE_LOSS_REL);
        let g = upload_f32(client, device, &[0.5; 7]);
        let dx = cross_entropy_backward(&dx_, &dt, &lse, &g).unwrap();
        let want = reference::cross_entropy_backward(&x, &t, &read_f32(&lse), &[0.5; 7], vocab);
        assert_close("cross-entropy allocating dx", &read_f32(&dx), &want, "CE_GRAD_F32_REL", CE_GRAD_F32_REL);

        let f = |shape: Vec<usize>, dtype| upload_float(client, device, &vec![0.5; shape.iter().product()], shape, dtype);
        assert!(cross_entropy_forward(&f(vec![rows * vocab], DType::F32), &dt).is_err(), "1-d logits");
        assert!(cross_entropy_forward(&f(vec![rows + 1, vocab], DType::F32), &dt).is_err(), "more rows than targets");
        assert!(cross_entropy_forward(&dx_, &f(vec![rows], DType::F32)).is_err(), "f32 targets");
        let mut transposed = f(vec![vocab, rows], DType::F32);
        transposed.meta.swap(0, 1);
        assert!(cross_entropy_forward(&transposed, &dt).is_err(), "not contiguous");
        assert!(cross_entropy_backward(&dx_, &dt, &lse, &upload_f32(client, device, &[0.5, 0.5])).is_err(), "two gradients for seven rows");
        assert!(cross_entropy_backward(&dx_, &dt, &f(vec![rows], DType::F16), &g).is_err(), "f16 lse");
    }

    #[cfg(feature = "cuda")]
    #[test]
    fn cross_entropy_kernels_on_cuda() {
        let Some((client, device)) = crate::testutil::cuda() else { return };
        kernels_match_reference(&client, &device, &[(DType::BF16, DType::I32), (DType::F32, DType::I64), (DType::F16, DType::U32)], true);
        allocating_kernels_and_refusals(&client, &device);
    }

    /// WGSL has no bf16 nor 64-bit integers: f32 (and f16 where the adapter has it), i32 and
    /// u32 targets.
    #[cfg(feature = "wgpu")]
    #[test]
    fn cross_entropy_kernels_on_wgpu() {
        let Some((client, device)) = crate::testutil::wgpu() else { return };
        let runs: Vec<(DType, DType)> = crate::testutil::wgpu_float_dtypes(&client).into_iter().zip([DType::I32, DType::U32]).collect();
        kernels_match_reference(&client, &device, &runs, true);
        allocating_kernels_and_refusals(&client, &device);
    }
}
