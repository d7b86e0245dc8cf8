//! `quorum_loss`: on 3 servers (Redlock's instances, a 3-node etcd cluster, a 3-member
//! ZooKeeper ensemble) two are SIGKILLed (for etcd and ZooKeeper the leader and one more) and
//! kept down for [`OUTAGE_TTLS`] ttls (at least [`OUTAGE_MIN`]) while the harness watches that
//! nobody is granted and what the holder's guard reports; then they are restarted. Failover =
//! the restart of the majority begins → another holder's grant (the servers' start-up
//! included; a readiness probe that answers later is no reference: the quorum can be back
//! before every restarted member says so).

use std::time::Duration;

use anyhow::{Result, bail};

use super::Nemesis;
use crate::scenario::checker::Retention;
use crate::scenario::holder::{Holder, mono_us, ms_between};
use crate::scenario::target::Target;
use crate::scenario::workload::trial::{Reported, await_grant_as, cause};
use crate::scenario::workload::{BoxFuture, Grant, Trial};

/// The majority stays down this many ttls…
pub const OUTAGE_TTLS: u32 = 2;

/// …and at least this long.
pub const OUTAGE_MIN: Duration = Duration::from_secs(4);

/// Two of three servers down, then back.
#[derive(Debug, Clone, Default)]
pub struct QuorumLoss {
    /// The members taken down.
    down: Vec<usize>,
}

impl Nemesis for QuorumLoss {
    fn name(&self) -> &'static str {
        "quorum_loss"
    }

    fn cost(&self, ttl: Duration) -> Duration {
        // The outage (2 ttl), the restart of the majority, the next grant.
        ttl.mul_f64(3.65)
    }

    fn describe(&self) -> String {
        format!(
            "2 of 3 servers SIGKILLed (etcd/ZooKeeper: the leader and one more) for {OUTAGE_TTLS} ttl (at least {}), then restarted; failover = restart of the majority begins → another holder's grant (start-up included)",
            humantime::format_duration(OUTAGE_MIN)
        )
    }

    fn not_applicable(&self, backend: &str) -> Option<String> {
        matches!(
            backend,
            "postgres" | "redis" | "shedlock-postgres" | "shedlock-redis" | "mariadb"
        )
        .then(|| "single server: there is no quorum to lose".into())
    }

    fn own_servers(&self, backend: &str) -> bool {
        // etcd and ZooKeeper run on a single server for the other scenarios.
        matches!(backend, "etcd" | "zookeeper")
    }

    fn not_measurable(&self, target: &Target) -> Option<String> {
        (!target.cluster.as_ref().is_some_and(|c| c.is_managed())).then(|| {
            "not measured: needs 3 servers the harness started (external servers cannot be \
             killed)"
                .into()
        })
    }

    fn cell_notes(&self, target: &Target) -> Vec<String> {
        let mut notes = vec![self.describe()];
        if target.cluster.is_some() {
            notes.push(format!("servers: {}", dlock::redact(&target.url)));
        }
        notes
    }

    fn start<'a>(&'a mut self, t: &'a mut Trial<'_>) -> BoxFuture<'a, Result<i64>> {
        Box::pin(async move {
            let Some(cluster) = t.ctx.target.cluster.as_ref().filter(|c| c.is_managed()) else {
                bail!("no managed cluster to take the quorum from");
            };
            if cluster.len() != 3 {
                bail!("quorum_loss expects 3 servers, got {}", cluster.len());
            }
            let leader = cluster.leader().await?;
            self.down = match leader {
                Some(l) => vec![l, (l + 1) % 3],
                None => vec![0, 1],
            };
            let down = &self.down;
            t.history.note(match leader {
                Some(l) => format!(
                    "killed members {} and {} of 3 (the leader: {l})",
                    down[0], down[1]
                ),
                None => format!("killed servers {} and {} of 3", down[0], down[1]),
            });
            let t0 = mono_us();
            for &i in down {
                cluster.kill_member(i).await?;
            }
            Ok(t0)
        })
    }

    fn stop<'a>(&'a mut self, t: &'a mut Trial<'_>) -> BoxFuture<'a, Result<()>> {
        Box::pin(async move {
            let Some(cluster) = t.ctx.target.cluster.as_ref() else {
                bail!("no cluster to restart");
            };
            cluster.restart_members(&self.down).await
        })
    }

    fn run<'a>(&'a mut self, t: &'a mut Trial<'_>) -> BoxFuture<'a, Result<()>> {
        Box::pin(async move {
            let mut third = None;
            let result = self.schedule(t, &mut third).await;
            if let Some(w) = third {
                w.finish().await;
            }
            result
        })
    }
}

