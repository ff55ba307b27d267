//! One micro-batch's loss and LoRA gradients, with or without per-layer gradient
//! checkpointing.
//!
//! Checkpointing (transformers' `gradient_checkpointing_enable`, one segment per decoder layer)
//! is done by hand rather than through Burn's checkpointing strategies, so that what is kept is
//! exactly one hidden state per layer: a forward without autodiff stores each layer's input;
//! the backward then walks the layers in reverse, recomputes one layer under autodiff, and
//! pulls the input gradient through it (`d/dx sum(layer(x) * g)` = the vector-Jacobian product).
//! The last layer is the exception: its one forward runs under autodiff and its tape is kept
//! through the head, so it is not computed twice.
//! The head computes the loss only on scored (assistant) rows, and with checkpointing it does
//! so `HEAD_CHUNK_ROWS` rows at a time, each chunk's forward and backward before the next: the
//! `[rows, vocab]` logits and their gradient are the largest tensors of a step (vocabulary
//! 151,936), and a chunk bounds them (Unsloth's and Liger's chunked cross-entropy do the same).
//!
//! Dropout masks are drawn from the backend RNG reseeded per layer from `(seed, layer)`, so the
//! recompute draws the forward's masks and a resumed run draws the same ones again.

use super::batches::Batch;
use super::optim::{scalar_f64, NamedTensors};
use crate::model::cross_entropy::token_nll;
use crate::model::rope::PositionIds;
use crate::model::text::causal_mask;
use crate::model::Qwen2ForCausalLM;
use crate::model::linear::{Linear, OutputUse};
use burn::module::AutodiffModule;
use burn::tensor::backend::{AutodiffBackend, Backend};
use burn::tensor::{DType, Int, Tensor, TensorData};

/// Loss of one micro-batch: the sum of token NLLs (f64 on the host) and the scored tokens.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct MicroLoss {
    /// Sum of `-log p(target)` over scored positions.
    pub nll_sum: f64,
    /// Scored positions.
    pub tokens: usize,
}

/// The PEFT names of an adapter's two tensors (`<module>.lora_A`, `<module>.lora_B`).
pub fn adapter_names(module: &str) -> [String; 2] {
    [format!("{module}.lora_A"), format!("{module}.lora_B")]
}

/// Every trainable tensor by PEFT name.
pub fn trainable<B: Backend>(model: &Qwen2ForCausalLM<B>) -> NamedTensors<B> {
    let mut out = NamedTensors::new();
    for (name, linear) in model.linears() {
        if let Some(lora) = &linear.lora {
            let [a, b] = adapter_names(&name);
            out.insert(a, lora.lora_a.val());
            out.insert(b, lora.lora_b.val());
        }
    }
    out
}

fn collect_grads<'a, B: AutodiffBackend>(
    linears: impl IntoIterator<Item = (String, &'a Linear<B>)>,
    grads: &mut B::Gradients,
    out: &mut NamedTensors<B::InnerBackend>,
) {
    for (name, linear) in linears {
        let Some(lora) = &linear.lora else { continue };
        let [a, b] = adapter_names(&name);
        for (key, param) in [(a, &lora.lora_a), (b, &lora.lora_b)] {
            if let Some(g) = param.val().grad_remove(grads) {
                let g = g.cast(DType::F32);
                match out.remove(&key) {
                    Some(acc) => out.insert(key, acc + g),
                    None => out.insert(key, g),
                };
            }
        }
    }
}

/// Scored rows whose logits are computed at once in the checkpointed step and in eval: a
/// 512-row chunk of bf16 logits over Qwen2.5's vocabulary is 156 MB, and its gradient as much
/// (the whole 2,048-token sequence would be 0.6 GB each; 1.2 GB each in f32 on the CPU).
/// 512 rather than 256: the head's two products over the vocabulary run longer per launch,
/// 3,762 against 3,735 tokens/s for the 7B step with the same peak device memory (1,024
/// rows: 3,767; H100, `bench train --head-chunk-rows`, BENCHMARKS.md, 2026-12-06).
pub const HEAD_CHUNK_ROWS: usize = 512;

/// Layers of the checkpointed backward between two hand-backs of free pool buffers (see
/// [`MicroStep::run`]): each hand-back costs the next layer its allocations again.
const CLEANUP_EVERY_LAYERS: usize = 10;

/// The scored rows of a batch: flat row indices into `[batch * seq]` and their target ids.
struct Scored {
    rows: Vec<i64>,
    targets: Vec<i64>,
}

