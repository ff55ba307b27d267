//! Data-parallel training on the devices of one host (`[hardware] devices = [0, 1, ...]`):
//! one rank (thread) per device, each with its own copy of the frozen base, the step's
//! micro-batches split between the ranks, their gradients summed, one optimizer on rank 0.
//!
//! One optimizer step:
//! 1. Rank 0 sends every other rank an [`Order`]: the step number, the data cursor at the
//!    start of the step and the current f32 adapter masters, which the rank copies into its
//!    own model (through host memory; the masters and AdamW moments live on rank 0 only).
//! 2. Every rank takes the step's micro-batches from the cursor ([`StepBatches`]), so it knows
//!    the step's scored-token count, and runs its contiguous share ([`Sharding`]) with the
//!    single-device loss scale `1 / scored` and the single-device dropout seed of each
//!    micro-batch ([`step_seed`] of its index in the step).
//! 3. The shares are summed ([`GradReducer`]; why a sum: see [`reduce`]).
//! 4. Rank 0 clips, runs AdamW, evaluates and writes checkpoints as with one device.
//!
//! So N ranks compute what one device computes for the same global batch, up to the order of
//! the f32 additions of the micro-batch gradients (`(g0 + g1) + (g2 + g3)` instead of
//! `((g0 + g1) + g2) + g3`); tests/train_parallel.rs holds them to that.
//!
//! Burn's backend RNG is one per process (burn-ndarray's `SEED`, cubecl's `cubek::random`),
//! and step.rs reseeds it before each layer's dropout draws. Two ranks drawing at once would
//! take each other's masks, so with `lora.dropout > 0` the ranks take turns for each
//! micro-batch's forward/backward ([`rng_section`]); without dropout they run concurrently.

mod reduce;
// Used by the NCCL reducer; built (and unit-tested) on the CPU too.
#[cfg_attr(not(feature = "cuda"), allow(dead_code))]
mod rendezvous;
mod shard;
mod watch;

#[cfg(feature = "cuda")]
mod nccl;

#[cfg(feature = "cuda")]
pub use nccl::NcclReducer;
pub use reduce::{GradReducer, HostReducer, ReduceError};
pub use shard::{Sharding, ShardError, StepBatches};

use super::batches::{Batcher, DataCursor, Padding};
use watch::{Phase, Phases};
use super::optim::NamedTensors;
use super::recipe::{HardwareRecipe, Recipe};
use super::run::{load_into_model, TrainError};
use super::step::forward_backward;
use crate::backend::{BackendError, ComputeDtype, CpuBackend, DeviceSpec};
use crate::data::prompt::Encoded;
use crate::model::Qwen2ForCausalLM;
use burn::backend::Autodiff;
use burn::tensor::backend::{AutodiffBackend, Backend};
use burn::tensor::Tensor;
use std::ops::Range;
use std::sync::mpsc::{channel, Receiver, Sender};
use std::sync::{Mutex, MutexGuard};
use std::thread::{Scope, ScopedJoinHandle};

/// The reducers of a group, index = rank.
pub type Reducers<B> = Vec<Box<dyn GradReducer<B>>>;

