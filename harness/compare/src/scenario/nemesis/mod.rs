//! Nemeses: the faults of the comparison, one value each.
//!
//! A [`Nemesis`] prepares how the subject reaches its servers (a fault proxy, a network
//! namespace, a shifted clock), `start`s its fault, `stop`s it (heals), and runs its
//! schedule on a [`Trial`]: start, watch for the contender's grant, stop, and record what
//! the holders reported into the trial's history. The checker turns that history into the
//! cell. The clean handoff is the nemesis that injects nothing: the holder releases.

mod clock;
pub(crate) mod failover;
mod handoff;
mod kill;
pub mod latency;
pub(crate) mod netns;
mod partition;
mod pause;
pub mod quorum;
mod reset;
mod restart;

use std::time::Duration;

use anyhow::Result;

use super::target::Target;
use super::workload::{Approach, BoxFuture, Ctx, Grant, Trial};
use dlock_fixtures::netns::Netns;

use super::holder::mono_us;

pub use clock::{SKEW_HOLD_TTLS, SKEW_MS, SkewedClocks};
pub use failover::PrimaryFailover;
pub use handoff::CleanHandoff;
pub use kill::Kill;
pub use latency::Latency;
pub use partition::Partition;
pub use pause::Pause;
pub use quorum::QuorumLoss;
pub use reset::{RESET_FOR, Reset};
pub use restart::Restart;

/// A fault, as a value.
pub trait Nemesis {
    /// The scenario id it gives its cells (`holder_killed`, …).
    fn name(&self) -> &'static str;

    /// What it does and what its failover measures, for the cell's notes.
    fn describe(&self) -> String;

    /// Why it cannot apply to `backend` at all, if it cannot.
    fn not_applicable(&self, _backend: &str) -> Option<String> {
        None
    }

    /// Why the backend's servers cannot take this fault (they are external), if they cannot;
    /// asked before the selection, so the report says so even when the scenario is not run.
    fn external(&self, _target: &Target) -> Option<String> {
        None
    }

    /// Whether it needs servers of its own on `backend` (a 3-member cluster), started for
    /// its cell and stopped after it.
    fn own_servers(&self, _backend: &str) -> bool {
        false
    }

    /// The servers of its own ([`Nemesis::own_servers`]): by default the 3-member cluster.
    fn servers<'a>(
        &'a self,
        backend: &'a str,
        ttl: std::time::Duration,
    ) -> BoxFuture<'a, Result<Target>> {
        Box::pin(super::target::start_cluster_target(backend, ttl))
    }

    /// Why this build cannot measure it on `target` (the one its cell runs on), if it cannot.
    fn not_measurable(&self, _target: &Target) -> Option<String> {
        None
    }

    /// About how long one repetition takes at `ttl` (holders' start-up included), for the
    /// run's estimate; measured on a 2-core machine, see the README.
    fn cost(&self, ttl: Duration) -> Duration;

    /// The cell's first notes.
    fn cell_notes(&self, _target: &Target) -> Vec<String> {
        vec![self.describe()]
    }

    /// Sets up what the fault needs before the holders start, and says how the subject and
    /// the contender reach the servers.
    fn prepare<'a>(&'a mut self, _ctx: &'a Ctx<'a>) -> BoxFuture<'a, Result<Approach>> {
        Box::pin(async { Ok(Approach::default()) })
    }

    /// The network namespace the subject runs in, if [`Nemesis::prepare`] made one.
    fn namespace(&self) -> Option<&Netns> {
        None
    }

    /// Injects the fault; returns when it began (harness clock, ms).
    fn start<'a>(&'a mut self, t: &'a mut Trial<'_>) -> BoxFuture<'a, Result<i64>>;

    /// Heals it (nothing for faults that cannot heal: a dead holder stays dead).
    fn stop<'a>(&'a mut self, t: &'a mut Trial<'_>) -> BoxFuture<'a, Result<()>>;

    /// The schedule: start, watch, stop, and what the holders reported, into the history.
    fn run<'a>(&'a mut self, t: &'a mut Trial<'_>) -> BoxFuture<'a, Result<()>>;

    /// Drops what [`Nemesis::prepare`] set up (proxies, namespace) once the holders are gone.
    fn teardown(&mut self) {}
}

