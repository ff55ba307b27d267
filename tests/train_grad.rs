//! One step's LoRA gradients equal HF PEFT's (fixture from tools/make_fixture_peft_grad.py:
//! transformers + PEFT, f32, the tiny Qwen2 model, all seven projections, masked labels and
//! right padding), with and without per-layer gradient checkpointing; and the checkpointed
//! path equals the plain one with dropout on (same masks in forward and recompute), also when
//! its head runs in chunks of a few rows.

mod common;

use burn::backend::Autodiff;
use burn::module::Param;
use burn::tensor::{Tensor, TensorData};
use common::{fixture, rel_l2, reference, values};
use medqlora::backend::CpuBackend;
use medqlora::lora::LoraSpec;
use medqlora::model::{Qwen2ForCausalLM, TextConfig, WeightStore};
use medqlora::train::batches::Batch;
use medqlora::train::optim::NamedTensors;
use medqlora::train::step::{adapter_names, forward_backward, forward_backward_chunked};

type AD = Autodiff<CpuBackend>;
/// burn-ndarray's RNG is one global: tests that draw (adapter init, dropout) take turns.
static RNG: std::sync::Mutex<()> = std::sync::Mutex::new(());

const TARGETS: [&str; 7] = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"];

fn model_with_fixture_adapters(dropout: f64) -> (Qwen2ForCausalLM<AD>, std::collections::HashMap<String, TensorData>) {
    let dir = fixture("qwen2_tiny");
    let r = reference(fixture("peft_grad.safetensors"));
    let device = Default::default();
    let mut model = Qwen2ForCausalLM::<AD>::load(&TextConfig::from_dir(&dir).unwrap(), &WeightStore::open(&dir).unwrap(), &device).unwrap();
    let targets: Vec<String> = TARGETS.iter().map(|s| s.to_string()).collect();
    model.add_lora(&LoraSpec { r: 4, alpha: 8.0, dropout, use_rslora: false }, &targets, &device);
    for (name, linear) in model.linears_mut() {
        let Some(lora) = linear.lora.as_mut() else { continue };
        lora.set_training(true);
        let [a, b] = adapter_names(&name);
        lora.lora_a = Param::from_tensor(Tensor::from_data(r[&a].clone(), &device));
        lora.lora_b = Param::from_tensor(Tensor::from_data(r[&b].clone(), &device));
    }
    (model, r)
}

/// HF labels (-100 = ignored, shifted inside the loss) as a medqlora batch.
fn batch_from_labels(ids: &TensorData, labels: &TensorData) -> Batch {
    let [b, s] = [ids.shape[0], ids.shape[1]];
    let ids = ids.clone().to_vec::<i64>().unwrap();
    let labels = labels.clone().to_vec::<i64>().unwrap();
    let mut batch = Batch { example_ids: (0..b).collect(), input_ids: ids, targets: vec![0; b * s], weights: vec![0.0; b * s], batch: b, seq: s };
    for row in 0..b {
        for t in 0..s - 1 {
            let l = labels[row * s + t + 1];
            if l != -100 {
                batch.targets[row * s + t] = l;
                batch.weights[row * s + t] = 1.0;
            }
        }
    }
    batch
}

fn run(model: &Qwen2ForCausalLM<AD>, batch: &Batch, checkpointing: bool) -> (f64, NamedTensors<CpuBackend>) {
    let mut grads = NamedTensors::new();
    let l = forward_backward(model, batch, 1.0 / batch.scored_tokens() as f64, checkpointing, 99, &mut grads);
    (l.nll_sum / l.tokens as f64, grads)
}

fn rel_err(a: &TensorData, b: &TensorData) -> f64 {
    rel_l2(&values(a), &values(b))
}

/// `got` holds exactly `want`'s gradients, each within relative L2 `bound` (`what` names the
/// case in failures).
fn assert_grads_close(got: &NamedTensors<CpuBackend>, want: &NamedTensors<CpuBackend>, bound: f64, what: &str) {
    assert_eq!(got.len(), want.len(), "{what}: gradient count");
    for (name, g) in want {
        let e = rel_err(&got[name].clone().into_data(), &g.clone().into_data());
        assert!(e < bound, "{what}: {name} relative error {e:.2e} (bound {bound:e})");
    }
}

