//! What happened in one backend's soak, and the check that turns it into findings.
//!
//! Every holder process gets a number (its incarnation, [`Inc`]); the log keeps its grant,
//! its writes on the fenced resource and when it left the critical section (released,
//! reported `lost`, was killed, or its process ended), all on `CLOCK_MONOTONIC` µs (the
//! holders' `t_mono_us`, the harness's [`mono_us`](crate::scenario::holder::mono_us)). The
//! check replays the writes in time order through a fresh
//! [`FencedResource`]: a write accepted from a holder whose lock had
//! already been granted to another holder is a fencing violation.

use std::collections::BTreeMap;

use serde::Serialize;

use super::plan::FaultKind;
use crate::scenario::resource::{FencedResource, WriteOutcome};

/// A holder process's number within one backend's soak.
pub type Inc = usize;

/// Why a holder wrote.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum WriteWhy {
    /// At its grant.
    Grant,
    /// At the end of its hold, before releasing (it had not reported `lost`).
    Work,
    /// At once on waking from a pause, with its old token.
    Resumed,
}

#[derive(Debug, Clone, Copy)]
struct Grant {
    inc: Inc,
    slot: usize,
    token: Option<u64>,
    t_us: i64,
}

#[derive(Debug, Clone, Copy)]
struct Write {
    inc: Inc,
    token: Option<u64>,
    t_us: i64,
    why: WriteWhy,
}

/// A fault as it was applied.
#[derive(Debug, Clone, Serialize)]
pub struct AppliedFault {
    /// Its index in the planned schedule.
    pub n: usize,
    /// What it did.
    pub kind: FaultKind,
    /// The planned pick (see [`PlannedFault::pick`](super::plan::PlannedFault::pick)).
    pub pick: u64,
    /// The slot it hit (`None`: a server restart, or no holder process was there).
    pub victim_slot: Option<usize>,
    /// Whether the victim was inside the lock when hit.
    pub victim_inside: bool,
    /// When it began and ended, ms from the start of the backend's soak.
    pub start_ms: f64,
    /// See `start_ms`.
    pub end_ms: f64,
    #[serde(skip)]
    pub(crate) start_us: i64,
}

/// One backend's history.
#[derive(Debug, Default)]
pub struct Log {
    t0_us: i64,
    sections: FencedResource,
    grants: Vec<Grant>,
    writes: Vec<Write>,
    lost: BTreeMap<Inc, i64>,
    faults: Vec<AppliedFault>,
    lines: Vec<(i64, String)>,
    /// Holder processes started.
    pub holders_started: usize,
    /// Holder processes that ended before their grant (a restart or reset cut them off).
    pub ended_before_grant: usize,
}

impl Log {
    /// An empty log whose times are counted from `t0_us`.
    pub fn new(t0_us: i64) -> Log {
        Log {
            t0_us,
            ..Log::default()
        }
    }

    /// ms from the start.
    pub fn ms(&self, t_us: i64) -> f64 {
        (t_us - self.t0_us) as f64 / 1000.0
    }

    fn line(&mut self, t_us: i64, s: String) {
        self.lines.push((t_us, s));
    }

    /// Holder `inc` in `slot` got the lock with `token` at `t_us`, and wrote.
    pub fn grant(&mut self, inc: Inc, slot: usize, token: Option<u64>, t_us: i64) {
        self.sections.enter(inc, token, t_us);
        self.grants.push(Grant {
            inc,
            slot,
            token,
            t_us,
        });
        self.line(
            t_us,
            format!("holder {inc} (slot {slot}) acquired, token {token:?}"),
        );
        self.write(inc, token, t_us, WriteWhy::Grant);
    }

    /// Holder `inc` writes with `token` at `t_us`.
    pub fn write(&mut self, inc: Inc, token: Option<u64>, t_us: i64, why: WriteWhy) {
        self.writes.push(Write {
            inc,
            token,
            t_us,
            why,
        });
        self.line(
            t_us,
            format!("holder {inc} writes, token {token:?} ({why:?})"),
        );
    }

    /// Holder `inc` reported `lost` at `t_us` (it leaves the critical section).
    pub fn lost(&mut self, inc: Inc, t_us: i64) {
        self.lost.entry(inc).or_insert(t_us);
        self.exit(inc, t_us, "reported lost");
    }

    /// Holder `inc` left the critical section at `t_us` (`why`); only the first exit counts.
    pub fn exit(&mut self, inc: Inc, t_us: i64, why: &str) {
        if self.sections.is_inside(inc) {
            self.sections.exit(inc, t_us);
            self.line(t_us, format!("holder {inc} left: {why}"));
        }
    }

