//! The training loop: load the base, attach adapters, step through micro-batches with
//! gradient accumulation, clip, update, log, evaluate, checkpoint, resume.

use super::batches::{eval_batches, Batcher, DataCursor};
use super::checkpoint::{self, Checkpoint, CheckpointError, HostTensor, TrainerState};
use super::data::{prepare, Prepared};
use super::metrics::{Metrics, MetricsError, StepMetrics};
use super::optim::{clip_global_norm, learning_rate, AdamW, AdamWConfig, NamedTensors};
use super::optim8::Q8Moments;
use super::parallel::{self, accumulate, total_nll, Group, MicroSettings, ParallelError, ParallelTask, RankData, Reducers, StepBatches};
use super::recipe::{BaseQuant, ModelRecipe, Recipe};
use super::step::{adapter_names, eval_loss, trainable};
use crate::backend::{dispatch_autodiff, AutodiffTask, BackendError};
use crate::eval::{evaluate, EvalOptions};
use crate::model::{LoadError, QuantizeOnLoad, Qwen2ForCausalLM, TextConfig, WeightStore};
use burn::module::{AutodiffModule, Param};
use burn::tensor::backend::{AutodiffBackend, Backend};
use burn::tensor::{Tensor, TensorData};
use indicatif::{ProgressBar, ProgressStyle};
use std::collections::BTreeMap;
use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

