//! AdamW on f32 master copies of the adapter weights, global-norm clipping, and the learning-
//! rate schedule. Follows torch.optim.AdamW (decoupled decay, bias-corrected moments) and
//! transformers' `get_cosine_schedule_with_warmup` / `get_linear_schedule_with_warmup`, so a
//! recipe means what it means in Axolotl / PEFT scripts.
//!
//! State is keyed by PEFT parameter name (`model.layers.0.self_attn.q_proj.lora_A`), which is
//! also how it is saved in checkpoints: no dependence on Burn's in-memory parameter ids.

use super::optim8::{self, Q8Moments};
use super::recipe::{Optimizer, Schedule, TrainRecipe};
use medqlora_kernels::adamw8::reference::Adam8Step;
use burn::tensor::{backend::Backend, DType, Tensor};
use std::collections::BTreeMap;

/// Gradients (or any per-parameter tensors) by PEFT parameter name, f32.
pub type NamedTensors<B> = BTreeMap<String, Tensor<B, 2>>;

/// Learning rate at optimizer step `step` (0-based), as the HF schedulers compute it.
pub fn learning_rate(t: &TrainRecipe, step: usize) -> f64 {
    if step < t.warmup_steps {
        return t.lr * step as f64 / t.warmup_steps.max(1) as f64;
    }
    let decay_steps = (t.max_steps - t.warmup_steps).max(1) as f64;
    let progress = ((step - t.warmup_steps) as f64 / decay_steps).min(1.0);
    let shape = match t.schedule {
        Schedule::Constant => return t.lr,
        Schedule::Cosine => 0.5 * (1.0 + (std::f64::consts::PI * progress).cos()),
        Schedule::Linear => 1.0 - progress,
    };
    t.lr * (t.min_lr_ratio + (1.0 - t.min_lr_ratio) * shape)
}

/// The value of a one-element tensor, read in its own dtype. `into_scalar` would convert to the
/// backend's default float (bf16 on a bf16 backend) and round an f32 loss to 3 digits.
pub fn scalar_f64<B: Backend, const D: usize>(t: Tensor<B, D>) -> f64 {
    t.into_data().convert::<f64>().to_vec::<f64>().ok().and_then(|v| v.first().copied()).unwrap_or(f64::NAN)
}

/// `sqrt(sum g^2)` over all gradients, read back as one number.
pub fn global_norm<B: Backend>(grads: &NamedTensors<B>) -> f64 {
    let Some(first) = grads.values().next() else { return 0.0 };
    let device = first.device();
    let total = grads
        .values()
        .fold(Tensor::<B, 1>::zeros([1], (&device, DType::F32)), |acc, g| acc + g.clone().powi_scalar(2).sum());
    scalar_f64(total).sqrt()
}

/// The names of the gradients holding a NaN or an infinity (checked only after a non-finite
/// norm: one read-back per tensor).
pub fn non_finite<B: Backend>(grads: &NamedTensors<B>) -> Vec<String> {
    grads
        .iter()
        .filter(|&(_, g)| {
            let bad = g.clone().is_nan().any().int() + g.clone().is_inf().any().int();
            bad.into_data().convert::<i64>().to_vec::<i64>().map(|v| v.first().copied().unwrap_or(1) > 0).unwrap_or(true)
        })
        .map(|(name, _)| name.clone())
        .collect()
}

/// torch's `clip_grad_norm_`: scales every gradient by `max_norm / (norm + 1e-6)` when that
/// is below one. Returns the norm before clipping.
pub fn clip_global_norm<B: Backend>(grads: &mut NamedTensors<B>, max_norm: f64) -> f64 {
    let norm = global_norm(grads);
    if max_norm > 0.0 {
        let coef = max_norm / (norm + 1e-6);
        if coef < 1.0 {
            for g in grads.values_mut() {
                *g = g.clone().mul_scalar(coef);
            }
        }
    }
    norm
}

/// AdamW hyper-parameters.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AdamWConfig {
    /// First-moment decay.
    pub beta1: f64,
    /// Second-moment decay.
    pub beta2: f64,
    /// Denominator epsilon.
    pub eps: f64,
    /// Decoupled weight decay.
    pub weight_decay: f64,
    /// 8-bit blockwise moments for tensors of at least 4,096 elements.
    pub eight_bit: bool,
}

impl AdamWConfig {
    /// From the recipe's `[train]` table.
    pub fn from_recipe(t: &TrainRecipe) -> Self {
        Self { beta1: t.beta1, beta2: t.beta2, eps: t.eps, weight_decay: t.weight_decay, eight_bit: t.optimizer == Optimizer::Adamw8bit }
    }
}

