//! Split-K sum: the reference by hand (CPU), the kernel against the reference on random
//! partials of the model's and awkward shapes in every dtype pair (device; Vulkan on
//! lavapipe in CI, CUDA on the GPU).

use super::reference::{splitk_operand, splitk_sum, Split};

#[test]
fn reference_sums_each_group_over_its_parts() {
    // outer 2, parts 3, inner 2: x[o, p, i] = 100 o + 10 p + i.
    let x: Vec<f32> = (0..2).flat_map(|o| (0..3).flat_map(move |p| (0..2).map(move |i| (100 * o + 10 * p + i) as f32))).collect();
    let got = splitk_sum(&x, Split { outer: 2, parts: 3, inner: 2 }, 0.5);
    // sum_p (100 o + 10 p + i) = 300 o + 30 + 3 i, halved.
    assert_eq!(got, vec![15.0, 16.5, 165.0, 166.5]);
}

#[test]
fn reference_operand_takes_column_slices_as_batches() {
    // 2 rows x 4 columns in 2 slices: x[r, c] = 10 r + c.
    let x: Vec<f32> = (0..2).flat_map(|r| (0..4).map(move |c| (10 * r + c) as f32)).collect();
    assert_eq!(splitk_operand(&x, 2, 4, 2), vec![0.0, 1.0, 10.0, 11.0, 2.0, 3.0, 12.0, 13.0]);
}

#[cfg(feature = "launch")]
mod device {
    use crate::device::{poisoned, read_f32, round_to, upload_float};
    use crate::splitk_sum::{reference, splitk_operand, splitk_operand_into, splitk_sum, splitk_sum_into, Split};
    use crate::testutil::{assert_close, rng, uniform};
    use burn_backend::DType;
    use burn_cubecl::CubeRuntime;
    use cubecl::client::ComputeClient;
    use rand::Rng;

    /// f32 sums of up to 16 partials against f64 (a few ulps of f32).
    const SPLITK_F32_REL: f64 = 1e-6;
    /// A bf16 / f16 output rounded once (half an ulp of bf16 is 2^-9 = 2.0e-3).
    const SPLITK_HALF_REL: f64 = 8e-3;


    /// Every `(partials, output)` dtype pair in `pairs`, on LoRA's split shapes (`[8 parts,
    /// 2048 x 64]`, the weight gradient's `[16, 64 x 3584]`), attention's grouped sum (outer 4
    /// groups of 7 heads), an odd inner size (scalar loads) and a random shape.
    fn kernel_matches_reference<R: CubeRuntime>(client: &ComputeClient<R>, device: &R::Device, pairs: &[(DType, DType)]) {
        let mut r = rng("split-K sum kernel");
        let splits = [
            Split { outer: 1, parts: 8, inner: 2048 * 64 },
            Split { outer: 1, parts: 16, inner: 64 * 3584 },
            Split { outer: 4, parts: 7, inner: 128 * 96 },
            Split { outer: 3, parts: 5, inner: 1001 },
            Split { outer: r.random_range(1..5), parts: r.random_range(1..17), inner: r.random_range(1..5000) },
        ];
        for split in splits {
            let x = uniform(&mut r, split.outer * split.parts * split.inner, 2.0);
            let scale: f32 = r.random_range(0.1..4.0);
            for &(xd, od) in pairs {
                let want = reference::splitk_sum(&round_to(&x, xd), split, scale);
                let out = poisoned(client, device, vec![split.outer * split.inner], od);
                splitk_sum_into(&upload_float(client, device, &x, vec![split.outer * split.parts * split.inner], xd), split, scale, &out).unwrap();
                let (name, bound) = if od == DType::F32 { ("SPLITK_F32_REL", SPLITK_F32_REL) } else { ("SPLITK_HALF_REL", SPLITK_HALF_REL) };
                assert_close(&format!("split-K sum {xd:?} -> {od:?} {split:?}"), &read_f32(&out), &want, name, bound);
            }
        }
        // The allocating entry point, and refusals.
        let split = Split { outer: 2, parts: 3, inner: 40 };
        let x = uniform(&mut r, 240, 1.0);
        let dx = upload_float(client, device, &x, vec![2, 3, 40], DType::F32);
        let out = splitk_sum(&dx, split, 1.0, DType::F32).unwrap();
        assert_close("split-K sum allocating", &read_f32(&out), &reference::splitk_sum(&x, split, 1.0), "SPLITK_F32_REL", SPLITK_F32_REL);
        assert!(splitk_sum(&dx, Split { parts: 4, ..split }, 1.0, DType::F32).is_err(), "wrong size");
        assert!(splitk_sum(&dx, Split { outer: 6, parts: 0, ..split }, 1.0, DType::F32).is_err(), "no parts");
        assert!(splitk_sum(&dx, split, 1.0, DType::I32).is_err(), "integer output");
        let mut transposed = upload_float(client, device, &x, vec![6, 40], DType::F32);
        transposed.meta.swap(0, 1);
        assert!(splitk_sum(&transposed, split, 1.0, DType::F32).is_err(), "not contiguous");
    }

