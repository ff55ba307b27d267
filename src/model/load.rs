//! Hugging Face safetensors checkpoints, memory-mapped, looked up by HF parameter name.
//! A single `model.safetensors` or shards listed in `model.safetensors.index.json`.

use burn::tensor::{backend::Backend, DType, Tensor, TensorData};
use memmap2::Mmap;
use safetensors::tensor::TensorView;
use safetensors::{Dtype, SafeTensors};
use std::collections::HashMap;
use std::path::{Path, PathBuf};

/// Errors opening a checkpoint or fetching one of its tensors.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("cannot open {path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("no weights in {dir}: expected model.safetensors or model.safetensors.index.json (a Hugging Face checkpoint folder)")]
    NoWeights { dir: PathBuf },
    #[error("{path} is not a valid safetensors file: {problem}")]
    Format { path: PathBuf, problem: String },
    #[error("{index}: {problem}")]
    Index { index: PathBuf, problem: String },
    #[error("tensor {name} is missing from the checkpoint in {dir}")]
    Missing { name: String, dir: PathBuf },
    #[error("tensor {name} has shape {found:?}, expected {expected:?}: the checkpoint does not match config.json")]
    Shape { name: String, found: Vec<usize>, expected: Vec<usize> },
    #[error("quantized tensor {name}: {problem}")]
    Quant { name: String, problem: String },
    #[error("tensor {name} has dtype {found}; medqlora reads F32, F16 and BF16 weights")]
    Dtype { name: String, found: String },
}

/// The open, memory-mapped files of one checkpoint.
pub struct WeightStore {
    dir: PathBuf,
    files: Vec<(PathBuf, Mmap)>,
    /// Tensor name -> index into `files`.
    index: HashMap<String, usize>,
}

fn open_mmap(path: &Path) -> Result<Mmap, LoadError> {
    let file = std::fs::File::open(path).map_err(|source| LoadError::Io { path: path.to_owned(), source })?;
    // SAFETY: the checkpoint is opened read-only; like every mmap-based loader we assume the
    // file is not truncated by another process while the model loads.
    unsafe { Mmap::map(&file) }.map_err(|source| LoadError::Io { path: path.to_owned(), source })
}

impl WeightStore {
    /// Opens the checkpoint in `dir` (single file or sharded).
    pub fn open(dir: &Path) -> Result<Self, LoadError> {
        let single = dir.join("model.safetensors");
        let index_path = dir.join("model.safetensors.index.json");
        let shard_names: Vec<String> = if index_path.exists() {
            let text = std::fs::read_to_string(&index_path)
                .map_err(|source| LoadError::Io { path: index_path.clone(), source })?;
            let json: serde_json::Value = serde_json::from_str(&text)
                .map_err(|e| LoadError::Index { index: index_path.clone(), problem: e.to_string() })?;
            let map = json.get("weight_map").and_then(|m| m.as_object()).ok_or_else(|| LoadError::Index {
                index: index_path.clone(),
                problem: "no \"weight_map\" object".into(),
            })?;
            let mut names: Vec<String> = map.values().filter_map(|v| v.as_str().map(str::to_owned)).collect();
            names.sort();
            names.dedup();
            names
        } else if single.exists() {
            vec!["model.safetensors".to_owned()]
        } else {
            return Err(LoadError::NoWeights { dir: dir.to_owned() });
        };
        let mut files = Vec::new();
        let mut index = HashMap::new();
        for name in shard_names {
            let path = dir.join(&name);
            let mmap = open_mmap(&path)?;
            let st = SafeTensors::deserialize(&mmap)
                .map_err(|e| LoadError::Format { path: path.clone(), problem: e.to_string() })?;
            for tensor_name in st.names() {
                index.insert(tensor_name.to_string(), files.len());
            }
            files.push((path, mmap));
        }
        Ok(Self { dir: dir.to_owned(), files, index })
    }

    /// True when the checkpoint has a tensor of this name.
    pub fn contains(&self, name: &str) -> bool {
        self.index.contains_key(name)
    }

    /// All tensor names, sorted.
    pub fn names(&self) -> Vec<&str> {
        let mut v: Vec<&str> = self.index.keys().map(String::as_str).collect();
        v.sort_unstable();
        v
    }

    /// Runs `f` on the memory-mapped view of `name`.
    fn with_view<R>(&self, name: &str, f: impl FnOnce(&TensorView<'_>) -> R) -> Result<R, LoadError> {
        let &file = self.index.get(name).ok_or_else(|| LoadError::Missing { name: name.into(), dir: self.dir.clone() })?;
        let (path, mmap) = &self.files[file];
        let st = SafeTensors::deserialize(mmap)
            .map_err(|e| LoadError::Format { path: path.clone(), problem: e.to_string() })?;
        let view = st.tensor(name).map_err(|e| LoadError::Format { path: path.clone(), problem: e.to_string() })?;
        Ok(f(&view))
    }

    /// The stored dtype, shape and bytes of `name` (any dtype; for quantized layouts).
    pub fn raw(&self, name: &str) -> Result<(Dtype, Vec<usize>, Vec<u8>), LoadError> {
        self.with_view(name, |v| (v.dtype(), v.shape().to_vec(), v.data().to_vec()))
    }

    /// Shard file names with the tensor names each holds (sorted), in file order.
    pub fn files(&self) -> Vec<(String, Vec<String>)> {
        self.files
            .iter()
            .enumerate()
            .map(|(i, (path, _))| {
                let mut names: Vec<String> = self.index.iter().filter(|(_, &f)| f == i).map(|(n, _)| n.clone()).collect();
                names.sort();
                (path.file_name().unwrap_or_default().to_string_lossy().into_owned(), names)
            })
            .collect()
    }

    /// `(dtype, shape, byte length)` of `name` without copying its data.
    pub fn meta(&self, name: &str) -> Result<(Dtype, Vec<usize>, usize), LoadError> {
        self.with_view(name, |v| (v.dtype(), v.shape().to_vec(), v.data().len()))
    }

    /// The raw data of `name` with its stored dtype, checked against `expected` shape.
    pub fn data(&self, name: &str, expected: &[usize]) -> Result<TensorData, LoadError> {
        let (stored, shape, bytes) = self.raw(name)?;
        if shape != expected {
            return Err(LoadError::Shape { name: name.into(), found: shape, expected: expected.to_vec() });
        }
        let dtype = match stored {
            Dtype::F32 => DType::F32,
            Dtype::F16 => DType::F16,
            Dtype::BF16 => DType::BF16,
            other => return Err(LoadError::Dtype { name: name.into(), found: format!("{other:?}") }),
        };
        Ok(TensorData::from_bytes_vec(bytes, shape, dtype))
    }

    /// Loads `name` onto `device`, converted to the device's float dtype.
    pub fn tensor<B: Backend, const D: usize>(
        &self,
        name: &str,
        expected: [usize; D],
        device: &B::Device,
    ) -> Result<Tensor<B, D>, LoadError> {
        Ok(Tensor::from_data(self.data(name, &expected)?, device))
    }
}