impl Scored {
    fn of(batch: &Batch) -> Self {
        let scored: Vec<usize> = (0..batch.weights.len()).filter(|&i| batch.weights[i] > 0.0).collect();
        Self { rows: scored.iter().map(|&i| i as i64).collect(), targets: scored.iter().map(|&i| batch.targets[i]).collect() }
    }

    /// Row indices `[n]` and targets `[n, 1]` of rows `range` on `device`.
    fn upload<B: Backend>(&self, range: std::ops::Range<usize>, device: &B::Device) -> (Tensor<B, 1, Int>, Tensor<B, 2, Int>) {
        let n = range.len();
        (
            Tensor::from_data(TensorData::new(self.rows[range.clone()].to_vec(), [n]), device),
            Tensor::from_data(TensorData::new(self.targets[range].to_vec(), [n, 1]), device),
        )
    }

    /// `0..n` cut into ranges of at most `chunk` rows.
    fn chunks(&self, chunk: usize) -> impl Iterator<Item = std::ops::Range<usize>> + '_ {
        let chunk = chunk.max(1);
        (0..self.rows.len()).step_by(chunk).map(move |s| s..(s + chunk).min(self.rows.len()))
    }
}

/// The batch's token embeddings `[batch, seq, hidden]` (ids never need to be on the device).
fn embed_batch<B: Backend>(model: &Qwen2ForCausalLM<B>, batch: &Batch, device: &B::Device) -> Tensor<B, 3> {
    model.model.embed_tokens.lookup(&batch.input_ids, [batch.batch, batch.seq], device)
}

/// Sum of NLLs over the given rows: final norm, vocabulary projection, f32 cross-entropy
/// ([`token_nll`]).
/// `h: [batch, seq, hidden]` is the last layer's output (before the final norm); `rows: [n]`
/// index its flattened `[batch * seq]` rows and `targets: [n, 1]` are their next tokens.
fn head_nll<B: Backend>(model: &Qwen2ForCausalLM<B>, h: Tensor<B, 3>, rows: Tensor<B, 1, Int>, targets: Tensor<B, 2, Int>) -> Tensor<B, 1> {
    let [b, s, d] = h.dims();
    let n = rows.dims()[0];
    let h = h.reshape([b * s, d]).select(0, rows).reshape([1, n, d]);
    let logits = model.project(model.model.norm.forward(h)).reshape([n, model.config.vocab_size]);
    token_nll(logits, targets).sum()
}

fn layer_seed(seed: u64, layer: usize) -> u64 {
    seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ (layer as u64 + 1).wrapping_mul(0xD1B5_4A32_D192_ED03)
}

/// Forward + backward of one micro-batch. Gradients of `scale * nll_sum` are added into
/// `grads` (f32, by PEFT name), so that accumulating micro-batches with
/// `scale = 1 / tokens_in_step` yields the gradient of the step's mean token loss.
pub fn forward_backward<B: AutodiffBackend>(
    model: &Qwen2ForCausalLM<B>,
    batch: &Batch,
    scale: f64,
    checkpointing: bool,
    seed: u64,
    grads: &mut NamedTensors<B::InnerBackend>,
) -> MicroLoss {
    forward_backward_chunked(model, batch, scale, checkpointing, seed, HEAD_CHUNK_ROWS, grads)
}

/// [`forward_backward`] with the head's chunk size given (tests use small chunks to cover the
/// chunk boundaries on tiny batches). Only the checkpointed path chunks the head.
pub fn forward_backward_chunked<B: AutodiffBackend>(
    model: &Qwen2ForCausalLM<B>,
    batch: &Batch,
    scale: f64,
    checkpointing: bool,
    seed: u64,
    head_chunk_rows: usize,
    grads: &mut NamedTensors<B::InnerBackend>,
) -> MicroLoss {
    MicroStep { model, batch, scale, checkpointing, seed, head_chunk_rows }.run(&mut |_| {}, grads)
}

/// Where a checkpointed micro-step is when [`forward_backward_observed`] calls its observer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// The tape-free forward through every layer has been queued.
    Forward,
    /// The head's loss and gradient (all chunks) have been queued.
    Head,
    /// Layer `i` has been recomputed and its gradients queued (layers run last to first).
    Layer(usize),
}