/// Errors of the rank group.
#[derive(Debug, thiserror::Error)]
pub enum ParallelError {
    #[error(transparent)]
    Shard(#[from] ShardError),
    #[error(transparent)]
    Reduce(#[from] ReduceError),
    #[error("rank {rank} stopped without saying why (its thread ended)")]
    RankStopped { rank: usize },
    #[error("{devices} devices but {reducers} gradient reducers")]
    GroupSize { devices: usize, reducers: usize },
}

/// The dropout seed of micro-batch `micro` (its index in the step) of optimizer step `step`.
pub fn step_seed(seed: u64, step: usize, micro: usize) -> u64 {
    seed ^ ((step as u64) << 20 | micro as u64).wrapping_mul(0x2545_F491_4F6C_DD1D)
}

static RNG_SECTION: Mutex<()> = Mutex::new(());

/// Holds the process-wide backend RNG (seed, then draw) for one rank; see the module docs.
pub fn rng_section() -> MutexGuard<'static, ()> {
    // The guarded value is `()`: a rank that panicked while holding it left nothing broken.
    RNG_SECTION.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// How a rank runs its micro-batches.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MicroSettings {
    /// The recipe seed (dropout masks derive from it, the step and the micro-batch).
    pub seed: u64,
    /// Per-layer gradient checkpointing.
    pub checkpointing: bool,
    /// Hold [`rng_section`] around each forward/backward: several ranks with dropout.
    pub take_turns: bool,
}

/// Forward + backward of the micro-batches `micros` of `plan`, accumulating the gradients of
/// `nll / plan.scored_tokens()` (f32, by PEFT name) on the model's device. Returns them with
/// each micro-batch's NLL sum, by index in the step. With `micros = 0..plan.len()` this is
/// the single-device step.
pub fn accumulate<B: AutodiffBackend>(
    model: &Qwen2ForCausalLM<B>,
    plan: &StepBatches,
    micros: Range<usize>,
    step: usize,
    settings: MicroSettings,
) -> (NamedTensors<B::InnerBackend>, Vec<(usize, f64)>) {
    let scale = 1.0 / plan.scored_tokens().max(1) as f64;
    let mut grads = NamedTensors::new();
    let mut nll = Vec::with_capacity(micros.len());
    for micro in micros {
        let Some(batch) = plan.batches.get(micro) else { break };
        let _turn = settings.take_turns.then(rng_section);
        let seed = step_seed(settings.seed, step, micro);
        let l = forward_backward(model, batch, scale, settings.checkpointing, seed, &mut grads);
        nll.push((micro, l.nll_sum));
    }
    (grads, nll)
}

/// The step's NLL sum, added in micro-batch order whichever rank computed each term (so the
/// loss of a step does not depend on the number of ranks).
pub fn total_nll(per_micro: &[(usize, f64)]) -> f64 {
    let mut sorted = per_micro.to_vec();
    sorted.sort_by_key(|&(micro, _)| micro);
    sorted.iter().fold(0.0, |acc, &(_, l)| acc + l)
}

/// Work that runs on a group of ranks: the backend is picked once (as `backend::dispatch`
/// does) because the gradient sum depends on the concrete backend (NCCL exists only for CUDA).
pub trait ParallelTask {
    /// What the work returns.
    type Output;
    /// Runs on autodiff backend `B`; `devices[r]` and `reducers[r]` belong to rank `r`.
    fn run<B: AutodiffBackend>(self, devices: Vec<B::Device>, reducers: Reducers<B::InnerBackend>) -> Self::Output;
}

/// Runs `task` on the ranks of `hardware.devices`: CPU ranks share the CPU and sum through
/// [`HostReducer`]; CUDA ranks get one device each and sum through NCCL.
pub fn dispatch<T: ParallelTask>(hardware: &HardwareRecipe, task: T) -> Result<T::Output, BackendError> {
    let ordinals = hardware.devices.clone().unwrap_or_default();
    match (hardware.device, hardware.dtype) {
        (DeviceSpec::Cpu, ComputeDtype::F32) => {
            let n = ordinals.len();
            let reducers = HostReducer::<CpuBackend>::group(n).into_iter().map(|r| Box::new(r) as Box<dyn GradReducer<_>>).collect();
            Ok(task.run::<Autodiff<CpuBackend>>(vec![Default::default(); n], reducers))
        }
        (DeviceSpec::Cpu, ComputeDtype::Bf16) => Err(BackendError::CpuBf16),
        #[cfg(feature = "cuda")]
        (DeviceSpec::Cuda(_), dtype) => {
            use burn::backend::cuda::CudaDevice;
            use burn::backend::Cuda;
            let devices: Vec<CudaDevice> = ordinals.iter().map(|&i| CudaDevice::new(i)).collect();
            fn boxed<B: burn::tensor::backend::distributed::DistributedBackend>(devices: &[B::Device]) -> Reducers<B> {
                NcclReducer::<B>::group(devices).into_iter().map(|r| Box::new(r) as Box<dyn GradReducer<B>>).collect()
            }
            Ok(match dtype {
                ComputeDtype::F32 => {
                    let reducers = boxed::<Cuda<f32>>(&devices);
                    task.run::<Autodiff<Cuda<f32>>>(devices, reducers)
                }
                ComputeDtype::Bf16 => {
                    let reducers = boxed::<Cuda<half::bf16>>(&devices);
                    task.run::<Autodiff<Cuda<half::bf16>>>(devices, reducers)
                }
            })
        }
        #[cfg(not(feature = "cuda"))]
        (cuda @ DeviceSpec::Cuda(_), _) => Err(BackendError::NoCuda(cuda)),
    }
}

/// What every rank reads to build its micro-batches: borrowed from the run for its length.
#[derive(Clone, Copy)]
pub struct RankData<'env> {
    /// Tokenized training examples.
    pub train: &'env [Encoded],
    /// Sequences per micro-batch.
    pub micro_batch_size: usize,
    /// Micro-batches per optimizer step (all ranks together).
    pub grad_accum: usize,
    /// How micro-batches are padded.
    pub padding: Padding,
    /// How micro-batches run.
    pub settings: MicroSettings,
}

