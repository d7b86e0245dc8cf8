//! The scenarios where the holder's surroundings degrade rather than the holder failing:
//! a slow link (`latency`), a cluster that loses its quorum (`quorum_loss`), and a holder
//! whose wall clock is wrong (`clock_skew`).
//!
//! - `latency`: the holder talks to every server through a [`FaultProxy`] (one per server,
//!   so Redlock's three instances too) that delays each chunk in each direction, in order.
//!   First a probe holder (its own lock name) connects and acquires through a delay of ttl /
//!   [`ACQUIRE_LINK_DIVISOR`]: its acquisition time, or why it failed (clients bound their
//!   connection set-up and requests: Redis 2 s, Redlock 200 ms per instance), goes into the
//!   notes. Then the holder connects on a clean link, and the delay goes up in steps: ttl /
//!   [`ACQUIRE_LINK_DIVISOR`], then ttl / [`SLOW_LINK_DIVISOR`], each for
//!   [`SLOW_PHASE_TTLS`] ttls (the holder should keep its lock — renewals still land in
//!   time — and nobody else is granted), then 1.5 × ttl, longer than the lease (renewals
//!   arrive too late and the lock moves to the waiter). The first step at which the holder
//!   reports trouble or the waiter is granted ends the climb: failover = the start of that
//!   step → the waiter's grant, and whether the holder learned first.
//! - `quorum_loss`: on 3 servers (Redlock's instances, a 3-node etcd cluster, a 3-member
//!   ZooKeeper ensemble) the harness SIGKILLs two (for etcd and ZooKeeper the leader and one
//!   more), keeps them down for [`OUTAGE_TTLS`] ttls (at least [`OUTAGE_MIN`]) while watching
//!   that nobody is granted and what the holder's guard reports, then restarts them;
//!   failover = the restart of the majority begins → another holder's grant (the servers' start-up included; a readiness probe that answers later is no reference: the quorum can be back before every restarted member says so).
//! - `clock_skew`: the holder runs with its wall clock [`SKEW_MS`] ahead (libfaketime, the
//!   monotonic clock untouched), the waiter with its clock as far behind. The holder holds
//!   for [`SKEW_HOLD_TTLS`] ttls (it should stay held, nobody else granted), is SIGKILLed
//!   (failover = SIGKILL → the behind-clock waiter's grant), and the behind-clock holder
//!   then holds for as long against a third, unskewed waiter before releasing to it.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{Result, anyhow, bail};

use super::holder::{ClockSkew, EventKind, Holder, find_libfaketime, wall_ms};
use super::resource::FencedResource;
use super::{
    CompareOptions, Rep, Target, WAITER_SETTLE, await_grant, await_grant_as, conclude, grant_bound,
    hold_spec, holder_and_waiter, holder_and_waiter_with, lock_name,
};
use dlock_fixtures::faults::{Fault, FaultProxy};

/// The scenarios this module runs.
pub(super) const SCENARIOS: [&str; 3] = ["latency", "quorum_loss", "clock_skew"];

/// `latency`, while the holder connects and acquires: each direction is delayed by ttl /
/// this (200 ms each way at the default 2 s ttl).
pub const ACQUIRE_LINK_DIVISOR: u32 = 10;

/// `latency`, phase 1: each direction is delayed by ttl / this (500 ms each way, a round
/// trip of half the lease, at the default 2 s ttl).
pub const SLOW_LINK_DIVISOR: u32 = 4;

/// `latency`, phase 1 lasts this many ttls (several renewals).
pub const SLOW_PHASE_TTLS: u32 = 2;

/// `latency`, phase 2: each direction is delayed by this many ttls, longer than the lease.
pub const LOSING_LINK_TTLS: f64 = 1.5;

/// `quorum_loss`: the majority stays down this many ttls…
pub const OUTAGE_TTLS: u32 = 2;

/// …and at least this long.
pub const OUTAGE_MIN: Duration = Duration::from_secs(4);

/// `clock_skew`: the shift, ms: the holder's wall clock this far ahead, the waiter's this
/// far behind.
pub const SKEW_MS: i64 = 3_600_000;

