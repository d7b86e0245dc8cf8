//! `latency`: the holder talks to every server through a fault proxy (one per server, so
//! Redlock's three instances too) that delays each chunk in each direction, in order.
//!
//! First a probe holder (its own lock name) connects and acquires through a delay of ttl /
//! [`ACQUIRE_LINK_DIVISOR`]: its acquisition time, or why it failed (clients bound their
//! connection set-up and requests: Redis 2 s, Redlock 200 ms per instance), goes into the
//! notes. Then the holder connects on a clean link, and the delay goes up in steps: ttl /
//! [`ACQUIRE_LINK_DIVISOR`], then ttl / [`SLOW_LINK_DIVISOR`], each for [`SLOW_PHASE_TTLS`]
//! ttls (the holder should keep its lock — renewals still land in time — and nobody else is
//! granted), then [`LOSING_LINK_TTLS`] × ttl, longer than the lease (renewals arrive too late
//! and the lock moves to the waiter). The first step at which the holder reports trouble or
//! the waiter is granted ends the climb: failover = the start of that step → the waiter's
//! grant, and whether the holder learned first.

use std::time::Duration;

use anyhow::{Result, bail};

use super::Nemesis;
use super::partition::set_all;
use crate::scenario::checker::Retention;
use crate::scenario::holder::{Holder, mono_us, ms_between};
use crate::scenario::target::Target;
use crate::scenario::workload::trial::{Reported, cause};
use crate::scenario::workload::{Approach, BoxFuture, Ctx, Role, Trial};
use dlock_fixtures::faults::{Fault, FaultProxy};

/// While the holder connects and acquires, each direction is delayed by ttl / this (200 ms
/// each way at the default 2 s ttl).
pub const ACQUIRE_LINK_DIVISOR: u32 = 10;

/// Phase 1: each direction is delayed by ttl / this (500 ms each way, a round trip of half
/// the lease, at the default 2 s ttl).
pub const SLOW_LINK_DIVISOR: u32 = 4;

/// Phase 1 lasts this many ttls (several renewals).
pub const SLOW_PHASE_TTLS: u32 = 2;

/// Phase 2: each direction is delayed by this many ttls, longer than the lease.
pub const LOSING_LINK_TTLS: f64 = 1.5;

/// A slow link to every server, slower step by step.
#[derive(Default)]
pub struct Latency {
    /// One proxy per server.
    proxies: Vec<FaultProxy>,
    /// The delay each way that [`Nemesis::start`] applies next.
    delay: Duration,
    /// The probe holder's acquisition time, or why it failed.
    probe: (Option<f64>, Option<String>),
}

impl Nemesis for Latency {
    fn name(&self) -> &'static str {
        "latency"
    }

    fn cost(&self, ttl: Duration) -> Duration {
        // The probe, two steps of 2 ttl the lock survives, then the lease runs out.
        ttl.mul_f64(4.75)
    }

    fn describe(&self) -> String {
        format!(
            "the holder's traffic to every server through a fault proxy delaying each chunk each way: a probe holder acquires through ttl/{ACQUIRE_LINK_DIVISOR}; the holder, connected on a clean link, then gets ttl/{ACQUIRE_LINK_DIVISOR} and ttl/{SLOW_LINK_DIVISOR} for {SLOW_PHASE_TTLS} ttl each (it should keep the lock), then {LOSING_LINK_TTLS} ttl, until it reports trouble or the waiter is granted; failover = start of that step → waiter's grant (the step is in the notes)"
        )
    }

    fn not_measurable(&self, target: &Target) -> Option<String> {
        target.members.is_empty().then(|| {
            "not measured: the server addresses are unknown (external servers), so no \
             latency proxy can sit in front of them"
                .into()
        })
    }

    fn prepare<'a>(&'a mut self, ctx: &'a Ctx<'a>) -> BoxFuture<'a, Result<Approach>> {
        Box::pin(async move {
            let slow = ctx.opts.ttl / ACQUIRE_LINK_DIVISOR;
            let (proxies, url_a) = ctx.target.proxied(Fault::Latency(slow)).await?;
            self.proxies = proxies;
            self.probe = probe(ctx, &url_a).await?;
            // The holder connects on a clean link; the delays below hit an established
            // session, which is what renewals live with.
            set_all(&self.proxies, Fault::Pass);
            Ok(Approach {
                subject_url: Some(url_a),
                ..Approach::default()
            })
        })
    }

    fn start<'a>(&'a mut self, _t: &'a mut Trial<'_>) -> BoxFuture<'a, Result<i64>> {
        Box::pin(async move {
            set_all(&self.proxies, Fault::Latency(self.delay));
            Ok(mono_us())
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
            (t.history.extra.acquire_ms, t.history.extra.acquire_error) = self.probe.clone();
            self.climb(t).await
        })
    }

    fn teardown(&mut self) {
        self.proxies.clear();
    }
}

