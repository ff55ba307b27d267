//! Burn tensor primitives as the CUDA kernels take them (`CubeTensor<CudaRuntime>`), and back:
//! the one type check and contiguous copy every kernel-backed operation starts with
//! (`model::{swiglu, norm, softmax, attention_kernel}`, `lora::dropout`, `train::optim8`).

use crate::model::autodiff_op::cast;
use medqlora_kernels::burn_cubecl::kernel::into_contiguous;
use medqlora_kernels::burn_cubecl::tensor::CubeTensor;
use medqlora_kernels::cubecl::cuda::CudaRuntime;

/// A CUDA tensor as the kernels take it.
pub(crate) type Cube = CubeTensor<CudaRuntime>;

/// `t` (a float, int or bool primitive) as a contiguous CUDA tensor, or `t` back when its
/// backend is not CUDA.
pub(crate) fn cube<T: 'static>(t: T) -> Result<Cube, T> {
    cast(t).map(into_contiguous)
}

/// [`cube`] for an operand whose backend is known to be CUDA (another operand of the same
/// call already was).
pub(crate) fn cube_of<T: 'static>(t: T) -> Cube {
    cube(t).unwrap_or_else(|_| unreachable!("operands of one backend: a CUDA tensor"))
}

/// A kernel's output as the caller's primitive type.
pub(crate) fn back<T: 'static>(c: Cube) -> T {
    cast(c).unwrap_or_else(|_| unreachable!("the caller's tensors are CUDA cube tensors"))
}