impl<'env> RankData<'env> {
    /// From the recipe and the tokenized examples, for `ranks` ranks.
    pub fn new(recipe: &Recipe, train: &'env [Encoded], padding: Padding, ranks: usize) -> Self {
        Self {
            train,
            micro_batch_size: recipe.train.micro_batch_size,
            grad_accum: recipe.train.grad_accum,
            padding,
            settings: MicroSettings {
                seed: recipe.seed,
                checkpointing: recipe.train.gradient_checkpointing,
                take_turns: ranks > 1 && recipe.lora.dropout > 0.0,
            },
        }
    }
}

/// Builds one rank's model on a device: the frozen base with fresh adapters, in training mode.
pub type BuildModel<'env, B> = &'env (dyn Fn(&<B as burn::tensor::backend::BackendTypes>::Device) -> Result<Qwen2ForCausalLM<B>, TrainError> + Sync);

/// What rank 0 tells the other ranks for each step.
struct Order<I: Backend> {
    step: usize,
    start: DataCursor,
    /// The current f32 masters, on rank 0's device.
    master: NamedTensors<I>,
}

/// What a rank answers.
enum Reply {
    /// The model is built.
    Ready,
    /// The step's share is done and summed: NLL sum per micro-batch index.
    Done(Vec<(usize, f64)>),
}

struct Worker<'scope, I: Backend> {
    rank: usize,
    orders: Option<Sender<Order<I>>>,
    replies: Receiver<Result<Reply, TrainError>>,
    handle: Option<ScopedJoinHandle<'scope, ()>>,
}

/// Rank 0's view of the group: the other ranks' threads and rank 0's end of the sum.
pub struct Group<'scope, B: AutodiffBackend> {
    sharding: Sharding,
    settings: MicroSettings,
    reducer: Box<dyn GradReducer<B::InnerBackend>>,
    workers: Vec<Worker<'scope, B::InnerBackend>>,
    phases: Phases,
    /// Dropped to stop the watchdog.
    stop_watchdog: Option<Sender<()>>,
    watchdog: Option<ScopedJoinHandle<'scope, ()>>,
}

