//! A tiny Qwen2-architecture model the project makes itself: a Hugging Face checkpoint folder
//! (config.json, model.safetensors, tokenizer.json, tokenizer_config.json) with seeded random
//! weights and a byte-level tokenizer (256 byte tokens + the Qwen special tokens).
//!
//! It is the embedded default of `recipes/tiny-smoke.toml`: training, checkpoints, evaluation
//! and export run on it in seconds on a CPU, through exactly the code paths a real checkpoint
//! takes (it is written to disk and loaded back like one). Norms are one and biases zero as in
//! transformers; matrices are normal with std `1/sqrt(fan_in)` (embeddings std 1) rather than
//! HF's 0.02: with 0.02 a frozen random head can only produce logits within about +-1.3, so
//! adapters could never make confident predictions and the smoke run would show no learning.

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use safetensors::tensor::TensorView;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// Special tokens of the Qwen2.5(-VL) vocabulary that the chat template and the VL placeholder
/// use, in the order they get ids after the 256 byte tokens.
pub const TINY_SPECIAL_TOKENS: [&str; 6] =
    ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>", "<|image_pad|>"];

/// Shape and seed of the tiny model.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TinyModelSpec {
    /// Model width.
    #[serde(default = "d_hidden")]
    pub hidden_size: usize,
    /// MLP width.
    #[serde(default = "d_intermediate")]
    pub intermediate_size: usize,
    /// Decoder layers.
    #[serde(default = "d_layers")]
    pub num_hidden_layers: usize,
    /// Query heads.
    #[serde(default = "d_heads")]
    pub num_attention_heads: usize,
    /// Key/value heads.
    #[serde(default = "d_kv_heads")]
    pub num_key_value_heads: usize,
    /// Seed of the random weights.
    #[serde(default)]
    pub seed: u64,
}

fn d_hidden() -> usize {
    64
}
fn d_intermediate() -> usize {
    128
}
fn d_layers() -> usize {
    2
}
fn d_heads() -> usize {
    4
}
fn d_kv_heads() -> usize {
    2
}

impl Default for TinyModelSpec {
    fn default() -> Self {
        Self {
            hidden_size: d_hidden(),
            intermediate_size: d_intermediate(),
            num_hidden_layers: d_layers(),
            num_attention_heads: d_heads(),
            num_key_value_heads: d_kv_heads(),
            seed: 0,
        }
    }
}

/// Errors writing the tiny model.
#[derive(Debug, thiserror::Error)]
pub enum TinyModelError {
    #[error("tiny model: {problem}")]
    Spec { problem: String },
    #[error("cannot write the tiny model into {path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("cannot build the tiny model's {what}: {problem}")]
    Build { what: &'static str, problem: String },
}

impl TinyModelSpec {
    /// Vocabulary: bytes + specials.
    pub fn vocab_size(&self) -> usize {
        256 + TINY_SPECIAL_TOKENS.len()
    }

    fn check(&self) -> Result<(), TinyModelError> {
        let bad = |problem: String| Err(TinyModelError::Spec { problem });
        if self.num_attention_heads == 0 || self.hidden_size % self.num_attention_heads != 0 {
            return bad(format!("hidden_size {} must be a multiple of num_attention_heads {}", self.hidden_size, self.num_attention_heads));
        }
        if self.num_key_value_heads == 0 || self.num_attention_heads % self.num_key_value_heads != 0 {
            return bad(format!("num_attention_heads {} must be a multiple of num_key_value_heads {}", self.num_attention_heads, self.num_key_value_heads));
        }
        if (self.hidden_size / self.num_attention_heads) % 2 != 0 {
            return bad("head_dim (hidden_size / num_attention_heads) must be even for RoPE".into());
        }
        if self.num_hidden_layers == 0 || self.intermediate_size == 0 {
            return bad("num_hidden_layers and intermediate_size must be positive".into());
        }
        Ok(())
    }