/// `clock_skew`: each skewed holder holds this many ttls (halves) before the next step.
pub const SKEW_HOLD_TTLS: f64 = 1.5;

/// How far a holder's clock may read from the skew it was given before the harness decides
/// libfaketime did not take effect.
const SKEW_TOLERANCE_MS: i64 = 60_000;

/// Why `scenario` cannot be measured on `target` by this build, if it cannot.
pub(super) fn not_measurable(scenario: &str, target: &Target) -> Option<String> {
    match scenario {
        "latency" if target.members.is_empty() => Some(
            "not measured: the server addresses are unknown (external servers), so no \
             latency proxy can sit in front of them"
                .into(),
        ),
        "quorum_loss" if !target.cluster.as_ref().is_some_and(|c| c.is_managed()) => Some(
            "not measured: needs 3 servers the harness started (external servers cannot be \
             killed)"
                .into(),
        ),
        "clock_skew" if find_libfaketime().is_none() => Some(
            "not measured: libfaketime not found (Debian: apt-get install faketime, or set \
             DLOCK_LIBFAKETIME to libfaketimeMT.so.1)"
                .into(),
        ),
        _ => None,
    }
}

/// Replaces every server address of `url` by its proxy's (`host:port` followed by a
/// non-digit or the end, so `…:5432` never matches inside `…:54321`).
pub(super) fn reroute(url: &str, pairs: &[(SocketAddr, SocketAddr)]) -> Result<String> {
    let mut out = url.to_string();
    for (from, to) in pairs {
        let needle = from.to_string();
        let mut next = String::with_capacity(out.len());
        let mut rest = out.as_str();
        let mut found = false;
        while let Some(i) = rest.find(&needle) {
            let after = &rest[i + needle.len()..];
            next.push_str(&rest[..i]);
            if after.chars().next().is_some_and(|c| c.is_ascii_digit()) {
                next.push_str(&needle);
            } else {
                next.push_str(&to.to_string());
                found = true;
            }
            rest = after;
        }
        next.push_str(rest);
        if !found {
            bail!("{from} does not appear in {}", dlock::redact(url));
        }
        out = next;
    }
    Ok(out)
}

/// One repetition of a scenario of this module.
pub(super) async fn run_rep(
    opts: &CompareOptions,
    backend: &str,
    target: &Target,
    scenario: &str,
    rep: usize,
) -> Result<Rep> {
    let name = lock_name(backend, scenario, rep);
    let url = target.url.as_str();
    let mut res = FencedResource::new();
    let mut out = Rep::default();
    match scenario {
        "latency" => {
            let slow = opts.ttl / ACQUIRE_LINK_DIVISOR;
            let mut proxies = Vec::new();
            let mut pairs = Vec::new();
            for m in &target.members {
                let p = FaultProxy::start(*m).await?;
                p.set(Fault::Latency(slow));
                pairs.push((*m, p.addr()));
                proxies.push(p);
            }
            if proxies.is_empty() {
                bail!("no server address to put a proxy in front of");
            }
            let url_a = reroute(url, &pairs)?;
            // A probe holder (its own lock name) connects and acquires through the mildly
            // slow link, then releases: the acquisition time, or why it failed.
            let probe_name = format!("{name}-probe");
            let spawned = wall_ms();
            let mut probe = Holder::spawn(
                &opts.dlock_bin,
                &hold_spec(&url_a, &probe_name, opts.ttl, false),
            )?;
            match probe.acquired(super::FIRST_GRANT).await {
                Ok(Some(ev)) => out.acquire_ms = Some((ev.t_ms - spawned) as f64),
                Ok(None) => {
                    out.acquire_error = Some(format!("no grant within {:?}", super::FIRST_GRANT))
                }
                Err(e) => out.acquire_error = Some(cause(&e, &probe_name)),
            }
            probe.release_and_finish(Duration::from_secs(10)).await;
            // The holder connects on a clean link; the delays below hit an established
            // session, which is what renewals live with.
            for p in &proxies {
                p.set(Fault::Pass);
            }
            let (mut a, token_a, mut b) =
                holder_and_waiter(opts, &url_a, url, &name, &mut res).await?;
            let result = latency(opts, &proxies, &mut a, token_a, &mut b, &mut res, &mut out).await;
            conclude(out, &res, a, b, result).await
        }
        "quorum_loss" => {
            let (mut a, token_a, mut b) =
                holder_and_waiter(opts, url, url, &name, &mut res).await?;
            let result = quorum_loss(
                opts, target, &name, &mut a, token_a, &mut b, &mut res, &mut out,
            )
            .await;
            conclude(out, &res, a, b, result).await
        }
        "clock_skew" => {
            let lib = find_libfaketime().ok_or_else(|| anyhow!("libfaketime not found"))?;
            let mut spec_a = hold_spec(url, &name, opts.ttl, false);
            spec_a.skew = Some(ClockSkew {
                lib: lib.clone(),
                offset_ms: SKEW_MS,
            });
            let mut spec_b = hold_spec(url, &name, opts.ttl, true);
            spec_b.skew = Some(ClockSkew {
                lib,
                offset_ms: -SKEW_MS,
            });
            let (mut a, token_a, mut b) =
                holder_and_waiter_with(opts, None, spec_a, spec_b, &mut res).await?;
            let result = clock_skew(
                opts, url, &name, &mut a, token_a, &mut b, &mut res, &mut out,
            )
            .await;
            conclude(out, &res, a, b, result).await
        }
        other => bail!("scenario {other:?} is not implemented"),
    }
}

