//! `Y = X W^T` for a frozen NF4 weight as a backend extension: [`Nf4Backend`].
//!
//! - CUDA (`CubeBackend`, feature `cuda`): the `medqlora-kernels` kernels — GEMV for decode
//!   (`M <= 8`), the fused tensor-core GEMM in bf16/f16 (or, by [`Nf4Product`], a transient
//!   dequantized weight and Burn's matmul), dequantize-then-matmul in f32; the backward
//!   product `dX = dY W` likewise. No dense weight outlives the call.
//! - `Autodiff<B>`: forward on `B`, and a backward step that returns the input gradient only.
//!   Its saved state is the packed weight (shared handles), not a dequantized copy, so
//!   training keeps no dense weight alive between forward and backward.
//! - CPU (`NdArray`): the Burn-ops reference (dequantize, then matmul), so the autodiff
//!   wrapper is testable without a GPU.
//!
//! The model stays generic over `B: Backend`: [`super::Nf4Weight::matmul_t`] finds out at run
//! time (by type) whether `B` is one of the backends above and otherwise uses the reference.

use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{unary, Backward, Ops, OpsKind};
use burn::backend::Autodiff;
use burn::tensor::backend::Backend;
use burn::tensor::ops::{FloatTensor, IntTensor};
use burn::tensor::{Int, Tensor};
use crate::model::autodiff_op::float;

/// Block scales as backend primitives.
#[derive(Debug, Clone)]
pub enum ScalesPrim<B: Backend> {
    /// `[blocks]` f32.
    F32(FloatTensor<B>),
    /// `[blocks]` u8 codes, `[ceil(blocks / 256)]` f32 nested scales, offset.
    Double {
        /// u8 codes.
        codes: IntTensor<B>,
        /// f32 nested scales.
        nested: FloatTensor<B>,
        /// Added after decoding.
        offset: f32,
    },
}

/// An NF4 weight `[n, k]` as backend primitives (cheap handle clones of the module's tensors).
#[derive(Debug, Clone)]
pub struct Nf4Prims<B: Backend> {
    /// `[(n * k + 1) / 2]` u8.
    pub packed: IntTensor<B>,
    /// Block scales.
    pub scales: ScalesPrim<B>,
    /// `[272]` f32: NF4 code, then the dynamic map.
    pub lut: FloatTensor<B>,
    /// Out features.
    pub n: usize,
    /// In features.
    pub k: usize,
    /// Elements per block.
    pub blocksize: usize,
}