impl QuorumLoss {
    /// Down, watched, back, and who gets the lock.
    async fn schedule(&mut self, t: &mut Trial<'_>, third: &mut Option<Holder>) -> Result<()> {
        let bound = t.ctx.grant_bound();
        let t0 = self.start(t).await?;
        let outage = (t.ctx.opts.ttl * OUTAGE_TTLS).max(OUTAGE_MIN);
        let (early, mut waiter_gone) = during_outage(t, t0, outage).await;
        // Whatever of the outage is left (the grant above may have ended it early, or the
        // waiter may have exited at once).
        let left = outage.saturating_sub(Duration::from_micros((mono_us() - t0).max(0) as u64));
        tokio::time::sleep(left).await;
        let mut states = Reported::default();
        let mut lost = t.drain_subject(t0, &mut states);
        let t_restart = mono_us();
        self.stop(t).await?;
        let t_back = mono_us();
        t.history.note(format!(
            "majority down for {} ms; restarting it took {} ms",
            ms_between(t0, t_restart).round(),
            ms_between(t_restart, t_back).round()
        ));
        let mut grant = early;
        if grant.is_none() && !waiter_gone {
            grant = match t.await_grant(bound).await {
                Ok(g) => g,
                Err(e) => {
                    t.history.note(format!(
                        "the waiter exited after the restart ({}); a new waiter was started",
                        cause(&e, &t.ctx.name)
                    ));
                    waiter_gone = true;
                    None
                }
            };
        }
        if grant.is_none() && waiter_gone {
            let w = third.insert(t.spawn_contender()?);
            grant = await_grant_as(2, w, &mut t.history.resource, bound).await?;
        }
        lost = lost.or(t.drain_subject(t0, &mut states));
        if lost.is_none() && grant.is_some() {
            lost = t.await_subject_lost(t0, bound, &mut states).await;
        }
        t.history.extra.left_held_ms = states.left_held.map(|l| ms_between(t0, l));
        t.history.note(if states.is_empty() {
            "the holder's guard stayed held throughout".to_string()
        } else {
            format!("holder reported: {}", states.join(", "))
        });
        t.history.lost_us = lost;
        match grant {
            Some((t_grant, _)) => {
                // A grant during the outage has no failover to measure, but the holder may
                // still have learned before it.
                t.history.handover_us = Some(t_grant);
                if early.is_none() {
                    t.history.handover(t_restart, t_grant);
                }
                t.stale_write(mono_us());
            }
            None => {
                t.history.not_freed(lost);
                t.history.note(format!(
                    "no other holder got the lock within {} s of the restart{}",
                    bound.as_secs(),
                    match Retention::of(lost) {
                        Retention::Stranded(_) =>
                            " although the holder reported it lost (orphaned until it releases)",
                        Retention::KeptByLiveHolder => ": the holder kept it through the outage",
                    }
                ))
            }
        }
        t.history.resource.exit(0, mono_us());
        Ok(())
    }
}

/// While the majority is down nobody may be granted; the waiter may give up (its servers
/// went). Returns a grant that came anyway, and whether the waiter exited.
async fn during_outage(t: &mut Trial<'_>, t0: i64, outage: Duration) -> (Option<Grant>, bool) {
    let (early, gone) = match t.await_grant(outage).await {
        Ok(g) => (g, false),
        Err(e) => {
            t.history.note(format!(
                "the waiter exited during the outage ({}); a new waiter was started after \
                 the restart",
                cause(&e, &t.ctx.name)
            ));
            (None, true)
        }
    };
    if let Some((at, _)) = early {
        t.history.note(format!(
            "granted to the waiter at +{:.0} ms, during the outage (no majority up)",
            ms_between(t0, at)
        ));
    }
    (early, gone)
}
