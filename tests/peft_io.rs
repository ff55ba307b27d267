//! PEFT adapter folders: save -> load round trip on the tiny fixture model (same weights,
//! same logits), the files PEFT expects, Qwen2.5-VL key layouts, and errors that name the file.

mod common;

use burn::module::Param;
use burn::tensor::{Distribution, Int, Tensor};
use medqlora::backend::CpuBackend;
use medqlora::lora::peft_io::{load_peft_adapter, save_peft_adapter, PeftError};
use medqlora::lora::LoraSpec;
use medqlora::model::{Qwen2ForCausalLM, TextConfig, WeightStore};
use std::path::PathBuf;

type B = CpuBackend;

fn tiny() -> Qwen2ForCausalLM<B> {
    let dir = common::fixture("qwen2_tiny");
    let config = TextConfig::from_dir(&dir).unwrap();
    Qwen2ForCausalLM::<B>::load(&config, &WeightStore::open(&dir).unwrap(), &Default::default()).unwrap()
}

fn tmp(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("medqlora-peft-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    d
}

fn logits(model: &Qwen2ForCausalLM<B>) -> Vec<f32> {
    let ids = Tensor::<B, 2, Int>::from_data([[1, 5, 9, 200, 33, 7]], &Default::default());
    model.forward(ids, false).logits.into_data().to_vec::<f32>().unwrap()
}

/// A tiny model with adapters whose B is non-zero (so they change the output).
fn adapted(spec: &LoraSpec, targets: &[String]) -> Qwen2ForCausalLM<B> {
    let device = Default::default();
    let mut model = tiny();
    model.add_lora(spec, targets, &device);
    for (_, lin) in model.linears_mut() {
        if let Some(l) = lin.lora.as_mut() {
            let dims = l.lora_b.val().dims();
            l.lora_b = Param::from_tensor(Tensor::random(dims, Distribution::Normal(0.0, 0.3), &device));
        }
    }
    model
}

#[test]
fn save_then_load_round_trips() {
    let spec = LoraSpec { r: 4, alpha: 8.0, dropout: 0.05, use_rslora: true };
    let targets: Vec<String> = ["q_proj", "v_proj", "down_proj"].map(String::from).to_vec();
    let model = adapted(&spec, &targets);
    let dir = tmp("rt").join("adapter");
    assert_eq!(save_peft_adapter(&model, &spec, &targets, "Qwen/Qwen2.5-0.5B-Instruct", &dir).unwrap(), 6);
    // Written again over itself (the atomic swap replaces the folder).
    assert_eq!(save_peft_adapter(&model, &spec, &targets, "Qwen/Qwen2.5-0.5B-Instruct", &dir).unwrap(), 6);
    let names: Vec<String> = std::fs::read_dir(dir.parent().unwrap()).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
    assert_eq!(names, ["adapter"], "no temporary folders left behind");
    let cfg: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(dir.join("adapter_config.json")).unwrap()).unwrap();
    assert_eq!(cfg["peft_type"], "LORA");
    assert_eq!(cfg["task_type"], "CAUSAL_LM");
    assert_eq!((cfg["r"].as_u64(), cfg["lora_alpha"].as_u64(), cfg["use_rslora"].as_bool()), (Some(4), Some(8), Some(true)));
    assert_eq!(cfg["target_modules"], serde_json::json!(["down_proj", "q_proj", "v_proj"]));
    assert_eq!(cfg["base_model_name_or_path"], "Qwen/Qwen2.5-0.5B-Instruct");
    let bytes = std::fs::read(dir.join("adapter_model.safetensors")).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let a = st.tensor("base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight").unwrap();
    let b = st.tensor("base_model.model.model.layers.1.mlp.down_proj.lora_B.weight").unwrap();
    assert_eq!((a.shape(), b.shape()), (&[4, 64][..], &[64, 4][..]));

    let mut fresh = tiny();
    let base = logits(&fresh);
    let info = load_peft_adapter(&mut fresh, &dir, &Default::default()).unwrap();
    assert_eq!((info.r, info.alpha, info.use_rslora, info.modules, info.skipped_vision), (4, 8.0, true, 6, 0));
    let (want, got) = (logits(&model), logits(&fresh));
    assert!(want.iter().zip(&base).any(|(x, y)| (x - y).abs() > 1e-3), "the adapters change the output");
    let worst = want.iter().zip(&got).map(|(x, y)| (x - y).abs()).fold(0f32, f32::max);
    assert!(worst < 1e-5, "loaded adapter differs: {worst}");
    let lin = &fresh.model.layers[1].self_attn.v_proj;
    assert_eq!(lin.lora.as_ref().unwrap().scaling, 8.0 / 2.0);
    assert!(fresh.model.layers[0].self_attn.k_proj.lora.is_none());
    std::fs::remove_dir_all(dir.parent().unwrap()).unwrap();
}

