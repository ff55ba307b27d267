//! Masked softmax: the reference against its defining properties and finite differences (CPU),
//! the kernels against the reference on random scores and masks of awkward shapes (device).

use super::reference::{masked_softmax, masked_softmax_backward, Rows};
use crate::testutil::{assert_close, rng, uniform};
use rand::rngs::StdRng;
use rand::Rng;

/// A random layout's mask: causal after `past` cached keys (`keys = past + n`) or, with
/// `random`, each key hidden with probability 1/3 and the first row of every mask batch fully
/// hidden (a padded row: its probabilities and gradients are zeros).
fn mask(rng: &mut StdRng, layout: Rows, past: Option<usize>) -> Vec<bool> {
    let Rows { n, keys, mask_batches, .. } = layout;
    (0..mask_batches * n)
        .flat_map(|row| {
            let i = row % n;
            (0..keys).map(move |j| (i, j)).collect::<Vec<_>>()
        })
        .map(|(i, j)| match past {
            Some(past) => j > past + i,
            None => i == 0 || rng.random_range(0..3) == 0,
        })
        .collect()
}

/// Raw scores uniform in [-40, 40): at attention's scale for head dim 128 (0.088) a row's
/// exponentials span e^±3.5, so subtracting the max matters and no row is near uniform.
fn scores(rng: &mut StdRng, len: usize) -> Vec<f32> {
    uniform(rng, len, 40.0)
}

/// Central differences of the f32 reference (step 1e-2 on scores of size ~1): f32 rounding of
/// the probabilities (~6e-8) over the step plus the O(h^2) truncation.
const SOFTMAX_FD_REL: f64 = 1e-3;

#[test]
fn masked_softmax_reference_rows_are_distributions_over_visible_keys() {
    let mut r = rng("masked softmax reference rows");
    // 2 batches x 3 heads x 5 rows, mask per batch; then one mask shared by both batches.
    for mask_batches in [2, 1] {
        let layout = Rows { rows: 2 * 3 * 5, keys: 9, n: 5, group: 15, mask_batches };
        let m = mask(&mut r, layout, None);
        let s = scores(&mut r, layout.rows * layout.keys);
        let p = masked_softmax(&s, &m, layout, 0.1);
        for row in 0..layout.rows {
            let mr = layout.mask_row(row);
            let hidden = &m[mr * 9..(mr + 1) * 9];
            let pr = &p[row * 9..(row + 1) * 9];
            assert!(pr.iter().zip(hidden).all(|(&p, &h)| if h { p == 0.0 } else { p > 0.0 }), "row {row}: hidden keys 0, visible keys positive: {pr:?} {hidden:?}");
            let sum: f32 = pr.iter().sum();
            let want = if hidden.iter().all(|&h| h) { 0.0 } else { 1.0 };
            assert!((sum - want).abs() < 1e-6, "row {row}: sum {sum}, expected {want}");
            // Softmax is shift-invariant: the largest visible score has the largest probability.
            if let Some((arg, _)) = s[row * 9..(row + 1) * 9].iter().enumerate().filter(|(j, _)| !hidden[*j]).max_by(|a, b| a.1.total_cmp(b.1)) {
                assert!(pr.iter().all(|&p| p <= pr[arg]), "row {row}: the largest score's probability is the largest");
            }
        }
        // Mask row of score row r: batch (r / 15) % mask_batches, query row r % 5.
        assert_eq!(layout.mask_row(17), if mask_batches == 2 { 5 + 2 } else { 2 });
    }
}

#[test]
fn masked_softmax_reference_gradient_matches_finite_differences() {
    let mut r = rng("masked softmax reference fd");
    let layout = Rows { rows: 2 * 2 * 3, keys: 7, n: 3, group: 6, mask_batches: 2 };
    let m = mask(&mut r, layout, None);
    let s: Vec<f32> = uniform(&mut r, layout.rows * layout.keys, 1.0);
    let g: Vec<f32> = uniform(&mut r, layout.rows * layout.keys, 1.0);
    let scale = 0.7;
    let (p, ds) = masked_softmax_backward(&s, &g, &m, layout, scale);
    assert_eq!(p, masked_softmax(&s, &m, layout, scale), "the backward's P is the forward's");
    // d(sum g * P)/ds by central differences, one score at a time.
    let loss = |s: &[f32]| -> f64 { masked_softmax(s, &m, layout, scale).iter().zip(&g).map(|(&p, &g)| p as f64 * g as f64).sum() };
    let fd: Vec<f32> = (0..s.len())
        .map(|i| {
            let (mut plus, mut minus) = (s.clone(), s.clone());
            plus[i] += 1e-2;
            minus[i] -= 1e-2;
            ((loss(&plus) - loss(&minus)) / (plus[i] as f64 - minus[i] as f64)) as f32
        })
        .collect();
    assert_close("masked softmax reference dS vs finite differences", &ds, &fd, "SOFTMAX_FD_REL", SOFTMAX_FD_REL);
    // Hidden keys and fully hidden rows get no gradient.
    for row in 0..layout.rows {
        let mr = layout.mask_row(row);
        for j in 0..layout.keys {
            if m[mr * layout.keys + j] {
                assert_eq!(ds[row * layout.keys + j], 0.0, "row {row} key {j} is hidden");
            }
        }
    }
}

