//! SwiGLU: the reference against finite differences and a second closed form (CPU), the
//! kernels against the reference on random tensors of awkward lengths (device).

use super::reference::{swiglu_backward, swiglu_forward};
use crate::testutil::{assert_close, rng, uniform};
use rand::rngs::StdRng;
use rand::Rng;

/// Normal-ish values (Box-Muller) of standard deviation `scale`.
fn normal(rng: &mut StdRng, n: usize, scale: f32) -> Vec<f32> {
    (0..n)
        .map(|_| {
            let (a, b): (f64, f64) = (rng.random_range(f64::EPSILON..1.0), rng.random());
            ((-2.0 * a.ln()).sqrt() * (std::f64::consts::TAU * b).cos()) as f32 * scale
        })
        .collect()
}

/// Inputs far into both saturated ends, placed first: `exp(-g)` overflows for some of them.
const EXTREMES: [f32; 7] = [0.0, 100.0, -100.0, 1e4, -1e4, 30.0, -30.0];

/// `g`, `u`, `dh` of length `n`: `g` normal of scale 3 (the sigmoid saturates on some) with
/// [`EXTREMES`] first, `u` and `dh` uniform.
fn inputs(rng: &mut StdRng, n: usize) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
    let mut g = normal(rng, n, 3.0);
    for (x, &e) in g.iter_mut().zip(&EXTREMES) {
        *x = e;
    }
    (g, uniform(rng, n, 2.0), uniform(rng, n, 1.0))
}

/// Central differences of the f32 reference with steps of ~1e-3 relative: the f32 rounding of
/// the outputs (~6e-8 relative) over the step, plus the O(h^2) truncation (measured ~1.5e-5).
const SWIGLU_FD_REL: f64 = 1e-4;
/// The same function written with tanh: f32 output rounding only.
const SWIGLU_CLOSED_FORM_REL: f64 = 1e-6;

#[test]
fn swiglu_reference_gradients_match_finite_differences() {
    let mut r = rng("swiglu reference fd");
    let n = 4000;
    let (g, u, dh) = inputs(&mut r, n);
    let (dg, du) = swiglu_backward(&g, &u, &dh);
    // d(dh * y)/dg and d(dh * y)/du per element (the function is elementwise); the step
    // actually taken is the f32 difference of the perturbed inputs.
    let fd = |x: &[f32], perturb_g: bool| -> Vec<f32> {
        let step = |v: f32| 1e-3 * v.abs().max(1.0);
        let plus: Vec<f32> = x.iter().map(|&v| v + step(v)).collect();
        let minus: Vec<f32> = x.iter().map(|&v| v - step(v)).collect();
        let (yp, ym) = if perturb_g { (swiglu_forward(&plus, &u), swiglu_forward(&minus, &u)) } else { (swiglu_forward(&g, &plus), swiglu_forward(&g, &minus)) };
        (0..n).map(|i| (dh[i] as f64 * (yp[i] as f64 - ym[i] as f64) / (plus[i] as f64 - minus[i] as f64)) as f32).collect()
    };
    assert_close("swiglu reference d gate vs finite differences", &dg, &fd(&g, true), "SWIGLU_FD_REL", SWIGLU_FD_REL);
    assert_close("swiglu reference d up vs finite differences", &du, &fd(&u, false), "SWIGLU_FD_REL", SWIGLU_FD_REL);
}

#[test]
fn swiglu_reference_matches_closed_forms_and_limits() {
    let mut r = rng("swiglu reference closed form");
    let (g, u, dh) = inputs(&mut r, 4000);
    // sigmoid(x) = (1 + tanh(x / 2)) / 2.
    let tanh_form: Vec<f32> = g.iter().zip(&u).map(|(&g, &u)| (g as f64 * 0.5 * (1.0 + (g as f64 / 2.0).tanh()) * u as f64) as f32).collect();
    assert_close("swiglu reference vs tanh form", &swiglu_forward(&g, &u), &tanh_form, "SWIGLU_CLOSED_FORM_REL", SWIGLU_CLOSED_FORM_REL);

    // Saturated ends: silu(g) -> g and -> 0; d gate -> dh u and -> 0; at 0, silu' = 1/2.
    let y = swiglu_forward(&EXTREMES, &[1.0; 7]);
    let (dg, du) = swiglu_backward(&EXTREMES, &[2.0; 7], &[3.0; 7]);
    assert!(y.iter().chain(&dg).chain(&du).all(|v| v.is_finite()), "no NaN or inf at the extremes: {y:?} {dg:?} {du:?}");
    assert_eq!((y[0], dg[0], du[0]), (0.0, 3.0, 0.0), "g = 0: y = 0, dg = dh u / 2, du = 0");
    assert_eq!((y[3], dg[3], du[3]), (1e4, 6.0, 3e4), "g = 1e4: y = g u, dg = dh u, du = dh g");
    assert_eq!((y[4], dg[4], du[4]), (0.0, 0.0, 0.0), "g = -1e4: everything 0 (-0)");
    assert_eq!(dh.len(), 4000);
}

#[cfg(feature = "launch")]
mod device {
    use super::inputs;
    use crate::device::{poisoned, read_f32, round_to, upload_float};
    use crate::swiglu::{reference, swiglu_backward, swiglu_backward_into, swiglu_forward, swiglu_forward_into};
    use crate::testutil::{assert_close, rng};
    use burn_backend::DType;
    use burn_cubecl::CubeRuntime;
    use cubecl::client::ComputeClient;
    use rand::Rng;

    /// f32: the same f32 operations as a correctly rounded f64 computation up to the device's
    /// `exp` (a few ulps) and contractions.
    const SWIGLU_F32_REL: f64 = 1e-5;
    /// bf16 / f16: the output rounded once (half an ulp of bf16 is 2^-9 = 2.0e-3 relative),
    /// from inputs the reference sees rounded the same way.
    const SWIGLU_HALF_REL: f64 = 8e-3;