/// A probe holder (its own lock name) connects and acquires through the mildly slow link,
/// then releases: the acquisition time, or why it failed.
async fn probe(ctx: &Ctx<'_>, url: &str) -> Result<(Option<f64>, Option<String>)> {
    let probe_name = format!("{}-probe", ctx.name);
    let spec = ctx
        .workload
        .spec(url, &probe_name, ctx.opts.ttl, Role::Subject);
    let spawned = mono_us();
    let mut probe = Holder::spawn(&ctx.opts.dlock_bin, &spec)?;
    let first = crate::scenario::workload::FIRST_GRANT;
    let out = match probe.acquired(first).await {
        Ok(Some(ev)) => (Some(ms_between(spawned, ev.t_us)), None),
        Ok(None) => (None, Some(format!("no grant within {first:?}"))),
        Err(e) => (None, Some(cause(&e, &probe_name))),
    };
    probe.release_and_finish(Duration::from_secs(10)).await;
    Ok(out)
}

impl Latency {
    /// The steps, each until trouble or a grant; the first that moves the lock (or troubles
    /// the holder) ends the climb.
    async fn climb(&mut self, t: &mut Trial<'_>) -> Result<()> {
        let ttl = t.ctx.opts.ttl;
        let bound = t.ctx.grant_bound();
        let fault_bound = t.ctx.fault_bound();
        let window = ttl * SLOW_PHASE_TTLS;
        // The steps: two the lock should survive, one it cannot (longer than the lease).
        let steps = [
            (ttl / ACQUIRE_LINK_DIVISOR, Some(window)),
            (ttl / SLOW_LINK_DIVISOR, Some(window)),
            (ttl.mul_f64(LOSING_LINK_TTLS), None),
        ];
        let mut lost = None;
        for (delay, window) in steps {
            let each_way = delay.as_millis() as u64;
            self.delay = delay;
            let t0 = self.start(t).await?;
            let mut grant = t.await_grant(window.unwrap_or(fault_bound)).await?;
            let mut states = Reported::default();
            lost = lost.or(t.drain_subject(t0, &mut states));
            let troubled = !states.is_empty();
            if let Some(w) = window {
                if grant.is_none() && !troubled {
                    // Held through this step: on to a slower link.
                    t.history.extra.kept_at.push((each_way, true));
                    continue;
                }
                t.history.extra.kept_at.push((each_way, false));
                if grant.is_none() {
                    // The holder gave up (or doubts) at this delay: the lock is on its way out.
                    grant = t.await_grant(fault_bound.saturating_sub(w)).await?;
                    lost = lost.or(t.drain_subject(t0, &mut states));
                }
            }
            if lost.is_none() && grant.is_some() {
                lost = t.await_subject_lost(t0, bound, &mut states).await;
            }
            if !states.is_empty() {
                t.history.note(format!(
                    "at {each_way} ms each way the holder reported {}",
                    states.join(", ")
                ));
            }
            t.history.lost_us = lost;
            let Some((t_grant, _)) = grant else {
                t.history.not_freed(lost);
                t.history.note(format!(
                    "not freed within {} s at {each_way} ms each way ({}): the slow \
                     connection stays open",
                    fault_bound.as_secs(),
                    match Retention::of(lost) {
                        Retention::Stranded(_) =>
                            "the holder reported the loss, but the server kept the lock",
                        Retention::KeptByLiveHolder => "the holder kept its lock",
                    }
                ));
                self.stop(t).await?;
                t.history.resource.exit(0, lost.unwrap_or_else(mono_us));
                t.subject.release();
                if t.await_grant(bound).await?.is_none() {
                    bail!("the waiter got no grant after the slowed holder released");
                }
                break;
            };
            t.history.extra.moved_at = Some(each_way);
            t.history.handover(t0, t_grant);
            if lost.is_none() {
                t.history.note("the slowed holder never reported the loss");
            }
            t.stale_write(mono_us());
            t.history.resource.exit(0, mono_us());
            break;
        }
        Ok(())
    }
}
