//! The Qwen2 / Qwen2.5 decoder and causal-LM head. Follows transformers
//! `models/qwen2/modeling_qwen2.py` (`Qwen2DecoderLayer`, `Qwen2Model`, `Qwen2ForCausalLM`);
//! the same module is the language model of Qwen2.5-VL
//! (`models/qwen2_5_vl/modeling_qwen2_5_vl.py::Qwen2_5_VLTextModel`), which differs only in
//! taking 3-D (M-RoPE) position ids and, later, image embeddings spliced into the input.
//!
//! Parameter paths are the HF ones: `model.layers.3.self_attn.q_proj.weight`.

use super::attention::{Attention, AttentionInputs};
use super::config::TextConfig;
use super::embedding::Embedding;
use super::kv_cache::KvCache;
use super::linear::{Linear, OutputUse};
use super::load::{LoadError, WeightStore};
use super::mlp::Mlp;
use super::norm::RmsNorm;
use super::rope::{PositionIds, Rotary};
use crate::lora::targets::is_targeted;
use crate::lora::{LoraAdapter, LoraSpec};
use crate::quant::{bnb_io, nf4};
use burn::module::Module;
use burn::tensor::{backend::Backend, Bool, Int, Tensor, TensorData};

/// One pre-norm decoder block: attention and MLP, each with a residual connection.
#[derive(Module, Debug)]
pub struct DecoderLayer<B: Backend> {
    /// Norm before attention.
    pub input_layernorm: RmsNorm<B>,
    /// Grouped-query self-attention.
    pub self_attn: Attention<B>,
    /// Norm before the MLP.
    pub post_attention_layernorm: RmsNorm<B>,
    /// SwiGLU feed-forward.
    pub mlp: Mlp<B>,
}

impl<B: Backend> DecoderLayer<B> {
    /// `x: [batch, seq, hidden] -> [batch, seq, hidden]`.
    pub fn forward(&self, x: Tensor<B, 3>, inputs: &AttentionInputs<'_, B>, cache: Option<(&mut KvCache<B>, usize)>) -> Tensor<B, 3> {
        self.forward_for(x, inputs, cache, OutputUse::Value)
    }

    /// [`Self::forward`] whose output is read as `output` says: a checkpointed backward's
    /// recompute passes [`OutputUse::TapeOnly`] and gets the same gradients from an output
    /// whose value is undefined (see [`OutputUse`]).
    pub fn forward_for(&self, x: Tensor<B, 3>, inputs: &AttentionInputs<'_, B>, cache: Option<(&mut KvCache<B>, usize)>, output: OutputUse) -> Tensor<B, 3> {
        let h = x.clone() + self.self_attn.forward(self.input_layernorm.forward(x), inputs, cache);
        h.clone() + self.mlp.forward_for(self.post_attention_layernorm.forward(h), output)
    }

