//! The Qwen tokenizer (`tokenizer.json`, byte-level BPE) through the `tokenizers` crate, and
//! incremental detokenization for streaming output.

use std::path::{Path, PathBuf};

/// Errors loading or running the tokenizer.
#[derive(Debug, thiserror::Error)]
pub enum TokenizerError {
    #[error("cannot load tokenizer {path}: {problem}. The model folder needs the Hugging Face tokenizer.json")]
    Load { path: PathBuf, problem: String },
    #[error("tokenizer failed: {0}")]
    Run(String),
}

/// A loaded tokenizer plus the ids of the special tokens generation cares about.
pub struct Tokenizer {
    inner: tokenizers::Tokenizer,
}

impl Tokenizer {
    /// Loads `<dir>/tokenizer.json`.
    pub fn from_model_dir(dir: &Path) -> Result<Self, TokenizerError> {
        let path = dir.join("tokenizer.json");
        let inner = tokenizers::Tokenizer::from_file(&path)
            .map_err(|e| TokenizerError::Load { path: path.clone(), problem: e.to_string() })?;
        Ok(Self { inner })
    }

    /// Encodes text; special tokens written in the text (`<|im_start|>`) become their ids.
    pub fn encode(&self, text: &str) -> Result<Vec<u32>, TokenizerError> {
        let enc = self.inner.encode(text, false).map_err(|e| TokenizerError::Run(e.to_string()))?;
        Ok(enc.get_ids().to_vec())
    }

    /// Decodes ids to text, dropping special tokens.
    pub fn decode(&self, ids: &[u32]) -> Result<String, TokenizerError> {
        self.inner.decode(ids, true).map_err(|e| TokenizerError::Run(e.to_string()))
    }

    /// The id of a token string such as `<|im_end|>`, if the vocabulary has it.
    pub fn token_id(&self, token: &str) -> Option<u32> {
        self.inner.token_to_id(token)
    }

    /// Ids that end an assistant turn: `<|im_end|>` and `<|endoftext|>` when present.
    pub fn stop_ids(&self) -> Vec<u32> {
        ["<|im_end|>", "<|endoftext|>"].iter().filter_map(|t| self.token_id(t)).collect()
    }
}

/// Turns a growing list of ids into text pieces as they become printable: a piece is released
/// only once it does not end inside a multi-byte character.
pub struct TextStream<'a> {
    tokenizer: &'a Tokenizer,
    ids: Vec<u32>,
    printed: usize,
}

impl<'a> TextStream<'a> {
    /// A stream with nothing printed yet.
    pub fn new(tokenizer: &'a Tokenizer) -> Self {
        Self { tokenizer, ids: Vec::new(), printed: 0 }
    }

    /// Adds one id; returns the newly printable text, if any.
    pub fn push(&mut self, id: u32) -> Result<Option<String>, TokenizerError> {
        self.ids.push(id);
        let text = self.tokenizer.decode(&self.ids)?;
        if text.ends_with('\u{FFFD}') || text.len() <= self.printed || !text.is_char_boundary(self.printed) {
            return Ok(None);
        }
        let piece = text[self.printed..].to_owned();
        self.printed = text.len();
        Ok(Some(piece))
    }
}