impl<'scope, B: AutodiffBackend> Group<'scope, B> {
    /// Starts ranks 1.. on `devices[1..]` (each builds its model with `build`, concurrently
    /// with rank 0); rank 0 is the caller, on `devices[0]`.
    pub fn spawn<'env>(
        scope: &'scope Scope<'scope, 'env>,
        build: BuildModel<'env, B>,
        data: RankData<'env>,
        devices: Vec<B::Device>,
        reducers: Reducers<B::InnerBackend>,
    ) -> Result<Self, ParallelError> {
        if devices.len() != reducers.len() {
            return Err(ParallelError::GroupSize { devices: devices.len(), reducers: reducers.len() });
        }
        let sharding = Sharding::new(data.grad_accum, devices.len())?;
        let mut reducers = reducers.into_iter();
        let Some(reducer) = reducers.next() else {
            return Err(ParallelError::GroupSize { devices: 0, reducers: 0 });
        };
        let phases = Phases::new(devices.len());
        phases.set(0, Phase::Idle, 0);
        let mut workers = Vec::new();
        for (device, reducer) in devices.into_iter().skip(1).zip(reducers) {
            let rank = reducer.rank();
            let (orders, order_rx) = channel();
            let (reply_tx, replies) = channel();
            let rank_phases = phases.clone();
            let handle = scope.spawn(move || {
                rank_loop::<B>(rank, device, build, data, sharding, reducer, order_rx, reply_tx, &rank_phases)
            });
            workers.push(Worker { rank, orders: Some(orders), replies, handle: Some(handle) });
        }
        let (stop_watchdog, stop) = channel();
        let watched = phases.clone();
        let watchdog = scope.spawn(move || watch::watch(&watched, &stop, watch::STALL_REPORT_EVERY));
        Ok(Self {
            sharding,
            settings: data.settings,
            reducer,
            workers,
            phases,
            stop_watchdog: Some(stop_watchdog),
            watchdog: Some(watchdog),
        })
    }

    /// Ranks in the group, rank 0 included.
    pub fn ranks(&self) -> usize {
        self.sharding.ranks()
    }

    /// Waits until every other rank has built its model; the first error stops the run.
    pub fn ready(&mut self) -> Result<(), TrainError> {
        for w in &self.workers {
            match w.replies.recv() {
                Ok(Ok(Reply::Ready)) => {}
                Ok(Ok(Reply::Done(_))) => return Err(ParallelError::RankStopped { rank: w.rank }.into()),
                Ok(Err(e)) => return Err(TrainError::Rank { rank: w.rank, source: Box::new(e) }),
                Err(_) => return Err(ParallelError::RankStopped { rank: w.rank }.into()),
            }
        }
        Ok(())
    }

    /// One step on every rank: rank 0's share runs here on `model` (whose adapters hold
    /// `master`). Returns the summed gradients and the NLL sum of every micro-batch.
    pub fn step(
        &mut self,
        model: &Qwen2ForCausalLM<B>,
        master: &NamedTensors<B::InnerBackend>,
        plan: &StepBatches,
        step: usize,
    ) -> Result<(NamedTensors<B::InnerBackend>, Vec<(usize, f64)>), TrainError> {
        for w in &self.workers {
            let order = Order { step, start: plan.start, master: master.clone() };
            if w.orders.as_ref().is_none_or(|tx| tx.send(order).is_err()) {
                return Err(self.why_stopped(w.rank));
            }
        }
        self.phases.set(0, Phase::Computing, step);
        let (mut grads, mut nll) = accumulate(model, plan, self.sharding.micro_batches(0), step, self.settings);
        self.phases.set(0, Phase::Reducing, step);
        let grads = if plan.scored_tokens() > 0 {
            fill_missing(&mut grads, master);
            match self.reducer.reduce_sum(grads) {
                Ok(Some(total)) => total,
                Ok(None) => return Err(ParallelError::RankStopped { rank: 0 }.into()),
                Err(ReduceError::RankGone { rank }) => return Err(self.why_stopped(rank)),
                Err(e) => return Err(ParallelError::from(e).into()),
            }
        } else {
            // No rank has a gradient (no scored token in the whole step, which every rank
            // knows): nobody reduces, as one device would update nothing.
            grads
        };
        self.phases.set(0, Phase::Idle, step);
        for w in &self.workers {
            match w.replies.recv() {
                Ok(Ok(Reply::Done(theirs))) => nll.extend(theirs),
                Ok(Ok(Reply::Ready)) | Err(_) => return Err(ParallelError::RankStopped { rank: w.rank }.into()),
                Ok(Err(e)) => return Err(TrainError::Rank { rank: w.rank, source: Box::new(e) }),
            }
        }
        Ok((grads, nll))
    }

    /// The error a stopped rank reported, or that it stopped.
    fn why_stopped(&self, rank: usize) -> TrainError {
        let reported = self.workers.iter().find(|w| w.rank == rank).and_then(|w| w.replies.try_iter().find_map(Result::err));
        match reported {
            Some(e) => TrainError::Rank { rank, source: Box::new(e) },
            None => ParallelError::RankStopped { rank }.into(),
        }
    }
}

