//! Products with a frozen dense 16-bit weight `W [N, K]`: the forward `Y[M, N] = X[M, K] W^T`
//! and the input gradient `dX[M, K] = dY[M, N] W`, on the NF4 wide kernel's tensor-core core
//! with `W`'s tiles copied by `cp.async` instead of decoded. A reduction too short of cubes
//! is cut into parts (split-K) summed in f32 by [`crate::splitk_sum`].
//!
//! Why: the untied vocabulary head (`lm_head`, 152,064 x 3,584 in the 7B) stays bf16 in QLoRA,
//! and its two products per head chunk ran on Burn's matmul at ~180 TFLOP/s, 25 ms of each 7B
//! training step (H100 profile, 2026-12-06), where the NF4 wide kernel, which also decodes
//! `W`, reaches ~250 on the same core. The input gradient's output (`[chunk rows, 3,584]`) is
//! 56 cubes for a 152,064-long reduction: it needs the split. The same products serve every
//! projection of a model trained without quantization.

pub mod reference;

#[cfg(feature = "launch")]
pub(crate) mod kernel;
#[cfg(feature = "launch")]
pub use kernel::gemm_dense_into;

#[cfg(test)]
mod tests;

/// Which product of `W [N, K]`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Direction {
    /// `Y[M, N] = X[M, K] W^T` (reduces `K`).
    Forward,
    /// `dX[M, K] = dY[M, N] W` (reduces `N`).
    InputGrad,
}

/// Fewest 64-wide reduction steps a part gets from [`auto_parts`] (a shorter part spends more
/// on its prologue and its partials than the split wins).
pub const MIN_PART_STEPS: usize = 8;

/// Into how many parts [`gemm_dense_into`] cuts the reduction when not told: 1 when the
/// output's `cubes` fill the `sms` multiprocessors; else the fewest parts (at most 16 and
/// `max_parts`) whose cubes fill their last wave to 90%, or failing that the fullest last wave.
pub fn auto_parts(cubes: usize, sms: usize, max_parts: usize) -> usize {
    if cubes == 0 || cubes >= sms || max_parts <= 1 {
        return 1;
    }
    let fill = |p: usize| {
        let c = p * cubes;
        c as f64 / (c.div_ceil(sms) * sms) as f64
    };
    let candidates = 1..=max_parts.min(16);
    candidates.clone().find(|&p| fill(p) >= 0.9).unwrap_or_else(|| candidates.fold(1, |best, p| if fill(p) > fill(best) + 1e-9 { p } else { best }))
}

/// `(parts, span)`: a reduction of `tiles` 64-wide steps whose output is `cubes` tiles, on a
/// GPU of `sms` multiprocessors, cut into `parts` (given, at most `tiles`; `None`:
/// [`auto_parts`]) of `span` steps each, the last possibly shorter; every part gets at least
/// one step, so the count may come out below the one asked.
pub fn plan_parts(tiles: usize, cubes: usize, sms: usize, parts: Option<usize>) -> (usize, usize) {
    let tiles = tiles.max(1);
    let asked = match parts {
        Some(p) => p.clamp(1, tiles),
        None => auto_parts(cubes, sms, tiles / MIN_PART_STEPS),
    };
    let span = tiles.div_ceil(asked);
    (tiles.div_ceil(span), span)
}

/// [`gemm_dense_into`] into a new contiguous output of `a`'s dtype. `a` (`X [M, K]` or `dY
/// [M, N]`) and `W` contiguous, both bf16 or both f16, the reduction a multiple of 64, `K` of 8,
/// both starting on 16 bytes; `parts`: the split of the reduction (`None`: [`auto_parts`]).
/// Anything else is an error (the caller runs its own product).
#[cfg(feature = "launch")]
pub fn gemm_dense<R: burn_cubecl::CubeRuntime>(
    a: &burn_cubecl::tensor::CubeTensor<R>,
    w: &burn_cubecl::tensor::CubeTensor<R>,
    product: Direction,
    parts: Option<usize>,
) -> Result<burn_cubecl::tensor::CubeTensor<R>, crate::device::KernelError> {
    let rows = a.meta.shape().first().copied().unwrap_or(0);
    let wd: Vec<usize> = w.meta.shape().iter().copied().collect();
    let cols = match (product, &wd[..]) {
        (Direction::Forward, &[n, _]) => n,
        (Direction::InputGrad, &[_, k]) => k,
        _ => return Err(crate::device::KernelError::Shape { kernel: "dense gemm", what: format!("W {wd:?} is not a [N, K] matrix") }),
    };
    let out = crate::device::empty(a, vec![rows, cols], a.dtype);
    gemm_dense_into(a, w, product, parts, &out)?;
    Ok(out)
}

#[cfg(test)]
mod part_tests {
    use super::auto_parts;

    #[test]
    fn parts_fill_the_last_wave() {
        // The 7B head's input gradient at 512 rows: 2 x 28 cubes on an H100's 132 SMs.
        assert_eq!(auto_parts(56, 132, 297), 7);
        // A grid that fills the machine is not cut; nor one with too short a reduction.
        assert_eq!(auto_parts(224, 132, 56), 1);
        assert_eq!(auto_parts(32, 132, 1), 1);
        // k/v of the 7B at 2,048 rows (4 x 8 cubes): 4 parts fill 97%.
        assert_eq!(auto_parts(32, 132, 7), 4);
        // No part count reaches 90%: the fullest last wave within the cap.
        let p = auto_parts(50, 132, 3);
        assert_eq!(p, 2, "100 of 132 beats 50 and 150 of 264");
    }

    #[test]
    fn every_part_gets_a_step() {
        use super::plan_parts;
        // 7 parts of 2,376 steps: 340 each, the last 336.
        assert_eq!(plan_parts(2376, 56, 132, None), (7, 340));
        // Asked 3 of 7 steps: spans of 3 leave 3 parts (3 + 3 + 1); asked 5: spans of 2 leave
        // 4 parts, none empty.
        assert_eq!(plan_parts(7, 6, 132, Some(3)), (3, 3));
        assert_eq!(plan_parts(7, 6, 132, Some(5)), (4, 2));
        // More parts than steps, or none asked for: clamped.
        assert_eq!(plan_parts(2, 6, 132, Some(9)), (2, 1));
        assert_eq!(plan_parts(2, 6, 132, Some(0)), (1, 2));
        for tiles in 1..200 {
            for asked in 1..20 {
                let (parts, span) = plan_parts(tiles, 1, 132, Some(asked));
                assert!((parts - 1) * span < tiles && parts * span >= tiles, "{tiles} steps, {asked} asked: {parts} x {span}");
            }
        }
    }
}
