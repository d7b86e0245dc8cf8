//! `clock_skew`: the holder runs with its wall clock [`SKEW_MS`] ahead (libfaketime, the
//! monotonic clock untouched), the waiter with its clock as far behind. The holder holds for
//! [`SKEW_HOLD_TTLS`] ttls (it should stay held, nobody else granted) and is SIGKILLed —
//! this nemesis's `start`, the instant the failover is measured from — (failover = SIGKILL →
//! the behind-clock waiter's grant); the behind-clock holder then holds for as long against a
//! third, unskewed waiter before releasing to it.

use std::time::Duration;

use anyhow::{Result, anyhow, bail};

use super::{Nemesis, kill_subject, no_heal};
use crate::scenario::WAITER_SETTLE;
use crate::scenario::holder::{self, EventKind, Holder, find_libfaketime, mono_us, ms_between};
use crate::scenario::target::Target;
use crate::scenario::workload::trial::{Reported, await_grant_as, drain_states};
use crate::scenario::workload::{Approach, BoxFuture, Ctx, FIRST_GRANT, Trial};

/// The shift, ms: the holder's wall clock this far ahead, the waiter's this far behind.
pub const SKEW_MS: i64 = 3_600_000;

/// Each skewed holder holds this many ttls before the next step.
pub const SKEW_HOLD_TTLS: f64 = 1.5;

/// How far a holder's clock may read from the skew it was given before the harness decides
/// libfaketime did not take effect.
const SKEW_TOLERANCE_MS: i64 = 60_000;

/// Wall clocks an hour ahead (the subject) and behind (the contender).
#[derive(Debug, Clone, Copy, Default)]
pub struct SkewedClocks;

impl Nemesis for SkewedClocks {
    fn name(&self) -> &'static str {
        "clock_skew"
    }

    fn cost(&self, ttl: Duration) -> Duration {
        // Two holds of 1.5 ttl, the lease running out between them.
        ttl.mul_f64(3.85)
    }

    fn describe(&self) -> String {
        let skew =
            humantime::format_duration(std::time::Duration::from_millis(SKEW_MS.unsigned_abs()));
        format!(
            "holder's wall clock +{skew}, waiter's -{skew} (libfaketime, monotonic clock untouched); each holds {SKEW_HOLD_TTLS} ttl against a waiter; failover = SIGKILL of the +{skew} holder → the -{skew} waiter's grant"
        )
    }

    fn not_measurable(&self, _target: &Target) -> Option<String> {
        find_libfaketime().is_none().then(|| {
            "not measured: libfaketime not found (Debian: apt-get install faketime, or set \
             DLOCK_LIBFAKETIME to libfaketimeMT.so.1)"
                .into()
        })
    }

    fn prepare<'a>(&'a mut self, _ctx: &'a Ctx<'a>) -> BoxFuture<'a, Result<Approach>> {
        Box::pin(async move {
            let lib = find_libfaketime().ok_or_else(|| anyhow!("libfaketime not found"))?;
            let skew = |offset_ms| holder::ClockSkew {
                lib: lib.clone(),
                offset_ms,
            };
            Ok(Approach {
                subject_url: None,
                subject_skew: Some(skew(SKEW_MS)),
                contender_skew: Some(skew(-SKEW_MS)),
            })
        })
    }

    fn start<'a>(&'a mut self, t: &'a mut Trial<'_>) -> BoxFuture<'a, Result<i64>> {
        kill_subject(t)
    }

    fn stop<'a>(&'a mut self, _t: &'a mut Trial<'_>) -> BoxFuture<'a, Result<()>> {
        // A running process keeps the clock it was started with.
        no_heal()
    }

    fn run<'a>(&'a mut self, t: &'a mut Trial<'_>) -> BoxFuture<'a, Result<()>> {
        Box::pin(async move {
            let bound = t.ctx.grant_bound();
            let ahead_a = check_skew(&t.subject, SKEW_MS, "holder")?;
            let ahead_b = check_skew(&t.contender, -SKEW_MS, "waiter")?;
            t.history.note(format!(
                "clocks as read from the events: holder {:+.1} h, waiter {:+.1} h",
                ahead_a as f64 / 3.6e6,
                ahead_b as f64 / 3.6e6
            ));
            let hold = t.ctx.opts.ttl.mul_f64(SKEW_HOLD_TTLS);
            // The ahead-clock holder holds; nobody else may be granted, its guard should stay
            // held.
            let t_hold = mono_us();
            let early = t.await_grant(hold).await?;
            let mut states = Reported::default();
            t.drain_subject(t_hold, &mut states);
            let kept = states.is_empty() && early.is_none();
            if !states.is_empty() {
                t.history.note(format!(
                    "the +1 h holder reported {} while holding",
                    states.join(", ")
                ));
            }
            if let Some((at, _)) = early {
                t.history.note(format!(
                    "the -1 h waiter was granted at +{:.0} ms while the +1 h holder held",
                    ms_between(t_hold, at)
                ));
            }
            // SIGKILL the ahead-clock holder: the behind-clock waiter takes over.
            let t0 = self.start(t).await?;
            let Some((t_grant, _)) = t.await_grant(bound).await? else {
                bail!("the waiter got no grant within {bound:?} of the SIGKILL");
            };
            t.history.handover_us = Some(t_grant);
            if early.is_none() {
                t.history.handover(t0, t_grant);
            }
            t.stale_write(mono_us());
            // The behind-clock holder holds against an unskewed waiter, then releases to it.
            let mut third = t.spawn_contender()?;
            let result = behind_then_unskewed(t, &mut third, hold, bound).await;
            t.history.extra.kept_held = Some(kept && result.as_ref().is_ok_and(|k| *k));
            let err = third.stderr();
            third.finish().await;
            result
                .map(|_| ())
                .map_err(|e| anyhow!("{e:#} (third holder: {err})"))
        })
    }
}

