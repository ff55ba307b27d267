//! Everything a run needs on the host before the backend starts: the base model folder
//! (written first for the tiny random model), the tokenizer, and the tokenized train / eval
//! examples with their loss masks. Bad data stops the run here, before any training.

use super::recipe::{DataSource, ModelRecipe, Recipe};
use crate::chat::ChatTemplate;
use crate::data::prompt::{encode_record, Encoded};
use crate::data::{read_jsonl, DataError, Record};
use crate::model::tiny::TinyModelError;
use crate::tokenizer::{Tokenizer, TokenizerError};
use std::path::PathBuf;

/// Errors preparing the model folder or the data.
#[derive(Debug, thiserror::Error)]
pub enum PrepareError {
    #[error(transparent)]
    Tiny(#[from] TinyModelError),
    #[error(transparent)]
    Tokenizer(#[from] TokenizerError),
    #[error(transparent)]
    Data(#[from] DataError),
    #[error("model folder {path} does not exist: set [model] path in the recipe to a Hugging Face checkpoint folder (config.json, model.safetensors, tokenizer.json)")]
    NoModel { path: PathBuf },
    #[error("the training set is empty: {what}")]
    Empty { what: String },
}

/// Host-side inputs of a run.
pub struct Prepared {
    /// The base model folder.
    pub model_dir: PathBuf,
    /// Tokenized training examples.
    pub train: Vec<Encoded>,
    /// Tokenized held-out examples (may be empty).
    pub eval: Vec<Encoded>,
    /// The held-out records (for field accuracy).
    pub eval_records: Vec<Record>,
    /// Padding: `<|endoftext|>`, to the recipe's `data.pad_to_multiple_of`.
    pub padding: super::batches::Padding,
    /// The model's tokenizer (for generation during evaluation).
    pub tokenizer: Tokenizer,
    /// The model's chat template.
    pub template: ChatTemplate,
}

/// Resolves the model folder, loads and tokenizes the data.
pub fn prepare(recipe: &Recipe) -> Result<Prepared, PrepareError> {
    let model_dir = match &recipe.model {
        ModelRecipe::Pretrained { path, .. } => {
            if !path.is_dir() {
                return Err(PrepareError::NoModel { path: path.clone() });
            }
            path.clone()
        }
        ModelRecipe::TinyRandom { tiny, .. } => {
            let dir = recipe.output_dir.join("tiny-model");
            tiny.write(&dir)?;
            dir
        }
    };
    let tok = Tokenizer::from_model_dir(&model_dir)?;
    let template = ChatTemplate::from_model_dir(&model_dir);
    let (train_records, eval_records) = records(recipe)?;
    if train_records.is_empty() {
        return Err(PrepareError::Empty { what: format!("{:?}", recipe.data.source) });
    }
    let encode = |rs: &[Record]| -> Result<Vec<Encoded>, PrepareError> {
        rs.iter().map(|r| Ok(encode_record(&tok, &template, r, recipe.data.max_seq_len)?)).collect()
    };
    let train = encode(&train_records)?;
    let eval = encode(&eval_records)?;
    let pad_id = tok.token_id("<|endoftext|>").or_else(|| tok.token_id("<|im_end|>")).unwrap_or(0);
    let answer_tokens: usize = train.iter().map(|e| e.loss_mask.iter().filter(|&&m| m).count()).sum();
    let all_tokens: usize = train.iter().map(|e| e.input_ids.len()).sum();
    eprintln!(
        "data: {} train examples ({all_tokens} tokens, {answer_tokens} answer tokens trained on), {} eval examples",
        train.len(),
        eval.len()
    );
    let padding = super::batches::Padding { id: pad_id, multiple: recipe.data.pad_to_multiple_of };
    Ok(Prepared { model_dir, train, eval, eval_records, padding, tokenizer: tok, template })
}

fn records(recipe: &Recipe) -> Result<(Vec<Record>, Vec<Record>), PrepareError> {
    match &recipe.data.source {
        DataSource::Jsonl { train, eval } => {
            let load = |p: &PathBuf| -> Result<Vec<Record>, PrepareError> {
                let ds = read_jsonl(p, recipe.data.skip_bad)?;
                for bad in &ds.skipped {
                    eprintln!("warning: skipped {bad}");
                }
                Ok(ds.records)
            };
            let eval = eval.as_ref().map(load).transpose()?.unwrap_or_default();
            Ok((load(train)?, eval))
        }
        DataSource::Synth { kinds, train_per_kind, eval_per_kind, seed } => {
            let mut train = Vec::new();
            let mut eval = Vec::new();
            for (i, kind) in kinds.iter().enumerate() {
                let s = seed.wrapping_add(1000 * i as u64);
                train.extend(crate::data::synth::generate(*kind, *train_per_kind, s).into_iter().map(|(r, _)| r));
                // A different stream for held-out documents: never a copy of a training one.
                eval.extend(crate::data::synth::generate(*kind, *eval_per_kind, s ^ 0xE7A1_5EED).into_iter().map(|(r, _)| r));
            }
            Ok((train, eval))
        }
    }
}
