//! LoRA on the model: PEFT targeting on real module names, the trainable count, a fresh
//! adapter leaves the logits unchanged (B = 0), and a non-zero adapter adds exactly
//! `scaling * x A^T B^T` (checked against an f64 host computation on fresh random inputs).

mod common;

use burn::module::Param;
use burn::tensor::{Distribution, Tensor};
use common::{fixture, ids, max_abs_diff, reference};
use medqlora::backend::CpuBackend;
use medqlora::lora::targets::{lora_param_count, ALL_PROJECTIONS};
use medqlora::lora::LoraSpec;
use medqlora::model::inventory::text_tensors;
use medqlora::model::{Qwen2ForCausalLM, TextConfig, WeightStore};

type B = CpuBackend;

/// The tiny fixture model on the CPU, with its config.
fn tiny() -> (Qwen2ForCausalLM<B>, TextConfig) {
    let dir = fixture("qwen2_tiny");
    let config = TextConfig::from_dir(&dir).unwrap();
    (Qwen2ForCausalLM::<B>::load(&config, &WeightStore::open(&dir).unwrap(), &Default::default()).unwrap(), config)
}

fn spec() -> LoraSpec {
    LoraSpec { r: 8, alpha: 16.0, dropout: 0.05, use_rslora: false }
}

#[test]
fn fresh_adapters_keep_the_model_and_count_like_peft() {
    let (mut model, config) = tiny();
    let device = Default::default();
    let targets: Vec<String> = ALL_PROJECTIONS.iter().map(|s| s.to_string()).collect();
    let added = model.add_lora(&spec(), &targets, &device);
    assert_eq!(added, lora_param_count(&text_tensors(&config), &targets, 8));
    assert!(model.lm_head.as_ref().unwrap().lora.is_none(), "lm_head is not a target");
    let r = reference(fixture("qwen2_tiny").join("reference.safetensors"));
    let logits = model.forward(ids(&r["input_ids"], &device), false).logits.into_data();
    // B = 0 and dropout is off outside training: exactly the base model.
    assert!(max_abs_diff(&logits, &r["logits"]) <= common::CPU_LOGITS_TOL);
}

#[test]
fn adapter_adds_scaled_low_rank_update() {
    let (mut model, _) = tiny();
    let device = Default::default();
    let spec = LoraSpec { use_rslora: true, ..spec() };
    model.add_lora(&spec, &["up_proj".to_string()], &device);
    let linear = &mut model.model.layers[1].mlp.up_proj;
    linear.lora.as_mut().unwrap().lora_b = Param::from_tensor(Tensor::random([128, 8], Distribution::Normal(0.0, 0.5), &device));
    let linear = &model.model.layers[1].mlp.up_proj;
    let lora = linear.lora.as_ref().unwrap();
    let x = Tensor::<B, 3>::random([2, 5, 64], Distribution::Normal(0.0, 1.0), &device);
    let got = linear.forward(x.clone()).into_data().to_vec::<f32>().unwrap();
    let base = medqlora::model::linear::matmul_weight_t(x.clone().reshape([10, 64]), linear.dense_weight())
        .into_data()
        .to_vec::<f32>()
        .unwrap();
    let (a, bm) = (lora.lora_a.val().into_data().to_vec::<f32>().unwrap(), lora.lora_b.val().into_data().to_vec::<f32>().unwrap());
    let xs = x.into_data().to_vec::<f32>().unwrap();
    let scaling = 16.0 / 8f64.sqrt();
    assert_eq!(lora.scaling, scaling);
    let mut worst = 0f64;
    for t in 0..10 {
        for o in 0..128 {
            let mut upd = 0f64;
            for k in 0..8 {
                let ax: f64 = (0..64).map(|i| a[k * 64 + i] as f64 * xs[t * 64 + i] as f64).sum();
                upd += bm[o * 8 + k] as f64 * ax;
            }
            let want = base[t * 128 + o] as f64 + scaling * upd;
            worst = worst.max((got[t * 128 + o] as f64 - want).abs() / want.abs().max(1.0));
        }
    }
    assert!(worst <= 1e-5, "LoRA update relative error {worst}");
}
