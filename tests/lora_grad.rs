//! Gradients flow through NF4 and dense bases into the LoRA adapters only (frozen bases get
//! none), and match central finite differences of the loss on the CPU.

mod common;

use burn::backend::Autodiff;
use burn::module::Param;
use burn::tensor::{Distribution, Tensor};
use common::{fixture, ids, reference};
use medqlora::backend::CpuBackend;
use medqlora::lora::LoraSpec;
use medqlora::model::{QuantizeOnLoad, Qwen2ForCausalLM, TextConfig, WeightStore};

type AD = Autodiff<CpuBackend>;

fn loss(model: &Qwen2ForCausalLM<AD>, x: &Tensor<AD, 2, burn::tensor::Int>) -> Tensor<AD, 1> {
    // A smooth scalar of all logits (no saturation), enough to exercise every path.
    let logits = model.forward(x.clone(), false).logits;
    (logits.clone() * logits).mean().reshape([1])
}

#[test]
fn lora_gradients_match_finite_differences_through_nf4() {
    let dir = fixture("qwen2_tiny");
    let config = TextConfig::from_dir(&dir).unwrap();
    let device = Default::default();
    for quantize in [None, Some(QuantizeOnLoad::default())] {
        let mut model = Qwen2ForCausalLM::<AD>::load_with(&config, &WeightStore::open(&dir).unwrap(), &device, quantize.as_ref()).unwrap();
        let spec = LoraSpec { r: 4, alpha: 8.0, dropout: 0.0, use_rslora: false };
        model.add_lora(&spec, &["down_proj".to_string(), "q_proj".to_string()], &device);
        // Non-zero B so that A receives gradient too.
        for l in model.model.layers.iter_mut() {
            for lin in [&mut l.mlp.down_proj, &mut l.self_attn.q_proj] {
                let lora = lin.lora.as_mut().unwrap();
                let dims = lora.lora_b.val().dims();
                lora.lora_b = Param::from_tensor(Tensor::random(dims, Distribution::Normal(0.0, 0.1), &device).require_grad());
            }
        }
        let r = reference(dir.join("reference.safetensors"));
        let x = ids::<AD, 2>(&r["input_ids"], &device);
        let grads = loss(&model, &x).backward();
        let a = model.model.layers[1].mlp.down_proj.lora.as_ref().unwrap().lora_a.val();
        let g = a.grad(&grads).expect("lora_A gets a gradient").into_data().to_vec::<f32>().unwrap();
        assert!(g.iter().any(|v| *v != 0.0));
        if let medqlora::model::linear::LinearWeight::Dense(w) = &model.model.layers[1].mlp.down_proj.weight {
            assert!(w.val().grad(&grads).is_none(), "the frozen base must not get a gradient");
        }
        // Central differences on a few entries of lora_A. In f32 with step 1e-2 the numeric
        // side carries ~1e-2 relative error (seen up to 1.6e-2): bound 3e-2 relative + 2e-5.
        let base = a.clone().inner().into_data().to_vec::<f32>().unwrap();
        let dims = a.dims();
        for &idx in &[0usize, 7, 100, 255] {
            let eval = |delta: f32| {
                let mut v = base.clone();
                v[idx] += delta;
                let mut m = model.clone();
                m.model.layers[1].mlp.down_proj.lora.as_mut().unwrap().lora_a =
                    Param::from_tensor(Tensor::from_data(burn::tensor::TensorData::new(v, dims), &device));
                loss(&m, &x).into_scalar() as f64
            };
            let h = 1e-2;
            let fd = (eval(h) - eval(-h)) / (2.0 * h as f64);
            let an = g[idx] as f64;
            let scale = fd.abs().max(an.abs());
            println!("{}: lora_A[{idx}] analytic {an:.6e} numeric {fd:.6e}", if quantize.is_some() { "nf4" } else { "dense" });
            assert!((fd - an).abs() <= 3e-2 * scale + 2e-5, "gradient mismatch at {idx}: analytic {an} vs numeric {fd}");
        }
    }
}
