//! What every rank is doing, and a watchdog that says so when a step stops making progress.
//!
//! A data-parallel step waits on all ranks: a rank that is slow (kernel compilation in the
//! first steps takes minutes on a GPU) looks exactly like a rank that is stuck (a collective
//! that never completes), and both look like a silent terminal. Each rank records its phase;
//! the watchdog prints the ranks that have been busy in one phase for longer than its period,
//! so a stall names the rank and what it was doing.

use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// How often the watchdog looks, and how long a phase must last before it is reported.
pub const STALL_REPORT_EVERY: Duration = Duration::from_secs(60);

/// What a rank is doing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Loading the frozen base and adding adapters.
    Building,
    /// Copying the step's adapter masters from rank 0.
    LoadingMasters,
    /// Forward and backward passes of its micro-batches.
    Computing,
    /// In the gradient sum (NCCL all-reduce on CUDA).
    Reducing,
    /// Waiting for work (or, on rank 0, for the other ranks, or running the optimizer).
    Idle,
}

impl Phase {
    fn describe(self) -> &'static str {
        match self {
            Phase::Building => "building its model",
            Phase::LoadingMasters => "copying the adapter weights from rank 0",
            Phase::Computing => "running forward/backward",
            Phase::Reducing => "summing gradients",
            Phase::Idle => "idle",
        }
    }
}

#[derive(Debug, Clone, Copy)]
struct Entry {
    phase: Phase,
    step: usize,
    since: Instant,
}

/// The phases of a group's ranks, shared by the rank threads and the watchdog.
#[derive(Debug, Clone)]
pub struct Phases(Arc<Vec<Mutex<Entry>>>);

impl Phases {
    /// `ranks` ranks, all building their models.
    pub fn new(ranks: usize) -> Self {
        let now = Instant::now();
        Self(Arc::new((0..ranks).map(|_| Mutex::new(Entry { phase: Phase::Building, step: 0, since: now })).collect()))
    }

    /// Rank `rank` enters `phase` during optimizer step `step` (0-based).
    pub fn set(&self, rank: usize, phase: Phase, step: usize) {
        if let Some(e) = self.0.get(rank) {
            // A rank that panicked while holding the lock left a plain value: still readable.
            *e.lock().unwrap_or_else(|p| p.into_inner()) = Entry { phase, step, since: Instant::now() };
        }
    }

    /// The ranks busy in one phase for at least `min`, as of `now`, as one line; `None` when
    /// every rank is idle or recently changed phase.
    pub fn report(&self, now: Instant, min: Duration) -> Option<String> {
        let stuck: Vec<String> = self
            .0
            .iter()
            .enumerate()
            .filter_map(|(rank, e)| {
                let e = *e.lock().unwrap_or_else(|p| p.into_inner());
                let busy = now.saturating_duration_since(e.since);
                (e.phase != Phase::Idle && busy >= min)
                    .then(|| format!("rank {rank} {} (step {}) for {} s", e.phase.describe(), e.step + 1, busy.as_secs()))
            })
            .collect();
        (!stuck.is_empty()).then(|| {
            format!(
                "data parallel: {}. The first steps of a GPU run compile kernels (minutes); a rank that stays \
                 in 'summing gradients' while no other rank computes points at the NCCL all-reduce \
                 (run again with NCCL_DEBUG=INFO to see NCCL's side)",
                stuck.join("; ")
            )
        })
    }
}

/// Prints [`Phases::report`] every `every` until `stop` is dropped or sent to.
pub fn watch(phases: &Phases, stop: &Receiver<()>, every: Duration) {
    while let Err(RecvTimeoutError::Timeout) = stop.recv_timeout(every) {
        if let Some(line) = phases.report(Instant::now(), every) {
            eprintln!("{line}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reports_busy_ranks_only_after_the_period() {
        let p = Phases::new(3);
        let t0 = Instant::now();
        p.set(0, Phase::Reducing, 4);
        p.set(1, Phase::Computing, 4);
        p.set(2, Phase::Idle, 4);
        assert_eq!(p.report(t0, Duration::from_secs(60)), None, "nothing has lasted a minute yet");
        let later = Instant::now() + Duration::from_secs(61);
        let line = p.report(later, Duration::from_secs(60)).expect("two busy ranks");
        assert!(line.contains("rank 0 summing gradients (step 5)"), "{line}");
        assert!(line.contains("rank 1 running forward/backward (step 5)"), "{line}");
        assert!(!line.contains("rank 2"), "an idle rank is not reported: {line}");
    }

    #[test]
    fn a_new_phase_restarts_the_clock() {
        let p = Phases::new(1);
        let later = Instant::now() + Duration::from_secs(61);
        assert!(p.report(later, Duration::from_secs(60)).is_some(), "building for a minute is reported");
        p.set(0, Phase::Idle, 0);
        assert_eq!(p.report(later, Duration::from_secs(60)), None);
    }
}
