//! Hugging Face `config.json` for Qwen2 / Qwen2.5 (`Qwen2ForCausalLM`) and the text part of
//! Qwen2.5-VL. Unknown keys are tolerated: HF adds new ones every release.
//!
//! transformers 4.x writes `rope_theta` / `rope_scaling` at the top level; transformers 5.x
//! writes `rope_parameters`; Qwen2.5-VL nests the language model under `text_config`
//! (5.x) or keeps it at the top (4.x). All of these resolve to one [`TextConfig`].

use serde::Deserialize;
use std::path::{Path, PathBuf};

/// Errors reading or validating a model's `config.json`.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read model config {path}: {source}. Pass --model the folder that holds the Hugging Face config.json")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("model config {path} is not valid JSON for a Qwen2 model: {source}")]
    Parse { path: PathBuf, source: serde_json::Error },
    #[error("model config {path}: {problem}")]
    Invalid { path: PathBuf, problem: String },
}

/// The decoder (language model) configuration, already resolved and validated.
#[derive(Debug, Clone, PartialEq)]
pub struct TextConfig {
    /// Vocabulary size (rows of `embed_tokens` and `lm_head`).
    pub vocab_size: usize,
    /// Model width.
    pub hidden_size: usize,
    /// Width of the gated MLP.
    pub intermediate_size: usize,
    /// Number of decoder layers.
    pub num_hidden_layers: usize,
    /// Query heads.
    pub num_attention_heads: usize,
    /// Key/value heads (grouped-query attention).
    pub num_key_value_heads: usize,
    /// Per-head width (`hidden_size / num_attention_heads` unless the config says otherwise).
    pub head_dim: usize,
    /// RMSNorm epsilon.
    pub rms_norm_eps: f64,
    /// RoPE base frequency.
    pub rope_theta: f64,
    /// M-RoPE split of the rotary half-dimension into (temporal, height, width) sections;
    /// `None` for plain Qwen2 (all three position rows are then equal anyway).
    pub mrope_section: Option<Vec<usize>>,
    /// Longest position the model was trained for (informational; no hard limit here).
    pub max_position_embeddings: usize,
    /// `lm_head` shares `embed_tokens` weights.
    pub tie_word_embeddings: bool,
    /// Token ids that end generation (from `eos_token_id`, a number or a list).
    pub eos_token_ids: Vec<u32>,
    /// dtype the checkpoint was saved in (`torch_dtype` / `dtype`), e.g. "bfloat16".
    pub checkpoint_dtype: Option<String>,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum OneOrMany {
    One(u32),
    Many(Vec<u32>),
}

#[derive(Deserialize, Default)]
struct RopeParams {
    rope_theta: Option<f64>,
    mrope_section: Option<Vec<usize>>,
    #[serde(rename = "type")]
    kind: Option<String>,
    rope_type: Option<String>,
}

/// The raw JSON as HF writes it; every field optional so that errors can name what is missing.
#[derive(Deserialize, Default)]
struct RawConfig {
    architectures: Option<Vec<String>>,
    model_type: Option<String>,
    vocab_size: Option<usize>,
    hidden_size: Option<usize>,
    intermediate_size: Option<usize>,
    num_hidden_layers: Option<usize>,
    num_attention_heads: Option<usize>,
    num_key_value_heads: Option<usize>,
    head_dim: Option<usize>,
    rms_norm_eps: Option<f64>,
    rope_theta: Option<f64>,
    rope_scaling: Option<RopeParams>,
    rope_parameters: Option<RopeParams>,
    max_position_embeddings: Option<usize>,
    tie_word_embeddings: Option<bool>,
    eos_token_id: Option<OneOrMany>,
    torch_dtype: Option<String>,
    dtype: Option<String>,
    hidden_act: Option<String>,
    use_sliding_window: Option<bool>,
    text_config: Option<Box<RawConfig>>,
}

impl TextConfig {
    /// Reads `<dir>/config.json`.
    pub fn from_dir(dir: &Path) -> Result<Self, ConfigError> {
        Self::from_file(&dir.join("config.json"))
    }