#[test]
fn lora_gradients_match_peft() {
    let _rng = RNG.lock().unwrap_or_else(|e| e.into_inner());
    let (model, r) = model_with_fixture_adapters(0.0);
    let batch = batch_from_labels(&r["input_ids"], &r["labels"]);
    let want_loss = r["loss"].clone().to_vec::<f32>().unwrap()[0] as f64;
    // f32 on both sides, different summation orders: 1e-5 relative on the loss, 2e-4 on each
    // gradient tensor (relative L2; measured worst 6.5e-5).
    const BOUND: f64 = 2e-4;
    for checkpointing in [false, true] {
        let (loss, grads) = run(&model, &batch, checkpointing);
        assert!((loss - want_loss).abs() / want_loss < 1e-5, "checkpointing={checkpointing}: loss {loss} vs PEFT {want_loss}");
        assert_eq!(grads.len(), 2 * 7 * 2, "every adapter tensor gets a gradient");
        let mut worst = 0.0f64;
        for (name, g) in &grads {
            let want = &r[&format!("grad.{name}")];
            let e = rel_err(&g.clone().into_data(), want);
            assert!(e < BOUND, "checkpointing={checkpointing}: {name} relative error {e:.2e} > {BOUND:e}");
            worst = worst.max(e);
        }
        println!("checkpointing={checkpointing}: loss {loss:.6} (PEFT {want_loss:.6}), worst gradient relative error {worst:.2e}");
    }
}

#[test]
fn checkpointed_recompute_draws_the_same_dropout_masks() {
    let _rng = RNG.lock().unwrap_or_else(|e| e.into_inner());
    let (model, r) = model_with_fixture_adapters(0.3);
    let batch = batch_from_labels(&r["input_ids"], &r["labels"]);
    let (loss_plain, plain) = run(&model, &batch, false);
    let (loss_ckpt, ckpt) = run(&model, &batch, true);
    let (loss_nodrop, _) = run(&model_with_fixture_adapters(0.0).0, &batch, false);
    assert!((loss_plain - loss_nodrop).abs() > 1e-4, "dropout 0.3 must change the loss ({loss_plain} vs {loss_nodrop})");
    assert!((loss_plain - loss_ckpt).abs() < 1e-5, "{loss_plain} vs {loss_ckpt}");
    assert_grads_close(&ckpt, &plain, 1e-4, "checkpointed vs plain");
}

#[test]
fn chunked_head_gives_the_whole_head_gradients() {
    let _rng = RNG.lock().unwrap_or_else(|e| e.into_inner());
    let (model, r) = model_with_fixture_adapters(0.0);
    let batch = batch_from_labels(&r["input_ids"], &r["labels"]);
    let (want_loss, want) = run(&model, &batch, false);
    let tokens = batch.scored_tokens();
    // Chunks of 1, 3 (uneven last chunk) and more rows than scored: every boundary case.
    for chunk in [1, 3, tokens + 5] {
        let mut grads = NamedTensors::new();
        let l = forward_backward_chunked(&model, &batch, 1.0 / tokens as f64, true, 99, chunk, &mut grads);
        let loss = l.nll_sum / l.tokens as f64;
        assert!((loss - want_loss).abs() / want_loss < 1e-6, "chunk {chunk}: loss {loss} vs {want_loss}");
        assert_grads_close(&grads, &want, 1e-5, &format!("chunk {chunk} vs the unchunked head"));
    }
}

#[test]
fn padding_to_a_multiple_changes_no_loss_and_no_gradient() {
    let _rng = RNG.lock().unwrap_or_else(|e| e.into_inner());
    let (model, r) = model_with_fixture_adapters(0.0);
    let batch = batch_from_labels(&r["input_ids"], &r["labels"]);
    // What `data.pad_to_multiple_of` does: more pad positions on the right, never scored.
    let extra = 5;
    let seq = batch.seq + extra;
    let mut padded = Batch { seq, input_ids: vec![0; batch.batch * seq], targets: vec![0; batch.batch * seq], weights: vec![0.0; batch.batch * seq], ..batch.clone() };
    for row in 0..batch.batch {
        let (p, q) = (row * batch.seq, row * seq);
        padded.input_ids[q..q + batch.seq].copy_from_slice(&batch.input_ids[p..p + batch.seq]);
        padded.targets[q..q + batch.seq].copy_from_slice(&batch.targets[p..p + batch.seq]);
        padded.weights[q..q + batch.seq].copy_from_slice(&batch.weights[p..p + batch.seq]);
        padded.input_ids[q + batch.seq..q + seq].fill(batch.input_ids[p + batch.seq - 1]);
    }
    for checkpointing in [false, true] {
        let (want_loss, want) = run(&model, &batch, checkpointing);
        let (loss, got) = run(&model, &padded, checkpointing);
        assert!((loss - want_loss).abs() / want_loss < 1e-6, "checkpointing={checkpointing}: loss {loss} vs {want_loss}");
        assert_grads_close(&got, &want, 1e-5, &format!("checkpointing={checkpointing}, with padding"));
    }
}