#[cfg(feature = "launch")]
mod device {
    use super::{mask, scores};
    use crate::device::{poisoned, read_f32, round_to, upload_bytes, upload_float};
    use crate::softmax::{masked_softmax, masked_softmax_backward_into, masked_softmax_into, reference, Rows};
    use crate::testutil::{assert_close, rng, uniform};
    use burn_backend::{BoolStore, DType};
    use burn_cubecl::CubeRuntime;
    use cubecl::client::ComputeClient;
    use rand::Rng;

    /// f32: the reference's f64 math rounded once, against the device's f32 sums over up to
    /// 2,048 keys and its `exp` (a few ulps): measured 1e-7 on lavapipe.
    const SOFTMAX_F32_REL: f64 = 1e-5;
    /// bf16 / f16 storage: the outputs rounded once (half an ulp of bf16 is 2^-9 = 2.0e-3
    /// relative), from inputs the reference sees rounded the same way.
    const SOFTMAX_HALF_REL: f64 = 8e-3;

    fn mask_bytes(m: &[bool], store: BoolStore) -> Vec<u8> {
        match store {
            BoolStore::U32 => m.iter().flat_map(|&h| (h as u32).to_le_bytes()).collect(),
            _ => m.iter().map(|&h| h as u8).collect(),
        }
    }


    /// Both kernels against the reference for each `(dtype, mask storage)` in `runs`.
    fn kernels_match_reference<R: CubeRuntime>(client: &ComputeClient<R>, device: &R::Device, runs: &[(DType, BoolStore)]) {
        let mut r = rng("masked softmax kernels");
        let d = 128f32;
        // (layout, causal past or random mask): a 2,048-token plan block (4 heads; the 7B
        // has 28), a 599-token prefill and its 87-row tail after 512 cached keys (odd keys:
        // scalar loads), per-batch padding masks with fully hidden rows, one key, and a
        // random odd shape.
        let rk = r.random_range(1..300);
        let cases = [
            (Rows { rows: 4 * 512, keys: 2048, n: 512, group: 4 * 512, mask_batches: 1 }, Some(1536)),
            (Rows { rows: 4 * 599, keys: 599, n: 599, group: 4 * 599, mask_batches: 1 }, Some(0)),
            (Rows { rows: 4 * 87, keys: 599, n: 87, group: 4 * 87, mask_batches: 1 }, Some(512)),
            (Rows { rows: 3 * 6 * 5, keys: 40, n: 5, group: 6 * 5, mask_batches: 3 }, None),
            (Rows { rows: 2 * 3, keys: 1, n: 1, group: 3, mask_batches: 2 }, None),
            (Rows { rows: 2 * 7 * rk, keys: rk + 13, n: rk, group: 7 * rk, mask_batches: 1 }, Some(13)),
        ];
        for (layout, past) in cases {
            let m = mask(&mut r, layout, past);
            let len = layout.rows * layout.keys;
            let (s, dp) = (scores(&mut r, len), uniform(&mut r, len, 1.0));
            for &(dtype, store) in runs {
                let (name, bound) = if dtype == DType::F32 { ("SOFTMAX_F32_REL", SOFTMAX_F32_REL) } else { ("SOFTMAX_HALF_REL", SOFTMAX_HALF_REL) };
                let (sr, dpr) = (round_to(&s, dtype), round_to(&dp, dtype));
                let shape = vec![layout.rows, layout.keys];
                let (ds_, ddp) = (upload_float(client, device, &s, shape.clone(), dtype), upload_float(client, device, &dp, shape.clone(), dtype));
                let dm = upload_bytes(client, device, &mask_bytes(&m, store), vec![layout.mask_batches * layout.n, layout.keys], DType::Bool(store));
                let scale = d.powf(-0.5);
                let what = format!("{dtype:?} mask {store:?} rows {} keys {} n {} mask batches {}", layout.rows, layout.keys, layout.n, layout.mask_batches);

                let p = poisoned(client, device, shape.clone(), dtype);
                masked_softmax_into(&ds_, &dm, layout, scale, &p).unwrap();
                let want = reference::masked_softmax(&sr, &m, layout, scale);
                assert_close(&format!("masked softmax {what}"), &read_f32(&p), &want, name, bound);

                let (p, ds) = (poisoned(client, device, shape.clone(), dtype), poisoned(client, device, shape, dtype));
                masked_softmax_backward_into(&ds_, &ddp, &dm, layout, scale, &p, &ds).unwrap();
                let (wp, wds) = reference::masked_softmax_backward(&sr, &dpr, &m, layout, scale);
                assert_close(&format!("masked softmax backward P {what}"), &read_f32(&p), &wp, name, bound);
                assert_close(&format!("masked softmax backward dS {what}"), &read_f32(&ds), &wds, name, bound);
            }
        }
    }

