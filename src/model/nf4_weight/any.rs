//! NF4 products for a backend known only as `B: Backend` (the inner backend of an autodiff
//! operation with its own backward, [`crate::lora::fused`]): the kernels when `B` is a CUDA
//! backend, recognized by its primitives' type at run time; the Burn-ops reference elsewhere.
//!
//! Why not [`super::ops::Nf4Backend`]: operations with their own backward run on a generic
//! inner backend (`model::autodiff_op`), which carries no `Nf4Backend` bound. Every CUDA
//! backend (`Cuda<bf16>`, `Cuda<f16>`, `Cuda<f32>`) shares one primitive type, so the
//! `Cuda<bf16>` implementation serves them all: the kernels take their dtype from the tensors.

use super::ops::{reference_matmul_dx, reference_matmul_t, Nf4Prims};
use crate::model::autodiff_op::{float, prim};
use burn::tensor::backend::Backend;
use burn::tensor::Tensor;

/// `x [M, K] W^T -> [M, N]`.
pub fn matmul_t<B: Backend>(x: Tensor<B, 2>, w: &Nf4Prims<B>) -> Tensor<B, 2> {
    #[cfg(feature = "cuda")]
    let x = match cuda::matmul_t(x, w) {
        Ok(y) => return y,
        Err(x) => x,
    };
    float(reference_matmul_t(prim(x), w.clone()))
}

/// `dy [M, N] W -> [M, K]`.
pub fn matmul_dx<B: Backend>(dy: Tensor<B, 2>, w: &Nf4Prims<B>) -> Tensor<B, 2> {
    #[cfg(feature = "cuda")]
    let dy = match cuda::matmul_dx(dy, w) {
        Ok(dx) => return dx,
        Err(dy) => dy,
    };
    float(reference_matmul_dx(prim(dy), w.clone()))
}

/// `dy W + addend` (`addend [M, K]`, the adapter's input gradient): in one launch (the wide
/// kernel's `dX` epilogue, `medqlora_kernels::gemm::gemm_dx_add`) where the kernel takes the
/// operands as for [`matmul_t_lora`]; else the product and an add.
pub fn matmul_dx_add<B: Backend>(dy: Tensor<B, 2>, w: &Nf4Prims<B>, addend: Tensor<B, 2>) -> Tensor<B, 2> {
    #[cfg(feature = "cuda")]
    if let Some(dx) = cuda::matmul_dx_add(&dy, w, &addend) {
        return dx;
    }
    matmul_dx(dy, w) + addend
}

/// `x W^T + h B^T (+ bias)` in one launch (the wide kernel's epilogue,
/// `medqlora_kernels::gemm::gemm_lora`) for `x [M, K]`, `h [M, rank]`, `b [N, rank]`, `bias
/// [N]`, when `B` is a CUDA backend, the wide product is the process's choice, `M` is more
/// than decoding's GEMV serves and the kernel takes the operands (16-bit, `K` and the rank
/// multiples of 64); `None` otherwise (the caller runs the separate products).
pub fn matmul_t_lora<B: Backend>(x: &Tensor<B, 2>, w: &Nf4Prims<B>, h: &Tensor<B, 2>, b: &Tensor<B, 2>, bias: Option<&Tensor<B, 1>>) -> Option<Tensor<B, 2>> {
    #[cfg(feature = "cuda")]
    return cuda::matmul_t_lora(x, w, h, b, bias);
    #[cfg(not(feature = "cuda"))]
    {
        let _ = (x, w, h, b, bias);
        None
    }
}

#[cfg(feature = "cuda")]
mod cuda {
    use super::super::ops::{device, nf4_product, Nf4Backend, Nf4Prims, Nf4Product, ScalesPrim};
    use crate::model::autodiff_op::{cast, float, prim};
    use crate::model::cuda_tensor::{back, cube};
    use burn::tensor::backend::Backend;
    use burn::tensor::ops::{FloatTensor, IntTensor};
    use burn::tensor::Tensor;
    use medqlora_kernels::gemm::{gemm_dx_add_with, gemm_lora_with, GemmEpilogue, GemmMma};

    type Cuda = burn::backend::Cuda<half::bf16>;