/// How the CUDA backend runs 16-bit NF4 products of more than [`medqlora_kernels::gemv::MAX_M`]
/// rows (prefill and training; decode always takes the GEMV kernel). Chosen once per process
/// at the CLI edge (`--nf4-product`), read by every product after.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Nf4Product {
    /// The fused kernels: tiles of `W` decoded into shared memory feed tensor-core products;
    /// no dense weight exists in global memory. 128-row tiles of 256 threads, `wmma`.
    Fused,
    /// The fused kernels in 256-row tiles of 512 threads, forward and backward
    /// ([`medqlora_kernels::gemm::GemmRows::R256`]: each decoded tile of `W` feeds twice the
    /// rows).
    Fused256,
    /// As `Fused256`, with the tensor cores fed by `ldmatrix` and `mma.sync`
    /// ([`medqlora_kernels::gemm::GemmMma::Ldmatrix`]: a fragment per instruction from shared
    /// memory where `wmma` takes four generic loads).
    /// The default until 2026-12-06: 1.3-1.5x `Fused`'s forward and 1.5-2x its backward at the
    /// 7B shapes, 2,524 against 1,958 tokens/s for the 7B training step (H100, BENCHMARKS.md).
    #[value(name = "fused256-ldmatrix")]
    #[serde(rename = "fused256-ldmatrix")]
    Fused256Ldmatrix,
    /// As `Fused`, with two sets of shared tiles ([`medqlora_kernels::gemm::GemmStages::Two`]:
    /// the next step fills one while the tensor cores read the other; one barrier per step).
    #[value(name = "fused-2stage")]
    #[serde(rename = "fused-2stage")]
    Fused2Stage,
    /// As `Fused2Stage`, with the tensor cores fed by `ldmatrix` and `mma.sync` (in two
    /// stages this fits 128 registers: two cubes per SM, which one stage does not).
    #[value(name = "fused-ldmatrix-2stage")]
    #[serde(rename = "fused-ldmatrix-2stage")]
    FusedLdmatrix2Stage,
    /// As `Fused256`, with two sets of shared tiles.
    #[value(name = "fused256-2stage")]
    #[serde(rename = "fused256-2stage")]
    Fused256TwoStage,
    /// As `Fused256Ldmatrix`, with two sets of shared tiles.
    #[value(name = "fused256-ldmatrix-2stage")]
    #[serde(rename = "fused256-ldmatrix-2stage")]
    Fused256Ldmatrix2Stage,
    /// The wide-plane kernels ([`medqlora_kernels::gemm::GemmMma::Wide`]): 256-row tiles of 8
    /// planes of 64 x 64, two tile sets, the activation tile copied by `cp.async`.
    /// The default until 2026-12-07: 1.11-1.14x `Fused256Ldmatrix`'s forward on the 7B MLP
    /// shapes, 2,748 against 2,642 tokens/s for the 7B training step (H100, BENCHMARKS.md,
    /// 2026-12-06); still what `Fused256Wgmma` runs where `wgmma` declines.
    #[value(name = "fused256-wide")]
    #[serde(rename = "fused256-wide")]
    Fused256Wide,
    /// As `Fused256Wide`, with both products (the forward with its adapter and bias, `dX` with
    /// its added term) on Hopper's warpgroup MMA ([`medqlora_kernels::gemm_wgmma`]:
    /// `wgmma.mma_async`, 128 x 256 tiles, the weight decoded into shared memory while the
    /// previous step's products run) where the GPU is sm_90 and the shape whole tiles.
    /// The default: its forward 1.24-1.43x the wide kernel's at the 7B shapes (k/v 1.00x),
    /// 0.47-0.49 against 0.53 s for the 7B training step (H100, BENCHMARKS.md, 2026-12-07).
    #[default]
    #[value(name = "fused256-wgmma")]
    #[serde(rename = "fused256-wgmma")]
    Fused256Wgmma,
    /// bitsandbytes' way: the NF4 dequantization kernel writes a transient dense weight
    /// (the largest 7B one, 136 MB in bf16), then Burn's autotuned matmul; the weight is
    /// freed after the product (and dequantized again for the backward's `dY W`).
    Dequantize,
}

impl Nf4Product {
    /// Every strategy.
    pub const ALL: [Nf4Product; 10] = [
        Nf4Product::Fused,
        Nf4Product::Fused256,
        Nf4Product::Fused256Ldmatrix,
        Nf4Product::Fused2Stage,
        Nf4Product::FusedLdmatrix2Stage,
        Nf4Product::Fused256TwoStage,
        Nf4Product::Fused256Ldmatrix2Stage,
        Nf4Product::Fused256Wide,
        Nf4Product::Fused256Wgmma,
        Nf4Product::Dequantize,
    ];
}

/// Index into [`Nf4Product::ALL`]; past its end until [`set_nf4_product`] runs (the default).
static NF4_PRODUCT: std::sync::atomic::AtomicU8 = std::sync::atomic::AtomicU8::new(u8::MAX);

/// Sets how the CUDA backend runs NF4 products from now on (see [`Nf4Product`]).
pub fn set_nf4_product(product: Nf4Product) {
    let i = Nf4Product::ALL.iter().position(|&p| p == product).unwrap_or(0);
    NF4_PRODUCT.store(i as u8, std::sync::atomic::Ordering::Relaxed);
}

/// The strategy [`set_nf4_product`] chose (the default: `fused256-wgmma`).
pub fn nf4_product() -> Nf4Product {
    let i = NF4_PRODUCT.load(std::sync::atomic::Ordering::Relaxed) as usize;
    Nf4Product::ALL.get(i).copied().unwrap_or_default()
}

/// Backends with an NF4 linear product.
pub trait Nf4Backend: Backend {
    /// `x [M, K] -> [M, N]`: `x W^T`.
    fn nf4_matmul_t(x: FloatTensor<Self>, w: Nf4Prims<Self>) -> FloatTensor<Self>;
    /// `dy [M, N] -> [M, K]`: `dy W` (the input gradient of [`Nf4Backend::nf4_matmul_t`]).
    fn nf4_matmul_dx(dy: FloatTensor<Self>, w: Nf4Prims<Self>) -> FloatTensor<Self>;
}