/// The first line of a holder's error, with the lock name (unique per repetition) replaced,
/// so that the same cause reads the same in every repetition's note.
fn cause(e: &anyhow::Error, name: &str) -> String {
    super::first_line(&format!("{e:#}")).replace(name, "<lock>")
}

/// What a holder reported during a scenario, for the notes.
#[derive(Debug, Default)]
pub(super) struct Reported {
    /// `state at +ms` (from the fault), in order.
    lines: Vec<String>,
    /// When it first reported anything but `held` (harness clock, ms).
    left_held: Option<i64>,
}

impl Reported {
    fn state(&mut self, state: &str, t_ms: i64, t0: i64) {
        self.lines.push(format!("{state} at +{} ms", t_ms - t0));
        if state != "held" && self.left_held.is_none() {
            self.left_held = Some(t_ms);
        }
    }

    pub(super) fn is_empty(&self) -> bool {
        self.lines.is_empty()
    }

    pub(super) fn join(&self, sep: &str) -> String {
        self.lines.join(sep)
    }
}

/// The `state` events a holder printed so far, as `state at +ms` (from `t0`); the first
/// `lost` is recorded as the holder leaving the resource and returned.
pub(super) fn drain_states(
    h: &mut Holder,
    id: super::resource::HolderId,
    t0: i64,
    res: &mut FencedResource,
    states: &mut Reported,
) -> Option<i64> {
    let mut lost = None;
    while let Some(ev) = h.try_event() {
        match &ev.kind {
            EventKind::State(st) => {
                states.state(st, ev.t_ms, t0);
                if st == "lost" && lost.is_none() {
                    lost = Some(ev.t_ms);
                    res.exit(id, ev.t_ms);
                }
            }
            EventKind::Ended => states.lines.push(format!("exited at +{} ms", ev.t_ms - t0)),
            _ => {}
        }
    }
    lost
}

/// Waits up to `within` for holder `h` to report `lost` (when it has not yet); records it.
async fn await_lost(
    h: &mut Holder,
    id: super::resource::HolderId,
    t0: i64,
    within: Duration,
    res: &mut FencedResource,
    states: &mut Reported,
) -> Option<i64> {
    let ev = h.state("lost", within).await?;
    states.state("lost", ev.t_ms, t0);
    res.exit(id, ev.t_ms);
    Some(ev.t_ms)
}

