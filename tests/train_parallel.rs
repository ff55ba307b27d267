//! Data-parallel training (`[hardware] devices`) on the CPU: two simulated ranks (threads on
//! the ndarray backend, each with its own model) against one device with the same global
//! batch; the sharding of the data cursor; the gradient sum; resume; recipe errors.
//!
//! Tolerance: the ranks add the micro-batch gradients in another order than one device
//! (`(g0 + g1) + (g2 + g3)` against `((g0 + g1) + g2) + g3`), so gradients agree to f32
//! rounding and the trained weights to that rounding carried through a few AdamW steps.
//! The bound, relative to each tensor's largest element, is `TOL`.

mod common;

use burn::backend::Autodiff;
use medqlora::backend::CpuBackend;
use medqlora::data::prompt::Encoded;
use medqlora::train::batches::{Batcher, DataCursor, Padding};
use medqlora::train::data::prepare;
use medqlora::train::optim::NamedTensors;
use medqlora::train::parallel::{accumulate, total_nll, GradReducer, HostReducer, MicroSettings, Sharding, StepBatches};
use medqlora::train::run::{build_model, load_into_model};
use medqlora::train::step::trainable;
use medqlora::train::{train, Recipe, ResumeFrom};
use burn::tensor::{Tensor, TensorData};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};

const NO_ROUNDING: Padding = Padding { id: 0, multiple: 1 };

type B = Autodiff<CpuBackend>;
type I = CpuBackend;

/// Largest difference allowed between one device and two ranks, relative to the largest
/// element of each tensor (f32 reduction-order rounding; see the module docs).
const TOL: f64 = 1e-5;

/// Burn's backend RNG (dropout masks) is one per process, and the test harness runs tests on
/// parallel threads: the tests that train take turns, or one would draw the other's masks.
static TRAINING: Mutex<()> = Mutex::new(());

fn one_at_a_time() -> MutexGuard<'static, ()> {
    TRAINING.lock().unwrap_or_else(|p| p.into_inner())
}

fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("medqlora-parallel-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// A small recipe: 4 steps of 4 micro-batches of 1 sequence, dropout on (so the ranks must draw the single-device masks), checkpoints every 2 steps. `devices` is the
/// `[hardware] devices` line, or empty for one device.
fn recipe(out: &Path, devices: &str) -> Recipe {
    let text = format!(
        r#"
name = "parallel-test"
output_dir = "unused"
seed = 11
{model_and_lora}[data]
source = {{ kind = "synth", kinds = ["lab_panel"], train_per_kind = 12, seed = 5 }}
max_seq_len = 1024
[train]
max_steps = 4
micro_batch_size = 1
grad_accum = 4
lr = 1e-2
warmup_steps = 2
save_every = 2
keep_last = 5
[hardware]
device = "cpu"
{devices}
"#,
        model_and_lora = common::TINY_MODEL_AND_LORA
    );
    let mut r = Recipe::from_toml(&text, Path::new("parallel-test.toml")).unwrap();
    r.output_dir = out.to_owned();
    r
}

/// Largest |a - b| over a tensor, divided by its largest |a| (0 for two zero tensors).
fn rel_diff(a: &[f32], b: &[f32]) -> f64 {
    assert_eq!(a.len(), b.len());
    let scale = a.iter().fold(0.0f64, |m, &x| m.max(x.abs() as f64));
    let diff = a.iter().zip(b).fold(0.0f64, |m, (&x, &y)| m.max((x as f64 - y as f64).abs()));
    if scale == 0.0 { diff } else { diff / scale }
}

fn host(t: &NamedTensors<I>) -> BTreeMap<String, Vec<f32>> {
    t.iter().map(|(k, v)| (k.clone(), v.clone().into_data().convert::<f32>().to_vec::<f32>().unwrap())).collect()
}

/// The f32 tensors of a PEFT adapter file, by name.
fn adapter(dir: &Path) -> BTreeMap<String, Vec<f32>> {
    let bytes = std::fs::read(dir.join("adapter_model.safetensors")).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    st.tensors()
        .into_iter()
        .map(|(name, view)| (name, view.data().chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect()))
        .collect()
}

/// `(loss, grad_norm)` of every step from `metrics.jsonl`. The gradient norm is what tells a
/// wrong sum (a mean would halve it) from a right one: AdamW hardly sees a scale.
fn logged(out: &Path) -> Vec<(f64, f64)> {
    common::logged_steps(out).iter().map(|m| (m["loss"].as_f64().unwrap(), m["grad_norm"].as_f64().unwrap())).collect()
}

fn losses(ckpt: &Path) -> Vec<f64> {
    let state: serde_json::Value = serde_json::from_slice(&std::fs::read(ckpt.join("trainer_state.json")).unwrap()).unwrap();
    state["losses"].as_array().unwrap().iter().map(|p| p[1].as_f64().unwrap()).collect()
}

fn examples(n: usize) -> Vec<Encoded> {
    (0..n).map(|i| Encoded { input_ids: (0..(4 + i % 7) as u32).collect(), loss_mask: (0..4 + i % 7).map(|t| t >= 2).collect() }).collect()
}

#[test]
fn every_micro_batch_runs_once_and_resume_gives_the_same_shards() {
    let data = examples(37); // 10 micro-batches of 4 per epoch: steps of 4 cross epochs
    let (grad_accum, steps) = (4, 9);
    for ranks in [1, 2, 4] {
        let sharding = Sharding::new(grad_accum, ranks).unwrap();
        let mut single = Batcher::new(&data, 4, 7, NO_ROUNDING);
        let mut rank_batchers: Vec<Batcher> = (0..ranks).map(|_| Batcher::new(&data, 4, 7, NO_ROUNDING)).collect();
        let (mut cursor, mut log) = (DataCursor::default(), Vec::new());
        for _ in 0..steps {
            let whole = StepBatches::take(&mut single, cursor, grad_accum);
            // Each rank walks the cursor itself and keeps its block.
            let mut union = Vec::new();
            let mut shards = Vec::new();
            for (rank, b) in rank_batchers.iter_mut().enumerate() {
                let plan = StepBatches::take(b, cursor, grad_accum);
                assert_eq!(plan.next, whole.next, "every rank ends the step at the single-device cursor");
                assert_eq!(plan.scored_tokens(), whole.scored_tokens(), "every rank knows the step's token count");
                let mine: Vec<_> = sharding.micro_batches(rank).map(|i| plan.batches[i].clone()).collect();
                assert_eq!(mine.len(), grad_accum / ranks);
                union.extend(mine.iter().cloned());
                shards.push(mine.iter().map(|b| b.example_ids.clone()).collect::<Vec<_>>());
            }
            assert_eq!(union, whole.batches, "{ranks} ranks: the union of the shards is the single-device step, in order");
            log.push((cursor, shards));
            cursor = whole.next;
        }
        // 36 micro-batches over 3.6 epochs of 10 reach every example.
        let seen: std::collections::BTreeSet<usize> = log.iter().flat_map(|(_, s)| s.iter().flatten().flatten().copied()).collect();
        assert_eq!(seen.into_iter().collect::<Vec<_>>(), (0..37).collect::<Vec<_>>());
        // Resume mid-run (fresh batchers at a saved cursor): the same shards.
        for (saved, shards) in &log[5..] {
            for (rank, expected) in shards.iter().enumerate() {
                let plan = StepBatches::take(&mut Batcher::new(&data, 4, 7, NO_ROUNDING), *saved, grad_accum);
                let got: Vec<_> = sharding.micro_batches(rank).map(|i| plan.batches[i].example_ids.clone()).collect();
                assert_eq!(&got, expected, "{ranks} ranks, rank {rank}, resumed at {saved:?}");
            }
        }
    }
    assert!(Sharding::new(4, 3).unwrap_err().to_string().contains("train.grad_accum"));
    assert_eq!(Sharding::new(4, 2).unwrap().micro_batches(2), 0..0, "no rank 2 of 2");
}

#[test]
fn summed_rank_gradients_equal_the_whole_batch_gradient() {
    let _turn = one_at_a_time();
    let out = scratch("grads");
    let recipe = recipe(&out, "devices = [0, 1]");
    let prepared = prepare(&recipe).unwrap();
    let device = Default::default();
    let (mut model, _, _) = build_model::<B>(&recipe, &prepared, &device).unwrap();
    // Non-zero adapters (lora_B starts at zero, which would make every lora_A gradient zero).
    let mut seed = 0x1234_5678u64;
    let master: NamedTensors<I> = trainable(&model)
        .into_iter()
        .map(|(name, t)| {
            let dims = t.dims();
            let values: Vec<f32> = (0..dims[0] * dims[1])
                .map(|_| {
                    seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                    ((seed >> 40) as f32 / (1u64 << 24) as f32 - 0.5) * 0.2
                })
                .collect();
            (name, Tensor::from_data(TensorData::new(values, dims), &device))
        })
        .collect();
    load_into_model(&mut model, &master);

    let mut batcher = Batcher::new(&prepared.train, recipe.train.micro_batch_size, recipe.seed, prepared.padding);
    let plan = StepBatches::take(&mut batcher, DataCursor { epoch: 0, index: 1 }, recipe.train.grad_accum);
    let step = 3;
    let one = MicroSettings { seed: recipe.seed, checkpointing: true, take_turns: false };
    let (whole, whole_nll) = accumulate(&model, &plan, 0..plan.len(), step, one);

    // Two ranks on two threads, each with its own model, taking turns for dropout.
    let two = MicroSettings { take_turns: true, ..one };
    let sharding = Sharding::new(recipe.train.grad_accum, 2).unwrap();
    let mut reducers = HostReducer::<I>::group(2).into_iter();
    let (mut r0, mut r1) = (reducers.next().unwrap(), reducers.next().unwrap());
    let (summed, partial0, partial1, nll) = std::thread::scope(|s| {
        let rank1 = s.spawn(|| {
            let (mut m1, _, _) = build_model::<B>(&recipe, &prepared, &device).unwrap();
            load_into_model(&mut m1, &master);
            let (g, nll) = accumulate(&m1, &plan, sharding.micro_batches(1), step, two);
            let kept = host(&g);
            assert!(r1.reduce_sum(g).unwrap().is_none(), "only rank 0 gets the sum");
            (kept, nll)
        });
        let (g, mut nll) = accumulate(&model, &plan, sharding.micro_batches(0), step, two);
        let kept = host(&g);
        let summed = r0.reduce_sum(g).unwrap().expect("rank 0 gets the sum");
        let (partial1, nll1) = rank1.join().unwrap();
        nll.extend(nll1);
        (summed, kept, partial1, nll)
    });
    assert_eq!(total_nll(&nll), total_nll(&whole_nll), "the same micro-batch losses, added in the same order");
    let (whole, summed) = (host(&whole), host(&summed));
    assert_eq!(whole.keys().collect::<Vec<_>>(), summed.keys().collect::<Vec<_>>());
    let mut worst: f64 = 0.0;
    for (name, w) in &whole {
        let d = rel_diff(w, &summed[name]);
        worst = worst.max(d);
        assert!(d <= TOL, "{name}: rank sum differs from the whole-batch gradient by {d:.2e}");
        // Each rank holds a real share, not the whole: the test can tell a wrong sum.
        assert!(rel_diff(w, &partial0[name]) > 1e-2 && rel_diff(w, &partial1[name]) > 1e-2, "{name}: a share equals the whole");
    }
    println!("gradient: sum of 2 rank shares vs whole batch, max relative difference {worst:.2e}");
}

#[test]
fn two_ranks_train_like_one_device_and_resume_exactly() {
    let _turn = one_at_a_time();
    let dir = scratch("e2e");
    let (one, two, resumed) = (dir.join("one"), dir.join("two"), dir.join("resumed"));
    let a = train(&recipe(&one, ""), None).unwrap();
    let b = train(&recipe(&two, "devices = [0, 1]"), None).unwrap();
    assert_eq!((a.steps, b.steps), (4, 4));

    let ck = |d: &Path, s: usize| d.join("checkpoints").join(format!("step-{s:06}"));
    let (la, lb) = (logged(&one), logged(&two));
    assert_eq!(la.len(), 4);
    assert_eq!(la[0].0, lb[0].0, "step 1: same weights, same batches, same dropout masks: the same loss");
    let (mut worst_loss, mut worst_norm): (f64, f64) = (0.0, 0.0);
    for (s, ((loss_a, norm_a), (loss_b, norm_b))) in la.iter().zip(&lb).enumerate() {
        let (dl, dn) = ((loss_a - loss_b).abs() / loss_a.abs(), (norm_a - norm_b).abs() / norm_a.abs());
        (worst_loss, worst_norm) = (worst_loss.max(dl), worst_norm.max(dn));
        assert!(dl <= TOL, "step {}: loss {loss_a} (one device) vs {loss_b} (two ranks)", s + 1);
        assert!(dn <= TOL, "step {}: gradient norm {norm_a} (one device) vs {norm_b} (two ranks)", s + 1);
    }
    let (wa, wb) = (adapter(&one.join("adapter")), adapter(&two.join("adapter")));
    assert_eq!(wa.keys().collect::<Vec<_>>(), wb.keys().collect::<Vec<_>>());
    let moved = wa.iter().filter(|(k, _)| k.contains("lora_B")).fold(0.0f32, |m, (_, v)| v.iter().fold(m, |m, x| m.max(x.abs())));
    assert!(moved > 1e-3, "the adapters trained (lora_B starts at zero; largest now {moved})");
    let mut worst_weight: f64 = 0.0;
    for (name, x) in &wa {
        let d = rel_diff(x, &wb[name]);
        worst_weight = worst_weight.max(d);
        assert!(d <= TOL, "{name}: final adapter differs by {d:.2e}");
    }
    println!("one device vs 2 ranks, 4 steps: (loss, grad_norm) {la:?}");
    println!("max relative difference: loss {worst_loss:.2e}, gradient norm {worst_norm:.2e}, final adapter {worst_weight:.2e}");

    // Resume the two-rank run from its step-2 checkpoint: bit-identical to the straight run
    // (the ranks add in a fixed order, and the shards come from the saved cursor).
    train(&recipe(&resumed, "devices = [0, 1]"), Some(ResumeFrom::Path(ck(&two, 2)))).unwrap();
    assert_eq!(losses(&ck(&resumed, 4)), losses(&ck(&two, 4)), "per-step losses identical after resume");
    for f in ["adapter_model.safetensors", "optimizer.safetensors"] {
        assert!(std::fs::read(ck(&two, 4).join(f)).unwrap() == std::fs::read(ck(&resumed, 4).join(f)).unwrap(), "{f} differs after resume");
    }
}

#[test]
fn devices_errors_name_the_key_and_the_fix() {
    let base = |hardware: &str, grad_accum: usize| {
        format!(
            "name = \"x\"\noutput_dir = \"o\"\n[model]\nsource = \"tiny_random\"\n[lora]\nr = 4\nalpha = 8\ntarget_modules = [\"q_proj\"]\n\
             [data]\nsource = {{ kind = \"synth\", kinds = [\"lab_panel\"], train_per_kind = 2 }}\n[train]\nmax_steps = 1\nlr = 1e-3\ngrad_accum = {grad_accum}\n[hardware]\n{hardware}\n"
        )
    };
    for (hardware, grad_accum, expect) in [
        ("devices = []", 2, "at least one device"),
        ("devices = [0, 1, 0]", 3, "device 0 twice"),
        ("devices = [0, 1]", 3, "grad_accum divisible by 2"),
        ("device = \"cuda:1\"\ndevices = [0, 1]", 2, "must come first"),
        ("devices = [0, -1]", 2, "devices"),
    ] {
        let err = Recipe::from_toml(&base(hardware, grad_accum), Path::new("dp.toml")).unwrap_err().to_string();
        assert!(err.contains("devices") && err.contains(expect) && err.contains("dp.toml"), "{hardware}: {err}");
    }
    let ok = Recipe::from_toml(&base("devices = [0, 1]", 4), Path::new("dp.toml")).unwrap();
    assert_eq!(ok.hardware.ranks(), 2);
    let absent = Recipe::from_toml(&base("", 4), Path::new("dp.toml")).unwrap();
    assert_eq!(absent.hardware.ranks(), 1);
    assert!(!absent.to_toml().contains("devices"), "no key written for one device: saved recipes stay as they were");
}
