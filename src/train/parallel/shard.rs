//! Which micro-batches of an optimizer step each rank runs.
//!
//! A step of single-device training takes `grad_accum` consecutive micro-batches from the data
//! cursor. With N ranks every rank takes the same `grad_accum` micro-batches from the same
//! cursor (the order is a pure function of `(seed, epoch)`, see [`Batcher`]) and runs the
//! contiguous block `rank * k .. (rank + 1) * k`, `k = grad_accum / N`. So:
//! - the union over ranks is the single-device step, every micro-batch exactly once;
//! - every rank knows the step's scored-token count (the loss normalizer) without asking;
//! - the cursor after the step is the single-device cursor, so a checkpoint does not depend on
//!   N, and a resumed run re-derives the same shards from the saved cursor.

use crate::train::batches::{Batch, Batcher, DataCursor};
use std::ops::Range;

/// The micro-batches of one optimizer step: what single-device training processes.
#[derive(Debug, Clone, PartialEq)]
pub struct StepBatches {
    /// The cursor the step started from.
    pub start: DataCursor,
    /// `grad_accum` micro-batches, in data order.
    pub batches: Vec<Batch>,
    /// The cursor after the step.
    pub next: DataCursor,
}

impl StepBatches {
    /// Takes `grad_accum` micro-batches from `start` (crossing into the next epoch if needed).
    pub fn take(batcher: &mut Batcher<'_>, start: DataCursor, grad_accum: usize) -> Self {
        let mut cursor = start;
        let mut batches = Vec::with_capacity(grad_accum);
        for _ in 0..grad_accum {
            let (b, next) = batcher.next(cursor);
            cursor = next;
            batches.push(b);
        }
        Self { start, batches, next: cursor }
    }

    /// Micro-batches in the step.
    pub fn len(&self) -> usize {
        self.batches.len()
    }

    /// True for a step without micro-batches.
    pub fn is_empty(&self) -> bool {
        self.batches.is_empty()
    }

    /// Scored (assistant) positions of the whole step: the loss normalizer of every rank.
    pub fn scored_tokens(&self) -> usize {
        self.batches.iter().map(Batch::scored_tokens).sum()
    }

    /// Token positions of the whole step, padding included (throughput accounting).
    pub fn tokens(&self) -> usize {
        self.batches.iter().map(|b| b.input_ids.len()).sum()
    }

    /// The examples of the step (for error messages).
    pub fn example_ids(&self) -> Vec<usize> {
        self.batches.iter().flat_map(|b| b.example_ids.iter().copied()).collect()
    }
}

/// How a step's micro-batches are split between ranks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sharding {
    grad_accum: usize,
    ranks: usize,
}

/// A split that cannot be made (the recipe check reports it first, naming the key).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{ranks} ranks cannot share {grad_accum} micro-batches per step evenly: make train.grad_accum a multiple of the number of hardware.devices")]
pub struct ShardError {
    /// Micro-batches per step.
    pub grad_accum: usize,
    /// Ranks.
    pub ranks: usize,
}

impl Sharding {
    /// `grad_accum` micro-batches per step over `ranks` ranks; `grad_accum` must be a positive
    /// multiple of `ranks`, so every rank runs the same number of micro-batches.
    pub fn new(grad_accum: usize, ranks: usize) -> Result<Self, ShardError> {
        if ranks == 0 || grad_accum == 0 || grad_accum % ranks != 0 {
            return Err(ShardError { grad_accum, ranks });
        }
        Ok(Self { grad_accum, ranks })
    }

    /// Ranks.
    pub fn ranks(&self) -> usize {
        self.ranks
    }

    /// Micro-batches per rank and step.
    pub fn per_rank(&self) -> usize {
        self.grad_accum / self.ranks
    }

    /// Indices (into [`StepBatches::batches`]) of the micro-batches `rank` runs; empty for a
    /// rank that does not exist.
    pub fn micro_batches(&self, rank: usize) -> Range<usize> {
        if rank >= self.ranks {
            return 0..0;
        }
        let k = self.per_rank();
        rank * k..(rank + 1) * k
    }
}