/// The dense weight `[n, k]` by Burn ops, in the dtype of `like` (the reference path).
pub fn reference_dense<B: Backend>(w: &Nf4Prims<B>, like: burn::tensor::DType) -> Tensor<B, 2> {
    let packed: Tensor<B, 1, Int> = Tensor::from_primitive(w.packed.clone());
    let scales = match &w.scales {
        ScalesPrim::F32(a) => super::Nf4Scales::F32(float(a.clone())),
        ScalesPrim::Double { codes, nested, offset } => super::Nf4Scales::Double(super::DoubleScales {
            codes: Tensor::from_primitive(codes.clone()),
            nested_absmax: float(nested.clone()),
            offset: *offset,
        }),
    };
    let weight = super::Nf4Weight { packed, scales, lut: float(w.lut.clone()), shape: [w.n, w.k], blocksize: w.blocksize, dtype: like };
    weight.dequantize_reference()
}

pub(super) fn reference_matmul_t<B: Backend>(x: FloatTensor<B>, w: Nf4Prims<B>) -> FloatTensor<B> {
    let x: Tensor<B, 2> = float(x);
    let dense = reference_dense(&w, x.dtype());
    crate::model::linear::matmul_weight_t(x, dense).into_primitive().tensor()
}

pub(super) fn reference_matmul_dx<B: Backend>(dy: FloatTensor<B>, w: Nf4Prims<B>) -> FloatTensor<B> {
    let dy: Tensor<B, 2> = float(dy);
    let dense = reference_dense(&w, dy.dtype());
    dy.matmul(dense).into_primitive().tensor()
}

impl Nf4Backend for burn::backend::NdArray<f32> {
    fn nf4_matmul_t(x: FloatTensor<Self>, w: Nf4Prims<Self>) -> FloatTensor<Self> {
        reference_matmul_t(x, w)
    }
    fn nf4_matmul_dx(dy: FloatTensor<Self>, w: Nf4Prims<Self>) -> FloatTensor<Self> {
        reference_matmul_dx(dy, w)
    }
}

impl<B: Backend, C: CheckpointStrategy> Nf4Prims<Autodiff<B, C>> {
    /// The same weight on the inner backend (the float primitives unwrapped).
    pub(crate) fn inner(self) -> Nf4Prims<B> {
        let scales = match self.scales {
            ScalesPrim::F32(a) => ScalesPrim::F32(a.primitive),
            ScalesPrim::Double { codes, nested, offset } => ScalesPrim::Double { codes, nested: nested.primitive, offset },
        };
        Nf4Prims { packed: self.packed, scales, lut: self.lut.primitive, n: self.n, k: self.k, blocksize: self.blocksize }
    }
}

/// Backward step of `x W^T` for a frozen `W`: the input gradient `dY W`, nothing for `W`.
#[derive(Debug)]
struct Nf4MatmulBackward;

impl<B: Nf4Backend> Backward<B, 1> for Nf4MatmulBackward {
    /// The packed weight (handles shared with the module; no dense copy).
    type State = Nf4Prims<B>;

    fn backward(self, ops: Ops<Self::State, 1>, grads: &mut Gradients, _checkpointer: &mut Checkpointer) {
        let w = ops.state;
        unary::<B, _>(ops.parents, ops.node, grads, |grad| B::nf4_matmul_dx(grad, w));
    }
}

impl<B: Nf4Backend, C: CheckpointStrategy> Nf4Backend for Autodiff<B, C> {
    fn nf4_matmul_t(x: FloatTensor<Self>, w: Nf4Prims<Self>) -> FloatTensor<Self> {
        let w = w.inner();
        match Nf4MatmulBackward.prepare::<C>([x.node.clone()]).compute_bound().stateful() {
            OpsKind::Tracked(prep) => prep.finish(w.clone(), B::nf4_matmul_t(x.primitive, w)),
            OpsKind::UnTracked(prep) => prep.finish(B::nf4_matmul_t(x.primitive, w)),
        }
    }

    fn nf4_matmul_dx(dy: FloatTensor<Self>, w: Nf4Prims<Self>) -> FloatTensor<Self> {
        // Differentiated again nowhere in this project: computed on the inner backend,
        // returned untracked.
        FloatTensor::<Self>::new(B::nf4_matmul_dx(dy.primitive, w.inner()))
    }
}

#[cfg(feature = "cuda")]
pub(super) use cube::device;

#[cfg(feature = "cuda")]
mod cube {
    use super::{nf4_product, reference_matmul_dx, reference_matmul_t, Nf4Backend, Nf4Prims, Nf4Product, ScalesPrim};
    use burn::tensor::ops::FloatTensor;
    use burn::tensor::DType;
    use medqlora_kernels::burn_cubecl::kernel::into_contiguous;
    use medqlora_kernels::burn_cubecl::kernel::matmul::{matmul, MatmulStrategy};
    use medqlora_kernels::burn_cubecl::{BoolElement, CubeBackend, CubeRuntime, FloatElement, IntElement};
    use medqlora_kernels::device::{Nf4Device, ScalesDevice};
    use medqlora_kernels::{dequant, gemm, gemm_dx, gemv};

