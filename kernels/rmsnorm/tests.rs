//! RMSNorm: the reference's gradient against finite differences (CPU), the kernels against the
//! reference on random rows of awkward widths and magnitudes (device: CUDA, and wgpu through
//! lavapipe on a CPU).

use super::reference::{rmsnorm_backward, rmsnorm_forward};
use crate::testutil::{assert_close, rng, uniform};
use rand::rngs::StdRng;
use rand::Rng;

/// `x [rows, hidden]` uniform in [-2, 2) with row `i % 3 == 1` scaled by 100 and `i % 3 == 2`
/// by 1e-3 (the norm must not care), `w` in [0.5, 1.5), `dy` in [-1, 1).
fn inputs(rng: &mut StdRng, rows: usize, hidden: usize) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
    let mut x = uniform(rng, rows * hidden, 2.0);
    for (i, row) in x.chunks_mut(hidden).enumerate() {
        let s = [1.0, 100.0, 1e-3][i % 3];
        row.iter_mut().for_each(|v| *v *= s);
    }
    let w = (0..hidden).map(|_| rng.random_range(0.5f32..1.5)).collect();
    (x, w, uniform(rng, rows * hidden, 1.0))
}

/// Central differences of the f32 reference (steps of 1e-3 of the row's RMS): the outputs'
/// f32 rounding over the step (~6e-5) plus the O(h^2) truncation.
const RMSNORM_FD_REL: f64 = 1e-3;
const EPS: f64 = 1e-6;

#[test]
fn rmsnorm_reference_gradient_matches_finite_differences() {
    let mut r = rng("rmsnorm reference fd");
    let (rows, hidden) = (3, 11);
    let (x, w, dy) = inputs(&mut r, rows, hidden);
    let dx = rmsnorm_backward(&x, &w, &dy, EPS);
    let loss = |x: &[f32]| -> f64 { rmsnorm_forward(x, &w, EPS, |v| v).iter().zip(&dy).map(|(&y, &g)| y as f64 * g as f64).sum() };
    // Steps of 1e-3 of the row's RMS (the scale the norm divides by): a step relative to the
    // element itself is tiny for small elements, and the f32 outputs' rounding over it is not.
    let rms: Vec<f32> = x.chunks(hidden).map(|r| (r.iter().map(|&v| v as f64 * v as f64).sum::<f64>() / hidden as f64).sqrt() as f32).collect();
    let fd: Vec<f32> = (0..x.len())
        .map(|i| {
            let (mut plus, mut minus) = (x.clone(), x.clone());
            let h = 1e-3 * rms[i / hidden];
            plus[i] += h;
            minus[i] -= h;
            ((loss(&plus) - loss(&minus)) / (plus[i] as f64 - minus[i] as f64)) as f32
        })
        .collect();
    // Rows of very different magnitudes: compare each row on its own scale.
    for row in 0..rows {
        let s = row * hidden..(row + 1) * hidden;
        assert_close(&format!("rmsnorm reference dx row {row} vs finite differences"), &dx[s.clone()], &fd[s], "RMSNORM_FD_REL", RMSNORM_FD_REL);
    }
    // With a unit weight (and an eps far below every row's mean square) each output row has
    // mean square 1, whatever the row's scale.
    let y = rmsnorm_forward(&x, &vec![1.0; hidden], 1e-12, |v| v);
    for row in y.chunks(hidden) {
        let ms = row.iter().map(|&v| v as f64 * v as f64).sum::<f64>() / hidden as f64;
        assert!((ms - 1.0).abs() < 1e-3, "unit weight: mean square {ms}");
    }
}

#[cfg(feature = "launch")]
mod device {
    use super::{inputs, EPS};
    use crate::device::{poisoned, read_f32, upload_float};
    use crate::rmsnorm::{reference, rmsnorm_backward, rmsnorm_backward_into, rmsnorm_forward, rmsnorm_forward_into};
    use crate::testutil::{assert_close, rng};
    use burn_backend::DType;
    use burn_cubecl::CubeRuntime;
    use cubecl::client::ComputeClient;
    use rand::Rng;

    /// f32: the reference's f64 math rounded once, against the device's f32 row sums over up
    /// to 3,584 elements (measured ~1e-7 on lavapipe).
    const RMSNORM_F32_REL: f64 = 1e-5;
    /// bf16 / f16: outputs rounded once or twice (half an ulp of bf16 is 2^-9 = 2.0e-3
    /// relative), from inputs the reference sees rounded the same way.
    const RMSNORM_HALF_REL: f64 = 8e-3;

