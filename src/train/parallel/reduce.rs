//! Summing the ranks' gradients: the [`GradReducer`] abstraction and its in-process
//! implementation, [`HostReducer`] (threads of one process; the CUDA one is `nccl`).
//!
//! Why a sum and not a mean: every rank scales its micro-batches by `1 / scored`, where
//! `scored` is the scored-token count of the *whole step* (every rank computes it from the
//! step's batches, [`super::StepBatches::scored_tokens`]). Rank `r` therefore holds
//! `sum_{i in shard r} grad(nll_i) / scored`, and the sum over ranks is exactly the
//! single-device gradient `sum_i grad(nll_i) / scored`. A mean would divide by N once more;
//! normalizing per rank by its own token count and then averaging would weight the tokens of
//! short shares more than those of long ones.

use crate::train::optim::NamedTensors;
use burn::tensor::backend::Backend;
use std::sync::mpsc::{channel, Receiver, Sender};

/// Errors of a gradient reduction.
#[derive(Debug, thiserror::Error)]
pub enum ReduceError {
    #[error("rank {rank} left the gradient sum (its thread stopped); its own error is reported when known")]
    RankGone { rank: usize },
    #[error("rank {rank} sent gradients for other tensors than rank 0 (`{name}`); every rank must train the same adapters")]
    Mismatch { rank: usize, name: String },
}

/// Sums per-parameter gradients over all ranks of a group.
///
/// Every rank calls [`GradReducer::reduce_sum`] exactly once per step, with the same names
/// and shapes (f32 `[r, in]` for `lora_A`, `[out, r]` for `lora_B`), each on its own device.
pub trait GradReducer<B: Backend>: Send {
    /// This rank's index in the group (0 = the rank that runs the optimizer).
    fn rank(&self) -> usize;

    /// Sums `grads` over the ranks. Returns the sum on rank 0 (on rank 0's device) and `None`
    /// on the other ranks, which need only the updated weights rank 0 sends next.
    fn reduce_sum(&mut self, grads: NamedTensors<B>) -> Result<Option<NamedTensors<B>>, ReduceError>;
}

/// Ranks of one process (threads): ranks 1.. send their gradients to rank 0 over channels and
/// rank 0 adds them in rank order, on its own device ([`burn::tensor::Tensor::to_device`]
/// copies between devices; on the CPU it is a no-op). The fixed order makes a run
/// reproducible: the same ranks give bit-identical results run after run, and across resume.
pub struct HostReducer<B: Backend> {
    rank: usize,
    link: Link<B>,
}

enum Link<B: Backend> {
    /// Rank 0: one receiver per other rank, in rank order.
    Root(Vec<Receiver<NamedTensors<B>>>),
    /// Another rank: the channel to rank 0.
    Leaf(Sender<NamedTensors<B>>),
}

impl<B: Backend> HostReducer<B> {
    /// The reducers of a group of `ranks` ranks, index = rank.
    pub fn group(ranks: usize) -> Vec<Self> {
        let (senders, receivers): (Vec<_>, Vec<_>) = (1..ranks.max(1)).map(|_| channel()).unzip();
        let mut group = vec![Self { rank: 0, link: Link::Root(receivers) }];
        group.extend(senders.into_iter().enumerate().map(|(i, tx)| Self { rank: i + 1, link: Link::Leaf(tx) }));
        group
    }
}

impl<B: Backend> GradReducer<B> for HostReducer<B> {
    fn rank(&self) -> usize {
        self.rank
    }

    fn reduce_sum(&mut self, grads: NamedTensors<B>) -> Result<Option<NamedTensors<B>>, ReduceError> {
        let receivers = match &self.link {
            Link::Leaf(tx) => return tx.send(grads).map(|()| None).map_err(|_| ReduceError::RankGone { rank: 0 }),
            Link::Root(receivers) => receivers,
        };
        let mut total = grads;
        for (i, rx) in receivers.iter().enumerate() {
            let rank = i + 1;
            let mut theirs = rx.recv().map_err(|_| ReduceError::RankGone { rank })?;
            for (name, acc) in total.iter_mut() {
                let g = theirs.remove(name).ok_or_else(|| ReduceError::Mismatch { rank, name: name.clone() })?;
                *acc = acc.clone() + g.to_device(&acc.device());
            }
            if let Some(name) = theirs.into_keys().next() {
                return Err(ReduceError::Mismatch { rank, name });
            }
        }
        Ok(Some(total))
    }
}