    fn kernels_refuse_bad_operands<R: CubeRuntime>(client: &ComputeClient<R>, device: &R::Device, store: BoolStore) {
        let layout = Rows { rows: 8, keys: 4, n: 4, group: 8, mask_batches: 1 };
        let f = |shape: Vec<usize>, dtype| upload_float(client, device, &vec![0.5; shape.iter().product()], shape, dtype);
        let m = upload_bytes(client, device, &mask_bytes(&[false; 16], store), vec![4, 4], DType::Bool(store));
        let s = f(vec![8, 4], DType::F32);
        assert!(masked_softmax(&s, &m, layout, 0.0).is_err(), "scale 0");
        assert!(masked_softmax(&s, &m, layout, f32::NAN).is_err(), "scale NaN");
        assert!(masked_softmax(&s, &m, Rows { n: 3, ..layout }, 1.0).is_err(), "group not a multiple of n");
        assert!(masked_softmax(&s, &m, Rows { mask_batches: 2, ..layout }, 1.0).is_err(), "more mask batches than batches");
        assert!(masked_softmax(&s, &f(vec![4, 4], DType::F32), layout, 1.0).is_err(), "f32 mask");
        assert!(masked_softmax(&f(vec![4, 8], DType::F32), &m, layout, 1.0).is_err(), "keys differ");
        let mut transposed = f(vec![4, 8], DType::F32);
        transposed.meta.swap(0, 1);
        assert!(masked_softmax(&transposed, &m, layout, 1.0).is_err(), "not contiguous");
        let ints = upload_bytes(client, device, &[0u8; 128], vec![8, 4], DType::U32);
        assert!(masked_softmax(&ints, &m, layout, 1.0).is_err(), "u32 scores");
        assert!(masked_softmax(&s, &m, layout, 1.0).is_ok(), "the valid call");
    }

    #[cfg(feature = "cuda")]
    #[test]
    fn masked_softmax_kernels_match_reference_on_cuda() {
        let Some((client, device)) = crate::testutil::cuda() else { return };
        kernels_match_reference(&client, &device, &[(DType::F32, BoolStore::U8), (DType::BF16, BoolStore::U8), (DType::F16, BoolStore::U32)]);
    }

    #[cfg(feature = "cuda")]
    #[test]
    fn masked_softmax_kernels_refuse_bad_operands_on_cuda() {
        let Some((client, device)) = crate::testutil::cuda() else { return };
        kernels_refuse_bad_operands(&client, &device, BoolStore::U8);
    }

    /// WGSL has neither bf16 nor 8-bit storage: f32 and (where the adapter has it) f16 scores,
    /// u32 masks.
    #[cfg(feature = "wgpu")]
    #[test]
    fn masked_softmax_kernels_match_reference_on_wgpu() {
        let Some((client, device)) = crate::testutil::wgpu() else { return };
        let runs: Vec<_> = crate::testutil::wgpu_float_dtypes(&client).into_iter().map(|d| (d, BoolStore::U32)).collect();
        kernels_match_reference(&client, &device, &runs);
    }

    #[cfg(feature = "wgpu")]
    #[test]
    fn masked_softmax_kernels_refuse_bad_operands_on_wgpu() {
        let Some((client, device)) = crate::testutil::wgpu() else { return };
        kernels_refuse_bad_operands(&client, &device, BoolStore::U32);
    }
}