    /// The seven projections with their names relative to the layer (`self_attn.q_proj` …).
    pub fn linears(&self) -> [(&'static str, &Linear<B>); 7] {
        let (a, m) = (&self.self_attn, &self.mlp);
        [
            ("self_attn.q_proj", &a.q_proj),
            ("self_attn.k_proj", &a.k_proj),
            ("self_attn.v_proj", &a.v_proj),
            ("self_attn.o_proj", &a.o_proj),
            ("mlp.gate_proj", &m.gate_proj),
            ("mlp.up_proj", &m.up_proj),
            ("mlp.down_proj", &m.down_proj),
        ]
    }

    /// [`Self::linears`], mutably.
    pub fn linears_mut(&mut self) -> [(&'static str, &mut Linear<B>); 7] {
        let (a, m) = (&mut self.self_attn, &mut self.mlp);
        [
            ("self_attn.q_proj", &mut a.q_proj),
            ("self_attn.k_proj", &mut a.k_proj),
            ("self_attn.v_proj", &mut a.v_proj),
            ("self_attn.o_proj", &mut a.o_proj),
            ("mlp.gate_proj", &mut m.gate_proj),
            ("mlp.up_proj", &mut m.up_proj),
            ("mlp.down_proj", &mut m.down_proj),
        ]
    }
}

/// `Qwen2Model`: embeddings, decoder layers, final norm.
#[derive(Module, Debug)]
pub struct Qwen2Model<B: Backend> {
    /// `[vocab, hidden]`, on the device when tied to the head, else in host memory.
    pub embed_tokens: Embedding<B>,
    /// The decoder stack.
    pub layers: Vec<DecoderLayer<B>>,
    /// Final norm.
    pub norm: RmsNorm<B>,
    /// RoPE tables' inputs (not parameters).
    #[module(skip)]
    pub rotary: Rotary,
}

/// `Qwen2ForCausalLM`: the decoder plus the vocabulary projection.
#[derive(Module, Debug)]
pub struct Qwen2ForCausalLM<B: Backend> {
    /// The decoder.
    pub model: Qwen2Model<B>,
    /// `[vocab, hidden]`; `None` when tied to `model.embed_tokens`.
    pub lm_head: Option<Linear<B>>,
    /// The resolved configuration.
    #[module(skip)]
    pub config: TextConfig,
}

/// Outputs of a full forward.
pub struct ForwardOutput<B: Backend> {
    /// `[batch, seq, vocab]`.
    pub logits: Tensor<B, 3>,
    /// Embeddings and the output of every layer (before the final norm), as in HF's
    /// `output_hidden_states` except that HF replaces the last entry with the normed one.
    pub hidden_states: Vec<Tensor<B, 3>>,
}

/// `true` where query `i` (absolute position `past + i`) must not see key `j`:
/// `[1, 1, 1, seq, past + seq]`.
pub fn causal_mask<B: Backend>(seq: usize, past: usize, device: &B::Device) -> Tensor<B, 5, Bool> {
    let total = past + seq;
    let mask: Vec<bool> = (0..seq).flat_map(|i| (0..total).map(move |j| j > past + i)).collect();
    Tensor::from_data(TensorData::new(mask, [1, 1, 1, seq, total]), device)
}

/// Quantize dense linear weights to NF4 while loading (QLoRA's frozen base).
#[derive(Debug, Clone, PartialEq)]
pub struct QuantizeOnLoad {
    /// Elements per absmax block (bitsandbytes default 64).
    pub blocksize: usize,
    /// Double-quantize the block scales (QLoRA's `bnb_4bit_use_double_quant`).
    pub double_quant: bool,
    /// Modules kept dense, matched as whole dotted-path components (`lm_head`, `visual.merger`).
    pub skip: Vec<String>,
}

impl Default for QuantizeOnLoad {
    fn default() -> Self {
        Self { blocksize: 64, double_quant: true, skip: vec!["lm_head".into()] }
    }
}

/// True when `pattern` names `module` or one of its parents / a run of its path components.
pub fn module_matches(module: &str, pattern: &str) -> bool {
    format!(".{module}.").contains(&format!(".{pattern}."))
}

impl<B: Backend> Qwen2ForCausalLM<B> {
    /// Loads every tensor by its HF name, checking shapes against `config`. Linear weights
    /// stored as bitsandbytes NF4 stay NF4.
    pub fn load(config: &TextConfig, store: &WeightStore, device: &B::Device) -> Result<Self, LoadError> {
        Self::load_with(config, store, device, None)
    }

    /// [`Self::load_with`] for a model that stays loaded (training, serving): the weights go
    /// to the GPU pool's persistent buffers (exact sizes, apart from activations), and what
    /// loading freed (upload staging, f32-to-bf16 casts) is handed back to the driver. Without
    /// this the 7B shape kept 14.2 GB reserved for 6.8 GB of live tensors: the weights shared
    /// pool pages with freed temporaries, so no page was whole-free.
    pub fn load_resident(
        config: &TextConfig,
        store: &WeightStore,
        device: &B::Device,
        quantize: Option<&QuantizeOnLoad>,
    ) -> Result<Self, LoadError> {
        let model = B::memory_persistent_allocations(device, (), |_| Self::load_with(config, store, device, quantize));
        B::memory_cleanup(device);
        model
    }

    /// [`Self::load`], quantizing dense linear weights to NF4 when `quantize` is given.
    pub fn load_with(
        config: &TextConfig,
        store: &WeightStore,
        device: &B::Device,
        quantize: Option<&QuantizeOnLoad>,
    ) -> Result<Self, LoadError> {
        let c = config;
        let (hd, kv, inter, v) = (c.hidden_size, c.kv_dim(), c.intermediate_size, c.vocab_size);
        let q_dim = c.num_attention_heads * c.head_dim;
        let linear = |name: &str, out: usize, inp: usize, bias: bool| -> Result<Linear<B>, LoadError> {
            let b = if bias { Some(store.tensor::<B, 1>(&format!("{name}.bias"), [out], device)?) } else { None };
            if bnb_io::is_nf4(store, name) {
                return Ok(Linear::nf4(&bnb_io::read_nf4(store, name, [out, inp])?, b, device));
            }
            let weight_name = format!("{name}.weight");
            match quantize {
                Some(q) if !q.skip.iter().any(|p| module_matches(name, p)) => {
                    let data = store.data(&weight_name, &[out, inp])?.convert::<f32>();
                    let values = data.as_slice::<f32>().expect("converted to f32");
                    let t = nf4::quantize(values, &[out, inp], q.blocksize, q.double_quant)
                        .map_err(|e| LoadError::Quant { name: weight_name.clone(), problem: e.to_string() })?;
                    Ok(Linear::nf4(&t, b, device))
                }
                _ => Ok(Linear::frozen(store.tensor::<B, 2>(&weight_name, [out, inp], device)?, b)),
            }
        };
        let norm = |name: &str| -> Result<RmsNorm<B>, LoadError> {
            Ok(RmsNorm::frozen(store.tensor::<B, 1>(&format!("{name}.weight"), [hd], device)?, c.rms_norm_eps))
        };
        // Qwen2.5-VL checkpoints written by transformers >= 4.52 nest the decoder under
        // model.language_model; older ones (and every Qwen2) keep it at model.
        let prefix = if store.contains("model.language_model.embed_tokens.weight") { "model.language_model" } else { "model" };
        let mut layers = Vec::with_capacity(c.num_hidden_layers);
        for i in 0..c.num_hidden_layers {
            let p = format!("{prefix}.layers.{i}");
            layers.push(DecoderLayer {
                input_layernorm: norm(&format!("{p}.input_layernorm"))?,
                self_attn: Attention {
                    q_proj: linear(&format!("{p}.self_attn.q_proj"), q_dim, hd, true)?,
                    k_proj: linear(&format!("{p}.self_attn.k_proj"), kv, hd, true)?,
                    v_proj: linear(&format!("{p}.self_attn.v_proj"), kv, hd, true)?,
                    o_proj: linear(&format!("{p}.self_attn.o_proj"), hd, q_dim, false)?,
                    num_heads: c.num_attention_heads,
                    num_kv_heads: c.num_key_value_heads,
                    head_dim: c.head_dim,
                },
                post_attention_layernorm: norm(&format!("{p}.post_attention_layernorm"))?,
                mlp: Mlp {
                    gate_proj: linear(&format!("{p}.mlp.gate_proj"), inter, hd, false)?,
                    up_proj: linear(&format!("{p}.mlp.up_proj"), inter, hd, false)?,
                    down_proj: linear(&format!("{p}.mlp.down_proj"), hd, inter, false)?,
                },
            });
        }
        let embed_name = format!("{prefix}.embed_tokens.weight");
        let embed_tokens = if c.tie_word_embeddings {
            Embedding::on_device(store.tensor::<B, 2>(&embed_name, [v, hd], device)?)
        } else {
            Embedding::on_host(store.data(&embed_name, &[v, hd])?)
        };
        // Tied checkpoints usually omit lm_head.weight; some still store a copy.
        let lm_head = if c.tie_word_embeddings { None } else { Some(linear("lm_head", v, hd, false)?) };
        Ok(Self {
            model: Qwen2Model {
                embed_tokens,
                layers,
                norm: norm(&format!("{prefix}.norm"))?,
                rotary: Rotary::new(c.head_dim, c.rope_theta, c.mrope_section.as_deref()),
            },
            lm_head,
            config: c.clone(),
        })
    }

    /// Token embeddings: `ids: [batch, seq] -> [batch, seq, hidden]`.
    pub fn embed(&self, ids: Tensor<B, 2, Int>) -> Tensor<B, 3> {
        self.model.embed_tokens.forward(ids)
    }

    /// The device the model's tensors live on.
    pub fn device(&self) -> B::Device {
        self.model.norm.weight.val().device()
    }

    /// Vocabulary projection: `[batch, seq, hidden] -> [batch, seq, vocab]`.
    pub fn project(&self, h: Tensor<B, 3>) -> Tensor<B, 3> {
        match &self.lm_head {
            Some(head) => head.forward(h),
            None => {
                let [b, s, d] = h.dims();
                let w = self.model.embed_tokens.device_weight().expect("a tied table stays on the device");
                let v = w.dims()[0];
                // The table is frozen (adapters never target it): the input gradient only.
                super::frozen_matmul::frozen_matmul_t(h.reshape([b * s, d]), w).reshape([b, s, v])
            }
        }
    }

    /// Runs the decoder on input embeddings. `embeds: [batch, seq, hidden]`; positions default
    /// to `past..past+seq` (text). With `cache`, keys/values are appended and reused.
    /// Returns the final-normed hidden states `[batch, seq, hidden]` and, when asked, every
    /// layer's input.
    pub fn decode(
        &self,
        embeds: Tensor<B, 3>,
        positions: Option<&PositionIds>,
        cache: Option<&mut KvCache<B>>,
        keep_hidden: bool,
    ) -> (Tensor<B, 3>, Vec<Tensor<B, 3>>) {
        self.decode_masked(embeds, positions, cache, keep_hidden, None)
    }

    /// [`Self::decode`] with an extra mask OR-ed into the causal one: `padding`
    /// `[batch, 1, 1, seq, past + seq]`, `true` where a query must not see a key (left padding
    /// of the decode steps of batched generation, see `generate::BatchDecoder`).
    pub fn decode_masked(
        &self,
        embeds: Tensor<B, 3>,
        positions: Option<&PositionIds>,
        mut cache: Option<&mut KvCache<B>>,
        keep_hidden: bool,
        padding: Option<&Tensor<B, 5, Bool>>,
    ) -> (Tensor<B, 3>, Vec<Tensor<B, 3>>) {
        let [b, s, _] = embeds.dims();
        let device = embeds.device();
        let past = cache.as_ref().map_or(0, |c| c.seq_len());
        let text_pos;
        let pos = match positions {
            Some(p) => p,
            None => {
                text_pos = PositionIds::text(b, s, past);
                &text_pos
            }
        };
        let (cos, sin) = self.model.rotary.cos_sin::<B>(pos, &device);
        let mask = causal_mask::<B>(s, past, &device);
        let causal_only = padding.is_none();
        let mask = match padding {
            Some(p) => mask.expand(p.dims()).bool_or(p.clone()),
            None => mask,
        };
        let inputs = AttentionInputs { cos: &cos, sin: &sin, mask: &mask, causal_only };
        let mut hidden = Vec::new();
        let mut x = embeds;
        for (i, layer) in self.model.layers.iter().enumerate() {
            if keep_hidden {
                hidden.push(x.clone());
            }
            x = layer.forward(x, &inputs, cache.as_deref_mut().map(|c| (c, i)));
        }
        if keep_hidden {
            hidden.push(x.clone());
        }
        (self.model.norm.forward(x), hidden)
    }

    /// Full forward over token ids `[batch, seq]` without a cache.
    pub fn forward(&self, ids: Tensor<B, 2, Int>, keep_hidden: bool) -> ForwardOutput<B> {
        let (h, hidden_states) = self.decode(self.embed(ids), None, None, keep_hidden);
        ForwardOutput { logits: self.project(h), hidden_states }
    }

    /// Forward through the cache; returns the logits of the last position only, `[batch, vocab]`.
    pub fn forward_cached(&self, ids: Tensor<B, 2, Int>, cache: &mut KvCache<B>) -> Tensor<B, 2> {
        let (h, _) = self.decode(self.embed(ids), None, Some(cache), false);
        let [b, s, _] = h.dims();
        self.project(h.narrow(1, s - 1, 1)).reshape([b, self.config.vocab_size])
    }

    /// Every linear layer with its HF module name (`model.layers.3.self_attn.q_proj`, `lm_head`).
    pub fn linears(&self) -> Vec<(String, &Linear<B>)> {
        let mut out = Vec::new();
        for (i, l) in self.model.layers.iter().enumerate() {
            out.extend(l.linears().into_iter().map(|(n, lin)| (format!("model.layers.{i}.{n}"), lin)));
        }
        if let Some(head) = self.lm_head.as_ref() {
            out.push(("lm_head".to_owned(), head));
        }
        out
    }

    /// [`Self::linears`], mutably.
    pub fn linears_mut(&mut self) -> Vec<(String, &mut Linear<B>)> {
        let mut out = Vec::new();
        for (i, l) in self.model.layers.iter_mut().enumerate() {
            out.extend(l.linears_mut().into_iter().map(|(n, lin)| (format!("model.layers.{i}.{n}"), lin)));
        }
        if let Some(head) = self.lm_head.as_mut() {
            out.push(("lm_head".to_owned(), head));
        }
        out
    }

    /// Puts a fresh PEFT-initialized adapter on every linear whose module name is targeted
    /// (PEFT suffix rules); returns the number of trainable parameters added.
    pub fn add_lora(&mut self, spec: &LoraSpec, targets: &[String], device: &B::Device) -> usize {
        let mut trainable = 0;
        for (name, linear) in self.linears_mut() {
            if is_targeted(&name, targets) {
                let [out, inp] = linear.dims();
                let adapter = LoraAdapter::init(inp, out, spec, device);
                trainable += adapter.num_trainable();
                linear.lora = Some(adapter);
            }
        }
        trainable
    }

    /// Logical parameters (an NF4 weight counts its `out * in` values, not its packed bytes).
    pub fn parameter_count(&self) -> usize {
        let norms: usize = self.model.layers.iter().map(|l| l.input_layernorm.weight.val().dims()[0] * 2).sum();
        let embed = self.model.embed_tokens.dims().iter().product::<usize>();
        let linears: usize = self
            .linears()
            .iter()
            .map(|(_, l)| {
                let [o, i] = l.dims();
                o * i + l.bias.as_ref().map_or(0, |b| b.val().dims()[0]) + l.lora.as_ref().map_or(0, |a| a.num_trainable())
            })
            .sum();
        embed + norms + self.model.norm.weight.val().dims()[0] + linears
    }

    /// Bytes of all weights resident on the device (NF4 layers at their packed size; an
    /// untied embedding table lives in host memory and counts 0).
    pub fn resident_bytes(&self) -> usize {
        let norm = |n: &RmsNorm<B>| n.weight.val().dims()[0] * n.weight.val().dtype().size();
        let mut total = self.model.embed_tokens.device_bytes() + norm(&self.model.norm);
        for l in &self.model.layers {
            total += norm(&l.input_layernorm) + norm(&l.post_attention_layernorm);
        }
        total + self.linears().iter().map(|(_, l)| l.resident_bytes()).sum::<usize>()
    }

    /// A fresh cache sized for this model.
    pub fn new_cache(&self) -> KvCache<B> {
        KvCache::new(self.model.layers.len())
    }
}
