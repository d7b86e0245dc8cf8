//! `holder_partitioned`: the holder cut off from its servers until the waiter's grant (or
//! the bound), then healed — a network namespace whose link goes down where it can, a fault
//! proxy's blackhole otherwise (see [`netns`](super::netns)). Also what a cut looks like
//! afterwards ([`after_cut`]), shared with `connection_reset`.

use std::time::Duration;

use anyhow::{Result, bail};

use super::netns::{self, NETNS_FAULT_BOUND};
use super::{Nemesis, until_grant};
use crate::scenario::checker::Retention;
use crate::scenario::holder::{EventKind, mono_us, ms_between};
use crate::scenario::target::Target;
use crate::scenario::workload::{Approach, BoxFuture, Ctx, Grant, Trial};
use dlock_fixtures::faults::{Fault, FaultProxy};
use dlock_fixtures::netns::Netns;

/// The subject's traffic blackholed.
#[derive(Default)]
pub struct Partition {
    /// The namespace the subject runs in, when it could have one.
    netns: Option<Netns>,
    /// Otherwise the proxies in front of its servers.
    proxies: Vec<FaultProxy>,
    /// The fallback's note (why no namespace), for the history.
    note: Option<String>,
}

impl Nemesis for Partition {
    fn name(&self) -> &'static str {
        "holder_partitioned"
    }

    fn cost(&self, ttl: Duration) -> Duration {
        // The lease runs out; PostgreSQL waits for the server to see the link down.
        ttl.mul_f64(1.4)
    }

    fn describe(&self) -> String {
        "holder's traffic to the server blackholed (no RST, no FIN) until the waiter's grant or the bound, then healed; how: see the partition note".into()
    }

    fn external(&self, target: &Target) -> Option<String> {
        unproxiable(target)
    }

    fn prepare<'a>(&'a mut self, ctx: &'a Ctx<'a>) -> BoxFuture<'a, Result<Approach>> {
        Box::pin(async move {
            // The holder runs in a network namespace where it can.
            match netns::namespace(ctx.backend, ctx.target) {
                Ok((ns, url)) => {
                    self.netns = Some(ns);
                    Ok(Approach {
                        subject_url: Some(url),
                        ..Approach::default()
                    })
                }
                Err(why) => {
                    self.note = Some(netns::proxy_note(&why));
                    let (proxies, url) = ctx.target.proxied(Fault::Pass).await?;
                    self.proxies = proxies;
                    Ok(Approach {
                        subject_url: Some(url),
                        ..Approach::default()
                    })
                }
            }
        })
    }

    fn namespace(&self) -> Option<&Netns> {
        self.netns.as_ref()
    }

    fn start<'a>(&'a mut self, _t: &'a mut Trial<'_>) -> BoxFuture<'a, Result<i64>> {
        Box::pin(async move {
            let t0 = mono_us();
            match &self.netns {
                Some(ns) => ns.link_down()?,
                None => set_all(&self.proxies, Fault::Blackhole),
            }
            Ok(t0)
        })
    }

    fn stop<'a>(&'a mut self, _t: &'a mut Trial<'_>) -> BoxFuture<'a, Result<()>> {
        Box::pin(async move {
            match &self.netns {
                Some(ns) => ns.link_up()?,
                None => set_all(&self.proxies, Fault::Pass),
            }
            Ok(())
        })
    }

    fn run<'a>(&'a mut self, t: &'a mut Trial<'_>) -> BoxFuture<'a, Result<()>> {
        Box::pin(async move {
            // The server's view of the subject's connections, taken while it holds the lock.
            if let Some(ns) = &self.netns {
                let port = t.ctx.target.addr.map(|a| a.port());
                self.note = Some(netns::netns_note(ns, port));
            }
            t.history.notes.extend(self.note.take());
            let mut bound = t.ctx.fault_bound();
            let in_ns = self.netns.is_some();
            if in_ns {
                bound = bound.max(NETNS_FAULT_BOUND);
            } else if self.proxies.is_empty() {
                bail!("no fault proxy");
            }
            let (t0, grant) = until_grant(self, t, bound).await?;
            let why_kept = if in_ns {
                "the link stayed down and the server did not end the holder's session"
            } else {
                "fault proxy blackhole: the server's kernel still sees a live peer, so \
                 server-side keepalives cannot fire"
            };
            after_cut(t, t0, grant, bound, why_kept, in_ns).await
        })
    }

    fn teardown(&mut self) {
        self.netns = None;
        self.proxies.clear();
        self.note = None;
    }
}