    /// `big`: the largest length (the 7B MLP's on CUDA; lavapipe's buffers hold at most 128 MiB).
    fn kernels_match_reference<R: CubeRuntime>(client: &ComputeClient<R>, device: &R::Device, dtypes: &[DType], big: usize) {
        let (client, device) = (client.clone(), device.clone());
        let mut r = rng("swiglu kernels");
        // `big`, a prime, fewer elements than one vector, and a
        // random length (mostly not a multiple of 8: narrower vectors).
        for n in [big, 1_000_003, 7, r.random_range(8..100_000)] {
            let (g, u, dh) = inputs(&mut r, n);
            for &dtype in dtypes {
                let (name, bound) = if dtype == DType::F32 { ("SWIGLU_F32_REL", SWIGLU_F32_REL) } else { ("SWIGLU_HALF_REL", SWIGLU_HALF_REL) };
                let (gr, ur, dhr) = (round_to(&g, dtype), round_to(&u, dtype), round_to(&dh, dtype));
                let up = |v: &[f32]| upload_float(&client, &device, v, vec![n], dtype);
                let (dg_, du_, ddh) = (up(&g), up(&u), up(&dh));
                let y = poisoned(&client, &device, vec![n], dtype);
                swiglu_forward_into(&dg_, &du_, &y).unwrap();
                let what = format!("swiglu forward {dtype:?} n={n}");
                assert_close(&what, &read_f32(&y), &reference::swiglu_forward(&gr, &ur), name, bound);

                let (dg, du) = (poisoned(&client, &device, vec![n], dtype), poisoned(&client, &device, vec![n], dtype));
                swiglu_backward_into(&dg_, &du_, &ddh, &dg, &du).unwrap();
                let (rg, ru) = reference::swiglu_backward(&gr, &ur, &dhr);
                assert_close(&format!("swiglu d gate {dtype:?} n={n}"), &read_f32(&dg), &rg, name, bound);
                assert_close(&format!("swiglu d up {dtype:?} n={n}"), &read_f32(&du), &ru, name, bound);
            }
        }
    }

    /// A 2-d shape and the allocating entry points (what the model calls).
    fn allocating_kernels_on_a_matrix<R: CubeRuntime>(client: &ComputeClient<R>, device: &R::Device) {
        let (client, device) = (client.clone(), device.clone());
        let mut r = rng("swiglu matrix");
        let (rows, cols) = (37, 1003);
        let (g, u, dh) = inputs(&mut r, rows * cols);
        let up = |v: &[f32]| upload_float(&client, &device, v, vec![rows, cols], DType::F32);
        let y = swiglu_forward(&up(&g), &up(&u)).unwrap();
        assert_close("swiglu forward [37, 1003]", &read_f32(&y), &reference::swiglu_forward(&g, &u), "SWIGLU_F32_REL", SWIGLU_F32_REL);
        let (dg, du) = swiglu_backward(&up(&g), &up(&u), &up(&dh)).unwrap();
        let (rg, ru) = reference::swiglu_backward(&g, &u, &dh);
        assert_close("swiglu d gate [37, 1003]", &read_f32(&dg), &rg, "SWIGLU_F32_REL", SWIGLU_F32_REL);
        assert_close("swiglu d up [37, 1003]", &read_f32(&du), &ru, "SWIGLU_F32_REL", SWIGLU_F32_REL);
    }

    fn kernels_refuse_mismatched_operands<R: CubeRuntime>(client: &ComputeClient<R>, device: &R::Device) {
        let (client, device) = (client.clone(), device.clone());
        let t = |shape: Vec<usize>, dtype| upload_float(&client, &device, &vec![0.5; shape.iter().product()], shape, dtype);
        let a = t(vec![4, 8], DType::F32);
        assert!(swiglu_forward(&a, &t(vec![8, 4], DType::F32)).is_err(), "shapes differ");
        assert!(swiglu_forward(&a, &t(vec![4, 8], DType::BF16)).is_err(), "dtypes differ");
        assert!(swiglu_forward_into(&a, &a, &t(vec![32], DType::F32)).is_err(), "output shape");
        assert!(swiglu_backward(&a, &a, &t(vec![4, 8], DType::F16)).is_err(), "dh dtype");
        let mut transposed = a.clone();
        transposed.meta.swap(0, 1);
        assert!(swiglu_forward(&transposed, &transposed).is_err(), "not contiguous");
        let ints = crate::device::upload_bytes(&client, &device, &[0u8; 32], vec![4, 8], DType::U8);
        assert!(swiglu_forward(&ints, &ints).is_err(), "u8");
    }

    #[cfg(feature = "cuda")]
    #[test]
    fn swiglu_kernels_on_cuda() {
        let Some((client, device)) = crate::testutil::cuda() else { return };
        kernels_match_reference(&client, &device, &[DType::F32, DType::BF16], 2048 * 18944);
        allocating_kernels_on_a_matrix(&client, &device);
        kernels_refuse_mismatched_operands(&client, &device);
    }

    /// WGSL has no bf16: f32 and (where the adapter has it) f16.
    #[cfg(feature = "wgpu")]
    #[test]
    fn swiglu_kernels_on_wgpu() {
        let Some((client, device)) = crate::testutil::wgpu() else { return };
        let dtypes = crate::testutil::wgpu_float_dtypes(&client);
        kernels_match_reference(&client, &device, &dtypes, 2048 * 3584);
        allocating_kernels_on_a_matrix(&client, &device);
        kernels_refuse_mismatched_operands(&client, &device);
    }
}
