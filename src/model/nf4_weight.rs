//! An NF4 weight resident on the device in the bitsandbytes layout (packed u8 codes plus
//! block scales, double-quantized or not), and its dequantization with plain Burn tensor ops.
//!
//! The Burn-ops dequantization is the backend-generic reference path (CPU, and any backend
//! without a dedicated kernel); it reproduces `Nf4Tensor::dequantize` (the bitsandbytes-exact
//! CPU reference) value for value in f32.
//!
//! Products go through [`Nf4Weight::matmul_t`]: on CUDA (and under autodiff on CUDA) the
//! `medqlora-kernels` kernels via [`ops::Nf4Backend`]; elsewhere this reference.

pub mod any;
pub mod ops;

use crate::quant::dynamic_map::DYNAMIC_MAP_SIGNED;
use crate::quant::nf4::{Absmax, Nf4Tensor, NESTED_BLOCKSIZE, NF4_CODE};
use burn::module::Module;
use burn::tensor::{backend::Backend, DType, ElementConversion, Int, IntDType, Tensor, TensorData, TensorPrimitive};
use ops::{Nf4Backend, Nf4Prims, ScalesPrim};
#[cfg(feature = "cuda")]
use std::any::Any;

/// Block scales on the device.
#[derive(Module, Debug)]
pub enum Nf4Scales<B: Backend> {
    /// One f32 per block.
    F32(Tensor<B, 1>),
    /// Double-quantized: u8 codes per block, f32 per 256 blocks, and the offset.
    Double(DoubleScales<B>),
}

/// Double-quantized block scales (`compress_statistics=True`).
#[derive(Module, Debug)]
pub struct DoubleScales<B: Backend> {
    /// `[blocks]` u8 codes into the signed dynamic map.
    pub codes: Tensor<B, 1, Int>,
    /// `[ceil(blocks / 256)]` f32.
    pub nested_absmax: Tensor<B, 1>,
    /// `mean(absmax)`, added back.
    pub offset: f32,
}

/// A frozen NF4 weight `[out, in]`.
#[derive(Module, Debug)]
pub struct Nf4Weight<B: Backend> {
    /// `[(n + 1) / 2]` u8, element 2j in the high nibble of byte j.
    pub packed: Tensor<B, 1, Int>,
    /// Per-block scales.
    pub scales: Nf4Scales<B>,
    /// `[272]` f32: the NF4 code then the signed dynamic map, read by the CUDA kernels
    /// (a constant, uploaded once per weight).
    pub lut: Tensor<B, 1>,
    /// `[out, in]`.
    pub shape: [usize; 2],
    /// Elements per block.
    pub blocksize: usize,
    /// Float dtype the weight dequantizes to (the device's compute dtype).
    #[module(skip)]
    pub dtype: DType,
}

fn u8_tensor<B: Backend>(bytes: &[u8], device: &B::Device) -> Tensor<B, 1, Int> {
    Tensor::from_data(TensorData::new(bytes.to_vec(), [bytes.len()]), (device, DType::U8))
}

fn f32_tensor<B: Backend>(v: &[f32], device: &B::Device) -> Tensor<B, 1> {
    Tensor::from_data(TensorData::new(v.to_vec(), [v.len()]), (device, DType::F32))
}

/// `v[i / group]` for i in 0..n: each entry repeated `group` times, cut to `n`.
fn repeat_each<B: Backend>(v: Tensor<B, 1>, group: usize, n: usize) -> Tensor<B, 1> {
    let len = v.dims()[0];
    v.unsqueeze_dim::<2>(1).expand([len, group]).reshape([len * group]).narrow(0, 0, n)
}

impl<B: Backend> Nf4Weight<B> {
    /// Uploads a host NF4 tensor (2-D) as is: no dequantized copy is made.
    pub fn from_host(t: &Nf4Tensor, device: &B::Device) -> Self {
        assert_eq!(t.shape.len(), 2, "NF4 linear weights are 2-D");
        let scales = match &t.absmax {
            Absmax::F32(a) => Nf4Scales::F32(f32_tensor(a, device)),
            Absmax::Double { codes, nested_absmax, offset } => Nf4Scales::Double(DoubleScales {
                codes: u8_tensor(codes, device),
                nested_absmax: f32_tensor(nested_absmax, device),
                offset: *offset,
            }),
        };
        let dtype = Tensor::<B, 1>::empty([1], device).dtype();
        let lut = f32_tensor(&medqlora_kernels::nf4::lut(&DYNAMIC_MAP_SIGNED), device);
        Self { packed: u8_tensor(&t.packed, device), scales, lut, shape: [t.shape[0], t.shape[1]], blocksize: t.blocksize, dtype }
    }

    /// Bytes resident on the device (codes + scales).
    pub fn resident_bytes(&self) -> usize {
        self.packed.dims()[0]
            + match &self.scales {
                Nf4Scales::F32(a) => 4 * a.dims()[0],
                Nf4Scales::Double(d) => d.codes.dims()[0] + 4 * d.nested_absmax.dims()[0] + 4,
            }
    }

    /// The f32 scale of every block `[blocks]`.
    pub fn absmax(&self) -> Tensor<B, 1> {
        match &self.scales {
            Nf4Scales::F32(a) => a.clone(),
            Nf4Scales::Double(d) => {
                let device = d.nested_absmax.device();
                let map = f32_tensor::<B>(&DYNAMIC_MAP_SIGNED, &device);
                let blocks = d.codes.dims()[0];
                let decoded = map.select(0, d.codes.clone().cast(IntDType::I32));
                decoded * repeat_each(d.nested_absmax.clone(), NESTED_BLOCKSIZE, blocks) + d.offset
            }
        }
    }

