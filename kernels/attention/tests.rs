//! Causal attention: the reference against a direct definition (CPU), the kernel against the
//! reference on random shapes, masks and inputs (CUDA: the kernel needs tensor cores).

use super::reference::{causal_attention, causal_mask, Causal};
use crate::testutil::{rng, uniform};

/// The reference equals softmax attention written out per row for a small case, and a row
/// sees no key after its own position (changing a later key or value leaves it unchanged).
#[test]
fn reference_is_causal_softmax_attention() {
    let mut r = rng("causal attention reference");
    let shape = Causal { batch: 2, kv_heads: 2, rep: 3, s: 5, t: 7, d: 4, mask_batches: 2 };
    let (q, k, v) = (uniform(&mut r, shape.q_len(), 1.0), uniform(&mut r, shape.kv_len(), 1.0), uniform(&mut r, shape.kv_len(), 1.0));
    let mask = causal_mask(shape.s, shape.t, &[0, 3]);
    let out = causal_attention(&q, &k, &v, &mask, shape, 0.5, |x| x);
    // Sequence 1, kv head 1, query head 2, query 4 (position 6 after 2 cached): keys 0..3 are
    // padding (hidden), so it sees keys 3..=6.
    let (b, kv, rh, i, d, t) = (1, 1, 2, 4, 4, 7);
    let qrow = &q[((((b * 2 + kv) * 3 + rh) * 5) + i) * d..][..d];
    let keys: Vec<usize> = (3..=6).collect();
    let logits: Vec<f32> = keys.iter().map(|&j| 0.5 * (0..d).map(|e| qrow[e] * k[((b * 2 + kv) * t + j) * d + e]).sum::<f32>()).collect();
    let mx = logits.iter().cloned().fold(f32::MIN, f32::max);
    let z: f32 = logits.iter().map(|x| (x - mx).exp()).sum();
    for e in 0..d {
        let want: f32 = keys.iter().zip(&logits).map(|(&j, x)| (x - mx).exp() / z * v[((b * 2 + kv) * t + j) * d + e]).sum();
        let got = out[((((b * 2 + kv) * 3 + rh) * 5) + i) * d + e];
        assert!((got - want).abs() < 1e-5, "element {e}: {got} vs {want}");
    }
    // Query 0 of every head sits at position 2: keys 3.. must not matter.
    let mut v2 = v.clone();
    let mut k2 = k.clone();
    for bh in 0..4 {
        for j in 3..t {
            for e in 0..d {
                v2[(bh * t + j) * d + e] = 100.0;
                k2[(bh * t + j) * d + e] = -100.0;
            }
        }
    }
    let out2 = causal_attention(&q, &k2, &v2, &mask, shape, 0.5, |x| x);
    for bh in 0..4 {
        for rh in 0..3 {
            let at = ((bh * 3 + rh) * 5) * d;
            assert_eq!(out[at..at + d], out2[at..at + d], "query 0 of head {bh}/{rh} read a later key");
        }
    }
}

#[cfg(feature = "cuda")]
mod device {
    use super::*;
    use rand::Rng;

    /// Relative L2 bound of the kernel against the reference in bf16 / f16: both round the
    /// scores, probabilities and output to the storage dtype, but in different summation
    /// orders, so a rounding may land one step apart (2^-8 relative for bf16) on some elements.
    const ATTENTION_HALF_REL: f64 = 1e-2;
    use crate::device::{read_f32, upload_bytes, upload_float};
    use crate::testutil::assert_close;
    use burn_backend::{BoolStore, DType};

    fn round(x: f32, dtype: DType) -> f32 {
        match dtype {
            DType::BF16 => half::bf16::from_f32(x).to_f32(),
            _ => half::f16::from_f32(x).to_f32(),
        }
    }

