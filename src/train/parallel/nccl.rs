//! The CUDA gradient sum: NCCL all-reduce through Burn's collective API
//! (`DistributedBackend::all_reduce` of burn-backend 0.21, implemented for `CubeBackend` by
//! burn-cubecl's `distributed` feature; cubecl-cuda runs `ncclAllReduce` on a communication
//! stream, one communicator per device set, created on first use).
//!
//! Only the primitive is used, not Burn's `register_sync_parameters` / autodiff gradient
//! hooks: those need burn-autodiff's `distributed` feature, which makes `Autodiff<B>` require
//! `B: DistributedBackend` and so removes autodiff from the CPU backend (burn-ndarray has no
//! implementation) in the same build. Our gradients are already plain f32 tensors by name
//! after each rank's backward passes, which is what an all-reduce wants.
//!
//! Not yet seen working on several GPUs: the one run on two H200s finished no optimizer step
//! within 270 s after step 0's evaluation (README, "Several GPUs"); the protocol around it is
//! the one the CPU test checks with [`super::HostReducer`]. With burn-cubecl's `distributed`
//! feature every cross-GPU `to_device` is an NCCL send/recv on the same communicator as this
//! all-reduce, which is why the masters reach ranks 1.. through host memory instead.

use super::reduce::{GradReducer, ReduceError};
use super::rendezvous::Rendezvous;
use crate::train::optim::NamedTensors;
use burn::tensor::backend::distributed::{DistributedBackend, ReduceOperation};
use burn::tensor::backend::{DeviceId, DeviceOps};
use burn::tensor::{Tensor, TensorPrimitive};
use std::marker::PhantomData;
use std::sync::Arc;

/// One rank's handle on the NCCL group of a set of CUDA devices.
pub struct NcclReducer<B: DistributedBackend> {
    rank: usize,
    /// The group, identical (same order) on every rank: cubecl keys the communicator by it.
    device_ids: Vec<DeviceId>,
    /// Where the ranks meet before and after queuing their all-reduces (see `rendezvous`).
    meet: Arc<Rendezvous>,
    backend: PhantomData<B>,
}

impl<B: DistributedBackend> NcclReducer<B> {
    /// The reducers of the ranks on `devices`, index = rank.
    pub fn group(devices: &[B::Device]) -> Vec<Self> {
        let device_ids: Vec<DeviceId> = devices.iter().map(DeviceOps::id).collect();
        let meet = Arc::new(Rendezvous::new(devices.len()));
        (0..devices.len())
            .map(|rank| Self { rank, device_ids: device_ids.clone(), meet: meet.clone(), backend: PhantomData })
            .collect()
    }
}

impl<B: DistributedBackend> GradReducer<B> for NcclReducer<B> {
    fn rank(&self) -> usize {
        self.rank
    }

    /// One in-place `ncclAllReduce(sum)` per tensor, issued in name order (a `BTreeMap`), which
    /// is the same on every rank as NCCL requires; then one wait on the communication stream.
    /// The ranks meet before queuing (all have finished computing) and after (all have
    /// queued), so no rank makes a synchronizing CUDA call while a collective is half launched.
    /// NCCL gives every rank the sum; only rank 0's is used.
    fn reduce_sum(&mut self, grads: NamedTensors<B>) -> Result<Option<NamedTensors<B>>, ReduceError> {
        let gone = |a: super::rendezvous::Abandoned| ReduceError::RankGone { rank: a.rank };
        self.meet.wait().map_err(gone)?;
        let pending: Vec<_> = grads
            .into_iter()
            .map(|(name, g)| (name, B::all_reduce(g.into_primitive().tensor(), ReduceOperation::Sum, self.device_ids.clone())))
            .collect();
        self.meet.wait().map_err(gone)?;
        let summed: NamedTensors<B> =
            pending.into_iter().map(|(name, c)| (name, Tensor::from_primitive(TensorPrimitive::Float(c.resolve())))).collect();
        Ok((self.rank == 0).then_some(summed))
    }
}

impl<B: DistributedBackend> Drop for NcclReducer<B> {
    /// A rank that stops (error or panic) releases the others from the rendezvous.
    fn drop(&mut self) {
        self.meet.abandon(self.rank);
    }
}