    fn rounding(dtype: DType) -> fn(f32) -> f32 {
        match dtype {
            DType::BF16 => |v| half::bf16::from_f32(v).to_f32(),
            DType::F16 => |v| half::f16::from_f32(v).to_f32(),
            _ => |v| v,
        }
    }

    /// `big`: the largest row count (2,048 tokens of the 7B on CUDA; fewer on lavapipe).
    fn kernels_match_reference<R: CubeRuntime>(client: &ComputeClient<R>, device: &R::Device, dtypes: &[DType], big: usize) {
        let mut r = rng("rmsnorm kernels");
        // The 7B hidden size (16-byte vectors), an odd width (scalar loads), a narrow one and
        // a random one.
        let wide = r.random_range(1..5000);
        for (rows, hidden) in [(big, 3584), (37, 1003), (5, 8), (3, wide)] {
            let (x, w, dy) = inputs(&mut r, rows, hidden);
            for &dtype in dtypes {
                let (name, bound) = if dtype == DType::F32 { ("RMSNORM_F32_REL", RMSNORM_F32_REL) } else { ("RMSNORM_HALF_REL", RMSNORM_HALF_REL) };
                let round = rounding(dtype);
                let rv = |v: &[f32]| -> Vec<f32> { v.iter().map(|&a| round(a)).collect() };
                let (xr, wr, dyr) = (rv(&x), rv(&w), rv(&dy));
                let shape = vec![rows, hidden];
                let (dx_, dw, ddy) = (upload_float(client, device, &x, shape.clone(), dtype), upload_float(client, device, &w, vec![hidden], dtype), upload_float(client, device, &dy, shape.clone(), dtype));
                let what = format!("{dtype:?} [{rows}, {hidden}]");
                let y = poisoned(client, device, shape.clone(), dtype);
                rmsnorm_forward_into(&dx_, &dw, EPS as f32, &y).unwrap();
                assert_close(&format!("rmsnorm forward {what}"), &read_f32(&y), &reference::rmsnorm_forward(&xr, &wr, EPS, round), name, bound);
                let dx = poisoned(client, device, shape, dtype);
                rmsnorm_backward_into(&dx_, &dw, &ddy, EPS as f32, &dx).unwrap();
                assert_close(&format!("rmsnorm backward {what}"), &read_f32(&dx), &reference::rmsnorm_backward(&xr, &wr, &dyr, EPS), name, bound);
            }
        }
    }

    fn kernels_refuse_bad_operands<R: CubeRuntime>(client: &ComputeClient<R>, device: &R::Device) {
        let f = |shape: Vec<usize>, dtype| upload_float(client, device, &vec![0.5; shape.iter().product()], shape, dtype);
        let (x, w) = (f(vec![4, 8], DType::F32), f(vec![8], DType::F32));
        assert!(rmsnorm_forward(&x, &f(vec![4], DType::F32), 1e-6).is_err(), "weight width");
        assert!(rmsnorm_forward(&x, &f(vec![2, 4], DType::F32), 1e-6).is_err(), "2-d weight");
        assert!(rmsnorm_forward(&f(vec![4, 8], DType::F16), &w, 1e-6).is_err(), "dtypes differ");
        assert!(rmsnorm_backward(&x, &w, &f(vec![8, 4], DType::F32), 1e-6).is_err(), "dy shape");
        let mut transposed = f(vec![8, 8], DType::F32);
        transposed.meta.swap(0, 1);
        assert!(rmsnorm_forward(&transposed, &w, 1e-6).is_err(), "not contiguous");
        let ints = crate::device::upload_bytes(client, device, &[0u8; 128], vec![4, 8], DType::U32);
        assert!(rmsnorm_forward(&ints, &crate::device::upload_bytes(client, device, &[0u8; 32], vec![8], DType::U32), 1e-6).is_err(), "u32");
        assert!(rmsnorm_forward(&x, &w, 1e-6).is_ok(), "the valid call");
    }

    #[cfg(feature = "cuda")]
    #[test]
    fn rmsnorm_kernels_on_cuda() {
        let Some((client, device)) = crate::testutil::cuda() else { return };
        kernels_match_reference(&client, &device, &[DType::F32, DType::BF16, DType::F16], 2048);
        kernels_refuse_bad_operands(&client, &device);
    }

    /// WGSL has no bf16: f32 and (where the adapter has it) f16.
    #[cfg(feature = "wgpu")]
    #[test]
    fn rmsnorm_kernels_on_wgpu() {
        let Some((client, device)) = crate::testutil::wgpu() else { return };
        let dtypes = crate::testutil::wgpu_float_dtypes(&client);
        kernels_match_reference(&client, &device, &dtypes, 300);
        kernels_refuse_bad_operands(&client, &device);
    }
}
