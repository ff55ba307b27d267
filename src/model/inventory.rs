//! Every tensor of a Qwen2 / Qwen2.5-VL checkpoint, computed from its `config.json` alone
//! (names in the on-disk HF layout, shapes, and what kind of module owns them). Used to size
//! models without loading weights (`medqlora inspect`) and, later, to count LoRA parameters.

use super::config::{ConfigError, TextConfig};
use super::text::module_matches;
use crate::quant::nf4::NESTED_BLOCKSIZE;
use serde::Deserialize;
use std::path::Path;

/// The vision tower numbers of a Qwen2.5-VL `vision_config` (only what sizes need).
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct VisionConfig {
    /// Transformer blocks (32 for 7B).
    pub depth: usize,
    /// Width (1280 for 7B; read it from the config, the class default is wrong).
    pub hidden_size: usize,
    /// Gated MLP width (3420 for 7B).
    pub intermediate_size: usize,
    /// Merger output width = the LM's hidden size.
    pub out_hidden_size: usize,
    /// Spatial patch (14).
    pub patch_size: usize,
    /// Frames per temporal patch (2).
    #[serde(default = "two")]
    pub temporal_patch_size: usize,
    /// Patches merged per side (2).
    #[serde(default = "two")]
    pub spatial_merge_size: usize,
    /// Image channels (3).
    #[serde(default = "three", alias = "in_chans")]
    pub in_channels: usize,
}

fn two() -> usize {
    2
}
fn three() -> usize {
    3
}

/// What owns a tensor.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TensorKind {
    /// The weight of a linear layer (quantizable, LoRA-targetable).
    Linear,
    /// A linear layer's bias.
    Bias,
    /// Norm scale.
    Norm,
    /// Token embedding table.
    Embedding,
    /// The vision patch-embedding convolution.
    Conv,
}

/// One tensor of the inventory.
#[derive(Debug, Clone, PartialEq)]
pub struct TensorSpec {
    /// HF name as stored on disk (`model.layers.0.self_attn.q_proj.weight`).
    pub name: String,
    /// Shape.
    pub shape: Vec<usize>,
    /// Owner kind.
    pub kind: TensorKind,
}

impl TensorSpec {
    /// Number of elements.
    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }
}

/// Reads the `vision_config` of a Qwen2.5-VL `config.json`, if there is one.
pub fn vision_config(path: &Path) -> Result<Option<VisionConfig>, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read { path: path.to_owned(), source })?;
    let v: serde_json::Value = serde_json::from_str(&text).map_err(|source| ConfigError::Parse { path: path.to_owned(), source })?;
    match v.get("vision_config") {
        None => Ok(None),
        Some(vc) => serde_json::from_value(vc.clone())
            .map(Some)
            .map_err(|source| ConfigError::Parse { path: path.to_owned(), source }),
    }
}

fn push_linear(out: &mut Vec<TensorSpec>, module: &str, o: usize, i: usize, bias: bool) {
    out.push(TensorSpec { name: format!("{module}.weight"), shape: vec![o, i], kind: TensorKind::Linear });
    if bias {
        out.push(TensorSpec { name: format!("{module}.bias"), shape: vec![o], kind: TensorKind::Bias });
    }
}

fn push_norm(out: &mut Vec<TensorSpec>, module: &str, n: usize) {
    out.push(TensorSpec { name: format!("{module}.weight"), shape: vec![n], kind: TensorKind::Norm });
}

/// All tensors of the language model (`Qwen2ForCausalLM` / Qwen2.5-VL's decoder).
pub fn text_tensors(c: &TextConfig) -> Vec<TensorSpec> {
    let (h, q, kv, i) = (c.hidden_size, c.num_attention_heads * c.head_dim, c.kv_dim(), c.intermediate_size);
    let mut out = vec![TensorSpec { name: "model.embed_tokens.weight".into(), shape: vec![c.vocab_size, h], kind: TensorKind::Embedding }];
    for l in 0..c.num_hidden_layers {
        let p = format!("model.layers.{l}");
        push_norm(&mut out, &format!("{p}.input_layernorm"), h);
        push_linear(&mut out, &format!("{p}.self_attn.q_proj"), q, h, true);
        push_linear(&mut out, &format!("{p}.self_attn.k_proj"), kv, h, true);
        push_linear(&mut out, &format!("{p}.self_attn.v_proj"), kv, h, true);
        push_linear(&mut out, &format!("{p}.self_attn.o_proj"), h, q, false);
        push_norm(&mut out, &format!("{p}.post_attention_layernorm"), h);
        push_linear(&mut out, &format!("{p}.mlp.gate_proj"), i, h, false);
        push_linear(&mut out, &format!("{p}.mlp.up_proj"), i, h, false);
        push_linear(&mut out, &format!("{p}.mlp.down_proj"), h, i, false);
    }
    push_norm(&mut out, "model.norm", h);
    if !c.tie_word_embeddings {
        push_linear(&mut out, "lm_head", c.vocab_size, h, false);
    }
    out
}