/// Master weights (f32) and moments of every trainable tensor. Each tensor's moments are
/// either in `m` and `v` (f32) or in `q8` (8-bit, [`AdamWConfig::eight_bit`]).
pub struct AdamW<B: Backend> {
    /// Hyper-parameters.
    pub config: AdamWConfig,
    /// Updates applied so far (bias correction uses `steps + 1`).
    pub steps: usize,
    /// f32 master weights.
    pub master: NamedTensors<B>,
    /// f32 first moments.
    pub m: NamedTensors<B>,
    /// f32 second moments.
    pub v: NamedTensors<B>,
    /// 8-bit moments.
    pub q8: BTreeMap<String, Q8Moments<B>>,
}

impl<B: Backend> AdamW<B> {
    /// Fresh state for `params` (their current values become the f32 masters).
    pub fn new(config: AdamWConfig, params: NamedTensors<B>) -> Self {
        let master: NamedTensors<B> = params.into_iter().map(|(k, p)| (k, p.cast(DType::F32))).collect();
        let q8_of = |p: &Tensor<B, 2>| config.eight_bit && optim8::uses_8bit(p.shape().num_elements());
        let zeros = |t: &Tensor<B, 2>| t.zeros_like();
        let m = master.iter().filter(|(_, p)| !q8_of(p)).map(|(k, p)| (k.clone(), zeros(p))).collect();
        let v = master.iter().filter(|(_, p)| !q8_of(p)).map(|(k, p)| (k.clone(), zeros(p))).collect();
        let q8 = master
            .iter()
            .filter(|(_, p)| q8_of(p))
            .map(|(k, p)| {
                let n = p.shape().num_elements();
                (k.clone(), Q8Moments::from_host(&medqlora_kernels::adamw8::reference::Adam8State::zeros(n), &p.device()))
            })
            .collect();
        Self { config, steps: 0, master, m, v, q8 }
    }

    /// Bytes of optimizer state on the device (masters and moments).
    pub fn state_bytes(&self) -> usize {
        let f32s = |m: &NamedTensors<B>| m.values().map(|t| 4 * t.shape().num_elements()).sum::<usize>();
        let q8: usize = self.q8.values().map(|q| 2 * q.len() + 8 * q.absmax_m.dims()[0]).sum();
        f32s(&self.master) + f32s(&self.m) + f32s(&self.v) + q8
    }

