//! A reusable barrier for the ranks of one process that a stopping rank can break.
//!
//! The NCCL reducer meets the other ranks twice per step: once before any rank queues its
//! all-reduce (every rank has finished its forward/backward passes and the host reads they
//! end with) and once after every rank has queued them (before anyone waits on the result).
//! In one process with one thread per GPU, a host-synchronizing CUDA call on one thread (a
//! pinned-buffer free, a device-wide sync) while another GPU's NCCL kernel spins waiting for
//! a peer that has not been launched yet can deadlock (NCCL's documentation and issue tracker
//! describe this hazard); with both meetings no rank synchronizes while a collective is half
//! launched. `std::sync::Barrier` cannot be broken: a rank that fails would leave the others
//! waiting forever, so here a rank that leaves abandons the rendezvous and wakes them with an
//! error naming it.

use std::sync::{Condvar, Mutex};

/// Why a wait ended without every rank arriving.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("rank {rank} left the group while the others waited for it")]
pub struct Abandoned {
    /// The rank that left.
    pub rank: usize,
}

#[derive(Debug)]
struct State {
    arrived: usize,
    generation: u64,
    left: Option<usize>,
}

/// The meeting point of `n` ranks.
#[derive(Debug)]
pub struct Rendezvous {
    n: usize,
    state: Mutex<State>,
    cv: Condvar,
}

impl Rendezvous {
    /// A rendezvous for `n` ranks.
    pub fn new(n: usize) -> Self {
        Self { n: n.max(1), state: Mutex::new(State { arrived: 0, generation: 0, left: None }), cv: Condvar::new() }
    }

    /// Blocks until all `n` ranks have called `wait` for this round, or one has left.
    pub fn wait(&self) -> Result<(), Abandoned> {
        let mut s = self.state.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(rank) = s.left {
            return Err(Abandoned { rank });
        }
        s.arrived += 1;
        if s.arrived == self.n {
            s.arrived = 0;
            s.generation += 1;
            self.cv.notify_all();
            return Ok(());
        }
        let round = s.generation;
        while s.generation == round && s.left.is_none() {
            s = self.cv.wait(s).unwrap_or_else(|p| p.into_inner());
        }
        match (s.generation == round, s.left) {
            (true, Some(rank)) => Err(Abandoned { rank }),
            _ => Ok(()),
        }
    }

    /// Rank `rank` leaves: every current and later `wait` returns [`Abandoned`].
    pub fn abandon(&self, rank: usize) {
        let mut s = self.state.lock().unwrap_or_else(|p| p.into_inner());
        s.left.get_or_insert(rank);
        self.cv.notify_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::time::Duration;

    #[test]
    fn ranks_meet_round_after_round() {
        let r = Arc::new(Rendezvous::new(3));
        let log = Arc::new(Mutex::new(Vec::new()));
        std::thread::scope(|s| {
            for rank in 0..3 {
                let (r, log) = (r.clone(), log.clone());
                s.spawn(move || {
                    for round in 0..4 {
                        // Rank 2 is always late: nobody may start round k+1 before it ends round k.
                        if rank == 2 {
                            std::thread::sleep(Duration::from_millis(5));
                        }
                        log.lock().unwrap().push((round, "in"));
                        r.wait().unwrap();
                        log.lock().unwrap().push((round, "out"));
                        r.wait().unwrap();
                    }
                });
            }
        });
        let log = log.lock().unwrap();
        for (i, &(round, what)) in log.iter().enumerate() {
            if what == "out" {
                let ins = log[..i].iter().filter(|&&(k, w)| k == round && w == "in").count();
                assert_eq!(ins, 3, "round {round} left before every rank arrived: {log:?}");
            }
        }
    }

    #[test]
    fn a_rank_that_leaves_wakes_the_others_with_its_name() {
        let r = Arc::new(Rendezvous::new(3));
        std::thread::scope(|s| {
            let waiters: Vec<_> = (0..2).map(|_| s.spawn(|| r.wait())).collect();
            std::thread::sleep(Duration::from_millis(20));
            r.abandon(2);
            for w in waiters {
                assert_eq!(w.join().unwrap(), Err(Abandoned { rank: 2 }));
            }
        });
        assert_eq!(r.wait(), Err(Abandoned { rank: 2 }), "later waits fail at once");
    }
}