/// [`forward_backward_chunked`] calling `observe` after each [`Phase`] of the checkpointed path
/// (`bench train --profile` synchronizes there and reads the time and the device memory).
#[allow(clippy::too_many_arguments)]
pub fn forward_backward_observed<B: AutodiffBackend>(
    model: &Qwen2ForCausalLM<B>,
    batch: &Batch,
    scale: f64,
    checkpointing: bool,
    seed: u64,
    head_chunk_rows: usize,
    observe: &mut (dyn FnMut(Phase) + Send),
    grads: &mut NamedTensors<B::InnerBackend>,
) -> MicroLoss {
    MicroStep { model, batch, scale, checkpointing, seed, head_chunk_rows }.run(observe, grads)
}

/// Everything one micro-step computes on, apart from its observer and gradient sink.
struct MicroStep<'a, B: AutodiffBackend> {
    model: &'a Qwen2ForCausalLM<B>,
    batch: &'a Batch,
    scale: f64,
    checkpointing: bool,
    seed: u64,
    head_chunk_rows: usize,
}

impl<B: AutodiffBackend> MicroStep<'_, B> {
    /// The micro-step with every device allocation in the GPU runtime's exact-size pool
    /// (`memory_persistent_allocations`; CPU backends just run it). The default pools cut
    /// allocations out of pages of 1/16 to 1/4 of the card (2.2 and 8.8 GB on an H200): one
    /// 78 MB `[2048, 18944]` temporary beyond what a page holds took a whole new 2.2 GB page,
    /// and pages are never returned. A step allocates the same sizes in every layer, so
    /// exact-size buffers are reused layer after layer. Each phase (tape-free forward, head,
    /// layers' backward) also allocates sizes the others do not, and a free exact-size buffer
    /// serves only its own size, so the free buffers are handed back after each phase
    /// (`memory_cleanup`): the pool then peaks at the largest phase, not at one phase plus
    /// what the others left behind.
    fn run(&self, observe: &mut (dyn FnMut(Phase) + Send), grads: &mut NamedTensors<B::InnerBackend>) -> MicroLoss {
        let device = self.model.device();
        let (loss, out) = B::memory_persistent_allocations(&device, (std::mem::take(grads), observe), |(mut g, observe)| {
            let loss = self.compute(observe, &mut g);
            (loss, g)
        });
        *grads = out;
        loss
    }

    /// Loss and gradients of the micro-batch (called in the pool [`Self::run`] sets).
    fn compute(&self, observe: &mut (dyn FnMut(Phase) + Send), grads: &mut NamedTensors<B::InnerBackend>) -> MicroLoss {
        let &Self { model, batch, scale, checkpointing, seed, head_chunk_rows } = self;
        let tokens = batch.scored_tokens();
        if tokens == 0 {
            return MicroLoss { nll_sum: 0.0, tokens };
        }
        let device = model.device();
        let positions = PositionIds::text(batch.batch, batch.seq, 0);
        let (cos, sin) = model.model.rotary.cos_sin::<B>(&positions, &device);
        let mask = causal_mask::<B>(batch.seq, 0, &device);
        let inputs = crate::model::attention::AttentionInputs { cos: &cos, sin: &sin, mask: &mask, causal_only: true };
        let scored = Scored::of(batch);

        if !checkpointing {
            let mut x = embed_batch(model, batch, &device);
            for (i, layer) in model.model.layers.iter().enumerate() {
                B::seed(&device, layer_seed(seed, i));
                x = layer.forward(x, &inputs, None);
            }
            let (rows, targets) = scored.upload::<B>(0..tokens, &device);
            let nll = head_nll(model, x, rows, targets);
            let nll_sum = scalar_f64(nll.clone());
            let mut g = nll.mul_scalar(scale).backward();
            collect_grads(model.linears(), &mut g, grads);
            return MicroLoss { nll_sum, tokens };
        }

        // Forward without a tape, keeping each layer's input.
        let inner = model.valid();
        let (icos, isin) = inner.model.rotary.cos_sin::<B::InnerBackend>(&positions, &device);
        let imask = causal_mask::<B::InnerBackend>(batch.seq, 0, &device);
        let iinputs = crate::model::attention::AttentionInputs { cos: &icos, sin: &isin, mask: &imask, causal_only: true };
        let layers = inner.model.layers.len();
        let mut saved = Vec::with_capacity(layers);
        let mut x = embed_batch(&inner, batch, &device);
        for (i, layer) in inner.model.layers.iter().enumerate().take(layers.saturating_sub(1)) {
            saved.push(x.clone());
            B::InnerBackend::seed(&device, layer_seed(seed, i));
            x = layer.forward(x, &iinputs, None);
        }
        drop(inner);
        // The last layer runs once, under autodiff: its tape waits through the head (whose
        // chunks need less memory than a recomputed layer's backward) instead of being
        // recomputed right after it, which saves one layer's forward per step.
        let mut last = model.model.layers.last().map(|layer| {
            let xl = Tensor::<B, 3>::from_inner(x.clone()).require_grad();
            B::seed(&device, layer_seed(seed, layers - 1));
            let yl = layer.forward(xl.clone(), &inputs, None);
            x = yl.clone().inner();
            (xl, yl)
        });
        B::memory_cleanup(&device);
        observe(Phase::Forward);

        // Head, one chunk of scored rows at a time: its loss and its part of the gradient w.r.t.
        // the last hidden state (rows outside the chunk get zeros, so the sum over chunks is exact).
        let h = Tensor::<B, 3>::from_inner(x).require_grad();
        let mut nll_total: Option<Tensor<B::InnerBackend, 1>> = None;
        let mut upstream: Option<Tensor<B::InnerBackend, 3>> = None;
        for range in scored.chunks(head_chunk_rows) {
            let (rows, targets) = scored.upload::<B>(range, &device);
            let nll = head_nll(model, h.clone(), rows, targets);
            let value = nll.clone().inner();
            nll_total = Some(match nll_total {
                Some(t) => t + value,
                None => value,
            });
            let mut g = nll.mul_scalar(scale).backward();
            let gh = h.grad_remove(&mut g).expect("the head depends on the hidden state");
            upstream = Some(match upstream {
                Some(u) => u + gh,
                None => gh,
            });
            if let Some(head) = &model.lm_head {
                collect_grads([("lm_head".to_owned(), head)], &mut g, grads);
            }
        }
        let nll_sum = scalar_f64(nll_total.expect("tokens > 0, so at least one chunk"));
        let mut upstream = upstream.expect("tokens > 0, so at least one chunk");
        B::memory_cleanup(&device);
        observe(Phase::Head);

        // Layers in reverse: recompute one layer under autodiff, pull the gradient through it.
        for (i, layer) in model.model.layers.iter().enumerate().rev() {
            let (x, y) = match last.take() {
                Some(taped) => taped,
                None => {
                    let x = Tensor::<B, 3>::from_inner(saved.pop().expect("one saved input per layer")).require_grad();
                    B::seed(&device, layer_seed(seed, i));
                    // Nothing reads the recomputed output, only its tape (`OutputUse`).
                    let y = layer.forward_for(x.clone(), &inputs, None, OutputUse::TapeOnly);
                    (x, y)
                }
            };
            let mut g = super::seeded::backward_seeded(y, upstream);
            let prefix = format!("model.layers.{i}");
            collect_grads(layer.linears().into_iter().map(|(n, l)| (format!("{prefix}.{n}"), l)), &mut g, grads);
            observe(Phase::Layer(i));
            if i > 0 && i % CLEANUP_EVERY_LAYERS == 0 {
                // The saved inputs of the layers done are free buffers of one size, more than
                // the layers' temporaries of that size ever need at once.
                B::memory_cleanup(&device);
            }
            upstream = match x.grad_remove(&mut g) {
                Some(gx) => gx,
                None => break,
            };
        }
        B::memory_cleanup(&device);
        MicroLoss { nll_sum, tokens }
    }
}

