//! Training checkpoints: everything a run needs to continue bit for bit, written atomically.
//!
//! `<output_dir>/checkpoints/step-000020/`:
//! - `adapter_model.safetensors` + `adapter_config.json`: the adapter in PEFT's format (f32
//!   master weights, keys `base_model.model.<module>.lora_A.weight`), loadable by PEFT as is;
//! - `optimizer.safetensors`: AdamW master weights and moments (`master.`/`m.`/`v.` + name;
//!   8-bit moments as `m8.`/`v8.` u8 codes and `m8_absmax.`/`v8_absmax.` f32 block scales);
//! - `trainer_state.json`: step, data cursor, seed, loss history;
//! - `recipe.toml`: the resolved recipe;
//! - `checksums.json`: SHA-256 of every file above. A checkpoint whose files are missing,
//!   truncated or altered is refused.
//!
//! The folder is written under a temporary name and renamed into place, so a crash leaves
//! either the previous checkpoints or a complete new one, never half of one.

use super::batches::DataCursor;
use medqlora_kernels::adamw8::reference::{Adam8State, BLOCK};
use safetensors::tensor::TensorView;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// Errors writing or reading a checkpoint.
#[derive(Debug, thiserror::Error)]
pub enum CheckpointError {
    #[error("cannot write checkpoint {path}: {source}")]
    Write { path: PathBuf, source: std::io::Error },
    #[error("checkpoint {path} cannot be used: {problem}. Resume from another checkpoint (--resume PATH) or start a new run")]
    Invalid { path: PathBuf, problem: String },
    #[error("no checkpoint to resume in {dir}: it has no step-* folder. Train without --resume, or pass --resume PATH")]
    NoneFound { dir: PathBuf },
}

/// A host-side f32 tensor: shape and values.
pub type HostTensor = (Vec<usize>, Vec<f32>);

/// The training position saved with a checkpoint.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrainerState {
    /// Optimizer steps completed.
    pub step: usize,
    /// Next micro-batch.
    pub cursor: DataCursor,
    /// The recipe seed (dropout and data order derive from it and the step).
    pub seed: u64,
    /// `(step, mean train loss)` for every completed step.
    pub losses: Vec<(usize, f64)>,
    /// Tokens trained on so far.
    pub tokens_seen: usize,
    /// medqlora version that wrote the checkpoint.
    pub version: String,
}

/// Everything in one checkpoint, on the host.
pub struct Checkpoint {
    /// Position and history.
    pub state: TrainerState,
    /// The recipe as TOML.
    pub recipe_toml: String,
    /// `adapter_config.json` as PEFT reads it (`lora::peft_io::peft_config_json`).
    pub adapter_config: String,
    /// f32 master weights by PEFT name (`<module>.lora_A`).
    pub master: BTreeMap<String, HostTensor>,
    /// AdamW first moments.
    pub m: BTreeMap<String, HostTensor>,
    /// AdamW second moments.
    pub v: BTreeMap<String, HostTensor>,
    /// 8-bit AdamW moments (tensors not in `m` / `v`).
    pub q8: BTreeMap<String, Adam8State>,
}

/// The adapter file of the f32 masters (by PEFT name), through the one PEFT writer.
fn adapter_bytes(master: &BTreeMap<String, HostTensor>) -> Result<Vec<u8>, crate::lora::peft_io::PeftError> {
    crate::lora::peft_io::peft_weights_bytes(master.iter().map(|(k, (shape, data))| (k.as_str(), shape.as_slice(), data.as_slice())))
}

fn sha256(bytes: &[u8]) -> String {
    Sha256::digest(bytes).iter().map(|b| format!("{b:02x}")).collect()
}