/// Errors that stop a run. Checkpoints already written stay valid.
#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    #[error(transparent)]
    Backend(#[from] BackendError),
    #[error(transparent)]
    Load(#[from] LoadError),
    #[error(transparent)]
    Config(#[from] crate::model::ConfigError),
    #[error(transparent)]
    Checkpoint(#[from] CheckpointError),
    #[error(transparent)]
    Metrics(#[from] MetricsError),
    #[error(transparent)]
    Data(#[from] super::data::PrepareError),
    #[error("loss is {loss} at step {step} (micro-batch of examples {examples:?}); the run stopped. Lower train.lr or check those records; resume from the last checkpoint with --resume")]
    NonFinite { step: usize, loss: f64, examples: Vec<usize> },
    #[error("the gradient norm is {grad_norm} at step {step} (micro-batch of examples {examples:?}; {}); the update was not applied and the run stopped. Lower train.lr or check those records; resume from the last checkpoint with --resume", where_non_finite(tensors))]
    NonFiniteGradient { step: usize, grad_norm: f64, examples: Vec<usize>, tensors: Vec<String> },
    #[error("checkpoint {path} does not fit this recipe: {problem}")]
    Mismatch { path: PathBuf, problem: String },
    #[error(transparent)]
    Parallel(#[from] ParallelError),
    #[error("rank {rank} of hardware.devices: {source}")]
    Rank { rank: usize, source: Box<TrainError> },
}

/// Which gradients broke, for [`TrainError::NonFiniteGradient`]: up to four names, or, when no
/// element is NaN or infinite, that the sum of squares overflowed f32.
fn where_non_finite(tensors: &[String]) -> String {
    match tensors.len() {
        0 => "no element is NaN or infinite: the sum of squares overflowed f32".into(),
        1..=4 => format!("non-finite in {}", tensors.join(", ")),
        n => format!("non-finite in {} and {} more", tensors[..4].join(", "), n - 4),
    }
}

/// Where `--resume` starts from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ResumeFrom {
    /// The newest checkpoint of the run folder.
    Latest,
    /// A given checkpoint folder.
    Path(PathBuf),
}

/// What a finished (or interrupted) run reports.
#[derive(Debug, Clone)]
pub struct TrainSummary {
    /// Optimizer steps completed in total.
    pub steps: usize,
    /// Mean loss of the first and last step run by this process.
    pub first_loss: Option<f64>,
    /// Mean loss of the last step.
    pub last_loss: Option<f64>,
    /// Held-out loss at the end (when there is an eval set).
    pub eval_loss: Option<f64>,
    /// Held-out loss before training (step 0 of a fresh run).
    pub initial_eval_loss: Option<f64>,
    /// Tokens processed by this process per second.
    pub tokens_per_sec: f64,
    /// Seconds spent in this process's steps.
    pub seconds: f64,
    /// Trainable / total parameters.
    pub params: (usize, usize),
    /// The last checkpoint written.
    pub checkpoint: Option<PathBuf>,
    /// The PEFT adapter folder (`<output_dir>/adapter`).
    pub adapter_dir: PathBuf,
    /// Stopped by Ctrl-C before `max_steps`.
    pub interrupted: bool,
}

static INTERRUPTED: AtomicBool = AtomicBool::new(false);

fn install_ctrl_c() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        // Failing to install (another handler exists) only loses the graceful stop.
        let _ = ctrlc::set_handler(|| {
            if INTERRUPTED.swap(true, Ordering::SeqCst) {
                eprintln!("\nsecond Ctrl-C: exiting without a checkpoint");
                std::process::exit(130);
            }
            eprintln!("\nCtrl-C: finishing this step, writing a checkpoint, then exiting");
        });
    });
}

/// Runs `recipe` (resolved: `output_dir` already final).
pub fn train(recipe: &Recipe, resume: Option<ResumeFrom>) -> Result<TrainSummary, TrainError> {
    install_ctrl_c();
    std::fs::create_dir_all(&recipe.output_dir)
        .map_err(|source| CheckpointError::Write { path: recipe.output_dir.clone(), source })?;
    let resume_dir = match resume {
        None => None,
        Some(ResumeFrom::Latest) => Some(checkpoint::latest(&recipe.output_dir.join("checkpoints"))?),
        Some(ResumeFrom::Path(p)) => Some(p),
    };
    let resumed = resume_dir.as_deref().map(Checkpoint::load).transpose()?;
    if let (Some(ck), Some(dir)) = (&resumed, &resume_dir) {
        check_compatible(recipe, ck, dir)?;
    }
    let prepared = prepare(recipe)?;
    let task = Task { recipe, prepared: &prepared, resumed, resume_dir };
    if recipe.hardware.ranks() > 1 {
        return parallel::dispatch(&recipe.hardware, task)?;
    }
    dispatch_autodiff(recipe.hardware.device, recipe.hardware.dtype, task)?
}

fn check_compatible(recipe: &Recipe, ck: &Checkpoint, dir: &Path) -> Result<(), TrainError> {
    let saved = Recipe::from_toml(&ck.recipe_toml, &dir.join("recipe.toml"))
        .map_err(|e| TrainError::Mismatch { path: dir.to_owned(), problem: e.to_string() })?;
    let mismatch = |what: &str| TrainError::Mismatch {
        path: dir.to_owned(),
        problem: format!("its recipe's [{what}] differs from this recipe's; resume with the recipe saved in {}", dir.join("recipe.toml").display()),
    };
    if saved.model != recipe.model {
        return Err(mismatch("model"));
    }
    if saved.lora != recipe.lora {
        return Err(mismatch("lora"));
    }
    if saved.data != recipe.data || saved.seed != recipe.seed {
        return Err(mismatch("data"));
    }
    if saved.train != recipe.train {
        eprintln!("note: [train] differs from the checkpoint's recipe; the new values apply from step {}", ck.state.step);
    }
    Ok(())
}

struct Task<'a> {
    recipe: &'a Recipe,
    prepared: &'a Prepared,
    resumed: Option<Checkpoint>,
    resume_dir: Option<PathBuf>,
}

impl AutodiffTask for Task<'_> {
    type Output = Result<TrainSummary, TrainError>;
    fn run<B: AutodiffBackend>(self, device: B::Device) -> Self::Output {
        run_on::<B>(self, &device, None)
    }
}

impl ParallelTask for Task<'_> {
    type Output = Result<TrainSummary, TrainError>;
    /// Ranks 1.. run on scoped threads that borrow the run's data; this thread is rank 0.
    fn run<B: AutodiffBackend>(self, devices: Vec<B::Device>, reducers: Reducers<B::InnerBackend>) -> Self::Output {
        let (recipe, prepared) = (self.recipe, self.prepared);
        let Some(device) = devices.first().cloned() else {
            return Err(ParallelError::GroupSize { devices: 0, reducers: reducers.len() }.into());
        };
        if recipe.hardware.device == crate::backend::DeviceSpec::Cpu {
            eprintln!("note: {} simulated ranks share the CPU (hardware.devices): same results as one device, not faster", devices.len());
        }
        let data = RankData::new(recipe, &prepared.train, prepared.padding, devices.len());
        let build = |device: &B::Device| build_model::<B>(recipe, prepared, device).map(|(model, _, _)| model);
        std::thread::scope(|scope| {
            let group = Group::<B>::spawn(scope, &build, data, devices, reducers)?;
            run_on::<B>(self, &device, Some(group))
        })
    }
}

