//! Rotary embedding: the reference against the rotation it is (CPU), the kernels against the
//! reference on random inputs of the model's and odd shapes (device; Vulkan on lavapipe in
//! CI, CUDA on the GPU).

use super::reference::{rope, transpose_heads, RopeDims};
use crate::testutil::{rng, uniform};
use rand::rngs::StdRng;
use rand::Rng;

/// Random `x` and the cos / sin of random angles, halves equal (as RoPE's are).
fn inputs(r: &mut StdRng, dims: RopeDims) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
    let half = dims.head_dim / 2;
    let angles: Vec<f32> = (0..dims.batch * dims.seq * half).map(|_| r.random_range(-50.0..50.0)).collect();
    let dup = |f: fn(f32) -> f32| -> Vec<f32> { angles.chunks(half).flat_map(|a| a.iter().chain(a).map(|&t| f(t)).collect::<Vec<_>>()).collect() };
    (uniform(r, dims.len(), 2.0), dup(f32::cos), dup(f32::sin))
}

#[test]
fn reference_rotates_each_pair_and_its_gradient_is_the_inverse_rotation() {
    let mut r = rng("rope reference");
    let dims = RopeDims { batch: 2, seq: 3, heads: 2, head_dim: 8 };
    let (x, cos, sin) = inputs(&mut r, dims);
    let y = rope(&x, &cos, &sin, dims, 1.0);
    // A rotation keeps each pair's norm.
    for (xp, yp) in x.chunks(8).zip(y.chunks(8)) {
        for j in 0..4 {
            let (nx, ny) = (xp[j].hypot(xp[j + 4]), yp[j].hypot(yp[j + 4]));
            assert!((nx - ny).abs() < 1e-5, "pair norm {nx} -> {ny}");
        }
    }
    // The gradient (sign -1) is the transpose: applied to y it gives x back.
    let back = rope(&y, &cos, &sin, dims, -1.0);
    assert!(back.iter().zip(&x).all(|(a, b)| (a - b).abs() < 1e-5), "inverse rotation");
    // Moving heads first and back is the identity.
    assert_eq!(transpose_heads(&transpose_heads(&x, dims, true), dims, false), x);
}

#[cfg(feature = "launch")]
mod device {
    use super::inputs;
    use crate::device::{poisoned, read_f32, round_to, upload_float};
    use crate::rope::{reference, rope_backward, rope_forward, rope_into, RopeDims};
    use crate::testutil::{assert_close, rng};
    use burn_backend::DType;
    use burn_cubecl::CubeRuntime;
    use cubecl::client::ComputeClient;
    use rand::Rng;

    /// f32: two products and a sum per element, against f64.
    const ROPE_F32_REL: f64 = 1e-6;
    /// bf16 / f16 storage, each output rounded once (half an ulp of bf16 is 2^-9 = 2.0e-3).
    const ROPE_HALF_REL: f64 = 8e-3;


    /// Forward and gradient against the reference (and the layout moves) for every dtype, on
    /// the 7B's q and k shapes at 512 tokens, Qwen2.5-0.5B's head dim, and a random odd shape.
    fn kernels_match_reference<R: CubeRuntime>(client: &ComputeClient<R>, device: &R::Device, dtypes: &[DType]) {
        let mut r = rng("rope kernels");
        let cases = [
            RopeDims { batch: 1, seq: 512, heads: 28, head_dim: 128 },
            RopeDims { batch: 1, seq: 512, heads: 4, head_dim: 128 },
            RopeDims { batch: 2, seq: 37, heads: 14, head_dim: 64 },
            RopeDims { batch: r.random_range(1..3), seq: r.random_range(1..50), heads: r.random_range(1..9), head_dim: 2 * r.random_range(1..40) },
        ];
        for dims in cases {
            let (x, cos, sin) = inputs(&mut r, dims);
            for &dtype in dtypes {
                let (xr, cr, sr) = (round_to(&x, dtype), round_to(&cos, dtype), round_to(&sin, dtype));
                let (name, bound) = if dtype == DType::F32 { ("ROPE_F32_REL", ROPE_F32_REL) } else { ("ROPE_HALF_REL", ROPE_HALF_REL) };
                let up = |v: &[f32]| upload_float(client, device, v, vec![v.len()], dtype);
                let (dc, ds) = (up(&cos), up(&sin));
                let shape = vec![dims.len()];
                let y = poisoned(client, device, shape.clone(), dtype);
                rope_into(&up(&x), &dc, &ds, dims, false, 1.0, &y).unwrap();
                let want = reference::transpose_heads(&reference::rope(&xr, &cr, &sr, dims, 1.0), dims, true);
                assert_close(&format!("rope forward {dtype:?} {dims:?}"), &read_f32(&y), &want, name, bound);
                // The gradient of sum(y * g) for a random head-major g.
                let g = crate::testutil::uniform(&mut r, dims.len(), 1.0);
                let gr = round_to(&g, dtype);
                let dx = poisoned(client, device, shape, dtype);
                rope_into(&up(&g), &dc, &ds, dims, true, -1.0, &dx).unwrap();
                let want = reference::rope(&reference::transpose_heads(&gr, dims, false), &cr, &sr, dims, -1.0);
                assert_close(&format!("rope gradient {dtype:?} {dims:?}"), &read_f32(&dx), &want, name, bound);
            }
        }
        // The allocating entry points with f32 cos / sin under f32 x, and refusals.
        let dims = RopeDims { batch: 1, seq: 5, heads: 3, head_dim: 16 };
        let (x, cos, sin) = inputs(&mut r, dims);
        let up = |v: &[f32], shape: Vec<usize>| upload_float(client, device, v, shape, DType::F32);
        let (dx_, dc, ds) = (up(&x, vec![1, 5, 3, 16]), up(&cos, vec![1, 5, 16]), up(&sin, vec![1, 5, 16]));
        let y = rope_forward(&dx_, &dc, &ds, dims).unwrap();
        let want = reference::transpose_heads(&reference::rope(&x, &cos, &sin, dims, 1.0), dims, true);
        assert_close("rope forward allocating", &read_f32(&y), &want, "ROPE_F32_REL", ROPE_F32_REL);
        let back = rope_backward(&y, &dc, &ds, dims).unwrap();
        assert_close("rope gradient of the forward is the input", &read_f32(&back), &x, "ROPE_F32_REL", ROPE_F32_REL);
        assert!(rope_forward(&dx_, &dc, &ds, RopeDims { head_dim: 15, ..dims }).is_err(), "odd head dim");
        assert!(rope_forward(&dx_, &dc, &ds, RopeDims { seq: 6, ..dims }).is_err(), "wrong length");
        assert!(rope_forward(&dx_, &dc, &up(&sin[..16], vec![16]), dims).is_err(), "short sin");
    }

    #[cfg(feature = "cuda")]
    #[test]
    fn rope_kernels_on_cuda() {
        let Some((client, device)) = crate::testutil::cuda() else { return };
        kernels_match_reference(&client, &device, &[DType::BF16, DType::F32, DType::F16]);
    }

    #[cfg(feature = "wgpu")]
    #[test]
    fn rope_kernels_on_wgpu() {
        let Some((client, device)) = crate::testutil::wgpu() else { return };
        let dtypes = crate::testutil::wgpu_float_dtypes(&client);
        kernels_match_reference(&client, &device, &dtypes);
    }
}
