//! `server_restart`: the server (Redlock: every instance) SIGKILLed and started again on the
//! same port and data.

use std::time::Duration;

use anyhow::{Result, bail};

use super::{Nemesis, record_moved};
use crate::scenario::checker::Retention;
use crate::scenario::holder::{mono_us, ms_between};
use crate::scenario::target::Target;
use crate::scenario::workload::trial::{Reported, await_grant_as, first_line, has_ended};
use crate::scenario::workload::{BoxFuture, Grant, Trial};

/// SIGKILL of the servers, then their start.
#[derive(Debug, Clone, Copy, Default)]
pub struct Restart;

impl Nemesis for Restart {
    fn name(&self) -> &'static str {
        "server_restart"
    }

    fn cost(&self, ttl: Duration) -> Duration {
        // The restart itself, and etcd, ZooKeeper and ShedLock-PostgreSQL wait to the bound.
        ttl.mul_f64(2.2)
    }

    fn describe(&self) -> String {
        "the server SIGKILLed and started again on the same port and data; failover = kill → another holder's grant (a new waiter is started if the first one gave up)".into()
    }

    fn external(&self, target: &Target) -> Option<String> {
        (!target.is_managed()).then(|| {
            "not measured: the servers are external (DLOCK_TEST_*_URL); only servers this run \
             started can be killed and restarted"
                .into()
        })
    }

    fn start<'a>(&'a mut self, t: &'a mut Trial<'_>) -> BoxFuture<'a, Result<i64>> {
        Box::pin(async move {
            let t0 = mono_us();
            let target = t.ctx.target;
            match (&target.server, &target.cluster) {
                (Some(server), _) if server.is_managed() => server.kill().await?,
                // Every instance at once (Redlock: the whole set).
                (_, Some(cluster)) if cluster.is_managed() => cluster.kill().await?,
                _ => bail!("no managed server to restart"),
            }
            Ok(t0)
        })
    }

    fn stop<'a>(&'a mut self, t: &'a mut Trial<'_>) -> BoxFuture<'a, Result<()>> {
        Box::pin(async move {
            let target = t.ctx.target;
            match (&target.server, &target.cluster) {
                (Some(server), _) if server.is_managed() => server.start().await?,
                (_, Some(cluster)) => {
                    let all: Vec<usize> = (0..cluster.len()).collect();
                    cluster.restart_members(&all).await?;
                }
                _ => bail!("no managed server to restart"),
            }
            Ok(())
        })
    }

    fn run<'a>(&'a mut self, t: &'a mut Trial<'_>) -> BoxFuture<'a, Result<()>> {
        Box::pin(async move {
            let restart_bound = t.ctx.fault_bound();
            let t0 = self.start(t).await?;
            self.stop(t).await?;
            let what = if t.ctx.target.server.is_some() {
                "server"
            } else {
                "every server"
            };
            let restarted_ms = ms_between(t0, mono_us()).round();
            t.history.note(format!(
                "{what} back (SIGKILL + start on the same port and data) after {restarted_ms} ms"
            ));
            let mut third = None;
            let grant = next_holder(t, restart_bound, &mut third).await;
            let result = match grant {
                Ok(grant) => observe(t, t0, grant).await,
                Err(e) => Err(e),
            };
            if let Some(w) = third {
                w.finish().await;
            }
            result
        })
    }
}

/// The grant after the restart: the waiter's, or — if it gave up when its connection died —
/// a fresh waiter's (kept in `third`, holder 2).
async fn next_holder(
    t: &mut Trial<'_>,
    within: std::time::Duration,
    third: &mut Option<crate::scenario::holder::Holder>,
) -> Result<Option<Grant>> {
    let mut grant = match t.await_grant(within).await {
        Ok(g) => g,
        Err(e) => {
            t.history.note(format!(
                "the waiter exited when the server went away ({}); a new waiter was started",
                first_line(&format!("{e:#}"))
            ));
            None
        }
    };
    if grant.is_none() && has_ended(&mut t.contender).await {
        let w = third.insert(t.spawn_contender()?);
        grant = await_grant_as(2, w, &mut t.history.resource, within).await?;
    }
    Ok(grant)
}

/// What the subject reported, the handover (or that the lock survived the restart).
async fn observe(t: &mut Trial<'_>, t0: i64, grant: Option<Grant>) -> Result<()> {
    let bound = t.ctx.grant_bound();
    let mut states = Reported::default();
    let lost = t.drain_subject(t0, &mut states);
    if !states.is_empty() {
        t.history
            .note(format!("holder reported: {}", states.join(", ")));
    }
    match grant {
        Some((t_grant, _)) => record_moved(t, t0, t_grant, lost, bound).await,
        None => {
            t.history.not_freed(lost);
            t.history.note(format!(
                "no other holder got the lock within {} s of the restart: it survived the \
                 restart{}",
                t.ctx.fault_bound().as_secs(),
                match Retention::of(lost) {
                    Retention::Stranded(_) => {
                        " although the holder reported it lost (orphaned until the holder \
                         releases or its session ends)"
                    }
                    Retention::KeptByLiveHolder => "",
                }
            ))
        }
    }
    t.history.resource.exit(0, mono_us());
    Ok(())
}
