//! Datasets: the JSONL record format ([`record`]), what each document type asks for
//! ([`schema`]), chat formatting and tokenization with the loss mask ([`prompt`]), the
//! deterministic split ([`split`]), MTSamples conversion ([`mtsamples`]) and the synthetic
//! clinical document generator ([`synth`]).

pub mod mtsamples;
pub mod prompt;
pub mod record;
pub mod schema;
pub mod split;
pub mod synth;

pub use prompt::{encode_record, prompt_text, target_text, Encoded};
pub use record::{read_jsonl, write_jsonl, BadLine, Dataset, Record};

use std::path::{Path, PathBuf};

/// Everything that can go wrong reading, converting or encoding data.
#[derive(Debug, thiserror::Error)]
pub enum DataError {
    /// A file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// A malformed JSONL line (reading without `--skip-bad`).
    #[error("{file}:{line}: {reason}. Fix the line, or pass --skip-bad to load the rest of the file without it")]
    BadLine {
        /// The JSONL file.
        file: PathBuf,
        /// 1-based line number.
        line: usize,
        /// What is wrong.
        reason: String,
    },
    /// Nothing usable in a file.
    #[error("{file}: no usable records ({skipped} bad lines skipped); a dataset needs at least one valid line")]
    NoRecords {
        /// The JSONL file.
        file: PathBuf,
        /// How many lines were skipped as bad.
        skipped: usize,
    },
    /// A bad row in a CSV input.
    #[error("{file}:{line}: {reason}")]
    Csv {
        /// The CSV file.
        file: PathBuf,
        /// 1-based line (record) number.
        line: usize,
        /// What is wrong.
        reason: String,
    },
    /// A record cannot fit the token budget even with its document cut to nothing.
    #[error("record \"{id}\": {needed} tokens without any document text, over the maximum length {max_len}; raise max_len (or --max-seq-len) or shorten its instruction/answer")]
    TooLong {
        /// The record.
        id: String,
        /// Tokens of the prompt scaffolding plus the answer.
        needed: usize,
        /// The budget.
        max_len: usize,
    },
    /// The tokenizer failed on a record.
    #[error("record \"{id}\": tokenizer failed: {problem}")]
    Tokenize {
        /// The record.
        id: String,
        /// The tokenizer's message.
        problem: String,
    },
    /// A token the chat format needs is missing from the vocabulary.
    #[error("the tokenizer has no {token} token; use a Qwen2.5 / Qwen2.5-VL tokenizer.json")]
    MissingToken {
        /// The token text.
        token: &'static str,
    },
    /// Bad arguments or settings for a data command.
    #[error("{0}")]
    Invalid(String),
}

impl DataError {
    /// An I/O error on `path`.
    pub fn io(path: &Path, source: std::io::Error) -> Self {
        Self::Io { path: path.to_owned(), source }
    }
}