#[allow(clippy::too_many_arguments)]
async fn latency(
    opts: &CompareOptions,
    proxies: &[FaultProxy],
    a: &mut Holder,
    token_a: Option<u64>,
    b: &mut Holder,
    res: &mut FencedResource,
    out: &mut Rep,
) -> Result<()> {
    let bound = grant_bound(opts.ttl);
    let fault_bound = (opts.ttl * 3).max(Duration::from_secs(6));
    let window = opts.ttl * SLOW_PHASE_TTLS;
    // The steps: two the lock should survive, one it cannot (longer than the lease).
    let steps = [
        (opts.ttl / ACQUIRE_LINK_DIVISOR, Some(window)),
        (opts.ttl / SLOW_LINK_DIVISOR, Some(window)),
        (opts.ttl.mul_f64(LOSING_LINK_TTLS), None),
    ];
    let mut lost = None;
    for (delay, window) in steps {
        let each_way = delay.as_millis() as u64;
        for p in proxies {
            p.set(Fault::Latency(delay));
        }
        let t0 = wall_ms();
        let mut grant = await_grant(b, res, window.unwrap_or(fault_bound)).await?;
        let mut states = Reported::default();
        lost = lost.or(drain_states(a, 0, t0, res, &mut states));
        let troubled = !states.is_empty();
        if let Some(w) = window {
            if grant.is_none() && !troubled {
                // Held through this step: on to a slower link.
                out.kept_at.push((each_way, true));
                continue;
            }
            out.kept_at.push((each_way, false));
            if grant.is_none() {
                // The holder gave up (or doubts) at this delay: the lock is on its way out.
                grant = await_grant(b, res, fault_bound.saturating_sub(w)).await?;
                lost = lost.or(drain_states(a, 0, t0, res, &mut states));
            }
        }
        if lost.is_none() && grant.is_some() {
            lost = await_lost(a, 0, t0, bound, res, &mut states).await;
        }
        if !states.is_empty() {
            out.notes.push(format!(
                "at {each_way} ms each way the holder reported {}",
                states.join(", ")
            ));
        }
        match grant {
            Some((t_grant, _)) => {
                out.moved_at = Some(each_way);
                out.failover_ms = Some((t_grant - t0) as f64);
                match lost {
                    Some(t) => out.learned = Some((t < t_grant, (t_grant - t) as f64)),
                    None => out
                        .notes
                        .push("the slowed holder never reported the loss".to_string()),
                }
                out.stale_rejected = Some(res.write(0, token_a, wall_ms()).rejected());
                res.exit(0, wall_ms());
            }
            None => {
                out.notes.push(format!(
                    "not freed within {} s at {each_way} ms each way ({}): the slow \
                     connection stays open",
                    fault_bound.as_secs(),
                    if lost.is_some() {
                        "the holder reported the loss, but the server kept the lock"
                    } else {
                        "the holder kept its lock"
                    }
                ));
                for p in proxies {
                    p.set(Fault::Pass);
                }
                res.exit(0, lost.unwrap_or_else(wall_ms));
                a.release();
                if await_grant(b, res, bound).await?.is_none() {
                    bail!("the waiter got no grant after the slowed holder released");
                }
            }
        }
        break;
    }
    Ok(())
}

