//! `connection_reset`: the holder's connections reset (RST) by a fault proxy for a moment,
//! then traffic passes again.

use std::time::Duration;

use anyhow::{Result, bail};

use super::Nemesis;
use super::partition::{after_cut, set_all, unproxiable};
use crate::scenario::holder::mono_us;
use crate::scenario::target::Target;
use crate::scenario::workload::{Approach, BoxFuture, Ctx, Trial};
use dlock_fixtures::faults::{Fault, FaultProxy};

/// How long the proxy resets connections before passing traffic again: the fault's length
/// (long enough for every relay to see it), not a synchronisation.
pub const RESET_FOR: Duration = Duration::from_millis(200);

/// RST on every connection of the subject, for [`RESET_FOR`].
#[derive(Default)]
pub struct Reset {
    /// The proxies in front of the subject's servers.
    proxies: Vec<FaultProxy>,
}

impl Nemesis for Reset {
    fn name(&self) -> &'static str {
        "connection_reset"
    }

    fn cost(&self, ttl: Duration) -> Duration {
        // Most holders reconnect and keep the lock: the wait runs to the bound (3 ttl).
        ttl.mul_f64(2.85)
    }

    fn describe(&self) -> String {
        format!(
            "the holder's connections reset (RST) by a fault proxy for {}, then traffic passes again; failover = reset → grant",
            humantime::format_duration(RESET_FOR)
        )
    }

    fn external(&self, target: &Target) -> Option<String> {
        unproxiable(target)
    }

    fn prepare<'a>(&'a mut self, ctx: &'a Ctx<'a>) -> BoxFuture<'a, Result<Approach>> {
        Box::pin(async move {
            let (proxies, url) = ctx.target.proxied(Fault::Pass).await?;
            self.proxies = proxies;
            Ok(Approach {
                subject_url: Some(url),
                ..Approach::default()
            })
        })
    }

    fn start<'a>(&'a mut self, _t: &'a mut Trial<'_>) -> BoxFuture<'a, Result<i64>> {
        Box::pin(async move {
            let t0 = mono_us();
            set_all(&self.proxies, Fault::Reset);
            Ok(t0)
        })
    }

    fn stop<'a>(&'a mut self, _t: &'a mut Trial<'_>) -> BoxFuture<'a, Result<()>> {
        Box::pin(async move {
            set_all(&self.proxies, Fault::Pass);
            Ok(())
        })
    }

    fn run<'a>(&'a mut self, t: &'a mut Trial<'_>) -> BoxFuture<'a, Result<()>> {
        Box::pin(async move {
            let bound = t.ctx.fault_bound();
            if self.proxies.is_empty() {
                bail!("no fault proxy");
            }
            // The fault lasts RESET_FOR whatever the holders do; the grant is awaited after.
            let t0 = self.start(t).await?;
            tokio::time::sleep(RESET_FOR).await;
            self.stop(t).await?;
            let grant = t.await_grant(bound).await?;
            after_cut(
                t,
                t0,
                grant,
                bound,
                "the holder reconnected and kept its lock",
                false,
            )
            .await
        })
    }

    fn teardown(&mut self) {
        self.proxies.clear();
    }
}