/// A repetition that measured something other than its fault — the subject process died of
/// a signal the nemesis did not send (another process on the machine SIGKILLed it) — and is
/// run again instead of being counted (see the runner).
#[derive(Debug)]
pub struct Void(pub String);

impl std::fmt::Display for Void {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Void {}

/// Every nemesis, in report order.
pub fn all() -> Vec<Box<dyn Nemesis>> {
    vec![
        Box::new(CleanHandoff),
        Box::new(Kill),
        Box::new(Pause::default()),
        Box::new(Partition::default()),
        Box::new(Reset::default()),
        Box::new(Restart),
        Box::new(Latency::default()),
        Box::new(QuorumLoss::default()),
        Box::new(PrimaryFailover::default()),
        Box::new(SkewedClocks),
    ]
}

/// Starts `n`, waits up to `bound` for the contender's grant, stops `n`: the schedule of a
/// fault that lasts until the lock moves (or the bound passes). Returns when the fault began
/// and the grant.
async fn until_grant(
    n: &mut (impl Nemesis + ?Sized),
    t: &mut Trial<'_>,
    bound: Duration,
) -> Result<(i64, Option<Grant>)> {
    let t0 = n.start(t).await?;
    let grant = t.await_grant(bound).await?;
    n.stop(t).await?;
    Ok((t0, grant))
}

/// SIGKILLs the faulty holder and records that it left the resource then; the fault's start.
fn kill_subject<'a>(t: &'a mut Trial<'_>) -> BoxFuture<'a, Result<i64>> {
    Box::pin(async move {
        let t0 = mono_us();
        t.subject.kill()?;
        t.history.resource.exit(0, t0);
        Ok(t0)
    })
}

/// A fault that changes nothing when it stops.
fn no_heal<'a>() -> BoxFuture<'a, Result<()>> {
    Box::pin(async { Ok(()) })
}

/// The note of a holder that reported the loss only after the new grant.
fn lost_late(after_ms: f64) -> String {
    format!("holder reported lost at +{after_ms:.0} ms, after the new grant")
}

/// The lock moved to another holder at `t_grant` after the fault at `t0`: records the
/// handover, waits (up to `bound`) for a subject that had not reported `lost` yet, then the
/// subject's stale write.
async fn record_moved(
    t: &mut Trial<'_>,
    t0: i64,
    t_grant: i64,
    mut lost: Option<i64>,
    bound: Duration,
) {
    t.history.handover(t0, t_grant);
    if lost.is_none() {
        // Does it learn at all, and how late?
        lost = await_late_loss(t, t0, bound).await;
    }
    t.history.lost_us = lost;
    t.stale_write(mono_us());
}

/// The note of a peer holder that lived through the handover: its library has no loss signal.
const PEER_NEVER_TOLD: &str =
    "the library reports no loss (peer holder): the holder was never told the lock had moved on";

/// The lock moved on, the subject lives and never reported the loss: recorded as never
/// learned, with `note` (a peer holder, which has no way to report it, says so instead).
fn never_told(t: &mut Trial<'_>, note: impl Into<String>) {
    t.history.never_learned();
    if t.subject.reports_loss() {
        t.history.note(note);
    } else {
        t.history.note(PEER_NEVER_TOLD);
    }
}

/// After another holder's grant, a subject that had not reported `lost` yet: waits up to
/// `bound` for it, notes how late (from the fault `t0`) or that it never came, and records
/// it as the subject leaving the resource. Returns when it reported the loss, if it did.
async fn await_late_loss(t: &mut Trial<'_>, t0: i64, bound: Duration) -> Option<i64> {
    match t.subject.state("lost", bound).await {
        Some(ev) => {
            t.history
                .note(lost_late(super::holder::ms_between(t0, ev.t_us)));
            t.history.resource.exit(0, ev.t_us);
            Some(ev.t_us)
        }
        None => {
            never_told(
                t,
                format!(
                    "the holder reported no loss within {} s of the new grant",
                    bound.as_secs()
                ),
            );
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scenario::SCENARIOS;

    #[test]
    fn the_nemeses_are_the_scenarios_in_order() {
        let names: Vec<&str> = all().iter().map(|n| n.name()).collect();
        assert_eq!(names, SCENARIOS);
        for n in all() {
            assert!(!n.describe().is_empty(), "{} has no description", n.name());
        }
    }
}
