//! 8-bit AdamW: the reference against 32-bit AdamW written out in f64 (CPU), the kernel
//! against the reference on random tensors of random lengths (device).

use super::reference::{dynamic_map, nearest, step, Adam8State, Adam8Step, BLOCK};
use crate::testutil::{rng, uniform};
use rand::Rng;

#[test]
fn maps_are_sorted_and_span_their_ranges() {
    let s = dynamic_map(true);
    let u = dynamic_map(false);
    assert!(s.windows(2).all(|w| w[0] < w[1]), "signed map strictly ascending");
    assert!(u.windows(2).all(|w| w[0] < w[1]), "unsigned map strictly ascending");
    assert_eq!((s[255], u[0], u[255]), (1.0, 0.0, 1.0));
    assert!(s[0] < -0.99 && s.contains(&0.0));
    // The smallest nonzero magnitudes are 10^-6-scaled: tiny moments keep ~1 significant digit.
    assert!(u[1] > 0.0 && u[1] < 1e-6);
}

#[test]
fn nearest_picks_the_closest_code() {
    let mut r = rng("adamw8 nearest");
    for signed in [true, false] {
        let map = dynamic_map(signed);
        for _ in 0..20_000 {
            let x: f32 = if signed { r.random_range(-1.0..=1.0) } else { r.random_range(0.0..=1.0) };
            let got = map[nearest(&map, x) as usize];
            let best = map.iter().map(|c| (c - x).abs()).fold(f32::INFINITY, f32::min);
            assert_eq!((got - x).abs(), best, "x = {x}");
        }
        assert_eq!(map[nearest(&map, 1.0) as usize], 1.0);
        assert_eq!(map[nearest(&map, 0.0) as usize], 0.0);
    }
}

/// 30 steps of the 8-bit reference stay close to 32-bit AdamW (f64 formulas): the moments are
/// rounded to ~1-2% per step (the map's spacing), and the weights follow within a small part
/// of their total movement.
#[test]
fn reference_tracks_32bit_adamw() {
    let mut r = rng("adamw8 vs adamw");
    let n = 3 * BLOCK + 77;
    let p0 = uniform(&mut r, n, 1.0);
    let (b1, b2, eps, wd, lr) = (0.9, 0.999, 1e-8, 0.01, 1e-3);
    let mut p8 = p0.clone();
    let mut st = Adam8State::zeros(n);
    let mut p: Vec<f64> = p0.iter().map(|&x| x as f64).collect();
    let (mut m, mut v) = (vec![0f64; n], vec![0f64; n]);
    for t in 1..=30 {
        // Blocks of different scales (rows of an adapter differ; neighbours within a block are
        // alike). Mixing scales 1000x apart inside one block is what the blockwise absmax cannot
        // hold: the small entries' second moments round to 0 and their updates grow, in
        // bitsandbytes as here.
        let g: Vec<f32> = (0..n).map(|i| r.random_range(-1.0f32..1.0) * [1.0, 1e-3, 0.05, 3.0][(i / BLOCK) % 4]).collect();
        step(&mut p8, &g, &mut st, &Adam8Step::new(lr, b1, b2, eps, wd, t));
        for i in 0..n {
            let gi = g[i] as f64;
            p[i] *= 1.0 - lr * wd;
            m[i] = b1 * m[i] + (1.0 - b1) * gi;
            v[i] = b2 * v[i] + (1.0 - b2) * gi * gi;
            let denom = v[i].sqrt() / (1.0 - b2.powi(t as i32)).sqrt() + eps;
            p[i] -= lr / (1.0 - b1.powi(t as i32)) * m[i] / denom;
        }
    }
    let moved: f64 = p.iter().zip(&p0).map(|(a, &b)| (a - b as f64).powi(2)).sum::<f64>().sqrt();
    let err: f64 = p.iter().zip(&p8).map(|(a, &b)| (a - b as f64).powi(2)).sum::<f64>().sqrt();
    println!("8-bit vs 32-bit AdamW after 30 steps: weight error {:.3e} of movement {:.3e}", err / moved, moved);
    assert!(err / moved < 0.05, "8-bit AdamW drifted {:.3} of the movement", err / moved);
    let (dm, dv) = st.decode();
    let rel = |a: &[f32], b: &[f64]| {
        let num: f64 = a.iter().zip(b).map(|(&x, y)| (x as f64 - y).powi(2)).sum();
        (num / b.iter().map(|y| y * y).sum::<f64>()).sqrt()
    };
    println!("moments: m {:.3e}, v {:.3e} relative L2", rel(&dm, &m), rel(&dv, &v));
    assert!(rel(&dm, &m) < 0.05 && rel(&dv, &v) < 0.05);
}

#[cfg(feature = "cuda")]
mod device {
    use super::super::kernel::{adamw8_step_into, Adam8Device};
    use super::super::reference::{step, Adam8State, Adam8Step, BLOCK};
    use crate::device::{poisoned, read_f32, upload_bytes, upload_f32};
    use crate::testutil::{assert_close, cuda, rng, uniform};
    use burn_backend::DType;
    use rand::Rng;

