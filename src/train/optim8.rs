//! The 8-bit moments of AdamW (`train.optimizer = "adamw_8bit"`): bitsandbytes' blockwise
//! layout (`medqlora_kernels::adamw8`), one byte per moment and element plus an f32 absmax per
//! 256 elements, kept on the device next to the f32 master weights.
//!
//! The step runs the `adamw8` kernel on CUDA and the kernel crate's CPU reference elsewhere
//! (through host memory: the CPU backend's tensors live there anyway). Like the NF4 product,
//! the backend is recognized by type at run time, so the trainer stays generic over `B`.

use burn::tensor::{backend::Backend, DType, Int, Tensor, TensorData};
use medqlora_kernels::adamw8::reference::{self, Adam8State, Adam8Step};

/// One tensor's 8-bit moments on the device.
#[derive(Debug, Clone)]
pub struct Q8Moments<B: Backend> {
    /// `[n]` u8 first-moment codes (signed dynamic map).
    pub m: Tensor<B, 1, Int>,
    /// `[n]` u8 second-moment codes (unsigned dynamic map).
    pub v: Tensor<B, 1, Int>,
    /// `[ceil(n / 256)]` f32.
    pub absmax_m: Tensor<B, 1>,
    /// `[ceil(n / 256)]` f32.
    pub absmax_v: Tensor<B, 1>,
}

impl<B: Backend> Q8Moments<B> {
    /// Uploads a host state.
    pub fn from_host(s: &Adam8State, device: &B::Device) -> Self {
        let u8s = |b: &[u8]| Tensor::from_data(TensorData::new(b.to_vec(), [b.len()]), (device, DType::U8));
        let f32s = |v: &[f32]| Tensor::from_data(TensorData::new(v.to_vec(), [v.len()]), (device, DType::F32));
        Self { m: u8s(&s.m), v: u8s(&s.v), absmax_m: f32s(&s.absmax_m), absmax_v: f32s(&s.absmax_v) }
    }

    /// Reads the state back (checkpoints).
    pub fn to_host(&self) -> Adam8State {
        let u8s = |t: &Tensor<B, 1, Int>| t.clone().into_data().convert::<u8>().to_vec::<u8>().unwrap_or_default();
        let f32s = |t: &Tensor<B, 1>| t.clone().into_data().convert::<f32>().to_vec::<f32>().unwrap_or_default();
        Adam8State { m: u8s(&self.m), v: u8s(&self.v), absmax_m: f32s(&self.absmax_m), absmax_v: f32s(&self.absmax_v) }
    }

    /// Elements covered.
    pub fn len(&self) -> usize {
        self.m.dims()[0]
    }

    /// Whether it covers no element.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Whether a tensor of `numel` elements gets 8-bit moments (bitsandbytes' `min_8bit_size`).
pub fn uses_8bit(numel: usize) -> bool {
    numel >= reference::MIN_8BIT_SIZE
}

/// One step of `p` (f32 master, any shape) with gradient `g`: the new weight and moments.
pub fn step<B: Backend, const D: usize>(p: Tensor<B, D>, g: Tensor<B, D>, s: &Q8Moments<B>, h: &Adam8Step) -> (Tensor<B, D>, Q8Moments<B>) {
    let dims = p.dims();
    let n: usize = dims.iter().product();
    let (p1, g1) = (p.reshape([n]), g.cast(DType::F32).reshape([n]));
    #[cfg(feature = "cuda")]
    let (p1, g1) = match cuda::step(p1, g1, s, h) {
        Ok((p, s)) => return (p.reshape(dims), s),
        Err(back) => back,
    };
    let device = p1.device();
    let mut pv = p1.into_data().convert::<f32>().to_vec::<f32>().unwrap_or_default();
    let gv = g1.into_data().convert::<f32>().to_vec::<f32>().unwrap_or_default();
    let mut st = s.to_host();
    reference::step(&mut pv, &gv, &mut st, h);
    let p = Tensor::<B, 1>::from_data(TensorData::new(pv, [n]), (&device, DType::F32)).reshape(dims);
    (p, Q8Moments::from_host(&st, &device))
}

#[cfg(feature = "cuda")]
mod cuda {
    use super::{Adam8Step, Q8Moments};
    use crate::model::autodiff_op::{float, prim};
    use crate::model::cuda_tensor::{back, cube, cube_of, Cube};
    use burn::tensor::{backend::Backend, Int, Tensor};
    use medqlora_kernels::adamw8::{adamw8_step, Adam8Device};

