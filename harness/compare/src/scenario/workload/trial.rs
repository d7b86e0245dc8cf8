//! A running trial: the subject holding the lock, a contender queued behind it, and the
//! history they write. Nemeses act on it through these operations.

use std::time::Duration;

use anyhow::{Result, anyhow};

use super::{Ctx, Role};
use crate::scenario::history::History;
use crate::scenario::holder::{Event, EventKind, Holder, ms_between};
use crate::scenario::resource::{FencedResource, HolderId};

/// A grant: when (`CLOCK_MONOTONIC` µs) and with which fencing token.
pub type Grant = (i64, Option<u64>);

/// The subject (holder 0) and the contender (holder 1) of one repetition, and its history.
pub struct Trial<'a> {
    /// The repetition's setting.
    pub ctx: &'a Ctx<'a>,
    /// Holder 0, the one the fault hits.
    pub subject: Holder,
    /// The subject's fencing token.
    pub token: Option<u64>,
    /// Holder 1, queued behind the subject.
    pub contender: Holder,
    /// Holders that hold beside the subject for the whole repetition without entering the
    /// resource (the semaphore workload's other permit holder); no fault is aimed at them.
    pub companions: Vec<Holder>,
    /// What happened so far.
    pub history: History,
}

impl<'a> Trial<'a> {
    /// A trial whose subject holds (with `token`) and whose contender waits.
    pub fn new(
        ctx: &'a Ctx<'a>,
        subject: Holder,
        token: Option<u64>,
        contender: Holder,
        history: History,
    ) -> Trial<'a> {
        Trial {
            ctx,
            subject,
            token,
            contender,
            companions: Vec::new(),
            history,
        }
    }

    /// This trial with `companion` holding beside the subject until the end.
    pub fn with_companion(mut self, companion: Holder) -> Trial<'a> {
        self.companions.push(companion);
        self
    }

    /// Waits for the contender's grant (unless it came already), records it, has the
    /// contender write.
    pub async fn await_grant(&mut self, within: Duration) -> Result<Option<Grant>> {
        await_grant_as(1, &mut self.contender, &mut self.history.resource, within).await
    }

    /// A fresh contender on the target's URL (the first one gave up).
    pub fn spawn_contender(&self) -> Result<Holder> {
        let spec = self.ctx.spec(&self.ctx.target.url, Role::Contender);
        Holder::spawn(&self.ctx.opts.dlock_bin, &spec)
    }

    /// The subject writes with its old token at `t_us` (it does not know it lost the lock);
    /// recorded as the stale write.
    pub fn stale_write(&mut self, t_us: i64) {
        let w = self.history.resource.write(0, self.token, t_us);
        self.history.stale(w);
    }

    /// A write the subject sent from inside before it stopped (released or died), delivered
    /// only now; recorded as the stale write.
    pub fn late_write(&mut self, t_us: i64) {
        let w = self.history.resource.late_write(0, self.token, t_us);
        self.history.stale(w);
    }

    /// The subject's `state` events so far (see [`drain_states`]).
    pub fn drain_subject(&mut self, t0: i64, states: &mut Reported) -> Option<i64> {
        drain_states(&mut self.subject, 0, t0, &mut self.history.resource, states)
    }

    /// Waits up to `within` for the subject's `lost` (see [`await_lost`]).
    pub async fn await_subject_lost(
        &mut self,
        t0: i64,
        within: Duration,
        states: &mut Reported,
    ) -> Option<i64> {
        let res = &mut self.history.resource;
        await_lost(&mut self.subject, 0, t0, within, res, states).await
    }

    /// The end of every repetition: both holders stopped (the contender releases first), and
    /// an error carrying their stderr when `result` is one.
    pub async fn finish(self, result: Result<()>) -> Result<History> {
        let err_a = self.subject.stderr();
        let err_b = self.contender.stderr();
        self.subject.finish().await;
        self.contender
            .release_and_finish(Duration::from_secs(10))
            .await;
        for c in self.companions {
            c.release_and_finish(Duration::from_secs(10)).await;
        }
        let with = |who: &str, err: String| {
            if err.is_empty() {
                String::new()
            } else {
                format!(" ({who}: {err})")
            }
        };
        result.map_err(|e| {
            // Kept as it is, so that the runner can tell it (and run the repetition again).
            if e.downcast_ref::<crate::scenario::nemesis::Void>().is_some() {
                return e;
            }
            anyhow!("{e:#}{}{}", with("holder", err_a), with("waiter", err_b))
        })?;
        Ok(self.history)
    }
}

