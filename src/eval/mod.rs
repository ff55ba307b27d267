//! The evaluator: greedy answers for a dataset's prompts ([`run`]), scored field by field
//! ([`score`]) into a report ([`report`]). [`evaluate`] is what both `medqlora eval` and the
//! trainer's periodic evaluation call.

pub mod report;
pub mod run;
pub mod score;

pub use report::EvalReport;
pub use run::{evaluate, EvalOptions};

use std::path::PathBuf;

/// Errors of an evaluation.
#[derive(Debug, thiserror::Error)]
pub enum EvalError {
    /// Formatting or tokenizing a record failed.
    #[error(transparent)]
    Data(#[from] crate::data::DataError),
    /// The tokenizer failed on a model answer.
    #[error("record \"{id}\": cannot decode the answer: {problem}")]
    Decode {
        /// The record.
        id: String,
        /// The tokenizer's message.
        problem: String,
    },
    /// An image record given to a text-only model.
    #[error("record \"{id}\" is an image document; the text model cannot read images (evaluate its text form, e.g. train.jsonl instead of train.image.jsonl)")]
    ImageRecord {
        /// The record.
        id: String,
    },
    /// Nothing to evaluate.
    #[error("no records to evaluate")]
    Empty,
    /// Bad options.
    #[error("{0}")]
    Options(String),
    /// A report file could not be read or written.
    #[error("{path}: {reason}")]
    Report {
        /// The file.
        path: PathBuf,
        /// What went wrong.
        reason: String,
    },
}
