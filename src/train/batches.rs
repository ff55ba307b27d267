//! Micro-batches from tokenized examples: a deterministic order per epoch (seeded shuffle,
//! then length buckets so a batch pads little), right padding, and next-token targets that
//! count only assistant tokens.
//!
//! The order of epoch `e` is a pure function of `(seed, e)`, so the data cursor saved in a
//! checkpoint is just `(epoch, index)` and resume replays the exact same batches.

use crate::data::prompt::Encoded;
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::SeedableRng;
use serde::{Deserialize, Serialize};

/// Where the next micro-batch comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct DataCursor {
    /// Passes over the training set completed.
    pub epoch: usize,
    /// Micro-batches of this epoch already consumed.
    pub index: usize,
}

/// One padded micro-batch, on the host.
#[derive(Debug, Clone, PartialEq)]
pub struct Batch {
    /// Indices of the examples (for error messages: which batch produced a NaN).
    pub example_ids: Vec<usize>,
    /// `[batch * seq]` token ids, right-padded with `pad_id`.
    pub input_ids: Vec<i64>,
    /// `[batch * seq]` the token each position must predict (0 where not scored).
    pub targets: Vec<i64>,
    /// `[batch * seq]` 1.0 where the position is scored, else 0.0.
    pub weights: Vec<f32>,
    /// Rows.
    pub batch: usize,
    /// Padded length.
    pub seq: usize,
}

/// How micro-batches are padded: on the right with `id`, to the longest sequence of the batch
/// rounded up to a multiple of `multiple` (transformers' `pad_to_multiple_of`). GPU kernels
/// are compiled and autotuned per shape, so rounding bounds the shapes a run meets (2,048
/// tokens in multiples of 256: 8 shapes instead of hundreds); pad positions are never scored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Padding {
    /// Token id of pad positions.
    pub id: u32,
    /// Sequence lengths are rounded up to a multiple of this (1 = no rounding).
    pub multiple: usize,
}

impl Padding {
    /// The padded length of a batch whose longest sequence has `longest` tokens.
    pub fn length(&self, longest: usize) -> usize {
        longest.max(1).next_multiple_of(self.multiple.max(1))
    }
}

impl Batch {
    /// Scored positions.
    pub fn scored_tokens(&self) -> usize {
        self.weights.iter().filter(|&&w| w > 0.0).count()
    }

    /// Builds a right-padded batch. Position `t` predicts token `t + 1` when that token is an
    /// assistant token; right padding needs no attention mask under a causal mask because
    /// real tokens never attend to later (pad) positions.
    pub fn collate(examples: &[(usize, &Encoded)], padding: Padding) -> Self {
        let seq = padding.length(examples.iter().map(|(_, e)| e.input_ids.len()).max().unwrap_or(1));
        let batch = examples.len();
        let mut b = Batch {
            example_ids: examples.iter().map(|(i, _)| *i).collect(),
            input_ids: vec![padding.id as i64; batch * seq],
            targets: vec![0; batch * seq],
            weights: vec![0.0; batch * seq],
            batch,
            seq,
        };
        for (row, (_, e)) in examples.iter().enumerate() {
            let base = row * seq;
            for (t, &id) in e.input_ids.iter().enumerate() {
                b.input_ids[base + t] = id as i64;
                if t + 1 < e.input_ids.len() && e.loss_mask[t + 1] {
                    b.targets[base + t] = e.input_ids[t + 1] as i64;
                    b.weights[base + t] = 1.0;
                }
            }
        }
        b
    }
}

/// The training set's micro-batch plan.
pub struct Batcher<'a> {
    examples: &'a [Encoded],
    micro_batch_size: usize,
    seed: u64,
    padding: Padding,
    /// Micro-batches of the current epoch, as example indices.
    plan: Vec<Vec<usize>>,
    plan_epoch: Option<usize>,
}

/// Examples sorted by length within windows of this many micro-batches.
const BUCKET_WINDOW: usize = 16;

impl<'a> Batcher<'a> {
    /// A batcher over `examples` (non-empty).
    pub fn new(examples: &'a [Encoded], micro_batch_size: usize, seed: u64, padding: Padding) -> Self {
        Self { examples, micro_batch_size: micro_batch_size.max(1), seed, padding, plan: Vec::new(), plan_epoch: None }
    }

    /// Micro-batches per epoch.
    pub fn batches_per_epoch(&self) -> usize {
        self.examples.len().div_ceil(self.micro_batch_size)
    }

    fn epoch_plan(&self, epoch: usize) -> Vec<Vec<usize>> {
        let mut rng = StdRng::seed_from_u64(self.seed ^ (epoch as u64 + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15));
        let mut order: Vec<usize> = (0..self.examples.len()).collect();
        order.shuffle(&mut rng);
        let mut plan = Vec::new();
        for window in order.chunks(self.micro_batch_size * BUCKET_WINDOW) {
            let mut w = window.to_vec();
            w.sort_by_key(|&i| (self.examples[i].input_ids.len(), i));
            let mut batches: Vec<Vec<usize>> = w.chunks(self.micro_batch_size).map(<[usize]>::to_vec).collect();
            batches.shuffle(&mut rng);
            plan.extend(batches);
        }
        plan
    }