    /// The HF `config.json` of this model.
    pub fn config_json(&self) -> serde_json::Value {
        let eos = 256 + TINY_SPECIAL_TOKENS.iter().position(|t| *t == "<|im_end|>").unwrap_or(0);
        serde_json::json!({
            "architectures": ["Qwen2ForCausalLM"],
            "model_type": "qwen2",
            "vocab_size": self.vocab_size(),
            "hidden_size": self.hidden_size,
            "intermediate_size": self.intermediate_size,
            "num_hidden_layers": self.num_hidden_layers,
            "num_attention_heads": self.num_attention_heads,
            "num_key_value_heads": self.num_key_value_heads,
            "hidden_act": "silu",
            "max_position_embeddings": 4096,
            "rms_norm_eps": 1e-6,
            "rope_theta": 10000.0,
            "tie_word_embeddings": false,
            "eos_token_id": eos,
            "torch_dtype": "float32",
            "initializer_range": 1.0 / (self.hidden_size as f64).sqrt(),
        })
    }

    /// Writes the checkpoint folder. Deterministic: the same spec gives the same bytes.
    pub fn write(&self, dir: &Path) -> Result<(), TinyModelError> {
        self.check()?;
        let io = |path: &Path| {
            let path = path.to_owned();
            move |source| TinyModelError::Io { path, source }
        };
        std::fs::create_dir_all(dir).map_err(io(dir))?;
        let put = |name: &str, bytes: &[u8]| std::fs::write(dir.join(name), bytes).map_err(io(&dir.join(name)));
        put("config.json", serde_json::to_string_pretty(&self.config_json()).unwrap_or_default().as_bytes())?;
        put("tokenizer_config.json", tokenizer_config().as_bytes())?;
        byte_level_tokenizer()?
            .save(dir.join("tokenizer.json"), false)
            .map_err(|e| TinyModelError::Build { what: "tokenizer", problem: e.to_string() })?;
        let weights = self.weights();
        let views: Vec<(String, TensorView<'_>)> = weights
            .iter()
            .map(|(name, shape, data)| {
                let view = TensorView::new(safetensors::Dtype::F32, shape.clone(), bytemuck::cast_slice(data))
                    .map_err(|e| TinyModelError::Build { what: "weights", problem: e.to_string() })?;
                Ok((name.clone(), view))
            })
            .collect::<Result<_, TinyModelError>>()?;
        let bytes = safetensors::serialize(views, None).map_err(|e| TinyModelError::Build { what: "weights", problem: e.to_string() })?;
        put("model.safetensors", &bytes)
    }

    /// `(HF name, shape, values)` for every tensor, in a fixed order.
    fn weights(&self) -> Vec<(String, Vec<usize>, Vec<f32>)> {
        let mut rng = StdRng::seed_from_u64(self.seed);
        let (h, f, v) = (self.hidden_size, self.intermediate_size, self.vocab_size());
        let hd = h / self.num_attention_heads;
        let kv = self.num_key_value_heads * hd;
        let mut out = Vec::new();
        let mut normal = |name: String, shape: Vec<usize>, std: f32| {
            let n = shape.iter().product();
            // Box-Muller: rand 0.9 has no normal distribution without rand_distr.
            let data = (0..n)
                .map(|_| {
                    let (u1, u2): (f32, f32) = (rng.random::<f32>().max(1e-12), rng.random());
                    std * (-2.0 * u1.ln()).sqrt() * (std::f32::consts::TAU * u2).cos()
                })
                .collect();
            out.push((name, shape, data));
        };
        normal("model.embed_tokens.weight".into(), vec![v, h], 1.0);
        for i in 0..self.num_hidden_layers {
            let p = format!("model.layers.{i}");
            for (n, shape) in [
                ("self_attn.q_proj", vec![h, h]),
                ("self_attn.k_proj", vec![kv, h]),
                ("self_attn.v_proj", vec![kv, h]),
                ("self_attn.o_proj", vec![h, h]),
                ("mlp.gate_proj", vec![f, h]),
                ("mlp.up_proj", vec![f, h]),
                ("mlp.down_proj", vec![h, f]),
            ] {
                let std = 1.0 / (shape[1] as f32).sqrt();
                normal(format!("{p}.{n}.weight"), shape, std);
            }
        }
        normal("lm_head.weight".into(), vec![v, h], 1.0 / (h as f32).sqrt());
        for i in 0..self.num_hidden_layers {
            let p = format!("model.layers.{i}");
            for (n, len) in [("self_attn.q_proj.bias", h), ("self_attn.k_proj.bias", kv), ("self_attn.v_proj.bias", kv)] {
                out.push((format!("{p}.{n}"), vec![len], vec![0.0; len]));
            }
            out.push((format!("{p}.input_layernorm.weight"), vec![h], vec![1.0; h]));
            out.push((format!("{p}.post_attention_layernorm.weight"), vec![h], vec![1.0; h]));
        }
        out.push(("model.norm.weight".into(), vec![h], vec![1.0; h]));
        out
    }
}

fn tokenizer_config() -> String {
    // Only what ChatTemplate and tools read: the system prompt inside the template and the
    // end-of-turn token.
    serde_json::to_string_pretty(&serde_json::json!({
        "chat_template": "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n{% endif %}<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}",
        "eos_token": "<|im_end|>",
        "pad_token": "<|endoftext|>",
        "model_max_length": 4096,
    }))
    .unwrap_or_default()
}

/// A byte-level BPE with no merges: every UTF-8 byte is one token, specials are single ids.
pub fn byte_level_tokenizer() -> Result<tokenizers::Tokenizer, TinyModelError> {
    use tokenizers::models::bpe::BPE;
    use tokenizers::pre_tokenizers::byte_level::ByteLevel;
    let build = |e: tokenizers::Error| TinyModelError::Build { what: "tokenizer", problem: e.to_string() };
    let mut alphabet: Vec<char> = ByteLevel::alphabet().into_iter().collect();
    alphabet.sort_unstable();
    let vocab: tokenizers::models::bpe::Vocab = alphabet.iter().enumerate().map(|(i, c)| (c.to_string(), i as u32)).collect();
    let bpe = BPE::builder().vocab_and_merges(vocab, Vec::new()).build().map_err(build)?;
    let mut tok = tokenizers::Tokenizer::new(bpe);
    let byte_level = ByteLevel::new(false, true, false);
    tok.with_pre_tokenizer(Some(byte_level));
    tok.with_decoder(Some(byte_level));
    let specials: Vec<tokenizers::AddedToken> =
        TINY_SPECIAL_TOKENS.iter().map(|t| tokenizers::AddedToken::from(t.to_string(), true)).collect();
    tok.add_special_tokens(&specials);
    Ok(tok)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn byte_tokenizer_round_trips_and_keeps_specials() {
        let tok = byte_level_tokenizer().unwrap();
        let text = "<|im_start|>user\nBP 120/80 mmHg, temp 37.2 °C<|im_end|>\n";
        let enc = tok.encode(text, false).unwrap();
        let ids = enc.get_ids();
        assert_eq!(ids[0], 257, "<|im_start|> is one special id after the 256 bytes");
        assert!(ids.iter().all(|&i| (i as usize) < TinyModelSpec::default().vocab_size()));
        // Bytes of "°" are two tokens: byte-level, no merges.
        assert_eq!(ids.len(), 2 + text.len() - "<|im_start|>".len() - "<|im_end|>".len());
        assert_eq!(tok.decode(ids, false).unwrap(), text);
    }

    #[test]
    fn bad_spec_is_named() {
        let spec = TinyModelSpec { num_attention_heads: 3, ..Default::default() };
        let err = spec.write(Path::new("/nonexistent/never-written")).unwrap_err().to_string();
        assert!(err.contains("num_attention_heads 3"), "{err}");
    }
}