/// Waits for `h`'s grant as holder `id` (unless it came already), records it, has it write.
/// Returns the grant time and token.
pub async fn await_grant_as(
    id: HolderId,
    h: &mut Holder,
    res: &mut FencedResource,
    within: Duration,
) -> Result<Option<Grant>> {
    if let Some(s) = res.sections().iter().find(|s| s.holder == id) {
        let (t, tok) = (s.enter_us, s.token);
        res.write(id, tok, t);
        return Ok(Some((t, tok)));
    }
    match h.acquired(within).await? {
        Some(ev) => {
            let EventKind::Acquired { token } = ev.kind else {
                unreachable!("acquired() returns acquired events")
            };
            res.enter(id, token, ev.t_us);
            res.write(id, token, ev.t_us);
            Ok(Some((ev.t_us, token)))
        }
        None => Ok(None),
    }
}

/// What a holder reported during a fault, for the notes.
#[derive(Debug, Default)]
pub struct Reported {
    /// `state at +ms` (from the fault), in order.
    lines: Vec<String>,
    /// When it first reported anything but `held` (`CLOCK_MONOTONIC` µs).
    pub left_held: Option<i64>,
}

impl Reported {
    /// A `state` event at `t_us`, `t0` being the fault.
    pub fn state(&mut self, state: &str, t_us: i64, t0: i64) {
        self.lines
            .push(format!("{state} at +{:.0} ms", ms_between(t0, t_us)));
        if state != "held" && self.left_held.is_none() {
            self.left_held = Some(t_us);
        }
    }

    /// Nothing reported.
    pub fn is_empty(&self) -> bool {
        self.lines.is_empty()
    }

    /// The lines joined by `sep`.
    pub fn join(&self, sep: &str) -> String {
        self.lines.join(sep)
    }
}

/// The `state` events a holder printed so far, as `state at +ms` (from `t0`); the first
/// `lost` is recorded as the holder leaving the resource and returned.
pub fn drain_states(
    h: &mut Holder,
    id: HolderId,
    t0: i64,
    res: &mut FencedResource,
    states: &mut Reported,
) -> Option<i64> {
    let mut lost = None;
    while let Some(ev) = h.try_event() {
        match &ev.kind {
            EventKind::State(st) => {
                states.state(st, ev.t_us, t0);
                if st == "lost" && lost.is_none() {
                    lost = Some(ev.t_us);
                    res.exit(id, ev.t_us);
                }
            }
            EventKind::Ended => states
                .lines
                .push(format!("exited at +{:.0} ms", ms_between(t0, ev.t_us))),
            _ => {}
        }
    }
    lost
}

/// Waits up to `within` for holder `h` to report `lost`; records it.
pub async fn await_lost(
    h: &mut Holder,
    id: HolderId,
    t0: i64,
    within: Duration,
    res: &mut FencedResource,
    states: &mut Reported,
) -> Option<i64> {
    let ev = h.state("lost", within).await?;
    states.state("lost", ev.t_us, t0);
    res.exit(id, ev.t_us);
    Some(ev.t_us)
}

/// Whether the holder's output has ended (it exited), waiting briefly for the end.
pub async fn has_ended(h: &mut Holder) -> bool {
    // Bounded: consumes events until the end or one second without any.
    for _ in 0..64 {
        match h.next_event(Duration::from_secs(1)).await {
            Some(Event {
                kind: EventKind::Ended,
                ..
            }) => return true,
            Some(_) => continue,
            None => return false,
        }
    }
    false
}

/// The first line of an error, with the lock name (unique per repetition) replaced, so
/// that the same cause reads the same in every repetition's note.
pub fn cause(e: &anyhow::Error, name: &str) -> String {
    first_line(&format!("{e:#}")).replace(name, "<lock>")
}

/// The first line of `s`.
pub fn first_line(s: &str) -> &str {
    s.lines().next().unwrap_or("")
}
