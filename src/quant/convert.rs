//! Streaming conversion of a Hugging Face checkpoint folder to bitsandbytes NF4: every 2-D
//! linear weight (not embeddings, not skipped modules) becomes the bnb 4-bit layout, everything
//! else is copied. Tensors are read from the memory-mapped input and quantized while the output
//! is written, one at a time, so peak memory is about the largest tensor, not the model.

use super::bnb_io::{nf4_entries, OwnedTensor};
use super::nf4::{self, Nf4Tensor};
use crate::model::load::{LoadError, WeightStore};
use crate::model::text::module_matches;
use safetensors::{Dtype, View};
use std::borrow::Cow;
use std::cell::RefCell;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// Errors converting a checkpoint.
#[derive(Debug, thiserror::Error)]
pub enum ConvertError {
    #[error(transparent)]
    Load(#[from] LoadError),
    #[error("output folder {0} is not empty: pass --force to overwrite it")]
    OutputExists(PathBuf),
    #[error("cannot write {path}: {source}")]
    Write { path: PathBuf, source: std::io::Error },
    #[error("cannot write {path}: {problem}")]
    Serialize { path: PathBuf, problem: String },
    #[error("{0}")]
    Quant(#[from] nf4::Nf4Error),
}

/// What to quantize and how.
#[derive(Debug, Clone)]
pub struct ConvertOptions {
    /// Elements per absmax block.
    pub blocksize: usize,
    /// Double-quantize the block scales.
    pub double_quant: bool,
    /// Modules kept dense (dotted-path components, e.g. `lm_head`, `visual.merger`).
    pub skip: Vec<String>,
}

/// Bytes before and after, per module group (first two name components, e.g. `model.layers`).
#[derive(Debug, Default, Clone, PartialEq)]
pub struct GroupBytes {
    /// Tensors in the input.
    pub tensors: usize,
    /// Tensors quantized to NF4.
    pub quantized: usize,
    /// Input bytes.
    pub before: usize,
    /// Output bytes.
    pub after: usize,
}

fn dtype_name(dt: Dtype) -> &'static str {
    match dt {
        Dtype::BF16 => "bfloat16",
        Dtype::F16 => "float16",
        _ => "float32",
    }
}

/// One output entry; quantized ones are computed when the writer asks for their bytes.
enum Entry<'a> {
    Copy { store: &'a WeightStore, name: String, dtype: Dtype, shape: Vec<usize>, len: usize },
    Quant { job: &'a QuantJob<'a>, weight: String, part: String, dtype: Dtype, shape: Vec<usize>, len: usize },
}

struct QuantJob<'a> {
    store: &'a WeightStore,
    opts: &'a ConvertOptions,
    /// The last quantized weight: its entries are written apart (the writer sorts by dtype).
    cache: RefCell<Option<(String, Nf4Tensor, Dtype)>>,
    progress: &'a dyn Fn(&str),
}

impl QuantJob<'_> {
    fn quantized(&self, weight: &str) -> Result<(Nf4Tensor, Dtype), String> {
        if let Some((name, t, dt)) = self.cache.borrow().as_ref() {
            if name == weight {
                return Ok((t.clone(), *dt));
            }
        }
        let (dt, shape, _) = self.store.raw(weight).map_err(|e| e.to_string())?;
        let data = self.store.data(weight, &shape).map_err(|e| e.to_string())?.convert::<f32>();
        let values = data.as_slice::<f32>().map_err(|e| format!("{e:?}"))?;
        let t = nf4::quantize(values, &shape, self.opts.blocksize, self.opts.double_quant).map_err(|e| e.to_string())?;
        (self.progress)(weight);
        *self.cache.borrow_mut() = Some((weight.to_owned(), t.clone(), dt));
        Ok((t, dt))
    }

    /// The entries (with their exact sizes) that `weight` will be written as.
    fn entries(&self, weight: &str) -> Result<Vec<(String, OwnedTensor)>, String> {
        let (t, dt) = self.quantized(weight)?;
        let prefix = weight.strip_suffix(".weight").unwrap_or(weight);
        Ok(nf4_entries(prefix, &t, dtype_name(dt)))
    }
}

impl View for Entry<'_> {
    fn dtype(&self) -> Dtype {
        match self {
            Entry::Copy { dtype, .. } | Entry::Quant { dtype, .. } => *dtype,
        }
    }
    fn shape(&self) -> &[usize] {
        match self {
            Entry::Copy { shape, .. } | Entry::Quant { shape, .. } => shape,
        }
    }
    fn data(&self) -> Cow<'_, [u8]> {
        // The writer cannot take an error here; inputs were validated while sizing the header,
        // so a failure now means the input changed under us.
        match self {
            Entry::Copy { store, name, .. } => {
                Cow::Owned(store.raw(name).unwrap_or_else(|e| panic!("{name} became unreadable while writing: {e}")).2)
            }
            Entry::Quant { job, weight, part, .. } => {
                let entries = job.entries(weight).unwrap_or_else(|e| panic!("{weight} failed while writing: {e}"));
                Cow::Owned(entries.into_iter().find(|(n, _)| n == part).expect("part listed when sizing").1 .2)
            }
        }
    }
    fn data_len(&self) -> usize {
        match self {
            Entry::Copy { len, .. } | Entry::Quant { len, .. } => *len,
        }
    }
}

/// True for tensors `convert` turns into NF4.
pub fn is_quantizable(name: &str, shape: &[usize], skip: &[String]) -> bool {
    let Some(module) = name.strip_suffix(".weight") else { return false };
    shape.len() == 2 && !module.ends_with("embed_tokens") && !skip.iter().any(|p| module_matches(module, p))
}