    /// Random shapes: head dims 16 / 64 / 128, query counts that leave partial 64-row and
    /// 32-key tiles, a cache prefix, one or per-sequence padded masks; the output starts
    /// poisoned (NaN), so an element the kernel skips fails the bound.
    #[test]
    fn causal_attention_matches_reference_on_cuda() {
        let Some((client, device)) = crate::testutil::cuda() else { return };
        let mut r = rng("causal attention kernel");
        let cases = [(1, 2, 2, 599, 0, 16, 1), (2, 2, 7, 87, 0, 64, 2), (1, 4, 7, 130, 0, 128, 1), (2, 1, 3, 33, 17, 128, 2), (1, 2, 2, 1, 40, 64, 1), (1, 1, 1, 64, 0, 16, 1)];
        for (i, (batch, kv_heads, rep, s, seen, d, mask_batches)) in cases.into_iter().enumerate() {
            let shape = Causal { batch, kv_heads, rep, s, t: s + seen, d, mask_batches };
            let dtype = if i % 2 == 0 { DType::BF16 } else { DType::F16 };
            let store = if i % 3 == 0 { BoolStore::U32 } else { BoolStore::U8 };
            let (q, k, v) = (uniform(&mut r, shape.q_len(), 2.0), uniform(&mut r, shape.kv_len(), 2.0), uniform(&mut r, shape.kv_len(), 1.0));
            // Two cases in three unpadded, so the computed causal mask is checked too.
            let pads: Vec<usize> = (0..mask_batches).map(|_| if i % 3 != 0 { 0 } else { r.random_range(0..=s.min(5)) }).collect();
            let mask = causal_mask(s, shape.t, &pads);
            let rounded = |x: &[f32]| x.iter().map(|&x| round(x, dtype)).collect::<Vec<_>>();
            let scale = (d as f32).powf(-0.5);
            let want = causal_attention(&rounded(&q), &rounded(&k), &rounded(&v), &mask, shape, scale, |x| round(x, dtype));
            let up = |x: &[f32], dims: Vec<usize>| upload_float(&client, &device, x, dims, dtype);
            let (dq, dk, dv) = (up(&q, vec![shape.q_len()]), up(&k, vec![shape.kv_len()]), up(&v, vec![shape.kv_len()]));
            let bytes: Vec<u8> = mask.iter().flat_map(|&m| if store == BoolStore::U8 { vec![m as u8] } else { (m as u32).to_le_bytes().to_vec() }).collect();
            let dm = upload_bytes(&client, &device, &bytes, vec![shape.mask_len()], DType::Bool(store));
            let out = up(&vec![f32::NAN; shape.q_len()], vec![shape.q_len()]);
            super::super::causal_attention_into(&dq, &dk, &dv, &dm, shape, scale, &out).unwrap();
            assert_close(&format!("causal attention {shape:?} {dtype:?} mask {store:?} pads {pads:?}"), &read_f32(&out), &want, "ATTENTION_HALF_REL", ATTENTION_HALF_REL);
            // The one-pass kernel, reading the mask, and computing it where it is the plain
            // causal one (no padding).
            let out = up(&vec![f32::NAN; shape.q_len()], vec![shape.q_len()]);
            super::super::flash_attention_into(&dq, &dk, &dv, Some(&dm), shape, scale, &out).unwrap();
            assert_close(&format!("flash attention {shape:?} {dtype:?} mask {store:?} pads {pads:?}"), &read_f32(&out), &want, "ATTENTION_HALF_REL", ATTENTION_HALF_REL);
            if pads.iter().all(|&p| p == 0) {
                let out = up(&vec![f32::NAN; shape.q_len()], vec![shape.q_len()]);
                super::super::flash_attention_into(&dq, &dk, &dv, None, shape, scale, &out).unwrap();
                assert_close(&format!("flash attention {shape:?} {dtype:?} computed causal mask"), &read_f32(&out), &want, "ATTENTION_HALF_REL", ATTENTION_HALF_REL);
            }
        }
    }

    #[test]
    fn causal_attention_refuses_bad_operands_on_cuda() {
        let Some((client, device)) = crate::testutil::cuda() else { return };
        let shape = Causal { batch: 1, kv_heads: 1, rep: 2, s: 4, t: 4, d: 16, mask_batches: 1 };
        let f = |n: usize, dtype| upload_float(&client, &device, &vec![0.5; n], vec![n], dtype);
        let m = upload_bytes(&client, &device, &[0u8; 16], vec![16], DType::Bool(BoolStore::U8));
        let (q, kv) = (f(shape.q_len(), DType::BF16), f(shape.kv_len(), DType::BF16));
        let run = |q: &_, k: &_, m: &_, shape: Causal, scale: f32| super::super::causal_attention(q, k, k, m, shape, scale);
        assert!(run(&q, &kv, &m, shape, 0.25).is_ok(), "the valid call");
        assert!(run(&q, &kv, &m, shape, 0.0).is_err(), "scale 0");
        assert!(run(&q, &kv, &m, Causal { d: 8, ..shape }, 0.25).is_err(), "head dim 8");
        assert!(run(&q, &kv, &m, Causal { t: 3, ..shape }, 0.25).is_err(), "fewer keys than queries");
        assert!(run(&f(shape.q_len(), DType::F32), &f(shape.kv_len(), DType::F32), &m, shape, 0.25).is_err(), "f32");
        assert!(run(&q, &f(shape.kv_len() + 16, DType::BF16), &m, shape, 0.25).is_err(), "keys of another length");
        assert!(run(&q, &kv, &f(16, DType::F32), shape, 0.25).is_err(), "f32 mask");
        assert!(run(&q, &kv, &m, Causal { mask_batches: 2, ..shape }, 0.25).is_err(), "mask batches");
        let flash = |q: &_, k: &_, m: Option<&_>, shape: Causal| super::super::flash_attention(q, k, k, m, shape, 0.25);
        assert!(flash(&q, &kv, Some(&m), shape).is_ok() && flash(&q, &kv, None, shape).is_ok(), "the valid flash calls");
        assert!(flash(&q, &kv, Some(&f(16, DType::F32)), shape).is_err(), "flash: f32 mask");
        assert!(flash(&q, &kv, None, Causal { t: 3, ..shape }).is_err(), "flash: fewer keys than queries");
    }
}