fn load_base<B: Backend>(recipe: &Recipe, dir: &Path, device: &B::Device) -> Result<Qwen2ForCausalLM<B>, TrainError> {
    let config = TextConfig::from_dir(dir)?;
    let store = WeightStore::open(dir)?;
    let quant = match &recipe.model {
        ModelRecipe::Pretrained { quantize, .. } | ModelRecipe::TinyRandom { quantize, .. } => quantize,
    };
    let q = match quant {
        BaseQuant::None => None,
        BaseQuant::Nf4 { blocksize, double_quant, skip } => {
            Some(QuantizeOnLoad { blocksize: *blocksize, double_quant: *double_quant, skip: skip.clone() })
        }
    };
    Ok(Qwen2ForCausalLM::load_resident(&config, &store, device, q.as_ref())?)
}

/// The frozen base on `device` with fresh adapters, in training mode, and its total and
/// trainable parameter counts. Every rank builds its own.
pub fn build_model<B: AutodiffBackend>(
    recipe: &Recipe,
    prepared: &Prepared,
    device: &B::Device,
) -> Result<(Qwen2ForCausalLM<B>, usize, usize), TrainError> {
    let mut model = load_base::<B>(recipe, &prepared.model_dir, device)?;
    let total_params = model.parameter_count();
    let trainable_params = {
        // Seed and draw the adapter init together; other ranks draw from the same RNG.
        let _rng = parallel::rng_section();
        B::seed(device, recipe.seed);
        model.add_lora(&recipe.lora.spec(), &recipe.lora.target_modules, device)
    };
    set_training(&mut model, true);
    Ok((model, total_params, trainable_params))
}

fn to_host<B: Backend>(t: &Tensor<B, 2>) -> HostTensor {
    let dims = t.dims().to_vec();
    (dims, t.clone().into_data().convert::<f32>().to_vec::<f32>().unwrap_or_default())
}

fn to_device<B: Backend>(t: &HostTensor, device: &B::Device) -> Tensor<B, 2> {
    Tensor::<B, 2>::from_data(TensorData::new(t.1.clone(), [t.0[0], t.0[1]]), (device, burn::tensor::DType::F32))
}

fn host_map<B: Backend>(m: &NamedTensors<B>) -> BTreeMap<String, HostTensor> {
    m.iter().map(|(k, t)| (k.clone(), to_host(t))).collect()
}

/// Writes the f32 masters into the model's adapters (which are f32 too, so they share the
/// masters' buffers rather than holding a second copy).
pub fn load_into_model<B: AutodiffBackend>(model: &mut Qwen2ForCausalLM<B>, master: &NamedTensors<B::InnerBackend>) {
    for (name, linear) in model.linears_mut() {
        let Some(lora) = linear.lora.as_mut() else { continue };
        let [a, b] = adapter_names(&name);
        for (key, param) in [(a, &mut lora.lora_a), (b, &mut lora.lora_b)] {
            if let Some(w) = master.get(&key) {
                let dtype = param.val().dtype();
                let id = param.id;
                *param = Param::initialized(id, Tensor::from_inner(w.clone().cast(dtype)).require_grad());
            }
        }
    }
}

fn set_training<B: Backend>(model: &mut Qwen2ForCausalLM<B>, training: bool) {
    for (_, l) in model.linears_mut() {
        if let Some(lora) = l.lora.as_mut() {
            lora.set_training(training);
        }
    }
}

fn fmt_acc(acc: Option<(f64, f64)>) -> String {
    acc.map_or(String::new(), |(a, v)| format!(", field accuracy {:.1}%, JSON valid {:.1}%", 100.0 * a, 100.0 * v))
}