/// Loss of one micro-batch without gradients (eval loss).
pub fn eval_loss<B: Backend>(model: &Qwen2ForCausalLM<B>, batch: &Batch) -> MicroLoss {
    let tokens = batch.scored_tokens();
    if tokens == 0 {
        return MicroLoss { nll_sum: 0.0, tokens };
    }
    let device = model.device();
    let mut x = embed_batch(model, batch, &device);
    let positions = PositionIds::text(batch.batch, batch.seq, 0);
    let (cos, sin) = model.model.rotary.cos_sin::<B>(&positions, &device);
    let mask = causal_mask::<B>(batch.seq, 0, &device);
    let inputs = crate::model::attention::AttentionInputs { cos: &cos, sin: &sin, mask: &mask, causal_only: true };
    for layer in &model.model.layers {
        x = layer.forward(x, &inputs, None);
    }
    let scored = Scored::of(batch);
    let mut total: Option<Tensor<B, 1>> = None;
    for range in scored.chunks(HEAD_CHUNK_ROWS) {
        let (rows, targets) = scored.upload::<B>(range, &device);
        let nll = head_nll(model, x.clone(), rows, targets);
        total = Some(match total {
            Some(t) => t + nll,
            None => nll,
        });
    }
    MicroLoss { nll_sum: scalar_f64(total.expect("tokens > 0, so at least one chunk")), tokens }
}
