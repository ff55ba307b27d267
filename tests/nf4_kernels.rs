//! The NF4 kernels inside medqlora.
//!
//! CPU (CI): the kernel crate's reference decodes exactly like the bitsandbytes-exact
//! reference (`quant::nf4`), on fresh random weights; the autodiff wrapper of `Nf4Backend`
//! (custom backward: input gradient only) gives the gradients Burn's own autodiff gives
//! through the dequantize-then-matmul reference.
//! Device (feature `cuda`): `Nf4Weight::matmul_t` through the kernels (GEMV, fused GEMM,
//! dequant + matmul) and its backward (fused dX) against an f64 reference, for bf16 and f32,
//! plain and under autodiff. Prints `SKIPPED: no CUDA device` without a GPU.

use burn::backend::Autodiff;
use burn::tensor::backend::Backend;
use burn::tensor::{Tensor, TensorData};
use medqlora::model::nf4_weight::Nf4Weight;
use medqlora::quant::dynamic_map::DYNAMIC_MAP_SIGNED;
use medqlora::quant::nf4::{self, Absmax, Nf4Tensor};
use medqlora_kernels::testutil::{assert_close, rng, uniform};
use medqlora_kernels::{Nf4Host, ScalesHost};
use rand::rngs::StdRng;
use rand::Rng;

type Cpu = medqlora::backend::CpuBackend;

fn view(t: &Nf4Tensor) -> Nf4Host<'_> {
    let scales = match &t.absmax {
        Absmax::F32(a) => ScalesHost::F32(a),
        Absmax::Double { codes, nested_absmax, offset } => ScalesHost::Double { codes, nested: nested_absmax, offset: *offset, map: &DYNAMIC_MAP_SIGNED },
    };
    Nf4Host { packed: &t.packed, scales, n: t.shape[0], k: t.shape[1], blocksize: t.blocksize }
}

fn random_weight(rng: &mut StdRng, n: usize, k: usize, blocksize: usize, double: bool) -> Nf4Tensor {
    let scale = rng.random_range(0.01..1.0);
    nf4::quantize(&uniform(rng, n * k, scale), &[n, k], blocksize, double).unwrap()
}

fn to_vec<B: Backend, const D: usize>(t: Tensor<B, D>) -> Vec<f32> {
    t.into_data().convert::<f32>().to_vec::<f32>().unwrap()
}

fn tensor<B: Backend, const D: usize>(v: &[f32], shape: [usize; D], device: &B::Device) -> Tensor<B, D> {
    Tensor::from_data(TensorData::new(v.to_vec(), shape), device)
}

#[test]
fn kernel_crate_reference_decodes_exactly_like_the_bnb_reference() {
    let mut rng = rng("kernel reference vs quant::nf4");
    for (n, k, bs, dq) in [(37, 91, 64, true), (64, 96, 32, false), (130, 257, 128, true), (300, 64, 64, true), (8, 1024, 4096, false), (700, 384, 64, true)] {
        let w = random_weight(&mut rng, n, k, bs, dq);
        assert_eq!(medqlora_kernels::dequant::reference::dequantize(&view(&w)), w.dequantize(), "[{n}, {k}] bs {bs} dq {dq}");
    }
}

/// Relative L2 error of the CPU custom-backward path against Burn's autodiff (the same f32
/// products, in another order).
const CPU_AUTODIFF_REL: f64 = 1e-5;

#[test]
fn custom_backward_gives_burns_input_gradient_and_no_weight_gradient() {
    type Ad = Autodiff<Cpu>;
    let mut rng = rng("nf4 custom backward (cpu)");
    let device = Default::default();
    let (m, n, k) = (5, 48, 96);
    let host = random_weight(&mut rng, n, k, 64, true);
    let w = Nf4Weight::<Ad>::from_host(&host, &device);
    let (xv, rv) = (uniform(&mut rng, m * k, 1.0), uniform(&mut rng, m * n, 1.0));
    let r = tensor::<Ad, 2>(&rv, [m, n], &device);

    let x1 = tensor::<Ad, 2>(&xv, [m, k], &device).require_grad();
    let y1 = w.matmul_t_ext(x1.clone());
    let g1 = (y1.clone() * r.clone()).sum().backward();
    let x2 = tensor::<Ad, 2>(&xv, [m, k], &device).require_grad();
    let y2 = medqlora::model::linear::matmul_weight_t(x2.clone(), w.dequantize());
    let g2 = (y2.clone() * r).sum().backward();

    assert_close("forward, custom op vs Burn ops", &to_vec(y1), &to_vec(y2), "CPU_AUTODIFF_REL", CPU_AUTODIFF_REL);
    let (d1, d2) = (to_vec(x1.grad(&g1).unwrap()), to_vec(x2.grad(&g2).unwrap()));
    assert_close("dL/dx, custom backward vs Burn autodiff", &d1, &d2, "CPU_AUTODIFF_REL", CPU_AUTODIFF_REL);
    // The frozen scales get no gradient (nothing registers one).
    if let medqlora::model::nf4_weight::Nf4Scales::Double(d) = &w.scales {
        assert!(d.nested_absmax.grad(&g1).is_none());
    }
}

