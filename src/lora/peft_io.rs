//! PEFT LoRA adapter folders: `adapter_config.json` + `adapter_model.safetensors`, as
//! `peft` writes them (`PeftModel.save_pretrained`) and reads them (`PeftModel.from_pretrained`).
//!
//! Keys: `base_model.model.<module>.lora_A.weight` `[r, in]` and `.lora_B.weight` `[out, r]`,
//! no adapter name. The text model's modules are `model.layers.N.self_attn.q_proj`; reading
//! also accepts Qwen2.5-VL's layouts (`model.language_model.layers.N...` since transformers
//! 4.52) and in-memory names with `.default`; vision-tower adapters are counted and skipped
//! (the text model has no vision tower). Writing goes to a temporary folder renamed into
//! place, so a crash never leaves a half-written adapter.

use super::targets::is_targeted;
use super::{LoraAdapter, LoraSpec};
use crate::model::linear::Linear;
use crate::model::Qwen2ForCausalLM;
use burn::module::Param;
use burn::tensor::{backend::Backend, Tensor, TensorData};
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// The adapter weights file.
pub const WEIGHTS_FILE: &str = "adapter_model.safetensors";
/// The adapter config file.
pub const CONFIG_FILE: &str = "adapter_config.json";

/// Errors reading or writing a PEFT adapter.
#[derive(Debug, thiserror::Error)]
pub enum PeftError {
    /// File system error.
    #[error("{path}: {source}")]
    Io {
        /// The file or folder.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// `adapter_config.json` is missing a field or asks for something unsupported.
    #[error("{path}: {reason}")]
    Config {
        /// The config file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// A tensor is missing, misshaped or of an unsupported dtype.
    #[error("{path}: tensor {key}: {reason}")]
    Tensor {
        /// The safetensors file.
        path: PathBuf,
        /// The tensor name.
        key: String,
        /// What is wrong.
        reason: String,
    },
    /// The model has no adapters to save.
    #[error("the model has no LoRA adapters to save (call add_lora first)")]
    NoAdapters,
}

/// What was loaded.
#[derive(Debug, Clone, PartialEq)]
pub struct PeftAdapterInfo {
    /// `base_model_name_or_path` from the config.
    pub base_model: String,
    /// Rank (`r`).
    pub r: usize,
    /// `lora_alpha`.
    pub alpha: f64,
    /// rsLoRA scaling.
    pub use_rslora: bool,
    /// `target_modules`.
    pub target_modules: Vec<String>,
    /// Linears that received an adapter.
    pub modules: usize,
    /// Vision-tower adapters present in the file and skipped.
    pub skipped_vision: usize,
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> PeftError + '_ {
    move |source| PeftError::Io { path: path.to_owned(), source }
}

/// Our module name for a PEFT key's module path, `None` for vision-tower modules.
fn text_module(path: &str) -> Option<String> {
    let path = path.strip_prefix("model.language_model.").map(|rest| format!("model.{rest}")).unwrap_or_else(|| path.to_owned());
    if path.starts_with("visual.") || path.starts_with("model.visual.") {
        return None;
    }
    Some(path)
}

/// Splits `base_model.model.<module>.lora_A[.default].weight` into `(module, is_a)`.
fn parse_key(key: &str) -> Option<(&str, bool)> {
    let rest = key.strip_prefix("base_model.model.")?;
    let rest = rest.strip_suffix(".weight")?;
    let rest = rest.strip_suffix(".default").unwrap_or(rest);
    if let Some(m) = rest.strip_suffix(".lora_A") {
        Some((m, true))
    } else {
        rest.strip_suffix(".lora_B").map(|m| (m, false))
    }
}

fn read_f32(path: &Path, key: &str, view: &safetensors::tensor::TensorView<'_>) -> Result<Vec<f32>, PeftError> {
    let d = view.data();
    Ok(match view.dtype() {
        safetensors::Dtype::F32 => d.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect(),
        safetensors::Dtype::BF16 => d.chunks_exact(2).map(|c| half::bf16::from_le_bytes([c[0], c[1]]).to_f32()).collect(),
        safetensors::Dtype::F16 => d.chunks_exact(2).map(|c| half::f16::from_le_bytes([c[0], c[1]]).to_f32()).collect(),
        other => {
            return Err(PeftError::Tensor { path: path.to_owned(), key: key.to_owned(), reason: format!("dtype {other:?}; LoRA weights must be F32, BF16 or F16") });
        }
    })
}

/// The `adapter_config.json` fields the loader uses.
struct AdapterConfig {
    r: usize,
    alpha: f64,
    dropout: f64,
    use_rslora: bool,
    target_modules: Vec<String>,
    alpha_pattern: BTreeMap<String, f64>,
    base_model: String,
}

/// Reads and checks `adapter_config.json`.
fn read_config(path: &Path) -> Result<AdapterConfig, PeftError> {
    let text = std::fs::read_to_string(path).map_err(io(path))?;
    let bad = |reason: String| PeftError::Config { path: path.to_owned(), reason };
    let cfg: Value = serde_json::from_str(&text).map_err(|e| bad(format!("not valid JSON: {e}")))?;
    if let Some(t) = cfg.get("peft_type").and_then(Value::as_str) {
        if t != "LORA" {
            return Err(bad(format!("peft_type is \"{t}\"; only LORA adapters are supported")));
        }
    }
    for (flag, what) in [("use_dora", "DoRA"), ("fan_in_fan_out", "fan_in_fan_out (Conv1D) weights")] {
        if cfg.get(flag).and_then(Value::as_bool) == Some(true) {
            return Err(bad(format!("{flag} is true; {what} are not supported")));
        }
    }
    let r = cfg.get("r").and_then(Value::as_u64).filter(|&r| r > 0).ok_or_else(|| bad("missing or invalid \"r\" (a positive integer)".into()))? as usize;
    let alpha = cfg.get("lora_alpha").and_then(Value::as_f64).ok_or_else(|| bad("missing \"lora_alpha\"".into()))?;
    let dropout = cfg.get("lora_dropout").and_then(Value::as_f64).unwrap_or(0.0);
    let use_rslora = cfg.get("use_rslora").and_then(Value::as_bool).unwrap_or(false);
    let target_modules = match cfg.get("target_modules") {
        Some(Value::Array(a)) => a.iter().filter_map(Value::as_str).map(str::to_owned).collect(),
        Some(Value::String(s)) => vec![s.clone()],
        _ => Vec::new(),
    };
    let alpha_pattern = cfg
        .get("alpha_pattern")
        .and_then(Value::as_object)
        .map(|m| m.iter().filter_map(|(k, v)| v.as_f64().map(|a| (k.clone(), a))).collect())
        .unwrap_or_default();
    let base_model = cfg.get("base_model_name_or_path").and_then(Value::as_str).unwrap_or("").to_owned();
    Ok(AdapterConfig { r, alpha, dropout, use_rslora, target_modules, alpha_pattern, base_model })
}

/// Loads a PEFT LoRA adapter folder into `model`'s linears (replacing any adapters there).
/// The rank of each module comes from its tensors; scaling from `lora_alpha` (or a matching
/// `alpha_pattern` entry) and `use_rslora`. Every text-model tensor must name a linear of
/// this model with matching shapes.
pub fn load_peft_adapter<B: Backend>(model: &mut Qwen2ForCausalLM<B>, dir: &Path, device: &B::Device) -> Result<PeftAdapterInfo, PeftError> {
    let cfg_path = dir.join(CONFIG_FILE);
    if !dir.is_dir() {
        return Err(PeftError::Config { path: dir.to_owned(), reason: "adapter folder does not exist (it needs adapter_config.json and adapter_model.safetensors)".into() });
    }
    let AdapterConfig { r, alpha, dropout, use_rslora, target_modules, alpha_pattern, base_model } = read_config(&cfg_path)?;
    let wpath = dir.join(WEIGHTS_FILE);
    let bytes = std::fs::read(&wpath).map_err(io(&wpath))?;
    let st = safetensors::SafeTensors::deserialize(&bytes)
        .map_err(|e| PeftError::Tensor { path: wpath.clone(), key: "(header)".into(), reason: format!("not a safetensors file: {e}") })?;
    let terr = |key: &str, reason: String| PeftError::Tensor { path: wpath.clone(), key: key.to_owned(), reason };
    // module -> (A key, B key)
    let mut pairs: BTreeMap<String, (Option<String>, Option<String>)> = BTreeMap::new();
    let mut skipped_vision = 0;
    let mut names = st.names();
    names.sort_unstable();
    for key in names {
        let Some((module, is_a)) = parse_key(key) else {
            return Err(terr(key, "not a LoRA weight name (expected base_model.model.<module>.lora_A.weight / .lora_B.weight)".into()));
        };
        let Some(name) = text_module(module) else {
            skipped_vision += 1;
            continue;
        };
        let e = pairs.entry(name).or_default();
        if is_a { e.0 = Some(key.to_string()) } else { e.1 = Some(key.to_string()) }
    }
    let mut linears: BTreeMap<String, &mut Linear<B>> = model.linears_mut().into_iter().collect();
    let mut loaded = 0;
    for (name, (ka, kb)) in &pairs {
        let (Some(ka), Some(kb)) = (ka, kb) else {
            return Err(terr(ka.as_deref().or(kb.as_deref()).unwrap_or(name), "lora_A and lora_B must both be present".into()));
        };
        let linear = linears.get_mut(name).ok_or_else(|| terr(ka, format!("this model has no linear \"{name}\"; is the adapter for another base model?")))?;
        let [out, inp] = linear.dims();
        let (va, vb) = (st.tensor(ka).map_err(|e| terr(ka, e.to_string()))?, st.tensor(kb).map_err(|e| terr(kb, e.to_string()))?);
        let (sa, sb) = (va.shape().to_vec(), vb.shape().to_vec());
        let rank = sa.first().copied().unwrap_or(0);
        if sa != [rank, inp] || sb != [out, rank] || rank == 0 {
            return Err(terr(ka, format!("shapes A {sa:?} / B {sb:?} do not fit the linear [{out}, {inp}] (want A [r, {inp}], B [{out}, r])")));
        }
        let f32_on = (device, burn::tensor::DType::F32);
        let a = Tensor::<B, 2>::from_data(TensorData::new(read_f32(&wpath, ka, &va)?, [rank, inp]), f32_on);
        let b = Tensor::<B, 2>::from_data(TensorData::new(read_f32(&wpath, kb, &vb)?, [out, rank]), f32_on);
        let a_alpha = alpha_pattern.iter().find(|(k, _)| is_targeted(name, std::slice::from_ref(*k))).map_or(alpha, |(_, &v)| v);
        let spec = LoraSpec { r: rank, alpha: a_alpha, dropout, use_rslora };
        // `init` sets scaling and dropout the way the trainer's adapters have them; the
        // weights are then replaced by the file's.
        let mut adapter = LoraAdapter::init(inp, out, &spec, device);
        adapter.lora_a = Param::from_tensor(a);
        adapter.lora_b = Param::from_tensor(b);
        linear.lora = Some(adapter);
        loaded += 1;
    }
    if loaded == 0 {
        return Err(terr("(all)", format!("no adapter weights for the text model ({skipped_vision} vision-tower tensors skipped)")));
    }
    Ok(PeftAdapterInfo { base_model, r, alpha, use_rslora, target_modules, modules: loaded, skipped_vision })
}

/// `adapter_model.safetensors` bytes: f32 tensors given by PEFT name (`<module>.lora_A`,
/// `<module>.lora_B`), stored under PEFT's keys (`base_model.model.<module>.lora_A.weight`).
/// The one writer of the format: [`save_peft_adapter`] and the trainer's checkpoints use it.
pub fn peft_weights_bytes<'a>(tensors: impl IntoIterator<Item = (&'a str, &'a [usize], &'a [f32])>) -> Result<Vec<u8>, PeftError> {
    let tensors: Vec<(String, &[usize], &[f32])> = tensors.into_iter().map(|(n, s, d)| (format!("base_model.model.{n}.weight"), s, d)).collect();
    let views: Vec<(String, safetensors::tensor::TensorView<'_>)> = tensors
        .iter()
        .map(|(k, shape, data)| {
            safetensors::tensor::TensorView::new(safetensors::Dtype::F32, shape.to_vec(), bytemuck::cast_slice(data))
                .map(|v| (k.clone(), v))
                .map_err(|e| PeftError::Tensor { path: WEIGHTS_FILE.into(), key: k.clone(), reason: e.to_string() })
        })
        .collect::<Result<_, _>>()?;
    let meta = std::collections::HashMap::from([("format".to_owned(), "pt".to_owned())]);
    safetensors::serialize(views, Some(meta)).map_err(|e| PeftError::Tensor { path: WEIGHTS_FILE.into(), key: "(file)".into(), reason: e.to_string() })
}

/// `adapter_config.json` text for LoRA adapters `spec` on `targets` (module-name suffixes) of
/// `base_model_name`, with every key PEFT 0.1x writes.
pub fn peft_config_json(spec: &LoraSpec, targets: &[String], base_model_name: &str) -> String {
    let alpha = if spec.alpha.fract() == 0.0 { json!(spec.alpha as i64) } else { json!(spec.alpha) };
    let mut target_modules: Vec<&String> = targets.iter().collect();
    target_modules.sort();
    target_modules.dedup();
    let config = json!({
        "alpha_pattern": {}, "auto_mapping": null, "base_model_name_or_path": base_model_name, "bias": "none",
        "fan_in_fan_out": false, "inference_mode": true, "init_lora_weights": true, "layer_replication": null,
        "layers_pattern": null, "layers_to_transform": null, "loftq_config": {}, "lora_alpha": alpha,
        "lora_dropout": spec.dropout, "megatron_config": null, "megatron_core": "megatron.core", "modules_to_save": null,
        "peft_type": "LORA", "r": spec.r, "rank_pattern": {}, "revision": null, "target_modules": target_modules,
        "task_type": "CAUSAL_LM", "use_dora": false, "use_rslora": spec.use_rslora,
    });
    serde_json::to_string_pretty(&config).expect("json") + "\n"
}

/// Writes the model's adapters as a PEFT folder (f32 weights; `adapter_config.json` with
/// `spec`, `targets` and `base_model_name`), atomically: into a temporary sibling folder,
/// then renamed over `dir`. Returns the number of adapted modules.
pub fn save_peft_adapter<B: Backend>(model: &Qwen2ForCausalLM<B>, spec: &LoraSpec, targets: &[String], base_model_name: &str, dir: &Path) -> Result<usize, PeftError> {
    let mut tensors: Vec<(String, Vec<usize>, Vec<f32>)> = Vec::new();
    for (name, lin) in model.linears() {
        if let Some(l) = &lin.lora {
            for (suffix, t) in [("lora_A", l.lora_a.val()), ("lora_B", l.lora_b.val())] {
                let dims = t.dims().to_vec();
                let data = t.into_data().convert::<f32>().to_vec::<f32>().expect("converted to f32");
                tensors.push((format!("{name}.{suffix}"), dims, data));
            }
        }
    }
    if tensors.is_empty() {
        return Err(PeftError::NoAdapters);
    }
    let modules = tensors.len() / 2;
    let weights = peft_weights_bytes(tensors.iter().map(|(n, s, d)| (n.as_str(), s.as_slice(), d.as_slice())))?;
    let parent = dir.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    std::fs::create_dir_all(parent).map_err(io(parent))?;
    let leaf = dir.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_else(|| "adapter".into());
    let tmp = parent.join(format!(".{leaf}.tmp-{}", std::process::id()));
    if tmp.exists() {
        std::fs::remove_dir_all(&tmp).map_err(io(&tmp))?;
    }
    std::fs::create_dir_all(&tmp).map_err(io(&tmp))?;
    let wpath = tmp.join(WEIGHTS_FILE);
    std::fs::write(&wpath, weights).map_err(io(&wpath))?;
    let cpath = tmp.join(CONFIG_FILE);
    std::fs::write(&cpath, peft_config_json(spec, targets, base_model_name)).map_err(io(&cpath))?;
    // Swap into place: the old folder (if any) moves aside first, then goes.
    let old = parent.join(format!(".{leaf}.old-{}", std::process::id()));
    if dir.exists() {
        std::fs::rename(dir, &old).map_err(io(dir))?;
    }
    std::fs::rename(&tmp, dir).map_err(io(dir))?;
    if old.exists() {
        std::fs::remove_dir_all(&old).map_err(io(&old))?;
    }
    Ok(modules)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_names_in_every_layout() {
        assert_eq!(parse_key("base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight"), Some(("model.layers.0.self_attn.q_proj", true)));
        assert_eq!(parse_key("base_model.model.lm_head.lora_B.default.weight"), Some(("lm_head", false)));
        assert_eq!(parse_key("model.layers.0.q_proj.weight"), None);
        assert_eq!(text_module("model.language_model.layers.3.mlp.up_proj").as_deref(), Some("model.layers.3.mlp.up_proj"));
        assert_eq!(text_module("model.visual.blocks.0.mlp.gate_proj"), None);
        assert_eq!(text_module("visual.blocks.0.mlp.gate_proj"), None);
    }
}