    /// A copy: every element lands exactly where the reference puts it.
    const OPERAND_REL: f64 = 0.0;

    /// The operand layout in every dtype of `dtypes` on LoRA's cut gradients (`gate_proj`'s
    /// 18,944 columns in 8 slices, the hidden 3,584 in 8), the head's, an 8-wide slice and a
    /// random shape; values already rounded to the dtype, so the copy must be exact.
    fn operand_matches_reference<R: CubeRuntime>(client: &ComputeClient<R>, device: &R::Device, dtypes: &[DType]) {
        let mut r = rng("split-K operand kernel");
        let parts = r.random_range(1..9);
        let cases = [(64, 18_944, 8), (300, 3_584, 8), (256, 896, 2), (5, 16, 2), (r.random_range(1..200), 8 * parts * r.random_range(1..40), parts)];
        for (rows, cols, parts) in cases {
            for &dt in dtypes {
                let x = round_to(&uniform(&mut r, rows * cols, 3.0), dt);
                let want = reference::splitk_operand(&x, rows, cols, parts);
                let out = poisoned(client, device, vec![parts, rows, cols / parts], dt);
                splitk_operand_into(&upload_float(client, device, &x, vec![rows, cols], dt), parts, &out).unwrap();
                assert_close(&format!("split-K operand {dt:?} {rows} x {cols} in {parts}"), &read_f32(&out), &want, "OPERAND_REL", OPERAND_REL);
            }
        }
        let x = upload_float(client, device, &uniform(&mut r, 6 * 64, 1.0), vec![6, 64], DType::F32);
        assert_eq!(splitk_operand(&x, 4).unwrap().meta.shape().iter().copied().collect::<Vec<_>>(), vec![4, 6, 16], "allocating entry point");
        assert!(splitk_operand(&x, 3).is_err(), "64 columns in 3 slices");
        assert!(splitk_operand(&x, 16).is_err(), "slices of 4 columns");
        let mut transposed = upload_float(client, device, &uniform(&mut r, 64 * 64, 1.0), vec![64, 64], DType::F32);
        transposed.meta.swap(0, 1);
        assert!(splitk_operand(&transposed, 2).is_err(), "not contiguous");
    }

    #[cfg(feature = "cuda")]
    #[test]
    fn splitk_operand_kernel_on_cuda() {
        let Some((client, device)) = crate::testutil::cuda() else { return };
        operand_matches_reference(&client, &device, &[DType::BF16, DType::F16, DType::F32]);
    }

    #[cfg(feature = "wgpu")]
    #[test]
    fn splitk_operand_kernel_on_wgpu() {
        let Some((client, device)) = crate::testutil::wgpu() else { return };
        operand_matches_reference(&client, &device, &crate::testutil::wgpu_float_dtypes(&client));
    }

    #[cfg(feature = "cuda")]
    #[test]
    fn splitk_sum_kernel_on_cuda() {
        let Some((client, device)) = crate::testutil::cuda() else { return };
        kernel_matches_reference(&client, &device, &[(DType::BF16, DType::F32), (DType::BF16, DType::BF16), (DType::F32, DType::F32), (DType::F16, DType::F16)]);
    }

    #[cfg(feature = "wgpu")]
    #[test]
    fn splitk_sum_kernel_on_wgpu() {
        let Some((client, device)) = crate::testutil::wgpu() else { return };
        let dtypes = crate::testutil::wgpu_float_dtypes(&client);
        let pairs: Vec<(DType, DType)> = dtypes.iter().flat_map(|&a| dtypes.iter().map(move |&b| (a, b))).collect();
        kernel_matches_reference(&client, &device, &pairs);
    }
}
