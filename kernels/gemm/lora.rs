//! The NF4 products of a QLoRA projection closed in the same launch by what the adapter adds:
//! the forward `Y = X W^T + H B^T + bias` and the backward `dX = dY W + D` (`D` the adapter's
//! input gradient) on the wide kernel ([`super::wide`], its `lora` and `added` epilogues). The
//! references are the dense products plus the same terms ([`crate::gemv::reference::matmul_t`],
//! [`crate::gemm_dx::reference`], [`reference`]).

use super::kernel::GemmMma;
use super::pipelined::BK64;
use super::wide::{launch_wide, WideTerms};
use crate::device::{check_operand, empty, KernelError, Nf4Device};
use burn_backend::DType;
use burn_cubecl::tensor::CubeTensor;
use burn_cubecl::CubeRuntime;

const NAME: &str = "nf4 gemm + lora";

/// What closes the product: the adapter's `h [M, rank]` (its down-projection, scaled) and `B
/// [N, rank]`, both in `X`'s dtype, `rank` a multiple of 64; and a bias `[N]` in `X`'s dtype.
/// Either may be absent (not both: that is [`super::gemm_with`]).
pub struct GemmEpilogue<'a, R: CubeRuntime> {
    /// `(h, B)`.
    pub lora: Option<(&'a CubeTensor<R>, &'a CubeTensor<R>)>,
    /// `[N]`.
    pub bias: Option<&'a CubeTensor<R>>,
}

// By hand: the derives would ask `R: Copy`, and only references are copied.
impl<R: CubeRuntime> Clone for GemmEpilogue<'_, R> {
    fn clone(&self) -> Self {
        *self
    }
}

impl<R: CubeRuntime> Copy for GemmEpilogue<'_, R> {}

/// `Y[M, N] = X W^T + h B^T + bias` (the epilogue's terms that are present) as a new `[M, N]`
/// tensor of `X`'s dtype. `X` contiguous bf16/f16 with `K % 64 == 0`; anything the kernel
/// does not take is an error (the caller runs the separate launches).
pub fn gemm_lora<R: CubeRuntime>(x: &CubeTensor<R>, w: &Nf4Device<R>, epilogue: GemmEpilogue<'_, R>) -> Result<CubeTensor<R>, KernelError> {
    gemm_lora_with(x, w, epilogue, GemmMma::Wide)
}

/// [`gemm_lora`] on the tensor-core path `mma` ([`GemmMma::Wgmma`]: the `wgmma` kernel where
/// it takes the problem; anything else: the wide kernel).
pub fn gemm_lora_with<R: CubeRuntime>(x: &CubeTensor<R>, w: &Nf4Device<R>, epilogue: GemmEpilogue<'_, R>, mma: GemmMma) -> Result<CubeTensor<R>, KernelError> {
    let m = check_operand(NAME, x, None, w.k)?;
    let y = empty(x, vec![m, w.n], x.dtype);
    gemm_lora_into_with(x, w, epilogue, &y, mma)?;
    Ok(y)
}

/// [`gemm_lora`] into a given contiguous `[M, N]` output (tests pass a poisoned one).
pub fn gemm_lora_into<R: CubeRuntime>(x: &CubeTensor<R>, w: &Nf4Device<R>, epilogue: GemmEpilogue<'_, R>, y: &CubeTensor<R>) -> Result<(), KernelError> {
    gemm_lora_into_with(x, w, epilogue, y, GemmMma::Wide)
}

/// [`gemm_lora_with`] into a given contiguous `[M, N]` output.
pub fn gemm_lora_into_with<R: CubeRuntime>(x: &CubeTensor<R>, w: &Nf4Device<R>, epilogue: GemmEpilogue<'_, R>, y: &CubeTensor<R>, mma: GemmMma) -> Result<(), KernelError> {
    let shift = w.check(NAME)?;
    let m = check_operand(NAME, x, None, w.k)?;
    check_operand(NAME, y, Some(m), w.n)?;
    let bad = |what: String| Err(KernelError::Shape { kernel: NAME, what });
    if !matches!(x.dtype, DType::BF16 | DType::F16) {
        return Err(KernelError::Dtype { kernel: NAME, dtype: x.dtype });
    }
    if w.k % BK64 != 0 {
        return bad(format!("K = {} is not a multiple of {BK64}", w.k));
    }
    let GemmEpilogue { lora, bias } = epilogue;
    if lora.is_none() && bias.is_none() {
        return bad("neither an adapter nor a bias to add".into());
    }
    let aligned = |t: &CubeTensor<R>| t.handle.offset_start.unwrap_or(0) % 16 == 0;
    let rank = match lora {
        Some((h, b)) => {
            let rank = h.meta.shape().iter().last().copied().unwrap_or(0);
            check_operand(NAME, h, Some(m), rank)?;
            check_operand(NAME, b, Some(w.n), rank)?;
            if rank == 0 || rank % BK64 != 0 {
                return bad(format!("rank {rank} is not a multiple of {BK64}"));
            }
            if !aligned(h) || !aligned(b) {
                return bad("h or B does not start on 16 bytes".into());
            }
            rank
        }
        None => 0,
    };
    if let Some(bias) = bias {
        let dims: Vec<usize> = bias.meta.shape().iter().copied().collect();
        if dims != [w.n] || !bias.is_contiguous() {
            return bad(format!("bias {dims:?} is not a contiguous [{}]", w.n));
        }
    }
    for (what, t) in [("h", lora.map(|l| l.0)), ("B", lora.map(|l| l.1)), ("bias", bias), ("Y", Some(y))] {
        if t.is_some_and(|t| t.dtype != x.dtype) {
            return bad(format!("{what} is not {:?} as X is", x.dtype));
        }
    }
    launch_wide(NAME, x, w, y, WideTerms { lora: lora.map(|(h, b)| (h, b, rank)), added: bias }, shift, false, mma)
}

