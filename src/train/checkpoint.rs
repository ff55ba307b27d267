//! Training checkpoints: everything a run needs to continue bit for bit, written atomically.
//!
//! `<output_dir>/checkpoints/step-000020/`:
//! - `adapter_model.safetensors` + `adapter_config.json`: the adapter in PEFT's format (f32
//!   master weights, keys `base_model.model.<module>.lora_A.weight`), loadable by PEFT as is;
//! - `optimizer.safetensors`: AdamW master weights and moments (`master.`/`m.`/`v.` + name);
//! - `trainer_state.json`: step, data cursor, seed, loss history;
//! - `recipe.toml`: the resolved recipe;
//! - `checksums.json`: SHA-256 of every file above. A checkpoint whose files are missing,
//!   truncated or altered is refused.
//!
//! The folder is written under a temporary name and renamed into place, so a crash leaves
//! either the previous checkpoints or a complete new one, never half of one.

use super::batches::DataCursor;
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
}

/// The adapter file of the f32 masters (by PEFT name), through the one PEFT writer.
fn adapter_bytes(master: &BTreeMap<String, HostTensor>) -> Result<Vec<u8>, crate::lora::peft_io::PeftError> {
    crate::lora::peft_io::peft_weights_bytes(master.iter().map(|(k, (shape, data))| (k.as_str(), shape.as_slice(), data.as_slice())))
}

fn sha256(bytes: &[u8]) -> String {
    Sha256::digest(bytes).iter().map(|b| format!("{b:02x}")).collect()
}

fn serialize(tensors: &[(String, &HostTensor)]) -> Result<Vec<u8>, String> {
    let views: Vec<(String, TensorView<'_>)> = tensors
        .iter()
        .map(|(k, (shape, data))| {
            TensorView::new(safetensors::Dtype::F32, shape.clone(), bytemuck::cast_slice(data)).map(|v| (k.clone(), v))
        })
        .collect::<Result<_, _>>()
        .map_err(|e| e.to_string())?;
    safetensors::serialize(views, None).map_err(|e| e.to_string())
}

fn deserialize(bytes: &[u8]) -> Result<BTreeMap<String, HostTensor>, String> {
    let st = safetensors::SafeTensors::deserialize(bytes).map_err(|e| e.to_string())?;
    st.tensors()
        .into_iter()
        .map(|(k, v)| {
            if v.dtype() != safetensors::Dtype::F32 {
                return Err(format!("tensor {k} is {:?}, expected F32", v.dtype()));
            }
            let data: Vec<f32> = v.data().chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect();
            Ok((k, (v.shape().to_vec(), data)))
        })
        .collect()
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
        let mut optimizer: Vec<(String, &HostTensor)> = Vec::new();
        for (prefix, map) in [("master", &self.master), ("m", &self.m), ("v", &self.v)] {
            optimizer.extend(map.iter().map(|(k, t)| (format!("{prefix}.{k}"), t)));
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
        let mut maps: [BTreeMap<String, HostTensor>; 3] = Default::default();
        for (key, t) in opt {
            let (prefix, name) = key.split_once('.').ok_or_else(|| invalid(format!("optimizer tensor {key} has no prefix")))?;
            let slot = match prefix {
                "master" => 0,
                "m" => 1,
                "v" => 2,
                _ => return Err(invalid(format!("optimizer tensor {key} has an unknown prefix"))),
            };
            maps[slot].insert(name.to_owned(), t);
        }
        let [master, m, v] = maps;
        if master.keys().ne(m.keys()) || master.keys().ne(v.keys()) || master.is_empty() {
            return Err(invalid("optimizer.safetensors does not hold master, m and v for the same tensors".into()));
        }
        Ok(Self { state, recipe_toml, adapter_config, master, m, v })
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