fn mean_eval_loss<B: AutodiffBackend>(model: &Qwen2ForCausalLM<B>, prepared: &Prepared, recipe: &Recipe) -> Option<f64> {
    if prepared.eval.is_empty() {
        return None;
    }
    let mut m = model.valid();
    set_training(&mut m, false);
    let batches = eval_batches(&prepared.eval, recipe.train.micro_batch_size, prepared.padding);
    let take = if recipe.train.eval_batches == 0 { batches.len() } else { recipe.train.eval_batches };
    let (mut nll, mut tok) = (0.0, 0usize);
    for b in batches.iter().take(take) {
        let l = eval_loss(&m, b);
        nll += l.nll_sum;
        tok += l.tokens;
    }
    (tok > 0).then(|| nll / tok as f64)
}

/// Field accuracy and JSON validity of greedy answers on the first `eval_generate` held-out
/// records (the evaluator of `medqlora eval`), or `None` when switched off.
fn field_accuracy<B: AutodiffBackend>(model: &Qwen2ForCausalLM<B>, prepared: &Prepared, recipe: &Recipe) -> Option<(f64, f64)> {
    let n = recipe.train.eval_generate.min(prepared.eval_records.len());
    if n == 0 {
        return None;
    }
    let mut m = model.valid();
    set_training(&mut m, false);
    let opts = EvalOptions {
        max_new_tokens: 384,
        batch_size: recipe.train.micro_batch_size.max(8),
        limit: Some(n),
        max_prompt_tokens: recipe.data.max_seq_len,
        label: recipe.name.clone(),
        ..EvalOptions::default()
    };
    match evaluate(&m, &prepared.tokenizer, &prepared.template, &prepared.eval_records, &opts) {
        Ok(report) => Some((report.field_accuracy(), report.overall.json_validity())),
        Err(e) => {
            eprintln!("warning: field-accuracy evaluation failed: {e}");
            None
        }
    }
}