    /// The new weights: the same f32 operations, except that the device contracts `a * b + c`
    /// into one rounding (a few ulps of the weight).
    const ADAMW8_WEIGHT_REL: f64 = 1e-6;
    /// The update (new minus old weight): an ulp of a weight of ~0.5 is ~1e-3 of an update of
    /// ~1e-4, so one contraction difference shows here at that size (measured 1.1e-4).
    const ADAMW8_UPDATE_REL: f64 = 2e-3;
    /// The block absmax: a max over the same f32 values up to those ulps.
    const ADAMW8_ABSMAX_REL: f64 = 1e-5;
    /// Codes that differ (only where a value sits within an ulp of a midpoint between codes).
    const ADAMW8_CODE_MISMATCH: f64 = 1e-3;

    fn bytes(t: &burn_cubecl::tensor::CubeTensor<cubecl::cuda::CudaRuntime>) -> Vec<u8> {
        t.client.read_one_unchecked(t.handle.clone()).to_vec()
    }

    #[test]
    fn kernel_matches_reference() {
        let Some((client, device)) = cuda() else { return };
        let mut r = rng("adamw8 kernel");
        for case in 0..6 {
            let n: usize = if case == 0 { 5000 } else { r.random_range(1..40_000) };
            let blocks = n.div_ceil(BLOCK);
            // A state that has seen a few steps: run the reference 3 steps first.
            let mut p = uniform(&mut r, n, 0.5);
            let mut st = Adam8State::zeros(n);
            for t in 1..=3 {
                let g = uniform(&mut r, n, 1e-2);
                step(&mut p, &g, &mut st, &Adam8Step::new(2e-4, 0.9, 0.999, 1e-8, 0.0, t));
            }
            let g = uniform(&mut r, n, 1e-2);
            let h = Adam8Step::new(2e-4, 0.9, 0.999, 1e-8, 0.1, 4);
            let dp = upload_f32(&client, &device, &p);
            let dg = upload_f32(&client, &device, &g);
            let ds = Adam8Device {
                m: upload_bytes(&client, &device, &st.m, vec![n], DType::U8),
                v: upload_bytes(&client, &device, &st.v, vec![n], DType::U8),
                absmax_m: upload_f32(&client, &device, &st.absmax_m),
                absmax_v: upload_f32(&client, &device, &st.absmax_v),
            };
            let p_out = poisoned(&client, &device, vec![n], DType::F32);
            let poison_u8 = || upload_bytes(&client, &device, &vec![0xAB; n], vec![n], DType::U8);
            let s_out = Adam8Device {
                m: poison_u8(),
                v: poison_u8(),
                absmax_m: poisoned(&client, &device, vec![blocks], DType::F32),
                absmax_v: poisoned(&client, &device, vec![blocks], DType::F32),
            };
            adamw8_step_into(&dp, &dg, &ds, &h, &p_out, &s_out).unwrap();
            let p0 = p.clone();
            step(&mut p, &g, &mut st, &h);
            let got = read_f32(&p_out);
            let du: Vec<f32> = got.iter().zip(&p0).map(|(a, b)| a - b).collect();
            let ru: Vec<f32> = p.iter().zip(&p0).map(|(a, b)| a - b).collect();
            assert_close(&format!("adamw8 weight n={n}"), &got, &p, "ADAMW8_WEIGHT_REL", ADAMW8_WEIGHT_REL);
            assert_close(&format!("adamw8 update n={n}"), &du, &ru, "ADAMW8_UPDATE_REL", ADAMW8_UPDATE_REL);
            assert_close(&format!("adamw8 absmax_m n={n}"), &read_f32(&s_out.absmax_m), &st.absmax_m, "ADAMW8_ABSMAX_REL", ADAMW8_ABSMAX_REL);
            assert_close(&format!("adamw8 absmax_v n={n}"), &read_f32(&s_out.absmax_v), &st.absmax_v, "ADAMW8_ABSMAX_REL", ADAMW8_ABSMAX_REL);
            assert_eq!(read_f32(&s_out.absmax_m).len(), blocks);
            for (what, dev, host) in [("m", bytes(&s_out.m), &st.m), ("v", bytes(&s_out.v), &st.v)] {
                let dev = &dev[..n];
                let bad = dev.iter().zip(host.iter()).filter(|(a, b)| a != b).count();
                let far = dev.iter().zip(host.iter()).filter(|(a, b)| (**a as i32 - **b as i32).abs() > 1).count();
                println!("adamw8 {what} codes n={n}: {bad} differ (bound ADAMW8_CODE_MISMATCH = {ADAMW8_CODE_MISMATCH:.0e} of {n}), {far} by more than one code");
                assert!(far == 0 && (bad as f64) <= ADAMW8_CODE_MISMATCH * n as f64 + 1.0, "{what} codes differ");
            }
        }
    }
}
