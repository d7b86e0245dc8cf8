//! `clean_handoff`: no fault. The holder leaves its critical section and releases; the
//! baseline every other failover is read against.

use std::time::Duration;

use anyhow::{Result, bail};

use super::{Nemesis, no_heal, until_grant};
use crate::scenario::holder::mono_us;
use crate::scenario::workload::{BoxFuture, Trial};

/// The holder releases on purpose.
#[derive(Debug, Clone, Copy, Default)]
pub struct CleanHandoff;

impl Nemesis for CleanHandoff {
    fn name(&self) -> &'static str {
        "clean_handoff"
    }

    fn cost(&self, _ttl: Duration) -> Duration {
        // Two process starts and a release: no lease to wait for.
        Duration::from_millis(200)
    }

    fn describe(&self) -> String {
        "failover = release requested → waiter's grant".into()
    }

    fn start<'a>(&'a mut self, t: &'a mut Trial<'_>) -> BoxFuture<'a, Result<i64>> {
        Box::pin(async move {
            // The application leaves its critical section, then releases.
            let t0 = mono_us();
            t.history.resource.exit(0, t0);
            t.subject.release();
            Ok(t0)
        })
    }

    fn stop<'a>(&'a mut self, _t: &'a mut Trial<'_>) -> BoxFuture<'a, Result<()>> {
        no_heal()
    }

    fn run<'a>(&'a mut self, t: &'a mut Trial<'_>) -> BoxFuture<'a, Result<()>> {
        Box::pin(async move {
            let bound = t.ctx.grant_bound();
            let (t0, grant) = until_grant(self, t, bound).await?;
            let Some((t_grant, _)) = grant else {
                bail!("the waiter got no grant within {bound:?} of the release");
            };
            t.history.handover(t0, t_grant);
            // A write of the previous holder that arrives late.
            t.late_write(mono_us());
            Ok(())
        })
    }
}