    /// One update with learning rate `lr`; `grads` must have exactly the master's names.
    /// Returns the new master weights (f32) by name.
    pub fn step(&mut self, grads: NamedTensors<B>, lr: f64) -> &NamedTensors<B> {
        let c = self.config;
        let t = (self.steps + 1) as i32;
        let bias1 = 1.0 - c.beta1.powi(t);
        let bias2_sqrt = (1.0 - c.beta2.powi(t)).sqrt();
        let h8 = Adam8Step::new(lr, c.beta1, c.beta2, c.eps, c.weight_decay, self.steps + 1);
        for (name, g) in grads {
            if let (Some(q), Some(p)) = (self.q8.get_mut(&name), self.master.get_mut(&name)) {
                let (np, nq) = optim8::step(p.clone(), g, q, &h8);
                (*p, *q) = (np, nq);
                continue;
            }
            let g = g.cast(DType::F32);
            let (Some(p), Some(m), Some(v)) = (self.master.get_mut(&name), self.m.get_mut(&name), self.v.get_mut(&name)) else {
                continue;
            };
            let decayed = if c.weight_decay > 0.0 { p.clone().mul_scalar(1.0 - lr * c.weight_decay) } else { p.clone() };
            *m = m.clone().mul_scalar(c.beta1) + g.clone().mul_scalar(1.0 - c.beta1);
            *v = v.clone().mul_scalar(c.beta2) + g.powi_scalar(2).mul_scalar(1.0 - c.beta2);
            let denom = v.clone().sqrt().div_scalar(bias2_sqrt).add_scalar(c.eps);
            *p = decayed - m.clone().div(denom).mul_scalar(lr / bias1);
        }
        self.steps += 1;
        &self.master
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::CpuBackend;
    use burn::tensor::TensorData;

    fn recipe(schedule: Schedule) -> TrainRecipe {
        toml::from_str::<TrainRecipe>(&format!("max_steps = 100\nlr = 1e-3\nwarmup_steps = 10\nmin_lr_ratio = 0.1\nschedule = \"{}\"", match schedule {
            Schedule::Cosine => "cosine",
            Schedule::Linear => "linear",
            Schedule::Constant => "constant",
        }))
        .unwrap()
    }

    #[test]
    fn schedules_match_hf() {
        let c = recipe(Schedule::Cosine);
        assert_eq!(learning_rate(&c, 0), 0.0, "HF warmup starts at 0");
        assert!((learning_rate(&c, 5) - 5e-4).abs() < 1e-12);
        assert!((learning_rate(&c, 10) - 1e-3).abs() < 1e-12);
        // Halfway through the decay the cosine factor is 0.5: 0.1 + 0.9 * 0.5.
        assert!((learning_rate(&c, 55) - 1e-3 * 0.55).abs() < 1e-12);
        assert!((learning_rate(&c, 100) - 1e-4).abs() < 1e-12);
        let l = recipe(Schedule::Linear);
        assert!((learning_rate(&l, 55) - 1e-3 * 0.55).abs() < 1e-12);
        assert!((learning_rate(&l, 32) - 1e-3 * (0.1 + 0.9 * (1.0 - 22.0 / 90.0))).abs() < 1e-12);
        assert_eq!(learning_rate(&recipe(Schedule::Constant), 80), 1e-3);
    }

    /// Two AdamW steps against torch.optim.AdamW's formulas written out in f64.
    #[test]
    fn adamw_matches_torch_formula() {
        let dev = Default::default();
        let t = |v: Vec<f32>| Tensor::<CpuBackend, 2>::from_data(TensorData::new(v, [1, 3]), &dev);
        let cfg = AdamWConfig { beta1: 0.9, beta2: 0.99, eps: 1e-8, weight_decay: 0.1, eight_bit: false };
        let p0 = [0.5f64, -1.0, 2.0];
        let gs = [[0.1f64, -0.2, 0.3], [0.05, 0.4, -0.1]];
        let mut opt = AdamW::new(cfg, [("w".to_string(), t(p0.iter().map(|&x| x as f32).collect()))].into());
        let (mut p, mut m, mut v) = (p0, [0.0; 3], [0.0; 3]);
        let lr = 0.01;
        for (step, g) in gs.iter().enumerate() {
            opt.step([("w".to_string(), t(g.iter().map(|&x| x as f32).collect()))].into(), lr);
            let k = (step + 1) as i32;
            for i in 0..3 {
                p[i] *= 1.0 - lr * cfg.weight_decay;
                m[i] = cfg.beta1 * m[i] + (1.0 - cfg.beta1) * g[i];
                v[i] = cfg.beta2 * v[i] + (1.0 - cfg.beta2) * g[i] * g[i];
                let denom = v[i].sqrt() / (1.0 - cfg.beta2.powi(k)).sqrt() + cfg.eps;
                p[i] -= lr / (1.0 - cfg.beta1.powi(k)) * m[i] / denom;
            }
        }
        let got = opt.master["w"].clone().into_data().convert::<f32>().to_vec::<f32>().unwrap();
        for i in 0..3 {
            assert!((got[i] as f64 - p[i]).abs() < 1e-6, "{i}: {} vs {}", got[i], p[i]);
        }
    }

    #[test]
    fn clipping_scales_to_max_norm() {
        let dev = Default::default();
        let mut grads: NamedTensors<CpuBackend> = [
            ("a".to_string(), Tensor::from_data(TensorData::new(vec![3.0f32, 0.0], [1, 2]), &dev)),
            ("b".to_string(), Tensor::from_data(TensorData::new(vec![0.0f32, 4.0], [2, 1]), &dev)),
        ]
        .into();
        let norm = clip_global_norm(&mut grads, 1.0);
        assert!((norm - 5.0).abs() < 1e-6);
        assert!((global_norm(&grads) - 1.0).abs() < 1e-5);
        assert!((clip_global_norm(&mut grads, 10.0) - 1.0).abs() < 1e-5, "no clipping below the max");
    }

    /// A NaN or an infinity anywhere makes the norm non-finite, and `non_finite` names exactly
    /// the tensors that hold one.
    #[test]
    fn non_finite_gradients_are_named() {
        let dev = Default::default();
        let t = |v: Vec<f32>| Tensor::<CpuBackend, 2>::from_data(TensorData::new(v, [2, 2]), &dev);
        let mut grads: NamedTensors<CpuBackend> = [
            ("finite".to_string(), t(vec![1.0, -2.0, 3.0, 1e3])),
            ("nan".to_string(), t(vec![1.0, f32::NAN, 0.0, 0.0])),
            ("inf".to_string(), t(vec![0.0, 0.0, f32::NEG_INFINITY, 2.0])),
        ]
        .into();
        assert!(!clip_global_norm(&mut grads, 1.0).is_finite());
        assert_eq!(non_finite(&grads), vec!["inf".to_string(), "nan".to_string()]);
        grads.remove("nan");
        grads.remove("inf");
        assert!(non_finite(&grads).is_empty());
    }
}