#[cfg(feature = "cuda")]
mod device {
    use super::*;
    use burn::backend::cuda::CudaDevice;
    use burn::backend::Cuda;
    use medqlora_kernels::gemm_dx::reference::matmul_dx;
    use medqlora_kernels::gemv::reference::matmul_t;
    use medqlora_kernels::testutil::round_bf16;

    /// bf16 activations and outputs, weight decoded to bf16 in the fused GEMM.
    const NF4_LINEAR_BF16_REL: f64 = 1e-2;
    /// f32: the GEMV is exact to f32 summation; the M > 8 path uses Burn's matmul, which runs
    /// at TF32-like precision on the H200 (see BENCHMARKS.md).
    const NF4_LINEAR_F32_REL: f64 = 5e-3;

    fn gpu() -> Option<CudaDevice> {
        if std::path::Path::new("/dev/nvidiactl").exists() {
            Some(CudaDevice::new(0))
        } else {
            println!("SKIPPED: no CUDA device");
            None
        }
    }

    fn forward_and_backward<B: Backend>(name: &str, bound_name: &str, bound: f64, bf16: bool, autodiff: bool)
    where
        B: burn::tensor::backend::AutodiffBackend,
    {
        let Some(device) = gpu() else { return };
        let device: B::Device = unsafe_device::<B>(device);
        let mut rng = rng(name);
        for (m, n, k) in [(1, 512, 3584), (5, 300, 640), (8, 96, 256), (100, 384, 512), (300, 200, 1024)] {
            let host = random_weight(&mut rng, n, k, 64, true);
            let w = Nf4Weight::<B>::from_host(&host, &device);
            let round = |v: Vec<f32>| if bf16 { round_bf16(&v) } else { v };
            let (xv, rv) = (round(uniform(&mut rng, m * k, 1.0)), round(uniform(&mut rng, m * n, 1.0)));
            let x = tensor::<B, 2>(&xv, [m, k], &device).require_grad();
            let y = w.matmul_t(x.clone());
            let what = format!("{name}: y = x W^T, M={m} N={n} K={k}");
            assert_close(&what, &to_vec(y.clone()), &matmul_t(&xv, m, &super::view(&host)), bound_name, bound);
            if autodiff {
                let grads = (y * tensor::<B, 2>(&rv, [m, n], &device)).sum().backward();
                let dx = to_vec(x.grad(&grads).expect("input gradient"));
                assert_close(&format!("{name}: dL/dx = r W, M={m}"), &dx, &matmul_dx(&rv, m, &super::view(&host)), bound_name, bound);
            }
        }
    }

    /// `CudaDevice` is the device type of every CUDA backend here.
    fn unsafe_device<B: Backend>(d: CudaDevice) -> B::Device {
        *(Box::new(d) as Box<dyn std::any::Any>).downcast::<B::Device>().expect("a CUDA backend")
    }

    #[test]
    fn bf16_linear_and_its_gradient_through_the_kernels() {
        forward_and_backward::<Autodiff<Cuda<half::bf16>>>("autodiff cuda bf16", "NF4_LINEAR_BF16_REL", NF4_LINEAR_BF16_REL, true, true);
    }

    #[test]
    fn f32_linear_and_its_gradient_through_the_kernels() {
        forward_and_backward::<Autodiff<Cuda<f32>>>("autodiff cuda f32", "NF4_LINEAR_F32_REL", NF4_LINEAR_F32_REL, false, true);
    }

    #[test]
    fn inference_backends_take_the_kernels_too() {
        let Some(device) = gpu() else { return };
        let mut rng = rng("cuda bf16 inference");
        for m in [1, 8, 64] {
            let (n, k) = (384, 1024);
            let host = random_weight(&mut rng, n, k, 64, true);
            let w = Nf4Weight::<Cuda<half::bf16>>::from_host(&host, &device);
            let xv = round_bf16(&uniform(&mut rng, m * k, 1.0));
            let y = w.matmul_t(tensor::<Cuda<half::bf16>, 2>(&xv, [m, k], &device));
            assert_close(&format!("cuda bf16 M={m}"), &to_vec(y), &matmul_t(&xv, m, &super::view(&host)), "NF4_LINEAR_BF16_REL", NF4_LINEAR_BF16_REL);
        }
    }
}