    fn float_prim<B: Backend>(t: Tensor<B, 1>) -> Result<Cube, Tensor<B, 1>> {
        cube(prim(t)).map_err(float)
    }

    fn float_back<B: Backend>(c: Cube) -> Tensor<B, 1> {
        float(back(c))
    }

    fn int_of<B: Backend>(t: &Tensor<B, 1, Int>) -> Cube {
        cube_of(t.clone().into_primitive())
    }

    fn int_back<B: Backend>(c: Cube) -> Tensor<B, 1, Int> {
        Tensor::from_primitive(back(c))
    }

    /// The kernel when `B` is a CUDA backend; the inputs back otherwise.
    pub(super) fn step<B: Backend>(
        p: Tensor<B, 1>,
        g: Tensor<B, 1>,
        s: &Q8Moments<B>,
        h: &Adam8Step,
    ) -> Result<(Tensor<B, 1>, Q8Moments<B>), (Tensor<B, 1>, Tensor<B, 1>)> {
        let p = match float_prim(p) {
            Ok(p) => p,
            Err(p) => return Err((p, g)),
        };
        let g = cube_of(prim(g));
        let state = Adam8Device { m: int_of(&s.m), v: int_of(&s.v), absmax_m: cube_of(prim(s.absmax_m.clone())), absmax_v: cube_of(prim(s.absmax_v.clone())) };
        match adamw8_step(&p, &g, &state, h) {
            Ok((p, out)) => Ok((
                float_back(p),
                Q8Moments { m: int_back(out.m), v: int_back(out.v), absmax_m: float_back(out.absmax_m), absmax_v: float_back(out.absmax_v) },
            )),
            // A layout the kernel does not take: the caller runs the reference.
            Err(_) => Err((float_back(p), float_back(g))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::CpuBackend;

    /// The computed signed map is bitsandbytes' (the stored table, checked against the
    /// bitsandbytes fixture in tests/nf4_bnb.rs) to within two f32 ulps per entry (f32 rounding of torch's linspace and scaling).
    #[test]
    fn signed_map_is_the_double_quantization_table_within_two_ulps() {
        let (computed, stored) = (reference::dynamic_map(true), crate::quant::dynamic_map::DYNAMIC_MAP_SIGNED);
        let off = (0..256).filter(|&i| computed[i] != stored[i]).count();
        for i in 0..256 {
            let ulps = (computed[i].to_bits() as i64 - stored[i].to_bits() as i64).abs();
            assert!(ulps <= 2, "entry {i}: {} vs {} ({ulps} ulps)", computed[i], stored[i]);
        }
        println!("signed dynamic map: {off} of 256 entries 1-2 ulps from bitsandbytes', the rest equal");
    }

    #[test]
    fn host_round_trip_and_step_on_the_cpu_backend() {
        let dev = Default::default();
        let n = 5000;
        let p0: Vec<f32> = (0..n).map(|i| ((i * 37 % 101) as f32 - 50.0) / 100.0).collect();
        let g: Vec<f32> = (0..n).map(|i| ((i * 53 % 97) as f32 - 48.0) / 1000.0).collect();
        let h = Adam8Step::new(1e-3, 0.9, 0.999, 1e-8, 0.0, 1);
        let s = Q8Moments::<CpuBackend>::from_host(&Adam8State::zeros(n), &dev);
        let t = |v: &[f32]| Tensor::<CpuBackend, 2>::from_data(TensorData::new(v.to_vec(), [50, 100]), &dev);
        let (p, s) = step(t(&p0), t(&g), &s, &h);
        let (mut pr, mut sr) = (p0.clone(), Adam8State::zeros(n));
        reference::step(&mut pr, &g, &mut sr, &h);
        assert_eq!(p.dims(), [50, 100]);
        assert_eq!(p.into_data().to_vec::<f32>().unwrap(), pr);
        assert_eq!(s.to_host(), sr);
        assert!(sr.m.iter().any(|&c| c != 0) && sr.absmax_v.iter().all(|&a| a > 0.0));
    }
}