    /// `w` as the CUDA backend's, when its primitives are CUDA tensors.
    fn as_cuda<B: Backend>(w: &Nf4Prims<B>) -> Option<Nf4Prims<Cuda>> {
        let f = |t: &FloatTensor<B>| cast::<_, FloatTensor<Cuda>>(t.clone()).ok();
        let i = |t: &IntTensor<B>| cast::<_, IntTensor<Cuda>>(t.clone()).ok();
        let scales = match &w.scales {
            ScalesPrim::F32(a) => ScalesPrim::F32(f(a)?),
            ScalesPrim::Double { codes, nested, offset } => ScalesPrim::Double { codes: i(codes)?, nested: f(nested)?, offset: *offset },
        };
        Some(Nf4Prims { packed: i(&w.packed)?, scales, lut: f(&w.lut)?, n: w.n, k: w.k, blocksize: w.blocksize })
    }

    fn same<T, U>(_: T) -> U {
        unreachable!("the weight and the activations share a backend")
    }

    pub(super) fn matmul_t<B: Backend>(x: Tensor<B, 2>, w: &Nf4Prims<B>) -> Result<Tensor<B, 2>, Tensor<B, 2>> {
        let Some(wc) = as_cuda(w) else { return Err(x) };
        let xc = cast::<_, FloatTensor<Cuda>>(prim(x)).unwrap_or_else(same);
        Ok(float(cast::<_, FloatTensor<B>>(Cuda::nf4_matmul_t(xc, wc)).unwrap_or_else(same)))
    }

    pub(super) fn matmul_dx<B: Backend>(dy: Tensor<B, 2>, w: &Nf4Prims<B>) -> Result<Tensor<B, 2>, Tensor<B, 2>> {
        let Some(wc) = as_cuda(w) else { return Err(dy) };
        let dyc = cast::<_, FloatTensor<Cuda>>(prim(dy)).unwrap_or_else(same);
        Ok(float(cast::<_, FloatTensor<B>>(Cuda::nf4_matmul_dx(dyc, wc)).unwrap_or_else(same)))
    }

    /// Whether the wide kernel (or, where it takes them, the `wgmma` products) serves `rows`
    /// rows (the process's choice, more rows than the GEMV decodes).
    fn wide(rows: usize) -> bool {
        matches!(nf4_product(), Nf4Product::Fused256Wide | Nf4Product::Fused256Wgmma) && rows > medqlora_kernels::gemv::MAX_M
    }

    /// The wide kernels' tensor-core path for the process's choice.
    fn mma() -> GemmMma {
        if nf4_product() == Nf4Product::Fused256Wgmma {
            GemmMma::Wgmma
        } else {
            GemmMma::Wide
        }
    }

    pub(super) fn matmul_dx_add<B: Backend>(dy: &Tensor<B, 2>, w: &Nf4Prims<B>, addend: &Tensor<B, 2>) -> Option<Tensor<B, 2>> {
        if !wide(dy.dims()[0]) {
            return None;
        }
        let dev = device(&as_cuda(w)?);
        let (dyc, addc) = (cube(prim(dy.clone())).ok()?, cube(prim(addend.clone())).ok()?);
        Some(float(back(gemm_dx_add_with(&dyc, &dev, &addc, mma()).ok()?)))
    }

    pub(super) fn matmul_t_lora<B: Backend>(x: &Tensor<B, 2>, w: &Nf4Prims<B>, h: &Tensor<B, 2>, b: &Tensor<B, 2>, bias: Option<&Tensor<B, 1>>) -> Option<Tensor<B, 2>> {
        if !wide(x.dims()[0]) {
            return None;
        }
        let dev = device(&as_cuda(w)?);
        let (xc, hc, bc) = (cube(prim(x.clone())).ok()?, cube(prim(h.clone())).ok()?, cube(prim(b.clone())).ok()?);
        let biasc = match bias {
            Some(t) => Some(cube(prim(t.clone())).ok()?),
            None => None,
        };
        let y = gemm_lora_with(&xc, &dev, GemmEpilogue { lora: Some((&hc, &bc)), bias: biasc.as_ref() }, mma()).ok()?;
        Some(float(back(y)))
    }
}
