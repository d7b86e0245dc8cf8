//! Workloads: what the holders do while a nemesis acts, recorded as a
//! [`History`](super::history::History).
//!
//! A workload is a value ([`Workload`]): it says how its holders are started and sets up a
//! [`Trial`] — the subject (holder 0, the one every fault is aimed at) holding the lock and a
//! contender (holder 1) queued behind it. [`ExclusiveLock`] is dlock's, through `dlock hold`
//! (the one value in [`WORKLOADS`]); [`PeerLock`] is a peer library's through its harness,
//! one value per peer the run selects ([`PeerHolders`]), run by the same runner against the
//! nemeses of [`PEER_SCENARIOS`]. [`SharedLock`] and [`Semaphore`] (in `multi`) are the locks
//! with several holders, on the backends that offer them.

mod exclusive;
pub mod multi;
pub mod peer;
pub mod trial;

use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use anyhow::Result;

use super::CompareOptions;
use super::holder::{ClockSkew, HoldSpec};
use super::target::Target;
use dlock_fixtures::netns::Netns;

pub use exclusive::ExclusiveLock;
pub(crate) use exclusive::FIRST_GRANT;
pub use multi::{MULTI_BACKENDS, MULTI_SCENARIOS, Semaphore, SharedLock};
pub use peer::{PEER_HOLDERS, PEER_SCENARIOS, PeerHolders, PeerLock};
pub use trial::{Grant, Trial};

/// A boxed future, so that workloads and nemeses can be trait objects.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + 'a>>;

/// The workloads the runner goes through, in report order (the shared lock and the semaphore
/// only where [`multi::runs`] says).
pub const WORKLOADS: [&dyn Workload; 3] = [&ExclusiveLock, &SharedLock, &Semaphore];

/// Which part a holder plays in a trial.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// The holder the fault hits: holds first, gives up after a bounded wait.
    Subject,
    /// A holder that waits (for ever) for the lock.
    Contender,
}

/// What the holders do: a value the runner pairs with every nemesis.
pub trait Workload {
    /// Its name (the exclusive lock's cells are named by the nemesis alone).
    fn name(&self) -> &str;

    /// The peer library whose holders these are (`None`: dlock's), for the cells' `library`.
    fn library(&self) -> Option<crate::scenario::Library> {
        None
    }

    /// How its cells are named in the log: the backend, and the library if any.
    fn label(&self, backend: &str) -> String {
        backend.to_string()
    }

    /// How a holder in `role` is started on `url` for the lock `name`.
    fn spec(&self, url: &str, name: &str, ttl: Duration, role: Role) -> HoldSpec;

    /// The subject takes the lock (through `how`, inside `netns` when given) and a contender
    /// queues behind it; the grant and the queueing go into the trial's history.
    fn begin<'a: 'b, 'b>(
        &'b self,
        ctx: &'a Ctx<'a>,
        how: &'b Approach,
        netns: Option<&'b Netns>,
    ) -> BoxFuture<'b, Result<Trial<'a>>>;
}

/// One repetition's setting: the backend, its servers, the lock name.
pub struct Ctx<'a> {
    /// What the run was asked for (ttl, the `dlock` binary).
    pub opts: &'a CompareOptions,
    /// Backend name.
    pub backend: &'a str,
    /// Scenario (nemesis) name.
    pub scenario: &'a str,
    /// Its servers.
    pub target: &'a Target,
    /// The lock name, unique per repetition.
    pub name: String,
    /// The workload running.
    pub workload: &'a dyn Workload,
}

impl Ctx<'_> {
    /// How a holder in `role` is started on `url` for this repetition's lock.
    pub fn spec(&self, url: &str, role: Role) -> HoldSpec {
        self.workload.spec(url, &self.name, self.opts.ttl, role)
    }

    /// The bound on waiting for the next grant after a fault: generous, so a slow machine
    /// reads as a slow number rather than a failure.
    pub fn grant_bound(&self) -> Duration {
        self.opts.ttl * 3 + Duration::from_secs(10)
    }

    /// How long a lasting fault (pause, blackhole, restart, the slowest link) is given to
    /// produce a grant: three ttls, at least 6 s.
    pub fn fault_bound(&self) -> Duration {
        (self.opts.ttl * 3).max(Duration::from_secs(6))
    }
}

/// How the subject and the contender reach the servers, as a nemesis prepared it.
#[derive(Debug, Clone, Default)]
pub struct Approach {
    /// The subject's URL (through the nemesis's proxies or namespace); `None`: the target's.
    pub subject_url: Option<String>,
    /// The subject's wall-clock shift.
    pub subject_skew: Option<ClockSkew>,
    /// The contender's wall-clock shift.
    pub contender_skew: Option<ClockSkew>,
}

/// The spec of a holder in `role` on `url` for `name`: the subject gives up after a bounded
/// wait, a contender waits as long as the fault takes; `dlock hold` taking `mode`, or the peer
/// library's harness.
pub(crate) fn hold_spec(
    url: &str,
    name: &str,
    ttl: Duration,
    role: Role,
    mode: super::holder::HoldMode,
    peer: Option<super::holder::PeerHold>,
) -> HoldSpec {
    HoldSpec {
        url: url.to_string(),
        name: name.to_string(),
        ttl,
        wait_forever: role == Role::Contender,
        skew: None,
        peer,
        mode,
    }
}

/// A lock name unique to this process, backend, scenario and repetition.
pub fn lock_name(backend: &str, scenario: &str, rep: usize) -> String {
    format!(
        "cmp-{backend}-{scenario}-{}-{rep}-{:x}",
        std::process::id(),
        super::holder::wall_ms()
    )
}
