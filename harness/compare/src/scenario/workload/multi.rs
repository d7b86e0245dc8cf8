//! Locks with several holders, through `dlock hold --shared` / `--permits N`:
//!
//! - [`SharedLock`]: the subject holds a **shared** grant (a reader) and the contender waits
//!   for the lock **exclusively** (a writer). A writer inside beside the reader is the overlap.
//!   Readers carry no fencing token, so the subject's stale write is unfenced by design.
//! - [`Semaphore`]: a semaphore of [`LIMIT`] permits with three holders: a companion takes a
//!   permit first and keeps it for the whole repetition (no fault aimed at it, and it does not
//!   enter the resource), then the subject takes the other permit and the contender waits for
//!   one. With the companion always inside, the subject and the contender inside together are
//!   **more than `LIMIT` holders** — what the resource reports as their overlap. The contender
//!   can only get the subject's slot, so its token fences the subject's stale write (tokens of
//!   one slot rise).
//!
//! Both run only on backends that offer the mode, under the nemeses of [`MULTI_SCENARIOS`].

use std::time::Duration;

use anyhow::{Result, anyhow};

use super::exclusive::{hold_then_queue, specs};
use super::{Approach, BoxFuture, Ctx, Role, Trial, Workload};
use crate::scenario::holder::{HoldMode, HoldSpec, Holder};
use dlock_fixtures::netns::Netns;

/// The semaphore workload's limit.
pub const LIMIT: u32 = 2;

/// The nemeses the multi-holder workloads go through: the holder's own faults and a server
/// restart.
pub const MULTI_SCENARIOS: [&str; 4] = [
    "holder_killed",
    "holder_paused",
    "holder_partitioned",
    "server_restart",
];

/// The backends whose `dlock` capabilities include shared locks and semaphores (checked
/// against the registry in the tests below).
pub const MULTI_BACKENDS: [&str; 4] = ["postgres", "redis", "etcd", "zookeeper"];

/// A reader holds, a writer waits.
#[derive(Debug, Clone, Copy)]
pub struct SharedLock;

/// Two of [`LIMIT`] permits held, a third holder waits.
#[derive(Debug, Clone, Copy)]
pub struct Semaphore;

impl Workload for SharedLock {
    fn name(&self) -> &str {
        "shared"
    }

    fn label(&self, backend: &str) -> String {
        format!("{backend} · shared")
    }

    fn spec(&self, url: &str, name: &str, ttl: Duration, role: Role) -> HoldSpec {
        let mode = match role {
            Role::Subject => HoldMode::Shared,
            Role::Contender => HoldMode::Exclusive,
        };
        super::hold_spec(url, name, ttl, role, mode, None)
    }

    fn begin<'a: 'b, 'b>(
        &'b self,
        ctx: &'a Ctx<'a>,
        how: &'b Approach,
        netns: Option<&'b Netns>,
    ) -> BoxFuture<'b, Result<Trial<'a>>> {
        Box::pin(async move {
            let (spec_a, spec_b) = specs(ctx, how);
            let a = Holder::spawn_in(&ctx.opts.dlock_bin, &spec_a, netns)?;
            hold_then_queue(ctx, a, None, &spec_b).await
        })
    }
}

impl Workload for Semaphore {
    fn name(&self) -> &str {
        "semaphore"
    }

    fn label(&self, backend: &str) -> String {
        format!("{backend} · semaphore")
    }

    fn spec(&self, url: &str, name: &str, ttl: Duration, role: Role) -> HoldSpec {
        super::hold_spec(url, name, ttl, role, HoldMode::Permit(LIMIT), None)
    }

    fn begin<'a: 'b, 'b>(
        &'b self,
        ctx: &'a Ctx<'a>,
        how: &'b Approach,
        netns: Option<&'b Netns>,
    ) -> BoxFuture<'b, Result<Trial<'a>>> {
        Box::pin(async move {
            // The companion first, on the target's own URL, so the subject's permit is the
            // last one.
            let companion_spec = ctx.spec(&ctx.target.url, Role::Subject);
            let mut companion = Holder::spawn(&ctx.opts.dlock_bin, &companion_spec)?;
            match companion.acquired(super::FIRST_GRANT).await {
                Ok(Some(_)) => {}
                Ok(None) => {
                    let err = companion.stderr();
                    companion.finish().await;
                    return Err(anyhow!(
                        "the companion permit holder got no grant within {:?}: {err}",
                        super::FIRST_GRANT
                    ));
                }
                Err(e) => {
                    companion.finish().await;
                    return Err(e);
                }
            }
            let (spec_a, spec_b) = specs(ctx, how);
            let a = match Holder::spawn_in(&ctx.opts.dlock_bin, &spec_a, netns) {
                Ok(a) => a,
                Err(e) => {
                    companion.finish().await;
                    return Err(e);
                }
            };
            match hold_then_queue(ctx, a, None, &spec_b).await {
                Ok(t) => Ok(t.with_companion(companion)),
                Err(e) => {
                    companion.finish().await;
                    Err(e)
                }
            }
        })
    }
}

/// Whether `workload` runs on `backend` under `scenario`: the exclusive lock everywhere, the
/// others on [`MULTI_BACKENDS`] under [`MULTI_SCENARIOS`] (and the runner checks the live
/// capabilities of the URL too).
pub fn runs(workload: &str, backend: &str, scenario: &str) -> bool {
    workload == "exclusive"
        || (MULTI_BACKENDS.contains(&backend) && MULTI_SCENARIOS.contains(&scenario))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_multi_backends_are_those_with_both_capabilities() {
        for (backend, scheme) in [
            ("postgres", "postgres"),
            ("redis", "redis"),
            ("etcd", "etcd"),
            ("zookeeper", "zk"),
            ("redlock", "redlock"),
            ("mariadb", "mariadb"),
            ("shedlock-postgres", "shedlock+postgres"),
        ] {
            let caps = crate::scenario::target::capabilities(&format!("{scheme}://h"));
            // PostgreSQL's semaphore depends on `key=` (the default, hashtextextended, has
            // it); the registry lists the scheme's capabilities without options.
            let semaphore = caps.contains("semaphore") || backend == "postgres";
            let both = caps.contains("shared") && semaphore;
            assert_eq!(MULTI_BACKENDS.contains(&backend), both, "{backend}: {caps}");
        }
        assert!(runs("exclusive", "mariadb", "clock_skew"));
        assert!(runs("semaphore", "etcd", "holder_killed"));
        assert!(!runs("semaphore", "etcd", "clock_skew"));
        assert!(!runs("shared", "mariadb", "holder_killed"));
    }
}