    /// A fault was applied.
    pub fn fault(&mut self, f: AppliedFault) {
        let victim = f
            .victim_slot
            .map_or("-".to_string(), |s| format!("slot {s}"));
        self.line(
            f.start_us,
            format!(
                "fault {} {} on {victim} ({:.0} ms)",
                f.n,
                f.kind.name(),
                f.end_ms - f.start_ms
            ),
        );
        self.faults.push(f);
    }

    /// Holder `inc` ended at `t_us` (its output closed).
    pub fn ended(&mut self, inc: Inc, t_us: i64) {
        self.line(t_us, format!("holder {inc} ended"));
    }

    /// The faults applied so far.
    pub fn faults(&self) -> &[AppliedFault] {
        &self.faults
    }

    /// Grants so far.
    pub fn acquisitions(&self) -> usize {
        self.grants.len()
    }

    /// The log's lines between `from_us` and `to_us`, at most `max`, as `+ms text`.
    pub fn window(&self, from_us: i64, to_us: i64, max: usize) -> Vec<String> {
        let mut ls: Vec<&(i64, String)> = self
            .lines
            .iter()
            .filter(|(t, _)| (from_us..=to_us).contains(t))
            .collect();
        ls.sort_by_key(|(t, _)| *t);
        ls.iter()
            .take(max)
            .map(|(t, s)| format!("+{:.3} ms {s}", self.ms(*t)))
            .collect()
    }

    /// The latest fault that began at or before `t_us`.
    fn fault_before(&self, t_us: i64) -> Option<&AppliedFault> {
        self.faults.iter().rev().find(|f| f.start_us <= t_us)
    }

    /// The findings so far (see the module docs). `persistent_tokens`: whether the backend's
    /// tokens survive a server restart; where they do not, a violation whose takeover spans a
    /// restart is the backend's documented behaviour.
    pub fn check(&self, persistent_tokens: bool) -> Findings {
        let mut f = Findings {
            acquisitions: self.grants.len(),
            writes: self.writes.len(),
            fenced: self.grants.iter().any(|g| g.token.is_some()),
            ..Findings::default()
        };
        let mut grants = self.grants.clone();
        grants.sort_by_key(|g| g.t_us);
        let own: BTreeMap<Inc, Grant> = grants.iter().map(|g| (g.inc, *g)).collect();
        let mut writes = self.writes.clone();
        writes.sort_by_key(|w| w.t_us);
        let mut replay = FencedResource::new();
        for w in &writes {
            let outcome = replay.write(w.inc, w.token, w.t_us);
            if outcome.rejected() {
                f.rejected += 1;
            }
            let after_lost = self.lost.get(&w.inc).is_some_and(|l| *l < w.t_us);
            if after_lost {
                f.writes_after_lost += 1;
            }
            if outcome != WriteOutcome::Accepted {
                continue;
            }
            let Some(mine) = own.get(&w.inc) else {
                continue;
            };
            // Another holder's grant between this holder's own and the write: its lock had
            // passed on, so fencing must have rejected the write.
            let Some(next) = grants
                .iter()
                .find(|g| g.inc != w.inc && g.t_us > mine.t_us && g.t_us < w.t_us)
            else {
                continue;
            };
            if after_lost {
                f.writes_after_lost_accepted += 1;
            }
            let restart_between = self.faults.iter().any(|x| {
                x.kind == FaultKind::ServerRestart
                    && x.start_us >= mine.t_us
                    && x.start_us <= next.t_us
            });
            let v = Violation {
                holder: w.inc,
                slot: mine.slot,
                token: w.token,
                why: w.why,
                write_ms: self.ms(w.t_us),
                granted_ms: self.ms(mine.t_us),
                taken_over_by: next.inc,
                taken_over_token: next.token,
                taken_over_ms: self.ms(next.t_us),
                fault: self.fault_before(w.t_us).map(|x| x.kind),
                window: self.window(mine.t_us - 500_000, w.t_us + 200_000, 60),
            };
            if restart_between && !persistent_tokens {
                f.documented.push(v);
            } else {
                f.violations.push(v);
            }
        }
        for (a, b) in self.sections.overlaps() {
            let start = a.enter_us.max(b.enter_us);
            let kind = self
                .fault_before(start)
                .map_or("no fault before", |x| x.kind.name());
            *f.overlaps_by_fault.entry(kind.to_string()).or_default() += 1;
            f.overlaps += 1;
        }
        f
    }
}

