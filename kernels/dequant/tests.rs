//! Dequantization: the reference on hand-made data (CPU), the kernel against the reference
//! on random weights (device).

use super::reference::dequantize;
use crate::nf4::{Nf4Host, ScalesHost, NF4_CODE};

#[test]
fn reference_reads_high_nibble_first_and_decodes_double_scales() {
    // Byte 0xF0: element 0 = code 15 (1.0), element 1 = code 0 (-1.0); byte 0x87: 8, 7.
    let packed = [0xF0u8, 0x87];
    let mut map = [0f32; 256];
    map[3] = 0.5;
    let w = Nf4Host {
        packed: &packed,
        scales: ScalesHost::Double { codes: &[3], nested: &[2.0], offset: 0.25, map: &map },
        n: 1,
        k: 4,
        blocksize: 64,
    };
    let scale = 0.5 * 2.0 + 0.25;
    assert_eq!(dequantize(&w), vec![scale, -scale, NF4_CODE[8] * scale, 0.0]);
    let plain = Nf4Host { scales: ScalesHost::F32(&[3.0]), ..w };
    assert_eq!(dequantize(&plain), vec![3.0, -3.0, NF4_CODE[8] * 3.0, 0.0]);
}

#[cfg(feature = "cuda")]
mod device {
    use crate::dequant::{dequantize_into, reference};
    use crate::device::{poisoned, read_f32, Nf4Device};
    use crate::testutil::{assert_close, cuda, random_nf4, rng, synthetic_map};
    use burn_backend::DType;
    use rand::Rng;

    /// f32 output: one f32 product per element, as on the CPU (the double-quantized scale may
    /// be fused into one FMA on the device: a few ulps).
    const DEQUANT_F32_REL: f64 = 1e-6;
    /// bf16 output: rounding to 8 mantissa bits (half an ulp is 2^-9 = 2.0e-3 relative).
    const DEQUANT_BF16_REL: f64 = 3e-3;
    /// f16 output: 11 significant bits (half an ulp 2^-12 = 2.4e-4 relative).
    const DEQUANT_F16_REL: f64 = 5e-4;

    #[test]
    fn kernel_matches_reference_on_random_weights() {
        let Some((client, device)) = cuda() else { return };
        let mut rng = rng("dequant kernel");
        let map = synthetic_map();
        for (dtype, name, bound) in [
            (DType::F32, "DEQUANT_F32_REL", DEQUANT_F32_REL),
            (DType::BF16, "DEQUANT_BF16_REL", DEQUANT_BF16_REL),
            (DType::F16, "DEQUANT_F16_REL", DEQUANT_F16_REL),
        ] {
            for double in [false, true] {
                for blocksize in [32, 64, 256] {
                    // Rows of any length: blocks cross rows; several thousand blocks so the
                    // double quantization has several nested scales.
                    let n = rng.random_range(1..400);
                    let k = 8 * rng.random_range(1..200);
                    let w = random_nf4(&mut rng, n, k, blocksize, double, &map);
                    let dev = Nf4Device::upload(&client, &device, &w.view(), &map);
                    let out = poisoned(&client, &device, vec![n, k], dtype);
                    dequantize_into(&dev, &out).unwrap();
                    let what = format!("dequant {dtype:?} double={double} blocksize={blocksize} [{n}, {k}]");
                    assert_close(&what, &read_f32(&out), &reference::dequantize(&w.view()), name, bound);
                }
            }
        }
    }

    #[test]
    fn kernel_refuses_unaddressable_shapes() {
        let Some((client, device)) = cuda() else { return };
        let map = synthetic_map();
        let w = random_nf4(&mut rng("dequant shapes"), 3, 5, 64, false, &map);
        let dev = Nf4Device::upload(&client, &device, &w.view(), &map);
        assert!(crate::dequant::dequantize(&dev, DType::F32).is_err(), "15 elements are not whole words");
    }
}