/// A tensor to write: f32 values or raw u8 codes.
enum Blob<'a> {
    F32(Vec<usize>, &'a [f32]),
    U8(&'a [u8]),
}

fn serialize(tensors: &[(String, Blob<'_>)]) -> Result<Vec<u8>, String> {
    let views: Vec<(String, TensorView<'_>)> = tensors
        .iter()
        .map(|(k, b)| {
            match b {
                Blob::F32(shape, data) => TensorView::new(safetensors::Dtype::F32, shape.clone(), bytemuck::cast_slice(data)),
                Blob::U8(data) => TensorView::new(safetensors::Dtype::U8, vec![data.len()], data),
            }
            .map(|v| (k.clone(), v))
        })
        .collect::<Result<_, _>>()
        .map_err(|e| e.to_string())?;
    safetensors::serialize(views, None).map_err(|e| e.to_string())
}

/// A tensor read back.
enum Read {
    F32(HostTensor),
    U8(Vec<u8>),
}

fn deserialize(bytes: &[u8]) -> Result<BTreeMap<String, Read>, String> {
    let st = safetensors::SafeTensors::deserialize(bytes).map_err(|e| e.to_string())?;
    st.tensors()
        .into_iter()
        .map(|(k, v)| match v.dtype() {
            safetensors::Dtype::F32 => {
                let data: Vec<f32> = v.data().chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect();
                Ok((k, Read::F32((v.shape().to_vec(), data))))
            }
            safetensors::Dtype::U8 => Ok((k, Read::U8(v.data().to_vec()))),
            other => Err(format!("tensor {k} is {other:?}, expected F32 or U8")),
        })
        .collect()
}

/// Sorts the optimizer tensors by prefix and checks that every master has one complete set of
/// moments of its size.
#[allow(clippy::type_complexity)]
fn split_optimizer(
    opt: BTreeMap<String, Read>,
) -> Result<(BTreeMap<String, HostTensor>, BTreeMap<String, HostTensor>, BTreeMap<String, HostTensor>, BTreeMap<String, Adam8State>), String> {
    let mut f32s: [BTreeMap<String, HostTensor>; 5] = Default::default();
    let mut codes: [BTreeMap<String, Vec<u8>>; 2] = Default::default();
    for (key, t) in opt {
        let (prefix, name) = key.split_once('.').ok_or_else(|| format!("optimizer tensor {key} has no prefix"))?;
        let name = name.to_owned();
        match (prefix, t) {
            ("master", Read::F32(t)) => f32s[0].insert(name, t).map(|_| ()),
            ("m", Read::F32(t)) => f32s[1].insert(name, t).map(|_| ()),
            ("v", Read::F32(t)) => f32s[2].insert(name, t).map(|_| ()),
            ("m8_absmax", Read::F32(t)) => f32s[3].insert(name, t).map(|_| ()),
            ("v8_absmax", Read::F32(t)) => f32s[4].insert(name, t).map(|_| ()),
            ("m8", Read::U8(c)) => codes[0].insert(name, c).map(|_| ()),
            ("v8", Read::U8(c)) => codes[1].insert(name, c).map(|_| ()),
            _ => return Err(format!("optimizer tensor {key} has an unknown prefix or dtype")),
        };
    }
    let [master, m, v, mut am, mut av] = f32s;
    let [mut mc, mut vc] = codes;
    if master.is_empty() {
        return Err("optimizer.safetensors holds no master weights".into());
    }
    let mut q8 = BTreeMap::new();
    for (name, (shape, _)) in &master {
        let n: usize = shape.iter().product();
        match (m.get(name), v.get(name)) {
            (Some(a), Some(b)) if a.0 == *shape && b.0 == *shape => continue,
            (None, None) => {}
            _ => return Err(format!("the f32 moments of {name} are missing or of another shape")),
        }
        let (Some(c1), Some(c2), Some(a1), Some(a2)) = (mc.remove(name), vc.remove(name), am.remove(name), av.remove(name)) else {
            return Err(format!("{name} has neither f32 nor complete 8-bit moments"));
        };
        let blocks = n.div_ceil(BLOCK);
        if c1.len() != n || c2.len() != n || a1.1.len() != blocks || a2.1.len() != blocks {
            return Err(format!("the 8-bit moments of {name} do not cover its {n} elements"));
        }
        q8.insert(name.clone(), Adam8State { m: c1, v: c2, absmax_m: a1.1, absmax_v: a2.1 });
    }
    // What is left of the 8-bit pieces was not claimed by a master without f32 moments.
    let stray = m.keys().chain(v.keys()).find(|k| !master.contains_key(*k)).or_else(|| mc.keys().chain(vc.keys()).chain(am.keys()).chain(av.keys()).next());
    if let Some(k) = stray {
        return Err(format!("optimizer tensor {k} belongs to no master weight, or to one that has other moments"));
    }
    Ok((master, m, v, q8))
}

impl Checkpoint {
    /// The folder name of step `step`.
    pub fn dir_name(step: usize) -> String {
        format!("step-{step:06}")
    }

    /// Writes `<checkpoints_dir>/step-NNNNNN` atomically and deletes all but the newest
    /// `keep_last`. Returns the folder.
    pub fn save(&self, checkpoints_dir: &Path, keep_last: usize) -> Result<PathBuf, CheckpointError> {
        let final_dir = checkpoints_dir.join(Self::dir_name(self.state.step));
        let tmp = checkpoints_dir.join(format!(".tmp-{}-{}", Self::dir_name(self.state.step), std::process::id()));
        let werr = |path: &Path| {
            let path = path.to_owned();
            move |source| CheckpointError::Write { path, source }
        };
        let ser_err = |e: String| CheckpointError::Write { path: tmp.clone(), source: std::io::Error::other(e) };
        if tmp.exists() {
            std::fs::remove_dir_all(&tmp).map_err(werr(&tmp))?;
        }
        std::fs::create_dir_all(&tmp).map_err(werr(&tmp))?;
        let mut optimizer: Vec<(String, Blob<'_>)> = Vec::new();
        for (prefix, map) in [("master", &self.master), ("m", &self.m), ("v", &self.v)] {
            optimizer.extend(map.iter().map(|(k, (shape, data))| (format!("{prefix}.{k}"), Blob::F32(shape.clone(), data))));
        }
        for (k, q) in &self.q8 {
            optimizer.push((format!("m8.{k}"), Blob::U8(&q.m)));
            optimizer.push((format!("v8.{k}"), Blob::U8(&q.v)));
            optimizer.push((format!("m8_absmax.{k}"), Blob::F32(vec![q.absmax_m.len()], &q.absmax_m)));
            optimizer.push((format!("v8_absmax.{k}"), Blob::F32(vec![q.absmax_v.len()], &q.absmax_v)));
        }
        let files: Vec<(&str, Vec<u8>)> = vec![
            ("adapter_model.safetensors", adapter_bytes(&self.master).map_err(|e| ser_err(e.to_string()))?),
            ("adapter_config.json", self.adapter_config.clone().into_bytes()),
            ("optimizer.safetensors", serialize(&optimizer).map_err(ser_err)?),
            ("trainer_state.json", serde_json::to_vec_pretty(&self.state).unwrap_or_default()),
            ("recipe.toml", self.recipe_toml.clone().into_bytes()),
        ];
        let mut sums = BTreeMap::new();
        for (name, bytes) in &files {
            write_synced(&tmp.join(name), bytes).map_err(werr(&tmp.join(name)))?;
            sums.insert(name.to_string(), sha256(bytes));
        }
        write_synced(&tmp.join("checksums.json"), &serde_json::to_vec_pretty(&sums).unwrap_or_default())
            .map_err(werr(&tmp.join("checksums.json")))?;
        if final_dir.exists() {
            std::fs::remove_dir_all(&final_dir).map_err(werr(&final_dir))?;
        }
        std::fs::rename(&tmp, &final_dir).map_err(werr(&final_dir))?;
        if let Ok(d) = std::fs::File::open(checkpoints_dir) {
            let _ = d.sync_all();
        }
        for old in list(checkpoints_dir).into_iter().rev().skip(keep_last) {
            std::fs::remove_dir_all(&old.1).map_err(werr(&old.1))?;
        }
        Ok(final_dir)
    }

    /// Reads and verifies a checkpoint folder.
    pub fn load(dir: &Path) -> Result<Self, CheckpointError> {
        let invalid = |problem: String| CheckpointError::Invalid { path: dir.to_owned(), problem };
        let read = |name: &str| std::fs::read(dir.join(name)).map_err(|e| invalid(format!("cannot read {name}: {e}")));
        let sums: BTreeMap<String, String> = serde_json::from_slice(&read("checksums.json")?)
            .map_err(|e| invalid(format!("checksums.json is damaged: {e}")))?;
        let mut files = BTreeMap::new();
        for name in ["adapter_model.safetensors", "adapter_config.json", "optimizer.safetensors", "trainer_state.json", "recipe.toml"] {
            let bytes = read(name)?;
            match sums.get(name) {
                Some(s) if *s == sha256(&bytes) => {}
                Some(_) => return Err(invalid(format!("{name} does not match its checksum (truncated or altered)"))),
                None => return Err(invalid(format!("checksums.json has no entry for {name}"))),
            }
            files.insert(name, bytes);
        }
        let state: TrainerState =
            serde_json::from_slice(&files["trainer_state.json"]).map_err(|e| invalid(format!("trainer_state.json: {e}")))?;
        serde_json::from_slice::<serde_json::Map<String, serde_json::Value>>(&files["adapter_config.json"])
            .map_err(|e| invalid(format!("adapter_config.json: {e}")))?;
        let adapter_config = String::from_utf8(files["adapter_config.json"].clone()).map_err(|e| invalid(format!("adapter_config.json: {e}")))?;
        let recipe_toml = String::from_utf8(files["recipe.toml"].clone()).map_err(|e| invalid(format!("recipe.toml: {e}")))?;
        let opt = deserialize(&files["optimizer.safetensors"]).map_err(|e| invalid(format!("optimizer.safetensors: {e}")))?;
        let (master, m, v, q8) = split_optimizer(opt).map_err(|e| invalid(format!("optimizer.safetensors: {e}")))?;
        Ok(Self { state, recipe_toml, adapter_config, master, m, v, q8 })
    }
}

fn write_synced(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    let mut f = std::fs::File::create(path)?;
    f.write_all(bytes)?;
    f.sync_all()
}

/// Complete checkpoints in `checkpoints_dir`, oldest first: `(step, folder)`.
pub fn list(checkpoints_dir: &Path) -> Vec<(usize, PathBuf)> {
    let mut out: Vec<(usize, PathBuf)> = std::fs::read_dir(checkpoints_dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let name = e.file_name().into_string().ok()?;
            let step = name.strip_prefix("step-")?.parse().ok()?;
            Some((step, e.path()))
        })
        .collect();
    out.sort();
    out
}

/// The newest checkpoint folder in `checkpoints_dir`.
pub fn latest(checkpoints_dir: &Path) -> Result<PathBuf, CheckpointError> {
    list(checkpoints_dir).pop().map(|(_, p)| p).ok_or_else(|| CheckpointError::NoneFound { dir: checkpoints_dir.to_owned() })
}