/// A write accepted from a holder whose lock had passed to another holder.
#[derive(Debug, Clone, Serialize)]
pub struct Violation {
    /// The writer.
    pub holder: Inc,
    /// Its slot.
    pub slot: usize,
    /// The token it wrote with.
    pub token: Option<u64>,
    /// Why it wrote.
    pub why: WriteWhy,
    /// When it wrote (ms from the start).
    pub write_ms: f64,
    /// When it had got the lock.
    pub granted_ms: f64,
    /// The holder granted the lock between the two.
    pub taken_over_by: Inc,
    /// That holder's token.
    pub taken_over_token: Option<u64>,
    /// When that holder got it.
    pub taken_over_ms: f64,
    /// The latest fault before the write.
    pub fault: Option<FaultKind>,
    /// The log around it.
    pub window: Vec<String>,
}

/// What the check found.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Findings {
    /// Whether the grants carried fencing tokens.
    pub fenced: bool,
    /// Grants.
    pub acquisitions: usize,
    /// Writes on the fenced resource.
    pub writes: usize,
    /// Writes rejected as stale (token lower than one accepted before, in time order).
    pub rejected: usize,
    /// Writes made after the writer's own `lost` (by timestamp: the event was not read yet).
    pub writes_after_lost: usize,
    /// Of those, accepted although another holder had the lock by then (also violations).
    pub writes_after_lost_accepted: usize,
    /// Fencing violations: the soak fails.
    pub violations: Vec<Violation>,
    /// Violations across a server restart on a backend whose tokens do not survive one
    /// (documented: its capabilities lack `persistent_tokens`).
    pub documented: Vec<Violation>,
    /// Pairs of holders inside at once (by their timestamps).
    pub overlaps: usize,
    /// Overlaps by the latest fault before each began.
    pub overlaps_by_fault: BTreeMap<String, usize>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn restart(at: i64) -> AppliedFault {
        AppliedFault {
            n: 0,
            kind: FaultKind::ServerRestart,
            pick: 0,
            victim_slot: None,
            victim_inside: false,
            start_ms: 0.0,
            end_ms: 0.0,
            start_us: at,
        }
    }

    #[test]
    fn a_taken_over_holder_whose_write_is_accepted_is_a_violation() {
        let mut log = Log::new(0);
        log.grant(0, 0, Some(5), 100);
        log.write(0, Some(5), 150, WriteWhy::Work);
        log.exit(0, 160, "released");
        log.grant(1, 1, Some(6), 200);
        // Paused holder 2 got token 7 after 1 released...
        log.exit(1, 250, "released");
        log.grant(2, 2, Some(7), 300);
        // ...it is taken over by 3 with a higher token: its late write is rejected.
        log.grant(3, 3, Some(8), 400);
        log.write(2, Some(7), 500, WriteWhy::Resumed);
        let f = log.check(true);
        assert!(f.fenced);
        assert_eq!((f.acquisitions, f.rejected), (4, 1));
        assert!(f.violations.is_empty());
        assert_eq!(f.overlaps, 1);
        assert_eq!(f.overlaps_by_fault["no fault before"], 1);
        // Tokens that went backwards (holder 4's is lower than 3's): 3 keeps writing after
        // 4's grant and is accepted.
        log.lost(2, 510);
        log.grant(4, 4, Some(2), 600);
        log.write(3, Some(8), 700, WriteWhy::Work);
        let f = log.check(true);
        assert_eq!(f.violations.len(), 1);
        assert_eq!(
            (f.violations[0].holder, f.violations[0].taken_over_by),
            (3, 4)
        );
        assert!(!f.violations[0].window.is_empty());
        // Across a restart on a backend without persistent tokens: documented, not a failure.
        log.fault(restart(550));
        let f = log.check(false);
        assert!(f.violations.is_empty());
        assert_eq!(f.documented.len(), 1);
        assert_eq!(log.check(true).violations.len(), 1);
    }

    #[test]
    fn unfenced_writes_are_never_violations_but_overlaps_count() {
        let mut log = Log::new(0);
        log.grant(0, 0, None, 100);
        log.grant(1, 1, None, 150);
        log.write(0, None, 200, WriteWhy::Work);
        let f = log.check(true);
        assert!(!f.fenced);
        assert!(f.violations.is_empty());
        assert_eq!(f.overlaps, 1);
    }
}