    pub(crate) fn device<R: CubeRuntime, F: FloatElement, I: IntElement, BT: BoolElement>(w: &Nf4Prims<CubeBackend<R, F, I, BT>>) -> Nf4Device<R> {
        let scales = match &w.scales {
            ScalesPrim::F32(a) => ScalesDevice::F32(into_contiguous(a.clone())),
            ScalesPrim::Double { codes, nested, offset } => {
                ScalesDevice::Double { codes: into_contiguous(codes.clone()), nested: into_contiguous(nested.clone()), offset: *offset }
            }
        };
        Nf4Device { packed: into_contiguous(w.packed.clone()), scales, lut: into_contiguous(w.lut.clone()), n: w.n, k: w.k, blocksize: w.blocksize }
    }

    /// The fused kernels' configuration [`nf4_product`] asks for.
    fn config() -> gemm::GemmConfig {
        use gemm::{GemmConfig, GemmMma, GemmRows, GemmStages};
        let (rows, mma, stages) = match nf4_product() {
            Nf4Product::Fused | Nf4Product::Dequantize => (GemmRows::R128, GemmMma::Wmma, GemmStages::One),
            Nf4Product::Fused256 => (GemmRows::R256, GemmMma::Wmma, GemmStages::One),
            Nf4Product::Fused256Ldmatrix => (GemmRows::R256, GemmMma::Ldmatrix, GemmStages::One),
            Nf4Product::Fused2Stage => (GemmRows::R128, GemmMma::Wmma, GemmStages::Two),
            Nf4Product::FusedLdmatrix2Stage => (GemmRows::R128, GemmMma::Ldmatrix, GemmStages::Two),
            Nf4Product::Fused256TwoStage => (GemmRows::R256, GemmMma::Wmma, GemmStages::Two),
            Nf4Product::Fused256Ldmatrix2Stage => (GemmRows::R256, GemmMma::Ldmatrix, GemmStages::Two),
            Nf4Product::Fused256Wide => (GemmRows::R256, GemmMma::Wide, GemmStages::Two),
            Nf4Product::Fused256Wgmma => (GemmRows::R256, GemmMma::Wgmma, GemmStages::Two),
        };
        GemmConfig { rows, mma, stages }
    }

    impl<R: CubeRuntime, F: FloatElement, I: IntElement, BT: BoolElement> Nf4Backend for CubeBackend<R, F, I, BT> {
        fn nf4_matmul_t(x: FloatTensor<Self>, w: Nf4Prims<Self>) -> FloatTensor<Self> {
            let dev = device(&w);
            let x = into_contiguous(x);
            let m = x.meta.shape()[0];
            let half = matches!(x.dtype, DType::BF16 | DType::F16);
            let fast = if m <= gemv::MAX_M {
                gemv::gemv(&x, &dev)
            } else if half && nf4_product() != Nf4Product::Dequantize {
                gemm::gemm_with(&x, &dev, config())
            } else {
                // f32 (the fused kernels' tensor cores take 16-bit operands) or by choice:
                // dequantize, then Burn's matmul (autotuned).
                dequant::dequantize(&dev, x.dtype).map(|mut dense| {
                    dense.meta.swap(0, 1);
                    matmul(x.clone(), dense, None, MatmulStrategy::default(), x.dtype).expect("matmul")
                })
            };
            // Shapes the kernels cannot address (e.g. K % 32 != 0) take the reference path.
            fast.unwrap_or_else(|_| reference_matmul_t(x, w))
        }

        fn nf4_matmul_dx(dy: FloatTensor<Self>, w: Nf4Prims<Self>) -> FloatTensor<Self> {
            let dev = device(&w);
            let dy = into_contiguous(dy);
            let fast = if matches!(dy.dtype, DType::BF16 | DType::F16) && nf4_product() != Nf4Product::Dequantize {
                gemm_dx::gemm_dx_with(&dy, &dev, config())
            } else {
                dequant::dequantize(&dev, dy.dtype).map(|dense| matmul(dy.clone(), dense, None, MatmulStrategy::default(), dy.dtype).expect("matmul"))
            };
            fast.unwrap_or_else(|_| reference_matmul_dx(dy, w))
        }
    }
}