/// Why no proxy can sit in front of the target's servers, if none can.
pub(super) fn unproxiable(target: &Target) -> Option<String> {
    target.members.is_empty().then(|| {
        "not measured: the server addresses are not known (external servers), so no fault \
         proxy can be put in front of them"
            .into()
    })
}

/// Sets every proxy to `fault`.
pub(super) fn set_all(proxies: &[FaultProxy], fault: Fault) {
    for p in proxies {
        p.set(fault);
    }
}

/// After a cut (healed or not) that began at `t0`: what the subject reported, the
/// handover and the stale write, or — when the lock did not move within `bound` — whether a
/// live holder kept it (`why_kept` says how it could) or it was stranded, then a clean
/// handover. `say`: log the outcome (the namespace runs, whose server-side detection is
/// worth seeing in the log).
pub(super) async fn after_cut(
    t: &mut Trial<'_>,
    t0: i64,
    grant: Option<Grant>,
    bound: Duration,
    why_kept: &str,
    say: bool,
) -> Result<()> {
    // What the holder reported meanwhile (its events wait in the channel).
    let mut lost = None;
    let mut states = Vec::new();
    while let Some(ev) = t.subject.try_event() {
        if let EventKind::State(st) = &ev.kind {
            states.push(format!("{st} at +{:.0} ms", ms_between(t0, ev.t_us)));
            if st == "lost" && lost.is_none() {
                lost = Some(ev.t_us);
            }
        }
    }
    if lost.is_none() && grant.is_some() {
        // The lock moved on; give the holder until the bound to notice.
        if let Some(ev) = t.subject.state("lost", bound).await {
            states.push(format!("lost at +{:.0} ms", ms_between(t0, ev.t_us)));
            lost = Some(ev.t_us);
        }
    }
    if !states.is_empty() {
        t.history
            .note(format!("holder reported: {}", states.join(", ")));
    }
    if let Some(l) = lost {
        t.history.resource.exit(0, l);
    }
    t.history.lost_us = lost;
    let Some((t_grant, _)) = grant else {
        t.history.not_freed(lost);
        let why = match Retention::of(lost) {
            Retention::Stranded(l) => format!(
                "the holder reported the loss at +{:.0} ms but the server kept the lock: orphaned \
                 until the holder's session ends or it releases",
                ms_between(t0, l)
            ),
            Retention::KeptByLiveHolder => why_kept.to_string(),
        };
        t.history.note(format!(
            "not freed within {} s of the fault ({why})",
            bound.as_secs()
        ));
        t.history.resource.exit(0, lost.unwrap_or_else(mono_us));
        t.subject.release();
        if t.await_grant(bound).await?.is_none() {
            bail!("the waiter got no grant after the holder released");
        }
        return Ok(());
    };
    t.history.handover(t0, t_grant);
    if lost.is_none() {
        super::never_told(t, "the holder never reported the loss");
    }
    if say {
        let (backend, scenario) = (t.ctx.backend, t.ctx.scenario);
        crate::say!(
            "[compare] {backend} × {scenario} (network namespace): link down → grant {} ms; \
             holder lost at {}",
            ms_between(t0, t_grant).round(),
            lost.map_or("never".into(), |l| format!(
                "+{:.0} ms ({:.1} ms before the grant)",
                ms_between(t0, l),
                ms_between(l, t_grant)
            ))
        );
    }
    // The old holder's write, sent before it knew, arrives now.
    t.stale_write(mono_us());
    if lost.is_none() {
        t.history.resource.exit(0, mono_us());
    }
    Ok(())
}