    /// The dense weight `[out, in]` in the device's float dtype (transient: callers use it for
    /// one product and drop it).
    pub fn dequantize(&self) -> Tensor<B, 2> {
        self.dequantize_reference()
    }

    /// The tensors as backend primitives (handle clones).
    pub fn prims(&self) -> Nf4Prims<B> {
        let scales = match &self.scales {
            Nf4Scales::F32(a) => ScalesPrim::F32(a.clone().into_primitive().tensor()),
            Nf4Scales::Double(d) => ScalesPrim::Double {
                codes: d.codes.clone().into_primitive(),
                nested: d.nested_absmax.clone().into_primitive().tensor(),
                offset: d.offset,
            },
        };
        let [n, k] = self.shape;
        Nf4Prims { packed: self.packed.clone().into_primitive(), scales, lut: self.lut.clone().into_primitive().tensor(), n, k, blocksize: self.blocksize }
    }

    /// `x [M, K] @ W^T -> [M, N]`. On the backends with NF4 kernels (CUDA, plain or under
    /// autodiff) this never materializes the dense weight in global memory for bf16 (the
    /// fused GEMM / GEMV), and its backward saves only the packed weight; elsewhere it is
    /// the Burn-ops reference (dequantize, then matmul).
    pub fn matmul_t(&self, x: Tensor<B, 2>) -> Tensor<B, 2> {
        match kernel_matmul_t(self, x) {
            Ok(y) => y,
            Err(x) => crate::model::linear::matmul_weight_t(x, self.dequantize_reference()),
        }
    }

    /// `x W^T` through [`Nf4Backend`] on any backend that implements it (tests call this to
    /// exercise the CPU implementation and its autodiff wrapper).
    pub fn matmul_t_ext(&self, x: Tensor<B, 2>) -> Tensor<B, 2>
    where
        B: Nf4Backend,
    {
        Tensor::from_primitive(TensorPrimitive::Float(B::nf4_matmul_t(x.into_primitive().tensor(), self.prims())))
    }

    /// The Burn-ops dequantization (the reference every kernel is checked against).
    pub(crate) fn dequantize_reference(&self) -> Tensor<B, 2> {
        let [out, inp] = self.shape;
        let n = out * inp;
        let device = self.packed.device();
        let pairs = self.packed.dims()[0];
        let hi = self.packed.clone().bitwise_right_shift_scalar(4.elem());
        let lo = self.packed.clone().bitwise_and_scalar(15.elem());
        let codes = Tensor::stack::<2>(vec![hi, lo], 1).reshape([pairs * 2]).narrow(0, 0, n).cast(IntDType::I32);
        let values = f32_tensor::<B>(&NF4_CODE, &device).select(0, codes);
        let w = values * repeat_each(self.absmax(), self.blocksize, n);
        w.reshape([out, inp]).cast(self.dtype)
    }
}

/// Runs `x W^T` through [`Nf4Backend`] when `B` is a backend with NF4 kernels; gives `x`
/// back otherwise. The model is generic over `B: Backend`, so the backend is recognized by
/// type at run time (a `TypeId` comparison per call) rather than by a trait bound that every
/// generic function of the model would have to carry.
fn kernel_matmul_t<B: Backend>(w: &Nf4Weight<B>, x: Tensor<B, 2>) -> Result<Tensor<B, 2>, Tensor<B, 2>> {
    #[cfg(feature = "cuda")]
    {
        use burn::backend::autodiff::checkpoint::strategy::{BalancedCheckpointing, NoCheckpointing};
        use burn::backend::{Autodiff, Cuda};
        use half::{bf16, f16};
        macro_rules! try_backends {
            ($x:expr; $($c:ty),*) => {{
                let mut x = $x;
                $(x = match via::<B, $c>(w, x) { Ok(y) => return Ok(y), Err(x) => x };)*
                x
            }};
        }
        let x = try_backends!(x;
            Cuda<bf16>, Cuda<f32>, Cuda<f16>,
            Autodiff<Cuda<bf16>, NoCheckpointing>, Autodiff<Cuda<f32>, NoCheckpointing>,
            Autodiff<Cuda<bf16>, BalancedCheckpointing>, Autodiff<Cuda<f32>, BalancedCheckpointing>);
        Err(x)
    }
    #[cfg(not(feature = "cuda"))]
    {
        let _ = w;
        Err(x)
    }
}

/// `x W^T` on backend `C` if `B` is `C`.
#[cfg(feature = "cuda")]
fn via<B: Backend, C: Nf4Backend>(w: &Nf4Weight<B>, x: Tensor<B, 2>) -> Result<Tensor<B, 2>, Tensor<B, 2>> {
    let Some(wc) = (w as &dyn Any).downcast_ref::<Nf4Weight<C>>() else { return Err(x) };
    let xc = match (Box::new(x) as Box<dyn Any>).downcast::<Tensor<C, 2>>() {
        Ok(xc) => *xc,
        Err(x) => return Err(*x.downcast::<Tensor<B, 2>>().expect("same type")),
    };
    let y = wc.matmul_t_ext(xc);
    Ok(*(Box::new(y) as Box<dyn Any>).downcast::<Tensor<B, 2>>().expect("C is B"))
}