/// The loop, on rank 0 (the only rank with one device; with `group`, the ranks of
/// `hardware.devices` share each step's micro-batches).
fn run_on<B: AutodiffBackend>(task: Task<'_>, device: &B::Device, mut group: Option<Group<'_, B>>) -> Result<TrainSummary, TrainError> {
    let Task { recipe, prepared, resumed, resume_dir } = task;
    let t = &recipe.train;
    let (mut model, total_params, trainable_params) = build_model::<B>(recipe, prepared, device)?;
    let spec = recipe.lora.spec();
    eprintln!(
        "trainable params: {trainable_params} || all params: {} || trainable%: {:.4}",
        total_params + trainable_params,
        100.0 * trainable_params as f64 / (total_params + trainable_params) as f64
    );
    if trainable_params == 0 {
        return Err(TrainError::Mismatch {
            path: prepared.model_dir.clone(),
            problem: format!("lora.target_modules {:?} match no linear layer of this model", recipe.lora.target_modules),
        });
    }

    if let Some(g) = group.as_mut() {
        g.ready()?;
        eprintln!("data parallel: {} ranks, {} micro-batches each per step", g.ranks(), t.grad_accum / g.ranks());
    }

    let inner_params: NamedTensors<B::InnerBackend> = trainable(&model).into_iter().map(|(k, v)| (k, v.inner())).collect();
    let mut opt = AdamW::new(AdamWConfig::from_recipe(t), inner_params);
    let mut state = TrainerState {
        step: 0,
        cursor: DataCursor::default(),
        seed: recipe.seed,
        losses: Vec::new(),
        tokens_seen: 0,
        version: env!("CARGO_PKG_VERSION").to_owned(),
    };
    if let Some(ck) = &resumed {
        let dir = resume_dir.clone().unwrap_or_default();
        if ck.master.keys().ne(opt.master.keys()) {
            return Err(TrainError::Mismatch { path: dir, problem: "its adapter tensors are not the ones this recipe creates".into() });
        }
        for (name, (shape, _)) in &ck.master {
            let want = opt.master[name].dims().to_vec();
            if *shape != want {
                return Err(TrainError::Mismatch { path: dir, problem: format!("{name} has shape {shape:?}, the model needs {want:?}") });
            }
        }
        // The recipe decides the state format; a checkpoint of the other format is refused
        // rather than converted (its moments would not continue the run bit for bit).
        if ck.q8.keys().ne(opt.q8.keys()) {
            let (has, wants) = (if ck.q8.is_empty() { "adamw" } else { "adamw_8bit" }, if opt.q8.is_empty() { "adamw" } else { "adamw_8bit" });
            return Err(TrainError::Mismatch {
                path: dir,
                problem: format!("its optimizer states are {has} but the recipe sets train.optimizer = \"{wants}\"; resume with the optimizer the run started with"),
            });
        }
        let up = |m: &BTreeMap<String, HostTensor>| m.iter().map(|(k, v)| (k.clone(), to_device::<B::InnerBackend>(v, device))).collect();
        opt.master = up(&ck.master);
        opt.m = up(&ck.m);
        opt.v = up(&ck.v);
        opt.q8 = ck.q8.iter().map(|(k, s)| (k.clone(), Q8Moments::from_host(s, device))).collect();
        opt.steps = ck.state.step;
        state = ck.state.clone();
        load_into_model(&mut model, &opt.master);
        eprintln!("resumed from {} at step {}", dir.display(), state.step);
    }

    let mut metrics = Metrics::open(&recipe.output_dir)?;
    let checkpoints_dir = recipe.output_dir.join("checkpoints");
    let adapter_config = crate::lora::peft_io::peft_config_json(&spec, &recipe.lora.target_modules, &prepared.model_dir.display().to_string());
    let save = |state: &TrainerState, opt: &AdamW<B::InnerBackend>| -> Result<PathBuf, TrainError> {
        let ck = Checkpoint {
            state: state.clone(),
            recipe_toml: recipe.to_toml(),
            adapter_config: adapter_config.clone(),
            master: host_map(&opt.master),
            m: host_map(&opt.m),
            v: host_map(&opt.v),
            q8: opt.q8.iter().map(|(k, q)| (k.clone(), q.to_host())).collect(),
        };
        Ok(ck.save(&checkpoints_dir, t.keep_last)?)
    };

    let initial_eval_loss = if state.step == 0 {
        let l = mean_eval_loss(&model, prepared, recipe);
        if let Some(l) = l {
            let acc = field_accuracy(&model, prepared, recipe);
            metrics.eval(0, l, acc);
            eprintln!("step 0: eval loss {l:.4}{}", fmt_acc(acc));
        }
        l
    } else {
        None
    };

    let mut batcher = Batcher::new(&prepared.train, t.micro_batch_size, recipe.seed, prepared.padding);
    let single = MicroSettings { seed: recipe.seed, checkpointing: t.gradient_checkpointing, take_turns: false };
    let bar = if std::io::stderr().is_terminal() { ProgressBar::new(t.max_steps as u64) } else { ProgressBar::hidden() };
    bar.set_style(
        ProgressStyle::with_template("{bar:30} step {pos}/{len} {msg} [{elapsed} < {eta}]")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    bar.set_position(state.step as u64);
    let start = Instant::now();
    let (mut tokens_done, mut first_loss, mut last_loss, mut last_ckpt) = (0usize, None, None, None);
    let mut last_eval = None;
    let mut interrupted = false;
    let mut trim = crate::gpu_runtime::LocalMemoryTrim::new(recipe.hardware.device);
    while state.step < t.max_steps {
        let step_start = Instant::now();
        let plan = StepBatches::take(&mut batcher, state.cursor, t.grad_accum);
        state.cursor = plan.next;
        let (scored, seen) = (plan.scored_tokens(), plan.tokens());
        let (mut grads, nll) = match group.as_mut() {
            None => accumulate(&model, &plan, 0..plan.len(), state.step, single),
            Some(g) => g.step(&model, &opt.master, &plan, state.step)?,
        };
        let loss = total_nll(&nll) / scored.max(1) as f64;
        if !loss.is_finite() {
            bar.abandon();
            return Err(TrainError::NonFinite { step: state.step + 1, loss, examples: plan.example_ids() });
        }
        let lr = learning_rate(t, state.step);
        let grad_norm = clip_global_norm(&mut grads, t.max_grad_norm);
        if !grad_norm.is_finite() {
            bar.abandon();
            let tensors = super::optim::non_finite(&grads);
            return Err(TrainError::NonFiniteGradient { step: state.step + 1, grad_norm, examples: plan.example_ids(), tensors });
        }
        opt.step(grads, lr);
        load_into_model(&mut model, &opt.master);
        trim.after_step();
        state.step += 1;
        state.tokens_seen += seen;
        state.losses.push((state.step, loss));
        tokens_done += seen;
        first_loss.get_or_insert(loss);
        last_loss = Some(loss);
        let secs = step_start.elapsed().as_secs_f64();
        let m = StepMetrics {
            step: state.step,
            loss,
            lr,
            grad_norm,
            tokens_per_sec: seen as f64 / secs.max(1e-9),
            scored_tokens: scored,
            tokens: seen,
            seconds: secs,
            peak_memory_bytes: crate::gpu_runtime::reserved_bytes(recipe.hardware.device),
        };
        metrics.step(&m);
        bar.set_position(state.step as u64);
        bar.set_message(format!("loss {loss:.4} lr {lr:.2e} {:.0} tok/s", m.tokens_per_sec));
        if bar.is_hidden() && (state.step % 10 == 0 || state.step == 1) {
            eprintln!("step {}/{}: loss {loss:.4} lr {lr:.2e} grad_norm {grad_norm:.3} {:.0} tok/s", state.step, t.max_steps, m.tokens_per_sec);
        }
        let done = state.step == t.max_steps;
        if (t.eval_every > 0 && state.step % t.eval_every == 0) || done {
            if let Some(l) = mean_eval_loss(&model, prepared, recipe) {
                let acc = field_accuracy(&model, prepared, recipe);
                metrics.eval(state.step, l, acc);
                let line = format!("step {}: eval loss {l:.4}{}", state.step, fmt_acc(acc));
                if bar.is_hidden() { eprintln!("{line}") } else { bar.println(line) }
                last_eval = Some(l);
            }
        }
        interrupted = INTERRUPTED.load(Ordering::SeqCst);
        if (t.save_every > 0 && state.step % t.save_every == 0) || done || interrupted {
            metrics.flush();
            last_ckpt = Some(save(&state, &opt)?);
        }
        if interrupted {
            break;
        }
    }
    bar.finish_and_clear();
    metrics.flush();
    let adapter_dir = recipe.output_dir.join("adapter");
    if let Some(ck) = &last_ckpt {
        export_adapter(ck, &adapter_dir)?;
    }
    let seconds = start.elapsed().as_secs_f64();
    Ok(TrainSummary {
        steps: state.step,
        first_loss,
        last_loss,
        eval_loss: last_eval,
        initial_eval_loss,
        tokens_per_sec: tokens_done as f64 / seconds.max(1e-9),
        seconds,
        params: (trainable_params, total_params + trainable_params),
        checkpoint: last_ckpt,
        adapter_dir,
        interrupted,
    })
}

/// Copies the PEFT files of a checkpoint into `<output_dir>/adapter` (replacing it atomically).
fn export_adapter(checkpoint: &Path, adapter_dir: &Path) -> Result<(), TrainError> {
    let werr = |path: &Path| {
        let path = path.to_owned();
        move |source| TrainError::Checkpoint(CheckpointError::Write { path, source })
    };
    let tmp = adapter_dir.with_extension("partial");
    if tmp.exists() {
        std::fs::remove_dir_all(&tmp).map_err(werr(&tmp))?;
    }
    std::fs::create_dir_all(&tmp).map_err(werr(&tmp))?;
    for f in ["adapter_model.safetensors", "adapter_config.json"] {
        std::fs::copy(checkpoint.join(f), tmp.join(f)).map_err(werr(&tmp.join(f)))?;
    }
    if adapter_dir.exists() {
        std::fs::remove_dir_all(adapter_dir).map_err(werr(adapter_dir))?;
    }
    std::fs::rename(&tmp, adapter_dir).map_err(werr(adapter_dir))
}