/// All tensors of the Qwen2.5-VL vision tower and merger
/// (transformers `models/qwen2_5_vl/modeling_qwen2_5_vl.py::Qwen2_5_VisionTransformerPretrainedModel`).
pub fn vision_tensors(v: &VisionConfig) -> Vec<TensorSpec> {
    let (h, i) = (v.hidden_size, v.intermediate_size);
    let mut out = vec![TensorSpec {
        name: "visual.patch_embed.proj.weight".into(),
        shape: vec![h, v.in_channels, v.temporal_patch_size, v.patch_size, v.patch_size],
        kind: TensorKind::Conv,
    }];
    for b in 0..v.depth {
        let p = format!("visual.blocks.{b}");
        push_norm(&mut out, &format!("{p}.norm1"), h);
        push_norm(&mut out, &format!("{p}.norm2"), h);
        push_linear(&mut out, &format!("{p}.attn.qkv"), 3 * h, h, true);
        push_linear(&mut out, &format!("{p}.attn.proj"), h, h, true);
        push_linear(&mut out, &format!("{p}.mlp.gate_proj"), i, h, true);
        push_linear(&mut out, &format!("{p}.mlp.up_proj"), i, h, true);
        push_linear(&mut out, &format!("{p}.mlp.down_proj"), h, i, true);
    }
    let merged = h * v.spatial_merge_size * v.spatial_merge_size;
    push_norm(&mut out, "visual.merger.ln_q", h);
    push_linear(&mut out, "visual.merger.mlp.0", merged, merged, true);
    push_linear(&mut out, "visual.merger.mlp.2", v.out_hidden_size, merged, true);
    out
}

/// How a model's weights are held on the device.
#[derive(Debug, Clone, PartialEq)]
pub enum WeightFormat {
    /// Every tensor in bf16.
    Bf16,
    /// Linear weights in NF4 (skipped modules and everything else in bf16).
    Nf4 {
        /// Elements per absmax block.
        blocksize: usize,
        /// Double-quantized scales.
        double_quant: bool,
        /// Modules kept dense.
        skip: Vec<String>,
    },
}

/// Bytes of one tensor in `format`.
pub fn tensor_bytes(t: &TensorSpec, format: &WeightFormat) -> usize {
    match format {
        WeightFormat::Nf4 { blocksize, double_quant, skip }
            if t.kind == TensorKind::Linear
                && !skip.iter().any(|p| module_matches(t.name.trim_end_matches(".weight"), p)) =>
        {
            let n = t.numel();
            let blocks = n.div_ceil(*blocksize);
            let scales = if *double_quant { blocks + 4 * blocks.div_ceil(NESTED_BLOCKSIZE) + 4 } else { 4 * blocks };
            n.div_ceil(2) + scales
        }
        _ => 2 * t.numel(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn qwen25_vl_7b_counts_match_the_published_model() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tools/configs/qwen2.5-vl-7b-instruct.json");
        let text = TextConfig::from_file(&path).unwrap();
        let vision = vision_config(&path).unwrap().expect("vision_config");
        assert_eq!(vision.hidden_size, 1280);
        let count = |v: &[TensorSpec]| v.iter().map(TensorSpec::numel).sum::<usize>();
        let (t, v) = (text_tensors(&text), vision_tensors(&vision));
        assert_eq!(count(&t), 7_615_616_512);
        assert_eq!(count(&v), 676_550_144);
        let bf16: usize = t.iter().chain(&v).map(|s| tensor_bytes(s, &WeightFormat::Bf16)).sum();
        assert_eq!(bf16, 2 * 8_292_166_656);
        // NF4: 0.5 byte per linear weight + 1 byte per 64 (u8 scale) + f32 per 256 blocks.
        let nf4 = WeightFormat::Nf4 { blocksize: 64, double_quant: true, skip: vec!["lm_head".into()] };
        let q = t.iter().find(|s| s.name == "model.layers.0.mlp.up_proj.weight").unwrap();
        assert_eq!(tensor_bytes(q, &nf4), 18944 * 3584 / 2 + 18944 * 3584 / 64 + 4 * (18944 * 3584 / 64 / 256) + 4);
        let head = t.iter().find(|s| s.name == "lm_head.weight").unwrap();
        assert_eq!(tensor_bytes(head, &nf4), 2 * 152064 * 3584, "lm_head stays bf16");
    }

    #[test]
    fn inventory_names_match_a_real_checkpoint() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/qwen2_tiny");
        let c = TextConfig::from_dir(&dir).unwrap();
        let store = crate::model::WeightStore::open(&dir).unwrap();
        let inv = text_tensors(&c);
        let mut names: Vec<&str> = inv.iter().map(|t| t.name.as_str()).collect();
        names.sort_unstable();
        assert_eq!(names, store.names());
        for t in &inv {
            assert_eq!(store.meta(&t.name).unwrap().1, t.shape, "{}", t.name);
        }
    }
}