/// The behind-clock holder (holder 1) holds for `hold` against `third` (holder 2), then
/// releases to it. Returns whether it kept the lock meanwhile.
async fn behind_then_unskewed(
    t: &mut Trial<'_>,
    third: &mut Holder,
    hold: std::time::Duration,
    bound: std::time::Duration,
) -> Result<bool> {
    let res = &mut t.history.resource;
    match third.waiting_or_acquired(FIRST_GRANT).await? {
        Some(ev) => {
            if let EventKind::Acquired { token } = ev.kind {
                res.enter(2, token, ev.t_us);
            } else if let Some(ev) = third.next_event(WAITER_SETTLE).await {
                if let EventKind::Acquired { token } = ev.kind {
                    res.enter(2, token, ev.t_us);
                }
            }
        }
        None => bail!("the third holder printed nothing within {FIRST_GRANT:?}"),
    }
    let t_hold = mono_us();
    let early = await_grant_as(2, third, res, hold).await?;
    let mut states = Reported::default();
    drain_states(&mut t.contender, 1, t_hold, res, &mut states);
    let kept = states.is_empty() && early.is_none();
    if !states.is_empty() {
        t.history.note(format!(
            "the -1 h holder reported {} while holding",
            states.join(", ")
        ));
    }
    if let Some((at, _)) = early {
        t.history.note(format!(
            "the unskewed waiter was granted at +{:.0} ms while the -1 h holder held",
            ms_between(t_hold, at)
        ));
        return Ok(kept);
    }
    let t1 = mono_us();
    t.history.resource.exit(1, t1);
    t.contender.release();
    let Some((t_c, _)) = await_grant_as(2, third, &mut t.history.resource, bound).await? else {
        bail!("the third holder got no grant within {bound:?} of the -1 h holder's release");
    };
    t.history.extra.handoff_ms = Some(ms_between(t1, t_c));
    t.history.resource.exit(2, mono_us());
    Ok(kept)
}

/// Fails unless the holder's clock reads about `expected_ms` ahead of the harness's: the
/// proof that libfaketime took effect.
fn check_skew(h: &Holder, expected_ms: i64, who: &str) -> Result<i64> {
    let ahead = h
        .clock_ahead_ms()
        .ok_or_else(|| anyhow!("the {who} printed no event with a time"))?;
    if (ahead - expected_ms).abs() > SKEW_TOLERANCE_MS {
        bail!(
            "libfaketime did not shift the {who}'s clock: it read {ahead} ms ahead, \
             {expected_ms} ms expected"
        );
    }
    Ok(ahead)
}
