//! Dropout: the reference's mask statistics (CPU), the kernel against the reference bit for
//! bit on random tensors of awkward lengths (device).

use super::reference::{dropout, keep_mask, mix, threshold};
use crate::testutil::{rng, uniform};
use rand::Rng;

/// Dropped fraction within this many standard deviations of `p` (binomial): a correct mask
/// fails it about once in 1.7 million runs.
const DROP_RATE_SIGMAS: f64 = 5.0;

fn random_seed(r: &mut impl Rng) -> [i64; 4] {
    [0; 4].map(|_: i64| r.random_range(0..65536))
}

/// `(dropped fraction, bound)` for `n` elements at probability `p`.
fn drop_rate(mask: &[bool], p: f64) -> (f64, f64) {
    let n = mask.len() as f64;
    let dropped = mask.iter().filter(|&&k| !k).count() as f64 / n;
    (dropped, DROP_RATE_SIGMAS * (p * (1.0 - p) / n).sqrt())
}

#[test]
fn masks_drop_at_the_rate_asked_independently_per_seed_and_element() {
    let mut r = rng("dropout masks");
    let n = 1 << 20;
    for p in [0.05, 0.1, 0.5, 0.9] {
        let (s1, s2) = (random_seed(&mut r), random_seed(&mut r));
        let (m1, m2) = (keep_mask(n, s1, p), keep_mask(n, s2, p));
        let (rate, bound) = drop_rate(&m1, p);
        assert!((rate - p).abs() < bound, "p {p}: dropped {rate} (bound +-{bound:.2e}, seed {s1:?})");
        // Two seeds: both drop an element with probability p^2 if the masks are independent.
        let both = m1.iter().zip(&m2).filter(|(a, b)| !**a && !**b).count() as f64 / n as f64;
        let b2 = DROP_RATE_SIGMAS * (p * p * (1.0 - p * p) / n as f64).sqrt();
        assert!((both - p * p).abs() < b2, "p {p}: seeds {s1:?} and {s2:?} both drop {both} (p^2 = {}, bound {b2:.2e})", p * p);
        // Neighbours (the elements one thread handles together): also p^2.
        let pairs = m1.windows(2).filter(|w| !w[0] && !w[1]).count() as f64 / (n - 1) as f64;
        assert!((pairs - p * p).abs() < b2, "p {p}: adjacent elements both dropped {pairs} (p^2 = {})", p * p);
        // A seed differing in one of its 64 bits gives another mask.
        let mut s3 = s1;
        s3[r.random_range(0..4)] ^= 1 << r.random_range(0..16);
        let same = keep_mask(n, s3, p).iter().zip(&m1).filter(|(a, b)| a == b).count() as f64 / n as f64;
        let agree = p * p + (1.0 - p) * (1.0 - p);
        assert!((same - agree).abs() < 0.01, "p {p}: seeds {s1:?} / {s3:?} agree on {same} of elements (independent: {agree})");
    }
}

#[test]
fn reference_scales_kept_elements_and_zeros_the_rest() {
    let mut r = rng("dropout reference");
    let x: Vec<f32> = uniform(&mut r, 10_000, 2.0).into_iter().map(|v| v + 3.0f32.copysign(v)).collect();
    let seed = random_seed(&mut r);
    let y = dropout(&x, seed, 0.25);
    let mask = keep_mask(x.len(), seed, 0.25);
    for ((&xv, &yv), k) in x.iter().zip(&y).zip(mask) {
        assert_eq!(yv, if k { xv * (1.0f32 / 0.75) } else { 0.0 }, "x {xv}");
    }
    assert_eq!(keep_mask(1000, seed, 0.0), vec![true; 1000], "p = 0 keeps everything");
    assert_eq!(threshold(0.5), 1 << 31);
    // mix is a bijection on a sample (no two inputs collide).
    let mut h: Vec<u32> = (0..1u32 << 20).map(mix).collect();
    h.sort_unstable();
    h.dedup();
    assert_eq!(h.len(), 1 << 20);
}

#[cfg(feature = "launch")]
mod device {
    use super::random_seed;
    use crate::device::{poisoned, read_f32, round_to, upload_bytes, upload_float};
    use crate::dropout::{dropout, dropout_into, dropout_split, reference};
    use crate::testutil::{rng, uniform};
    use burn_backend::DType;
    use burn_cubecl::tensor::CubeTensor;
    use burn_cubecl::CubeRuntime;
    use cubecl::client::ComputeClient;
    use rand::Rng;


    fn upload_seed<R: CubeRuntime>(client: &ComputeClient<R>, device: &R::Device, seed: [i64; 4]) -> CubeTensor<R> {
        let bytes: Vec<u8> = seed.iter().flat_map(|&v| (v as i32).to_le_bytes()).collect();
        upload_bytes(client, device, &bytes, vec![4], DType::I32)
    }

