//! LoRA's input dropout (PEFT `lora_dropout`, torch's inverted `nn.Dropout`) with a mask that
//! is a hash of a seed and the element index (`medqlora_kernels::dropout`): a seed of four
//! integers drawn from the backend RNG stands for the whole mask, so the backward re-applies
//! it instead of keeping a bool tensor, and on CUDA one kernel drops and scales in one pass
//! over `x` (as Burn ops: a Bernoulli draw, a comparison, a mask fill and a scale, four).
//! The CPU builds the same mask from the same hash on the host, so both draw identical masks.

use burn::tensor::backend::Backend;
use burn::tensor::{Bool, Distribution, Int, Shape, Tensor, TensorData};
use medqlora_kernels::dropout::reference;

/// A fresh mask seed: four integers uniform in `[0, 65536)` from the backend RNG (which the
/// trainer reseeds per layer, so the recompute draws the forward's seeds). Drawn on the
/// device: no synchronization with the host.
pub fn draw_seed<B: Backend>(device: &B::Device) -> Tensor<B, 1, Int> {
    Tensor::random([4], Distribution::Uniform(0.0, 65536.0), device)
}

/// `x` with the elements the seed drops zeroed and the rest multiplied by `1 / (1 - p)`.
pub fn dropout<B: Backend, const D: usize>(x: Tensor<B, D>, seed: &Tensor<B, 1, Int>, p: f64) -> Tensor<B, D> {
    #[cfg(feature = "cuda")]
    let x = match cuda::dropout::<B, D>(x, seed, p) {
        Ok(y) => return y,
        Err(x) => x,
    };
    let mask = drop_mask::<B, D>(seed, x.shape(), p, &x.device());
    x.mask_fill(mask, 0.0).mul_scalar(1.0 / (1.0 - p))
}

/// The seed's four integers, read back to the host.
pub fn seed_words<B: Backend>(seed: &Tensor<B, 1, Int>) -> [i64; 4] {
    let words: Vec<i64> = seed.clone().into_data().convert::<i64>().to_vec().expect("an integer seed");
    words.try_into().unwrap_or_else(|w: Vec<i64>| panic!("a dropout seed has 4 integers, not {}", w.len()))
}

/// The seed's mask as a bool tensor of `shape` (`true` = dropped), built on the host from the
/// reference hash: the CPU path, and what tests compare the fused kernel's drops with.
pub fn drop_mask<B: Backend, const D: usize>(seed: &Tensor<B, 1, Int>, shape: Shape, p: f64, device: &B::Device) -> Tensor<B, D, Bool> {
    let drop: Vec<bool> = reference::keep_mask(shape.num_elements(), seed_words(seed), p).into_iter().map(|k| !k).collect();
    Tensor::from_data(TensorData::new(drop, shape), device)
}

/// [`dropout`] of `x: [rows, cols]` as `[parts, rows, cols / parts]` (column slice `s` as
/// batch `s`: a split-K product's operand). On CUDA the kernel writes that layout directly;
/// elsewhere it is a view of the dropped tensor (which a GPU matmul would copy first).
pub fn dropout_split<B: Backend>(x: Tensor<B, 2>, seed: &Tensor<B, 1, Int>, p: f64, parts: usize) -> Tensor<B, 3> {
    #[cfg(feature = "cuda")]
    let x = match cuda::dropout_split::<B>(x, seed, p, parts) {
        Ok(y) => return y,
        Err(x) => x,
    };
    let [rows, cols] = x.dims();
    dropout(x, seed, p).reshape([rows, parts, cols / parts]).swap_dims(0, 1)
}

/// The kernels on CUDA tensors (contiguous copies first); anything else is given back.
#[cfg(feature = "cuda")]
mod cuda {
    use crate::model::autodiff_op::{float, prim};
    use crate::model::cuda_tensor::{back as back_prim, cube, cube_of, Cube};
    use burn::tensor::backend::Backend;
    use burn::tensor::{Int, Tensor};

    /// `x` and the seed as contiguous CUDA tensors, or `x` back.
    fn operands<B: Backend, const D: usize>(x: Tensor<B, D>, seed: &Tensor<B, 1, Int>) -> Result<(Cube, Cube), Tensor<B, D>> {
        let xc = match cube(prim(x)) {
            Ok(c) => c,
            Err(x) => return Err(float(x)),
        };
        Ok((xc, cube_of(seed.clone().into_primitive())))
    }

    fn back<B: Backend, const D: usize>(c: Cube) -> Tensor<B, D> {
        float(back_prim(c))
    }

    pub(super) fn dropout<B: Backend, const D: usize>(x: Tensor<B, D>, seed: &Tensor<B, 1, Int>, p: f64) -> Result<Tensor<B, D>, Tensor<B, D>> {
        let (xc, sc) = operands(x, seed)?;
        medqlora_kernels::dropout::dropout(&xc, &sc, p).map(back::<B, D>).map_err(|_| back::<B, D>(xc))
    }

    pub(super) fn dropout_split<B: Backend>(x: Tensor<B, 2>, seed: &Tensor<B, 1, Int>, p: f64, parts: usize) -> Result<Tensor<B, 3>, Tensor<B, 2>> {
        let (xc, sc) = operands(x, seed)?;
        medqlora_kernels::dropout::dropout_split(&xc, &sc, p, parts).map(back::<B, 3>).map_err(|_| back::<B, 2>(xc))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::backend::NdArray;

    type Cpu = NdArray<f32>;

    /// The host path zeros exactly the elements the reference mask drops and scales the rest;
    /// a seed always gives the same mask, another seed another one.
    #[test]
    fn host_path_applies_the_seeds_mask() {
        let dev = Default::default();
        let x = Tensor::<Cpu, 2>::random([64, 96], Distribution::Uniform(1.0, 2.0), &dev);
        let (s1, s2) = (draw_seed::<Cpu>(&dev), draw_seed::<Cpu>(&dev));
        let y = dropout(x.clone(), &s1, 0.3);
        let want = reference::dropout(&x.to_data().to_vec::<f32>().unwrap(), seed_words(&s1), 0.3);
        assert_eq!(y.to_data().to_vec::<f32>().unwrap(), want);
        assert_eq!(dropout(x.clone(), &s1, 0.3).to_data(), y.to_data(), "same seed, same mask");
        assert_ne!(dropout(x, &s2, 0.3).to_data(), y.to_data(), "seeds {s1} and {s2} gave one mask");
    }
}
