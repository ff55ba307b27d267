//! The dequantization kernel: one thread per packed u32 word (8 codes, always inside one
//! block since blocks hold >= 32 elements), one 16-byte store of 8 bf16/f16 values (two of 4
//! f32), so a warp reads 128 contiguous bytes and writes 512 (bf16) contiguous bytes.

use crate::device::{block_scale, empty, nibble, KernelError, Nf4Device};
use burn_backend::DType;
use burn_cubecl::tensor::CubeTensor;
use burn_cubecl::CubeRuntime;
use cubecl::prelude::*;
use cubecl::calculate_cube_count_elemwise;

#[cube(launch_unchecked)]
pub(crate) fn dequant_kernel<F: Float, N: Size>(
    words: &Array<u32>,
    absmax: &Array<f32>,
    qcodes: &Array<u8>,
    lut: &Array<f32>,
    out: &mut Array<Vector<F, N>>,
    offset: f32,
    num_words: usize,
    block_shift: u32,
    #[comptime] double: bool,
) {
    // The 16 NF4 values in shared memory: a register table indexed by a runtime nibble would
    // spill to local memory.
    let mut table = SharedMemory::<f32>::new(16usize);
    if UNIT_POS < 16 {
        table[UNIT_POS as usize] = lut[UNIT_POS as usize];
    }
    sync_cube();

    let w = ABSOLUTE_POS;
    if w < num_words {
        let word = words[w];
        let scale = block_scale((w * 8) >> block_shift as usize, absmax, qcodes, lut, offset, double);
        let vs = out.vector_size();
        let per = comptime![8 / vs];
        #[unroll]
        for v in 0..per {
            let mut vec = Vector::<F, N>::empty();
            #[unroll]
            for i in 0..vs {
                vec[i] = F::cast_from(table[nibble(word, comptime![v * vs + i])] * scale);
            }
            out[w * per + v] = vec;
        }
    }
}

/// Dequantizes `w` into a new contiguous `[n, k]` tensor of `dtype` (F32, BF16 or F16).
pub fn dequantize<R: CubeRuntime>(w: &Nf4Device<R>, dtype: DType) -> Result<CubeTensor<R>, KernelError> {
    let out = empty(&w.packed, vec![w.n, w.k], dtype);
    dequantize_into(w, &out)?;
    Ok(out)
}

/// Dequantizes `w` into `out` (contiguous `[n, k]`, f32/bf16/f16; tests pass a poisoned one).
pub fn dequantize_into<R: CubeRuntime>(w: &Nf4Device<R>, out: &CubeTensor<R>) -> Result<(), KernelError> {
    const NAME: &str = "nf4 dequantize";
    let shift = w.check(NAME)?;
    crate::device::check_operand(NAME, out, Some(w.n), w.k)?;
    let client = w.client();
    let num_words = w.n * w.k / 8;
    let cube_dim = CubeDim::new_1d(256);
    let count = calculate_cube_count_elemwise(client, num_words, cube_dim);
    let (absmax, qcodes, offset, double) = w.scale_args();
    let vector = 16 / out.dtype.size();
    let out_arg = unsafe { ArrayArg::from_raw_parts(out.handle.clone(), w.n * w.k / vector) };
    let words = w.words_arg(1);
    unsafe {
        match out.dtype {
            DType::F32 => dequant_kernel::launch_unchecked::<f32, R>(
                client, count, cube_dim, vector, words, absmax, qcodes, w.lut_arg(), out_arg, offset, num_words, shift, double,
            ),
            DType::BF16 => dequant_kernel::launch_unchecked::<half::bf16, R>(
                client, count, cube_dim, vector, words, absmax, qcodes, w.lut_arg(), out_arg, offset, num_words, shift, double,
            ),
            DType::F16 => dequant_kernel::launch_unchecked::<half::f16, R>(
                client, count, cube_dim, vector, words, absmax, qcodes, w.lut_arg(), out_arg, offset, num_words, shift, double,
            ),
            dtype => return Err(KernelError::Dtype { kernel: NAME, dtype }),
        }
    }
    Ok(())
}