/// `dX[M, K] = dY[M, N] W + addend` as a new tensor of `dY`'s dtype: `dY` contiguous bf16/f16,
/// `N % 64 == 0`, `K % 32 == 0`, `addend` a contiguous `[M, K]` of `dY`'s dtype; anything else
/// is an error (the caller adds in a pass of its own).
pub fn gemm_dx_add<R: CubeRuntime>(dy: &CubeTensor<R>, w: &Nf4Device<R>, addend: &CubeTensor<R>) -> Result<CubeTensor<R>, KernelError> {
    gemm_dx_add_with(dy, w, addend, GemmMma::Wide)
}

/// [`gemm_dx_add`] on the tensor-core path `mma` ([`GemmMma::Wgmma`]: the `wgmma` kernel where
/// it takes the problem; anything else: the wide kernel).
pub fn gemm_dx_add_with<R: CubeRuntime>(dy: &CubeTensor<R>, w: &Nf4Device<R>, addend: &CubeTensor<R>, mma: GemmMma) -> Result<CubeTensor<R>, KernelError> {
    let m = check_operand(DX_NAME, dy, None, w.n)?;
    let dx = empty(dy, vec![m, w.k], dy.dtype);
    gemm_dx_add_into_with(dy, w, addend, &dx, mma)?;
    Ok(dx)
}

const DX_NAME: &str = "nf4 gemm dx + addend";

/// [`gemm_dx_add`] into a given contiguous `[M, K]` output (tests pass a poisoned one).
pub fn gemm_dx_add_into<R: CubeRuntime>(dy: &CubeTensor<R>, w: &Nf4Device<R>, addend: &CubeTensor<R>, dx: &CubeTensor<R>) -> Result<(), KernelError> {
    gemm_dx_add_into_with(dy, w, addend, dx, GemmMma::Wide)
}

/// [`gemm_dx_add_with`] into a given contiguous `[M, K]` output.
pub fn gemm_dx_add_into_with<R: CubeRuntime>(dy: &CubeTensor<R>, w: &Nf4Device<R>, addend: &CubeTensor<R>, dx: &CubeTensor<R>, mma: GemmMma) -> Result<(), KernelError> {
    const NAME: &str = DX_NAME;
    let shift = w.check(NAME)?;
    let m = check_operand(NAME, dy, None, w.n)?;
    check_operand(NAME, addend, Some(m), w.k)?;
    check_operand(NAME, dx, Some(m), w.k)?;
    if !matches!(dy.dtype, DType::BF16 | DType::F16) || addend.dtype != dy.dtype || dx.dtype != dy.dtype {
        return Err(KernelError::Dtype { kernel: NAME, dtype: addend.dtype });
    }
    if w.n % BK64 != 0 || w.k % 32 != 0 {
        return Err(KernelError::Shape { kernel: NAME, what: format!("N = {} or K = {} is not a multiple of {BK64} / 32", w.n, w.k) });
    }
    launch_wide(NAME, dy, w, dx, WideTerms { lora: None, added: Some(addend) }, shift, true, mma)
}

/// Plain CPU reference of the epilogue's terms.
pub mod reference {
    /// `y[i, j] += sum_r h[i, r] b[j, r] + bias[j]` for `y [m, n]`, `h [m, rank]`, `b [n,
    /// rank]` (f64 sums).
    pub fn add_lora_bias(y: &mut [f32], m: usize, n: usize, lora: Option<(&[f32], &[f32], usize)>, bias: Option<&[f32]>) {
        for i in 0..m {
            for j in 0..n {
                let mut v = y[i * n + j] as f64;
                if let Some((h, b, rank)) = lora {
                    v += (0..rank).map(|r| h[i * rank + r] as f64 * b[j * rank + r] as f64).sum::<f64>();
                }
                if let Some(bias) = bias {
                    v += bias[j] as f64;
                }
                y[i * n + j] = v as f32;
            }
        }
    }
}