impl<B: AutodiffBackend> Drop for Group<'_, B> {
    /// Closes the order channels (each rank's loop ends) and joins the threads. A rank that
    /// panicked has already failed the step that was waiting for it.
    fn drop(&mut self) {
        self.stop_watchdog = None;
        if let Some(h) = self.watchdog.take() {
            let _ = h.join();
        }
        for w in &mut self.workers {
            w.orders = None;
        }
        for w in &mut self.workers {
            if let Some(h) = w.handle.take() {
                let _ = h.join();
            }
        }
    }
}

/// Zeros for the masters a rank got no gradient for (its micro-batches scored no token), so
/// every rank sums the same tensors, in the same order (NCCL requires it); `x + 0 = x`.
fn fill_missing<I: Backend>(grads: &mut NamedTensors<I>, master: &NamedTensors<I>) {
    for (name, m) in master {
        grads.entry(name.clone()).or_insert_with(|| m.zeros_like());
    }
}

/// The life of rank 1..: build the model, then for every order load the masters, run the
/// share, sum, and answer. Ends when rank 0 closes the order channel.
#[allow(clippy::too_many_arguments)]
fn rank_loop<B: AutodiffBackend>(
    rank: usize,
    device: B::Device,
    build: BuildModel<'_, B>,
    data: RankData<'_>,
    sharding: Sharding,
    mut reducer: Box<dyn GradReducer<B::InnerBackend>>,
    orders: Receiver<Order<B::InnerBackend>>,
    replies: Sender<Result<Reply, TrainError>>,
    phases: &Phases,
) {
    phases.set(rank, Phase::Building, 0);
    let mut model = match build(&device) {
        Ok(m) => m,
        Err(e) => {
            let _ = replies.send(Err(e));
            return;
        }
    };
    if replies.send(Ok(Reply::Ready)).is_err() {
        return;
    }
    let mut batcher = Batcher::new(data.train, data.micro_batch_size, data.settings.seed, data.padding);
    phases.set(rank, Phase::Idle, 0);
    while let Ok(order) = orders.recv() {
        phases.set(rank, Phase::LoadingMasters, order.step);
        // Through host memory, not `to_device`: with burn-cubecl's `distributed` feature a
        // cross-GPU `to_device` is an NCCL send/recv on the all-reduce's communicator, issued
        // from this thread into rank 0's queue while rank 0 computes (see `rendezvous`). The
        // masters are a few MB to a few hundred MB; the copy happens once per step.
        let master: NamedTensors<B::InnerBackend> =
            order.master.into_iter().map(|(k, t)| (k, Tensor::from_data(t.into_data(), &device))).collect();
        load_into_model(&mut model, &master);
        let plan = StepBatches::take(&mut batcher, order.start, data.grad_accum);
        phases.set(rank, Phase::Computing, order.step);
        let (mut grads, nll) = accumulate(&model, &plan, sharding.micro_batches(rank), order.step, data.settings);
        phases.set(rank, Phase::Reducing, order.step);
        let summed = if plan.scored_tokens() > 0 {
            fill_missing(&mut grads, &master);
            reducer.reduce_sum(grads).map(|_| ()).map_err(|e| TrainError::from(ParallelError::from(e)))
        } else {
            Ok(())
        };
        phases.set(rank, Phase::Idle, order.step);
        let failed = summed.is_err();
        if replies.send(summed.map(|()| Reply::Done(nll))).is_err() || failed {
            return;
        }
    }
}