#[allow(clippy::too_many_arguments)]
async fn quorum_loss(
    opts: &CompareOptions,
    target: &Target,
    name: &str,
    a: &mut Holder,
    token_a: Option<u64>,
    b: &mut Holder,
    res: &mut FencedResource,
    out: &mut Rep,
) -> Result<()> {
    let Some(cluster) = target.cluster.as_ref().filter(|c| c.is_managed()) else {
        bail!("no managed cluster to take the quorum from");
    };
    if cluster.len() != 3 {
        bail!("quorum_loss expects 3 servers, got {}", cluster.len());
    }
    let bound = grant_bound(opts.ttl);
    let leader = cluster.leader().await?;
    let down = match leader {
        Some(l) => vec![l, (l + 1) % 3],
        None => vec![0, 1],
    };
    out.notes.push(match leader {
        Some(l) => format!(
            "killed members {} and {} of 3 (the leader: {l})",
            down[0], down[1]
        ),
        None => format!("killed servers {} and {} of 3", down[0], down[1]),
    });
    let t0 = wall_ms();
    for &i in &down {
        cluster.kill_member(i).await?;
    }
    let outage = (opts.ttl * OUTAGE_TTLS).max(OUTAGE_MIN);
    // During the outage nobody may be granted; the waiter may give up (its servers went).
    let mut b_gone = false;
    let early = match await_grant(b, res, outage).await {
        Ok(g) => g,
        Err(e) => {
            b_gone = true;
            out.notes.push(format!(
                "the waiter exited during the outage ({}); a new waiter was started after \
                 the restart",
                cause(&e, name)
            ));
            None
        }
    };
    if let Some((t, _)) = early {
        out.notes.push(format!(
            "granted to the waiter at +{} ms, during the outage (no majority up)",
            t - t0
        ));
    }
    // Whatever of the outage is left (the grant above may have ended it early, or the
    // waiter may have exited at once).
    let left = outage.saturating_sub(Duration::from_millis((wall_ms() - t0).max(0) as u64));
    tokio::time::sleep(left).await;
    let mut states = Reported::default();
    let mut lost = drain_states(a, 0, t0, res, &mut states);
    let t_restart = wall_ms();
    cluster.restart_members(&down).await?;
    let t_back = wall_ms();
    out.notes.push(format!(
        "majority down for {} ms; restarting it took {} ms",
        t_restart - t0,
        t_back - t_restart
    ));
    let mut grant = early;
    let mut c = None;
    if grant.is_none() && !b_gone {
        grant = match await_grant(b, res, bound).await {
            Ok(g) => g,
            Err(e) => {
                out.notes.push(format!(
                    "the waiter exited after the restart ({}); a new waiter was started",
                    cause(&e, name)
                ));
                b_gone = true;
                None
            }
        };
    }
    if grant.is_none() && b_gone {
        let mut w = Holder::spawn(
            &opts.dlock_bin,
            &hold_spec(&target.url, name, opts.ttl, true),
        )?;
        grant = await_grant_as(2, &mut w, res, bound).await?;
        c = Some(w);
    }
    lost = lost.or(drain_states(a, 0, t0, res, &mut states));
    if lost.is_none() && grant.is_some() {
        lost = await_lost(a, 0, t0, bound, res, &mut states).await;
    }
    out.left_held_ms = states.left_held.map(|t| (t - t0) as f64);
    if !states.is_empty() {
        out.notes
            .push(format!("holder reported: {}", states.join(", ")));
    } else {
        out.notes
            .push("the holder's guard stayed held throughout".to_string());
    }
    match grant {
        Some((t_grant, _)) => {
            if early.is_none() {
                out.failover_ms = Some((t_grant - t_restart) as f64);
            }
            if let Some(t) = lost {
                out.learned = Some((t < t_grant, (t_grant - t) as f64));
            }
            out.stale_rejected = Some(res.write(0, token_a, wall_ms()).rejected());
        }
        None => {
            out.notes.push(format!(
                "no other holder got the lock within {} s of the restart{}",
                bound.as_secs(),
                if lost.is_some() {
                    " although the holder reported it lost (orphaned until it releases)"
                } else {
                    ": the holder kept it through the outage"
                }
            ));
        }
    }
    res.exit(0, wall_ms());
    if let Some(w) = c {
        w.finish().await;
    }
    Ok(())
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

#[allow(clippy::too_many_arguments)]
async fn clock_skew(
    opts: &CompareOptions,
    url: &str,
    name: &str,
    a: &mut Holder,
    token_a: Option<u64>,
    b: &mut Holder,
    res: &mut FencedResource,
    out: &mut Rep,
) -> Result<()> {
    let bound = grant_bound(opts.ttl);
    let ahead_a = check_skew(a, SKEW_MS, "holder")?;
    let ahead_b = check_skew(b, -SKEW_MS, "waiter")?;
    out.notes.push(format!(
        "clocks as read from the events: holder {:+.1} h, waiter {:+.1} h",
        ahead_a as f64 / 3.6e6,
        ahead_b as f64 / 3.6e6
    ));
    let hold = opts.ttl.mul_f64(SKEW_HOLD_TTLS);
    // The ahead-clock holder holds; nobody else may be granted, its guard should stay held.
    let t_hold = wall_ms();
    let early = await_grant(b, res, hold).await?;
    let mut states = Reported::default();
    drain_states(a, 0, t_hold, res, &mut states);
    let mut kept = states.is_empty() && early.is_none();
    if !states.is_empty() {
        out.notes.push(format!(
            "the +1 h holder reported {} while holding",
            states.join(", ")
        ));
    }
    if let Some((t, _)) = early {
        out.notes.push(format!(
            "the -1 h waiter was granted at +{} ms while the +1 h holder held",
            t - t_hold
        ));
    }
    // SIGKILL the ahead-clock holder: the behind-clock waiter takes over.
    let t0 = wall_ms();
    a.kill()?;
    res.exit(0, t0);
    let Some((t_grant, _)) = await_grant(b, res, bound).await? else {
        bail!("the waiter got no grant within {bound:?} of the SIGKILL");
    };
    if early.is_none() {
        out.failover_ms = Some((t_grant - t0) as f64);
    }
    out.stale_rejected = Some(res.write(0, token_a, wall_ms()).rejected());
    // The behind-clock holder holds against an unskewed waiter, then releases to it.
    let mut c = Holder::spawn(&opts.dlock_bin, &hold_spec(url, name, opts.ttl, true))?;
    let result: Result<()> = async {
        match c.waiting_or_acquired(super::FIRST_GRANT).await? {
            Some(ev) => {
                if let EventKind::Acquired { token } = ev.kind {
                    res.enter(2, token, ev.t_ms);
                } else if let Some(ev) = c.next_event(WAITER_SETTLE).await {
                    if let EventKind::Acquired { token } = ev.kind {
                        res.enter(2, token, ev.t_ms);
                    }
                }
            }
            None => bail!(
                "the third holder printed nothing within {:?}",
                super::FIRST_GRANT
            ),
        }
        let t_hold_b = wall_ms();
        let early_c = await_grant_as(2, &mut c, res, hold).await?;
        let mut states = Reported::default();
        drain_states(b, 1, t_hold_b, res, &mut states);
        if !states.is_empty() || early_c.is_some() {
            kept = false;
        }
        if !states.is_empty() {
            out.notes.push(format!(
                "the -1 h holder reported {} while holding",
                states.join(", ")
            ));
        }
        if let Some((t, _)) = early_c {
            out.notes.push(format!(
                "the unskewed waiter was granted at +{} ms while the -1 h holder held",
                t - t_hold_b
            ));
            return Ok(());
        }
        let t1 = wall_ms();
        res.exit(1, t1);
        b.release();
        let Some((t_c, _)) = await_grant_as(2, &mut c, res, bound).await? else {
            bail!("the third holder got no grant within {bound:?} of the -1 h holder's release");
        };
        out.handoff_ms = Some((t_c - t1) as f64);
        res.exit(2, wall_ms());
        Ok(())
    }
    .await;
    out.kept_held = Some(kept);
    let err_c = c.stderr();
    c.finish().await;
    result.map_err(|e| anyhow!("{e:#} (third holder: {err_c})"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reroute_replaces_whole_addresses_only() {
        let a: SocketAddr = "127.0.0.1:5432".parse().unwrap();
        let b: SocketAddr = "127.0.0.1:6000".parse().unwrap();
        let pa: SocketAddr = "127.0.0.1:40001".parse().unwrap();
        let pb: SocketAddr = "127.0.0.1:40002".parse().unwrap();
        let url = "redlock://127.0.0.1:54321,127.0.0.1:5432,127.0.0.1:6000/x";
        assert_eq!(
            reroute(url, &[(a, pa), (b, pb)]).unwrap(),
            "redlock://127.0.0.1:54321,127.0.0.1:40001,127.0.0.1:40002/x"
        );
        let missing: SocketAddr = "127.0.0.1:7".parse().unwrap();
        assert!(reroute(url, &[(missing, pa)]).is_err());
    }
}