    /// The micro-batch at `cursor`, and the cursor after it.
    pub fn next(&mut self, cursor: DataCursor) -> (Batch, DataCursor) {
        let mut cursor = cursor;
        if cursor.index >= self.batches_per_epoch() {
            cursor = DataCursor { epoch: cursor.epoch + 1, index: 0 };
        }
        if self.plan_epoch != Some(cursor.epoch) {
            self.plan = self.epoch_plan(cursor.epoch);
            self.plan_epoch = Some(cursor.epoch);
        }
        let ids = &self.plan[cursor.index];
        let examples: Vec<(usize, &Encoded)> = ids.iter().map(|&i| (i, &self.examples[i])).collect();
        let batch = Batch::collate(&examples, self.padding);
        (batch, DataCursor { epoch: cursor.epoch, index: cursor.index + 1 })
    }
}

/// Fixed-order micro-batches of a held-out set (sorted by length; no shuffling).
pub fn eval_batches(examples: &[Encoded], micro_batch_size: usize, padding: Padding) -> Vec<Batch> {
    let mut order: Vec<usize> = (0..examples.len()).collect();
    order.sort_by_key(|&i| (examples[i].input_ids.len(), i));
    order
        .chunks(micro_batch_size.max(1))
        .map(|ids| Batch::collate(&ids.iter().map(|&i| (i, &examples[i])).collect::<Vec<_>>(), padding))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ex(len: usize, answer: usize) -> Encoded {
        Encoded { input_ids: (0..len as u32).map(|i| i + 10).collect(), loss_mask: (0..len).map(|i| i >= len - answer).collect() }
    }

    #[test]
    fn collate_rounds_the_length_up_and_never_scores_padding() {
        let (a, b) = (ex(5, 2), ex(3, 1));
        let plain = Batch::collate(&[(0, &a), (1, &b)], Padding { id: 7, multiple: 1 });
        let padded = Batch::collate(&[(0, &a), (1, &b)], Padding { id: 7, multiple: 4 });
        assert_eq!(padded.seq, 8);
        assert_eq!(padded.scored_tokens(), plain.scored_tokens());
        for row in 0..2 {
            let (p, q) = (row * plain.seq, row * padded.seq);
            assert_eq!(&padded.weights[q..q + plain.seq], &plain.weights[p..p + plain.seq]);
            assert_eq!(&padded.targets[q..q + plain.seq], &plain.targets[p..p + plain.seq]);
            assert!(padded.input_ids[q + plain.seq..q + 8].iter().all(|&t| t == 7));
            assert!(padded.weights[q + plain.seq..q + 8].iter().all(|&w| w == 0.0));
        }
        assert_eq!(Padding { id: 0, multiple: 256 }.length(300), 512);
        assert_eq!(Padding { id: 0, multiple: 256 }.length(256), 256);
    }

    #[test]
    fn collate_shifts_targets_and_pads() {
        let a = ex(5, 2);
        let b = ex(3, 1);
        let batch = Batch::collate(&[(0, &a), (1, &b)], Padding { id: 0, multiple: 1 });
        assert_eq!((batch.batch, batch.seq), (2, 5));
        // Row 0: tokens 13, 14 are the answer, predicted from positions 2 and 3.
        assert_eq!(&batch.weights[..5], &[0.0, 0.0, 1.0, 1.0, 0.0]);
        assert_eq!(&batch.targets[..5], &[0, 0, 13, 14, 0]);
        // Row 1 is padded with the pad id and scores only position 1 (predicting 12).
        assert_eq!(&batch.input_ids[5..], &[10, 11, 12, 0, 0]);
        assert_eq!(&batch.weights[5..], &[0.0, 1.0, 0.0, 0.0, 0.0]);
        assert_eq!(batch.scored_tokens(), 3);
    }

    #[test]
    fn epochs_cover_every_example_once_and_replay_from_a_cursor() {
        let examples: Vec<Encoded> = (0..37).map(|i| ex(4 + i % 7, 2)).collect();
        let mut batcher = Batcher::new(&examples, 4, 7, Padding { id: 0, multiple: 1 });
        assert_eq!(batcher.batches_per_epoch(), 10);
        let mut cursor = DataCursor::default();
        let mut seen = Vec::new();
        let mut log = Vec::new();
        for _ in 0..25 {
            let (b, next) = batcher.next(cursor);
            if next.epoch == 0 {
                seen.extend(b.example_ids.clone());
            }
            log.push((cursor, b));
            cursor = next;
        }
        seen.sort_unstable();
        assert_eq!(seen, (0..37).collect::<Vec<_>>(), "epoch 0 visits every example once");
        // A fresh batcher resumed at any cursor produces the same batches.
        let mut fresh = Batcher::new(&examples, 4, 7, Padding { id: 0, multiple: 1 });
        for (c, b) in &log[13..] {
            assert_eq!(&fresh.next(*c).0, b);
        }
        // Epochs differ in order.
        assert_ne!(log[0].1.example_ids, log[10].1.example_ids);
    }
}
