//! The history of one repetition: what the workload's holders did (grants, releases, state
//! events, fenced writes, all on the harness's wall clock) and the instants the nemesis and
//! the workload marked. The [`checker`](super::checker) turns it into verdicts; nothing here
//! decides anything.

use super::checker::Retention;
use super::resource::{FencedResource, WriteOutcome};

/// One repetition's record.
#[derive(Debug, Default)]
pub struct History {
    /// Every critical section (grant → release or loss) and every fenced write.
    pub resource: FencedResource,
    /// The instant the failover is measured from (the fault, or the step of it that moved the
    /// lock), ms; `None` when there is nothing to measure (the lock moved during the fault).
    pub fault_us: Option<i64>,
    /// The grant that took the lock from the faulty holder (another holder's), ms.
    pub handover_us: Option<i64>,
    /// When the faulty holder reported `lost`, ms (only where it was watched for).
    pub lost_us: Option<i64>,
    /// The lock moved on while the faulty holder lived, and it was watched for a loss it
    /// never reported ([`History::never_learned`]).
    pub unlearned: bool,
    /// The faulty holder's write with its old token after the handover (`None`: no stale
    /// write was possible, it still held the lock).
    pub stale_write: Option<WriteOutcome>,
    /// Where nobody else got the lock: whether the same live holder kept it or it was
    /// stranded (`None`: the lock moved).
    pub retained: Option<Retention>,
    /// What some nemeses measure beside the failover.
    pub extra: Extra,
    /// Observations in the order they were made, for the cell's notes.
    pub notes: Vec<String>,
}

/// Measurements particular to some nemeses.
#[derive(Debug, Default, Clone)]
pub struct Extra {
    /// holder_paused: from SIGCONT to the holder's `lost`, ms.
    pub learn_after_resume_ms: Option<f64>,
    /// latency: from spawning the probe holder to its grant through the ttl/10 link, ms…
    pub acquire_ms: Option<f64>,
    /// …or why it got none.
    pub acquire_error: Option<String>,
    /// clock_skew: the skewed holders kept the lock while holding (guards stayed held,
    /// nobody else granted).
    pub kept_held: Option<bool>,
    /// latency: per step the holder went through (delay each way, ms): whether it kept the
    /// lock (guard held, nobody else granted) for the whole step.
    pub kept_at: Vec<(u64, bool)>,
    /// latency: the delay each way (ms) of the step at which the lock moved.
    pub moved_at: Option<u64>,
    /// quorum_loss: from the majority going down to the holder's first state other than
    /// `held`, ms.
    pub left_held_ms: Option<f64>,
    /// clock_skew: the behind-clock holder's clean release → the next holder's grant, ms.
    pub handoff_ms: Option<f64>,
    /// holder_killed: what was left of the holder's lease at the kill, ms (where it can be
    /// read or set: etcd, Redis, ShedLock on Redis).
    pub lease_left_ms: Option<f64>,
    /// holder_killed: failover − `lease_left_ms`: how long after its lease ran out the lock
    /// reached the waiter (set by the checker).
    pub beyond_lease_ms: Option<f64>,
}

impl History {
    /// An empty history.
    pub fn new() -> History {
        History::default()
    }

    /// The lock moved to another holder at `t_us`; the failover is measured from `fault_us`.
    pub fn handover(&mut self, fault_us: i64, t_us: i64) {
        self.fault_us = Some(fault_us);
        self.handover_us = Some(t_us);
    }

    /// The faulty holder's stale write (old token, after the handover) and what became of it.
    pub fn stale(&mut self, outcome: WriteOutcome) {
        self.stale_write = Some(outcome);
    }

    /// Nobody else got the lock within the bound; `lost_us` is when (if ever) the holder
    /// reported the loss: the same live holder kept it, or it was stranded.
    pub fn not_freed(&mut self, lost_us: Option<i64>) {
        self.retained = Some(Retention::of(lost_us));
    }

    /// The lock moved on, the faulty holder lives, and it never reported the loss (within
    /// the bound it was given; a peer holder has no way to report one).
    pub fn never_learned(&mut self) {
        self.unlearned = true;
    }

    /// An observation for the notes.
    pub fn note(&mut self, note: impl Into<String>) {
        self.notes.push(note.into());
    }
}