fn group_of(name: &str) -> String {
    let mut parts = name.split('.');
    match (parts.next(), parts.next()) {
        (Some(a), Some(b)) if b.parse::<usize>().is_err() && !matches!(b, "weight" | "bias") => format!("{a}.{b}"),
        (Some(a), _) => a.to_owned(),
        _ => name.to_owned(),
    }
}

/// Quantizes the checkpoint in `input` into `output` (same shard names), copying every other
/// file; `config.json` gains the `quantization_config` transformers needs to load it.
/// `progress` is called once per quantized tensor.
pub fn convert(
    input: &Path,
    output: &Path,
    opts: &ConvertOptions,
    force: bool,
    progress: &dyn Fn(&str),
) -> Result<BTreeMap<String, GroupBytes>, ConvertError> {
    if opts.blocksize == 0 || !nf4::VALID_BLOCKSIZES.contains(&opts.blocksize) {
        return Err(nf4::Nf4Error::Blocksize(opts.blocksize).into());
    }
    let store = WeightStore::open(input)?;
    if output.exists() && std::fs::read_dir(output).map(|mut d| d.next().is_some()).unwrap_or(false) && !force {
        return Err(ConvertError::OutputExists(output.to_owned()));
    }
    let write_err = |path: &Path| {
        let path = path.to_owned();
        move |source| ConvertError::Write { path, source }
    };
    std::fs::create_dir_all(output).map_err(write_err(output))?;
    let job = QuantJob { store: &store, opts, cache: RefCell::new(None), progress };
    let mut groups: BTreeMap<String, GroupBytes> = BTreeMap::new();
    let mut weight_map = serde_json::Map::new();
    for (file, names) in store.files() {
        let mut entries = Vec::new();
        for name in names {
            let (dtype, shape, len) = store.meta(&name)?;
            let g = groups.entry(group_of(&name)).or_default();
            g.tensors += 1;
            g.before += len;
            if is_quantizable(&name, &shape, &opts.skip) {
                g.quantized += 1;
                for (part, (dt, sh, bytes)) in job.entries(&name).map_err(|problem| LoadError::Quant { name: name.clone(), problem })? {
                    g.after += bytes.len();
                    weight_map.insert(part.clone(), file.clone().into());
                    entries.push((part.clone(), Entry::Quant { job: &job, weight: name.clone(), part, dtype: dt, shape: sh, len: bytes.len() }));
                }
            } else {
                g.after += len;
                weight_map.insert(name.clone(), file.clone().into());
                entries.push((name.clone(), Entry::Copy { store: &store, name, dtype, shape, len }));
            }
        }
        // Written under a temporary name and renamed: an interrupted run leaves no file that
        // looks complete.
        let path = output.join(&file);
        let tmp = output.join(format!("{file}.partial"));
        safetensors::serialize_to_file(entries, None, &tmp)
            .map_err(|e| ConvertError::Serialize { path: path.clone(), problem: e.to_string() })?;
        std::fs::rename(&tmp, &path).map_err(write_err(&path))?;
    }
    copy_side_files(input, output, opts, weight_map)?;
    Ok(groups)
}

fn copy_side_files(
    input: &Path,
    output: &Path,
    opts: &ConvertOptions,
    weight_map: serde_json::Map<String, serde_json::Value>,
) -> Result<(), ConvertError> {
    let read_err = |path: &Path| {
        let path = path.to_owned();
        move |source| ConvertError::Write { path, source }
    };
    for entry in std::fs::read_dir(input).map_err(read_err(input))? {
        let path = entry.map_err(read_err(input))?.path();
        let name = path.file_name().unwrap_or_default().to_string_lossy().into_owned();
        if !path.is_file() || name.ends_with(".safetensors") {
            continue;
        }
        let dest = output.join(&name);
        match name.as_str() {
            "config.json" => {
                let text = std::fs::read_to_string(&path).map_err(read_err(&path))?;
                let mut cfg: serde_json::Value = serde_json::from_str(&text).map_err(|e| ConvertError::Serialize {
                    path: path.clone(),
                    problem: e.to_string(),
                })?;
                let compute = cfg.get("torch_dtype").or(cfg.get("dtype")).and_then(|v| v.as_str()).unwrap_or("bfloat16").to_owned();
                cfg["quantization_config"] = serde_json::json!({
                    "quant_method": "bitsandbytes",
                    "load_in_4bit": true,
                    "load_in_8bit": false,
                    "bnb_4bit_quant_type": "nf4",
                    "bnb_4bit_use_double_quant": opts.double_quant,
                    "bnb_4bit_compute_dtype": compute,
                    "bnb_4bit_quant_storage": "uint8",
                    "llm_int8_skip_modules": opts.skip,
                    "llm_int8_threshold": 6.0,
                    "llm_int8_has_fp16_weight": false,
                    "llm_int8_enable_fp32_cpu_offload": false,
                    "_load_in_4bit": true,
                    "_load_in_8bit": false,
                    "medqlora_blocksize": opts.blocksize,
                });
                std::fs::write(&dest, serde_json::to_string_pretty(&cfg).expect("json")).map_err(read_err(&dest))?;
            }
            "model.safetensors.index.json" => {
                let index = serde_json::json!({"metadata": {}, "weight_map": weight_map});
                std::fs::write(&dest, serde_json::to_string_pretty(&index).expect("json")).map_err(read_err(&dest))?;
            }
            _ => {
                std::fs::copy(&path, &dest).map_err(read_err(&dest))?;
            }
        }
    }
    Ok(())
}