    /// The kernel's output equals the reference's exactly (the mask bit for bit, the kept
    /// values as the same f32 product rounded once to the dtype): the bound is zero mismatches.
    fn kernel_matches_reference<R: CubeRuntime>(client: &ComputeClient<R>, device: &R::Device, dtypes: &[DType], big: usize) {
        let mut r = rng("dropout kernel");
        for n in [big, 1_000_003, 7, r.random_range(8..100_000)] {
            // Never zero: |x| in [1, 3), so a zero in the output is a dropped element.
            let x: Vec<f32> = uniform(&mut r, n, 2.0).into_iter().map(|v| v + 1.0f32.copysign(v)).collect();
            let p = [0.05, 0.1, 0.5][r.random_range(0..3)];
            let seed = random_seed(&mut r);
            for &dtype in dtypes {
                let xr = round_to(&x, dtype);
                let want = round_to(&reference::dropout(&xr, seed, p), dtype);
                let xd = upload_float(client, device, &x, vec![n], dtype);
                let y = poisoned(client, device, vec![n], dtype);
                dropout_into(&xd, &upload_seed(client, device, seed), &y, p).unwrap();
                let got = read_f32(&y);
                let bad = got.iter().zip(&want).filter(|(g, w)| g.to_bits() != w.to_bits()).count();
                println!("dropout {dtype:?} n={n} p={p}: {bad} elements differ from the reference (bound 0)");
                assert_eq!(bad, 0, "dropout {dtype:?} n={n} p={p} seed {seed:?}: first at {:?}", got.iter().zip(&want).position(|(g, w)| g.to_bits() != w.to_bits()));
            }
        }
        // Split into column slices (the LoRA branch's split-K operand): the same values in the
        // `[parts, rows, cols / parts]` layout, at down_proj's split and a random one.
        let big_rows = big / 18944;
        for (rows, cols, parts) in [(big_rows, 18944, 8), (r.random_range(1..300), 8 * r.random_range(1..40) * 4, 4)] {
            let x: Vec<f32> = uniform(&mut r, rows * cols, 2.0).into_iter().map(|v| v + 1.0f32.copysign(v)).collect();
            let seed = random_seed(&mut r);
            for &dtype in dtypes {
                let xr = round_to(&x, dtype);
                let want = reference::split_columns(&round_to(&reference::dropout(&xr, seed, 0.1), dtype), rows, cols, parts);
                let xd = upload_float(client, device, &x, vec![rows, cols], dtype);
                let y = dropout_split(&xd, &upload_seed(client, device, seed), 0.1, parts).unwrap();
                assert_eq!(y.meta.shape().iter().copied().collect::<Vec<_>>(), vec![parts, rows, cols / parts]);
                let got = read_f32(&y);
                let bad = got.iter().zip(&want).filter(|(g, w)| g.to_bits() != w.to_bits()).count();
                println!("dropout split {dtype:?} [{rows}, {cols}] in {parts}: {bad} elements differ from the reference (bound 0)");
                assert_eq!(bad, 0, "dropout split {dtype:?} [{rows}, {cols}] in {parts}, seed {seed:?}");
            }
        }
        // The allocating entry point on a matrix; bad seeds and probabilities are refused.
        let x = uniform(&mut r, 37 * 1003, 1.0);
        let xd = upload_float(client, device, &x, vec![37, 1003], DType::F32);
        let seed = random_seed(&mut r);
        let y = dropout(&xd, &upload_seed(client, device, seed), 0.3).unwrap();
        assert_eq!(read_f32(&y), reference::dropout(&x, seed, 0.3));
        let floats = upload_float(client, device, &[1.0; 4], vec![4], DType::F32);
        assert!(dropout(&xd, &floats, 0.3).is_err(), "f32 seed");
        assert!(dropout(&xd, &upload_seed(client, device, seed), 1.0).is_err(), "p = 1");
        assert!(dropout_split(&xd, &upload_seed(client, device, seed), 0.3, 17).is_err(), "1,003 columns in 17 slices of 59");
    }

    #[cfg(feature = "cuda")]
    #[test]
    fn dropout_kernel_on_cuda() {
        let Some((client, device)) = crate::testutil::cuda() else { return };
        kernel_matches_reference(&client, &device, &[DType::F32, DType::BF16], 2048 * 18944);
    }

    /// WGSL has no bf16: f32 and (where the adapter has it) f16.
    #[cfg(feature = "wgpu")]
    #[test]
    fn dropout_kernel_on_wgpu() {
        let Some((client, device)) = crate::testutil::wgpu() else { return };
        let dtypes = crate::testutil::wgpu_float_dtypes(&client);
        kernel_matches_reference(&client, &device, &dtypes, 2048 * 3584);
    }
}
