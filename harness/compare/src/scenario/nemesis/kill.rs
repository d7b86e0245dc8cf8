//! `holder_killed`: SIGKILL of the holder. It is dead; it cannot learn.

use std::time::Duration;

use anyhow::{Result, bail};

use super::{Nemesis, kill_subject, no_heal, until_grant};
use crate::scenario::holder::{mono_us, ms_between};
use crate::scenario::lease_left::lease_left;
use crate::scenario::workload::{BoxFuture, Trial};

/// SIGKILL of the subject.
#[derive(Debug, Clone, Copy, Default)]
pub struct Kill;

impl Nemesis for Kill {
    fn name(&self) -> &'static str {
        "holder_killed"
    }

    fn cost(&self, ttl: Duration) -> Duration {
        // The lease runs out (PostgreSQL: at once, the connection closes).
        ttl.mul_f64(0.9)
    }

    fn describe(&self) -> String {
        "failover = SIGKILL → waiter's grant; the holder is dead, it cannot learn".into()
    }

    fn start<'a>(&'a mut self, t: &'a mut Trial<'_>) -> BoxFuture<'a, Result<i64>> {
        kill_subject(t)
    }

    fn stop<'a>(&'a mut self, _t: &'a mut Trial<'_>) -> BoxFuture<'a, Result<()>> {
        no_heal()
    }

    fn run<'a>(&'a mut self, t: &'a mut Trial<'_>) -> BoxFuture<'a, Result<()>> {
        Box::pin(async move {
            let bound = t.ctx.grant_bound();
            // Just before the kill: what is left of its lease (etcd: set to the full TTL). A
            // peer library keeps its lease under keys of its own: not read.
            let read = if t.subject.is_peer() {
                Ok(None)
            } else {
                lease_left(t.ctx.backend, t.ctx.target, &t.ctx.name).await
            };
            let left = match read {
                Ok(left) => left,
                Err(e) => {
                    t.history.note(format!(
                        "the lease left at the kill could not be read: {e:#}"
                    ));
                    None
                }
            };
            let (t0, grant) = until_grant(self, t, bound).await?;
            if let Some((ms, at)) = left {
                t.history.extra.lease_left_ms = Some(ms - ms_between(at, t0));
            }
            let Some((t_grant, _)) = grant else {
                bail!("the waiter got no grant within {bound:?} of the SIGKILL");
            };
            t.history.handover(t0, t_grant);
            // A write the dead holder sent just before dying, delivered late.
            t.late_write(mono_us());
            Ok(())
        })
    }
}