/// Rewrites a saved adapter's keys into another layout.
fn relayout(src: &std::path::Path, dst: &std::path::Path, f: impl Fn(&str) -> String, extra: Option<(&str, Vec<usize>)>) {
    std::fs::create_dir_all(dst).unwrap();
    std::fs::copy(src.join("adapter_config.json"), dst.join("adapter_config.json")).unwrap();
    let bytes = std::fs::read(src.join("adapter_model.safetensors")).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let mut owned: Vec<(String, Vec<usize>, Vec<u8>)> = st.tensors().into_iter().map(|(k, v)| (f(&k), v.shape().to_vec(), v.data().to_vec())).collect();
    if let Some((k, shape)) = extra {
        owned.push((k.to_owned(), shape.clone(), vec![0u8; 4 * shape.iter().product::<usize>()]));
    }
    let views: Vec<(String, safetensors::tensor::TensorView<'_>)> =
        owned.iter().map(|(k, s, d)| (k.clone(), safetensors::tensor::TensorView::new(safetensors::Dtype::F32, s.clone(), d).unwrap())).collect();
    safetensors::serialize_to_file(views, None, &dst.join("adapter_model.safetensors")).unwrap();
}

#[test]
fn reads_qwen25_vl_layouts_and_names_errors() {
    let spec = LoraSpec { r: 2, alpha: 4.0, dropout: 0.0, use_rslora: false };
    let targets = vec!["o_proj".to_string()];
    let model = adapted(&spec, &targets);
    let root = tmp("vl");
    let ours = root.join("ours");
    save_peft_adapter(&model, &spec, &targets, "tiny", &ours).unwrap();
    // transformers >= 4.52 Qwen2.5-VL names, plus a vision-tower adapter.
    let vl = root.join("vl");
    relayout(&ours, &vl, |k| k.replace("base_model.model.model.layers", "base_model.model.model.language_model.layers"), Some(("base_model.model.model.visual.blocks.0.mlp.gate_proj.lora_A.weight", vec![2, 8])));
    let mut m = tiny();
    let info = load_peft_adapter(&mut m, &vl, &Default::default()).unwrap();
    assert_eq!((info.modules, info.skipped_vision), (2, 1));
    let worst = logits(&model).iter().zip(&logits(&m)).map(|(x, y)| (x - y).abs()).fold(0f32, f32::max);
    assert!(worst < 1e-5);
    // Errors name the file and the problem.
    let err = |dir: &std::path::Path| load_peft_adapter(&mut tiny(), dir, &Default::default()).unwrap_err().to_string();
    assert!(err(&root.join("absent")).contains("does not exist"));
    let wrong = root.join("wrong");
    relayout(&ours, &wrong, |k| k.replace("layers.1.self_attn.o_proj", "layers.7.self_attn.o_proj"), None);
    let e = err(&wrong);
    assert!(e.contains("adapter_model.safetensors") && e.contains("no linear \"model.layers.7.self_attn.o_proj\""), "{e}");
    let half = root.join("half");
    relayout(&ours, &half, |k| k.replace("layers.0.self_attn.o_proj.lora_B", "layers.0.self_attn.o_proj.lora_X"), None);
    assert!(err(&half).contains("not a LoRA weight name"), "{}", err(&half));
    let dora = root.join("dora");
    relayout(&ours, &dora, |k| k.to_owned(), None);
    let cfg = std::fs::read_to_string(dora.join("adapter_config.json")).unwrap().replace("\"use_dora\": false", "\"use_dora\": true");
    std::fs::write(dora.join("adapter_config.json"), cfg).unwrap();
    let e = err(&dora);
    assert!(e.contains("adapter_config.json") && e.contains("DoRA"), "{e}");
    assert!(matches!(save_peft_adapter(&tiny(), &spec, &targets, "x", &root.join("none")), Err(PeftError::NoAdapters)));
    std::fs::remove_dir_all(&root).unwrap();
}
