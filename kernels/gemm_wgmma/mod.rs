//! The NF4 products on Hopper's warpgroup MMA (`wgmma.mma_async`), for the CUDA runtime on
//! sm_90: the forward `Y[M, N] = X[M, K] W^T (+ H B^T + b)` and the input gradient `dX[M, K] =
//! dY[M, N] W (+ D)`. The kernel is CUDA C++ (`kernel.cu`, through [`crate::cuda_source`])
//! because cubecl has no `wgmma`.
//!
//! Why: the wide kernel ([`crate::gemm::wide`]) feeds `mma.sync` from shared memory through
//! `ldmatrix` and holds its accumulators with 8 planes per cube; at the 7B shapes it runs at
//! ~250 TFLOP/s, latency-bound (tensor pipe ~30% busy), and the NF4 products are ~72% of a
//! training layer. `wgmma` reads the activations straight from shared memory by descriptor,
//! runs asynchronously beside the warps' own work (here: decoding the next step's weight
//! codes), and takes a 64 x 256 x 16 product per instruction. Only the weight's packed bytes (a
//! quarter of the 16-bit tile) are copied; each warpgroup decodes its 64 rows of the next step
//! into a 16-bit tile in shared memory while the current step's products run (the default
//! `Mainloop::Shared`). Decoding each thread's fragment straight into registers (`wgmma`'s A
//! may come from registers; `Mainloop::Registers`) cannot overlap the two: ptxas serializes
//! `wgmma`s whose register inputs are defined while one is in flight.
//!
//! Tiles: a cube computes 128 rows of `W` (output columns) against 256 rows of `X`, as the
//! transposed product `D[n, m]`, and writes `Y` back through shared memory in 16-byte rows.
//! Takes `N % 128 == 0`, `K % 64 == 0`, blocks of at least 64 (one scale per row and step),
//! 16-bit `X`; the launcher declines anything else and the wide kernel runs instead. A
//! reduction whose output has too few tiles for the GPU is cut into parts as the wide one is
//! (f32 partials, [`crate::splitk_sum`]); part 0 alone adds the adapter and the bias. The
//! reference is [`crate::gemv::reference::matmul_t`] plus
//! [`crate::gemm::lora::reference::add_lora_bias`].
//!
//! `dX` swaps `W`'s roles: a cube computes 128 of `W`'s columns (`K % 128 == 0`) against 256
//! rows of `dY`, the reduction runs over `W`'s rows 64 a step (`N % 64 == 0`), and the decoded
//! tile (rows of the reduction) is read M-major (`wgmma`'s transposed A). Never split; its added
//! term is added to f32 staging before the one rounding. Reference:
//! [`crate::gemm_dx::reference::matmul_dx`].

#[cfg(feature = "cuda")]
mod launch;
#[cfg(feature = "cuda")]
pub(crate) use launch::{try_launch, Mainloop};
#[cfg(feature = "cuda-check")]
pub(crate) use launch::{task, Variant};

#[cfg(all(test, feature = "cuda"))]
mod tests;

/// Rows of `W` per cube (two warpgroups of 64).
pub const TILE_N: usize = 128;
/// Rows of `X` per cube (`wgmma`'s N).
pub const TILE_M: usize = 256;
/// Shared-memory slots of the copy pipeline (copies run `STAGES - 2` steps ahead).
pub const STAGES: usize = 5;
/// Threads per cube.
pub const THREADS: u32 = 256;
/// Dynamic shared memory per cube: the slots (a 256 x 64 16-bit `X` tile and 128 x 32 bytes
/// of packed `W`), the byte-to-code-pair table (256 x 8 bytes), the dynamic map (256 f32) and
/// 1,024 bytes to align the tiles for the swizzle.
pub const SHARED_BYTES: usize = STAGES * (32768 + 4096) + 2048 + 1024 + 1024;

/// Whether the forward takes `W [n, k]` in blocks of `blocksize` for `m` rows of `X`.
pub fn takes(m: usize, n: usize, k: usize, blocksize: usize) -> bool {
    m > 0 && n % TILE_N == 0 && n > 0 && k % 64 == 0 && k > 0 && blocksize >= 64
}

/// Whether the input gradient takes `W [n, k]` in blocks of `blocksize` for `m` rows of `dY`
/// (its output columns are `W`'s: 128 a cube; its reduction `W`'s rows, 64 a step).
pub fn takes_dx(m: usize, n: usize, k: usize, blocksize: usize) -> bool {
    m > 0 && k % TILE_N == 0 && k > 0 && n % 64 == 0 && n > 0 && blocksize >= 64
}

#[cfg(test)]
mod shape_tests {
    #[test]
    fn takes_only_whole_tiles_and_one_scale_per_step() {
        use super::takes;
        assert!(takes(2048, 3584, 18944, 64));
        assert!(takes(1, 128, 64, 128));
        assert!(!takes(2048, 3584 + 64, 3584, 64), "N not a multiple of 128");
        assert!(!takes(2048, 512, 3584 + 32, 64), "K not a multiple of 64");
        assert!(!takes(2048, 512, 3584, 32), "two scales per row and step");
        assert!(!takes(0, 512, 3584, 64), "no rows");
        use super::takes_dx;
        assert!(takes_dx(2048, 512, 3584, 64));
        assert!(takes_dx(2048, 3584, 18944, 64));
        assert!(!takes_dx(2048, 512, 3584 + 64, 64), "K not a multiple of 128");
        assert!(!takes_dx(2048, 512 + 32, 3584, 64), "N not a multiple of 64");
        assert!(!takes_dx(2048, 512, 3584, 32), "two scales per row and step");
        assert!(super::SHARED_BYTES + 2 * 16384 <= 227 * 1024, "an H100/H200 cube's shared memory, with the decoded tiles");
        // The epilogue's f32 staging tile (256 rows of 132) fits in the slots it reuses.
        assert!(256 * 132 * 4 <= super::STAGES * (32768 + 4096));
    }
}