    /// Reads and validates one `config.json`.
    pub fn from_file(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path)
            .map_err(|source| ConfigError::Read { path: path.to_owned(), source })?;
        Self::from_json(&text, path)
    }

    /// Parses config JSON text; `path` is only used in error messages.
    pub fn from_json(text: &str, path: &Path) -> Result<Self, ConfigError> {
        let raw: RawConfig = serde_json::from_str(text)
            .map_err(|source| ConfigError::Parse { path: path.to_owned(), source })?;
        resolve(raw).map_err(|problem| ConfigError::Invalid { path: path.to_owned(), problem })
    }

    /// Width of the key/value projections (`num_key_value_heads * head_dim`).
    pub fn kv_dim(&self) -> usize {
        self.num_key_value_heads * self.head_dim
    }
}

fn resolve(mut top: RawConfig) -> Result<TextConfig, String> {
    if let Some(arch) = top.architectures.as_ref().and_then(|a| a.first()) {
        if !arch.starts_with("Qwen2") {
            return Err(format!(
                "architecture {arch} is not supported; medqlora runs Qwen2 / Qwen2.5 / Qwen2.5-VL checkpoints"
            ));
        }
    }
    let top_eos = top.eos_token_id.take();
    let top_tie = top.tie_word_embeddings;
    let top_dtype = top.dtype.clone().or(top.torch_dtype.clone());
    let vl = top.model_type.as_deref().is_some_and(|m| m.contains("_vl"));
    // Qwen2.5-VL (transformers >= 4.52 / 5.x) keeps the decoder under text_config.
    let mut raw = match top.text_config {
        Some(text) if text.hidden_size.is_some() => *text,
        _ => RawConfig { text_config: None, ..top },
    };
    let need = |v: Option<usize>, key: &str| v.ok_or_else(|| format!("missing key \"{key}\""));
    let hidden_size = need(raw.hidden_size, "hidden_size")?;
    let num_attention_heads = need(raw.num_attention_heads, "num_attention_heads")?;
    let num_key_value_heads = raw.num_key_value_heads.unwrap_or(num_attention_heads);
    if num_attention_heads == 0 || num_key_value_heads == 0 || num_attention_heads % num_key_value_heads != 0 {
        return Err(format!(
            "num_attention_heads ({num_attention_heads}) must be a positive multiple of num_key_value_heads ({num_key_value_heads})"
        ));
    }
    let head_dim = match raw.head_dim {
        Some(h) => h,
        None if hidden_size % num_attention_heads == 0 => hidden_size / num_attention_heads,
        None => return Err(format!("hidden_size {hidden_size} is not divisible by num_attention_heads {num_attention_heads}")),
    };
    if head_dim % 2 != 0 {
        return Err(format!("head_dim {head_dim} must be even for rotary embeddings"));
    }
    if let Some(act) = raw.hidden_act.as_deref() {
        if act != "silu" {
            return Err(format!("hidden_act \"{act}\" is not supported (Qwen2 uses \"silu\")"));
        }
    }
    if raw.use_sliding_window == Some(true) {
        return Err("use_sliding_window = true is not supported (Qwen2.5 releases set it false)".into());
    }
    let rope = raw.rope_parameters.take().or(raw.rope_scaling.take()).unwrap_or_default();
    if let Some(kind) = rope.rope_type.as_deref().or(rope.kind.as_deref()) {
        if !matches!(kind, "default" | "mrope") {
            return Err(format!("rope type \"{kind}\" is not supported (only default and mrope)"));
        }
    }
    let rope_theta = rope.rope_theta.or(raw.rope_theta).unwrap_or(10_000.0);
    let mrope_section = rope.mrope_section.clone();
    if let Some(sec) = &mrope_section {
        if sec.len() != 3 || sec.iter().sum::<usize>() * 2 != head_dim {
            return Err(format!(
                "mrope_section {sec:?} must have three entries summing to head_dim/2 = {}",
                head_dim / 2
            ));
        }
    } else if vl {
        return Err("a Qwen2.5-VL config needs rope_scaling.mrope_section".into());
    }
    let eos_token_ids = match raw.eos_token_id.take().or(top_eos) {
        Some(OneOrMany::One(id)) => vec![id],
        Some(OneOrMany::Many(ids)) => ids,
        None => Vec::new(),
    };
    Ok(TextConfig {
        vocab_size: need(raw.vocab_size, "vocab_size")?,
        hidden_size,
        intermediate_size: need(raw.intermediate_size, "intermediate_size")?,
        num_hidden_layers: need(raw.num_hidden_layers, "num_hidden_layers")?,
        num_attention_heads,
        num_key_value_heads,
        head_dim,
        rms_norm_eps: raw.rms_norm_eps.unwrap_or(1e-6),
        rope_theta,
        mrope_section,
        max_position_embeddings: raw.max_position_embeddings.unwrap_or(32_768),
        tie_word_embeddings: raw.tie_word_embeddings.or(top_tie).unwrap_or(false),
        eos_token_ids,
        checkpoint_dtype: raw.dtype.or(raw.torch_dtype).or(top_dtype),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(json: &str) -> Result<TextConfig, ConfigError> {
        TextConfig::from_json(json, Path::new("config.json"))
    }

    #[test]
    fn qwen2_v4_layout() {
        let c = parse(r#"{"architectures":["Qwen2ForCausalLM"],"vocab_size":151936,"hidden_size":896,
            "intermediate_size":4864,"num_hidden_layers":24,"num_attention_heads":14,"num_key_value_heads":2,
            "rms_norm_eps":1e-6,"rope_theta":1000000.0,"tie_word_embeddings":true,"eos_token_id":151645,
            "torch_dtype":"bfloat16","some_new_hf_key":{"x":1}}"#).unwrap();
        assert_eq!(c.head_dim, 64);
        assert_eq!(c.kv_dim(), 128);
        assert_eq!(c.rope_theta, 1e6);
        assert!(c.tie_word_embeddings);
        assert_eq!(c.eos_token_ids, vec![151645]);
        assert_eq!(c.mrope_section, None);
    }

    #[test]
    fn qwen25_vl_v5_layout() {
        let c = parse(r#"{"architectures":["Qwen2_5_VLForConditionalGeneration"],"model_type":"qwen2_5_vl",
            "eos_token_id":[151645,151643],
            "text_config":{"vocab_size":152064,"hidden_size":3584,"intermediate_size":18944,
            "num_hidden_layers":28,"num_attention_heads":28,"num_key_value_heads":4,"rms_norm_eps":1e-6,
            "rope_parameters":{"rope_type":"default","rope_theta":1000000.0,"mrope_section":[16,24,24]}},
            "vision_config":{"hidden_size":1280}}"#).unwrap();
        assert_eq!(c.head_dim, 128);
        assert_eq!(c.mrope_section, Some(vec![16, 24, 24]));
        assert_eq!(c.eos_token_ids, vec![151645, 151643]);
        assert!(!c.tie_word_embeddings);
    }

    #[test]
    fn errors_name_the_key() {
        let e = parse(r#"{"hidden_size":64,"num_attention_heads":4}"#).unwrap_err().to_string();
        assert!(e.contains("intermediate_size") || e.contains("vocab_size"), "{e}");
        let e = parse(r#"{"architectures":["LlamaForCausalLM"]}"#).unwrap_err().to_string();
        assert!(e.contains("LlamaForCausalLM"), "{e}");
        let e = parse(r#"{"vocab_size":10,"hidden_size":64,"intermediate_size":8,"num_hidden_layers":1,
            "num_attention_heads":4,"num_key_value_heads":3}"#).unwrap_err().to_string();
        assert!(e.contains("num_key_value_heads"), "{e}");
        let e = parse("{not json").unwrap_err().to_string();
        assert!(e.contains("config.json"), "{e}");
    }
}
