//! The checker: a repetition's [`History`] → its verdicts ([`Observed`]), and the
//! repetitions of a cell → the [`Cell`]'s numbers and notes.
//!
//! Verdicts: whether two holders were ever inside at once (from the fenced resource's
//! sections and writes), whether the faulty holder's stale write was rejected by its fencing
//! token, the failover (fault → the next holder's grant), whether the faulty holder learned
//! before that grant, and — where nobody else got the lock — whether a live holder kept it or
//! it was stranded (the holder had given it up, the server had not).

use super::cell::{Cell, NotFreed, Stats, Timeline};
use super::history::{Extra, History};
use super::holder::ms_between;
use super::resource::{FencedResource, WriteOutcome};

/// What one repetition showed.
#[derive(Debug, Default)]
pub struct Observed {
    /// Two holders inside at once.
    pub overlap: bool,
    /// The critical sections around the fault.
    pub timeline: Option<Timeline>,
    /// `None`: no stale write was possible.
    pub stale_rejected: Option<bool>,
    /// The stale write carried no token: the backend gave none, nothing could check it.
    pub stale_unfenced: bool,
    /// Fault → the next holder's grant, ms.
    pub failover_ms: Option<f64>,
    /// (learned before the handover, handover − learned in ms).
    pub learned: Option<(bool, f64)>,
    /// The lock moved on and the faulty holder, alive, never reported the loss.
    pub never_learned: bool,
    /// Nobody else got the lock: who kept it.
    pub retained: Option<Retention>,
    /// What the nemesis measured beside.
    pub extra: Extra,
    /// The history's notes, then the checker's.
    pub notes: Vec<String>,
}

/// Where the lock stayed when nobody else was granted it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Retention {
    /// The holder never reported a loss: it kept the lock, legitimately.
    KeptByLiveHolder,
    /// The holder reported the loss (at this instant, µs) but the server kept the lock for it:
    /// orphaned until its session ends or it releases.
    Stranded(i64),
}

impl Retention {
    /// From when (if ever) the holder reported `lost`.
    pub fn of(lost_us: Option<i64>) -> Retention {
        lost_us.map_or(Retention::KeptByLiveHolder, Retention::Stranded)
    }
}

/// The verdicts of one repetition.
pub fn check(history: History) -> Observed {
    let History {
        resource,
        fault_us,
        handover_us,
        lost_us,
        unlearned,
        stale_write,
        retained,
        extra,
        mut notes,
    } = history;
    let mut extra = extra;
    let failover_ms = fault_us
        .zip(handover_us)
        .map(|(fault, grant)| ms_between(fault, grant));
    // Both instants are CLOCK_MONOTONIC µs; a tie (the same microsecond) is not "first".
    let learned = handover_us
        .zip(lost_us)
        .map(|(grant, lost)| (lost < grant, ms_between(lost, grant)));
    extra.beyond_lease_ms = failover_ms
        .zip(extra.lease_left_ms)
        .map(|(f, left)| f - left);
    let overlap = resource.overlap_observed();
    if overlap {
        notes.push(overlap_note(&resource));
    }
    for (h, t, highest) in resource.rejected() {
        if h != 0 {
            notes.push(format!(
                "the new holder's own write was rejected: its token {t} is lower than {highest}, \
                 accepted before (tokens went backwards)"
            ));
        }
    }
    Observed {
        overlap,
        timeline: failover_ms.and_then(|f| Timeline::of(&resource, f)),
        stale_rejected: stale_write.map(|w| w.rejected()),
        stale_unfenced: stale_write == Some(WriteOutcome::Unfenced),
        failover_ms,
        learned,
        never_learned: unlearned && handover_us.is_some() && lost_us.is_none(),
        retained,
        extra,
        notes,
    }
}

/// Which sections overlapped, and which writes were made while another holder was inside;
/// instants in ms (µs precision) from the first grant of the repetition.
fn overlap_note(res: &FencedResource) -> String {
    let t0 = res.sections().iter().map(|s| s.enter_us).min().unwrap_or(0);
    let at = |t: i64| format!("{:.3}", ms_between(t0, t));
    let end = |e: Option<i64>| e.map_or("open".into(), at);
    let tok = |t: Option<u64>| t.map_or("none".into(), |t| t.to_string());
    let pairs = res.overlaps().into_iter().map(|(x, y)| {
        format!(
            "holder {} (token {}) [{}, {}) and holder {} (token {}) [{}, {})",
            x.holder,
            tok(x.token),
            at(x.enter_us),
            end(x.exit_us),
            y.holder,
            tok(y.token),
            at(y.enter_us),
            end(y.exit_us)
        )
    });
    let writes = res
        .concurrent_writes()
        .into_iter()
        .map(|(w, o, t)| format!("holder {w} wrote at {} while holder {o} was inside", at(t)));
    let all: Vec<String> = pairs.chain(writes).collect();
    format!("overlap (ms from the first grant): {}", all.join("; "))
}

/// A cell from its repetitions: the verdicts (conservative: one overlap in any repetition
/// is an overlap), the failover statistics, then the notes.
pub fn aggregate(cell: &mut Cell, reps: &[Observed]) {
    cell.repetitions = reps.len();
    cell.timeline = reps.iter().find_map(|r| r.timeline.clone());
    cell.overlap_observed = Some(reps.iter().any(|r| r.overlap));
    cell.no_token = reps.iter().any(|r| r.stale_unfenced);
    let stale: Vec<bool> = reps.iter().filter_map(|r| r.stale_rejected).collect();
    cell.stale_write_rejected = if stale.is_empty() {
        None
    } else {
        let n = stale.iter().filter(|r| **r).count();
        if n != 0 && n != stale.len() {
            cell.notes.push(format!(
                "stale write rejected in {n} of {} repetitions",
                stale.len()
            ));
        }
        Some(n == stale.len())
    };
    let failovers: Vec<f64> = reps.iter().filter_map(|r| r.failover_ms).collect();
    if failovers.len() != reps.len() && !failovers.is_empty() {
        cell.notes.push(format!(
            "failover in {} of {} repetitions",
            failovers.len(),
            reps.len()
        ));
    }
    cell.failover_ms = Stats::of(&failovers);
    let learned: Vec<(bool, f64)> = reps.iter().filter_map(|r| r.learned).collect();
    cell.never_learned = reps.iter().filter(|r| r.never_learned).count();
    if !learned.is_empty() || cell.never_learned > 0 {
        cell.holder_learned_before_handoff =
            Some(cell.never_learned == 0 && learned.iter().all(|l| l.0));
        let margins: Vec<f64> = learned.iter().map(|l| l.1).collect();
        cell.learned_gap_ms = Stats::of(&margins);
        cell.learned_before_handoff_ms = cell.learned_gap_ms.map(|s| s.median);
    }
    let mut not_freed = NotFreed::default();
    for r in reps.iter().filter_map(|r| r.retained) {
        match r {
            Retention::KeptByLiveHolder => not_freed.kept_by_live_holder += 1,
            Retention::Stranded(_) => not_freed.stranded += 1,
        }
    }
    if not_freed != NotFreed::default() {
        cell.not_freed = Some(not_freed);
    }
    let extras: Vec<&Extra> = reps.iter().map(|r| &r.extra).collect();
    extra_notes(cell, &extras);
    once_each(cell, reps);
}

/// `median ms (median; min–max)`.
fn range(s: Stats) -> String {
    format!("{:.0} ms (median; {:.0}–{:.0})", s.median, s.min, s.max)
}

/// The notes of the measurements particular to some nemeses.
fn extra_notes(cell: &mut Cell, reps: &[&Extra]) {
    let n = reps.len();
    let resumed: Vec<f64> = reps
        .iter()
        .filter_map(|r| r.learn_after_resume_ms)
        .collect();
    if let Some(s) = Stats::of(&resumed) {
        cell.notes.push(format!(
            "the resumed holder reported the loss {:.0} ms (median) after SIGCONT",
            s.median
        ));
    }
    let acquire: Vec<f64> = reps.iter().filter_map(|r| r.acquire_ms).collect();
    if let Some(s) = Stats::of(&acquire) {
        cell.notes.push(format!(
            "a probe holder's acquisition through the ttl/10 link (process start and \
             connection set-up included): {}",
            range(s)
        ));
    }
    let failed: Vec<&String> = reps
        .iter()
        .filter_map(|r| r.acquire_error.as_ref())
        .collect();
    if let Some(first) = failed.first() {
        cell.notes.push(format!(
            "a holder could not acquire through the ttl/10 link in {} of {n} repetitions \
             (first: {first})",
            failed.len(),
        ));
    }
    let left: Vec<f64> = reps.iter().filter_map(|r| r.left_held_ms).collect();
    if let Some(s) = Stats::of(&left) {
        cell.notes.push(format!(
            "the holder's guard left held {} after the majority went down, in {} of {n} \
             repetitions",
            range(s),
            left.len(),
        ));
    }
    step_notes(cell, reps);
    let kept: Vec<bool> = reps.iter().filter_map(|r| r.kept_held).collect();
    if !kept.is_empty() {
        cell.notes.push(format!(
            "the skewed holders kept the lock while holding (guards held, nobody else \
             granted) in {} of {} repetitions",
            kept.iter().filter(|k| **k).count(),
            kept.len()
        ));
    }
    let left: Vec<f64> = reps.iter().filter_map(|r| r.lease_left_ms).collect();
    let beyond: Vec<f64> = reps.iter().filter_map(|r| r.beyond_lease_ms).collect();
    if let (Some(l), Some(b)) = (Stats::of(&left), Stats::of(&beyond)) {
        cell.notes.push(format!(
            "lease left at the kill: {}; failover minus the lease left (the lock reaching the \
             waiter after the lease ran out): {:.0} ms (median; {:.0}–{:.0}), {} of {n} \
             repetitions",
            range(l),
            b.median,
            b.min,
            b.max,
            beyond.len()
        ));
        cell.beyond_lease_ms = Some(b);
    }
    let handoff: Vec<f64> = reps.iter().filter_map(|r| r.handoff_ms).collect();
    if let Some(s) = Stats::of(&handoff) {
        cell.notes.push(format!(
            "clean release by the -1 h holder → the unskewed waiter's grant: {}",
            range(s)
        ));
    }
}

/// latency: per delay step, in how many repetitions the holder kept the lock, and at which
/// step it moved.
fn step_notes(cell: &mut Cell, reps: &[&Extra]) {
    let mut steps: Vec<u64> = reps
        .iter()
        .flat_map(|r| r.kept_at.iter().map(|k| k.0))
        .collect();
    steps.sort_unstable();
    steps.dedup();
    for step in steps {
        let at: Vec<bool> = reps
            .iter()
            .flat_map(|r| r.kept_at.iter())
            .filter(|k| k.0 == step)
            .map(|k| k.1)
            .collect();
        cell.notes.push(format!(
            "at {step} ms each way the holder kept the lock (guard held, nobody else granted) \
             in {} of {} repetitions",
            at.iter().filter(|k| **k).count(),
            at.len()
        ));
    }
    let mut moved: Vec<u64> = reps.iter().filter_map(|r| r.moved_at).collect();
    moved.sort_unstable();
    moved.dedup();
    for step in moved {
        let n = reps.iter().filter(|r| r.moved_at == Some(step)).count();
        cell.notes.push(format!(
            "the lock moved at the {step} ms each way step in {n} of {} repetitions",
            reps.len()
        ));
    }
}

/// The repetitions' own notes, each observation once.
fn once_each(cell: &mut Cell, reps: &[Observed]) {
    let mut seen = std::collections::BTreeSet::new();
    for n in reps.iter().flat_map(|r| r.notes.iter()) {
        // Notes that repeat across repetitions once; overlap details are per repetition.
        // Notes that differ only in their numbers are the same observation.
        let key = if n.starts_with("overlap") || n.starts_with("holder reported:") {
            n.split(':').next().unwrap_or("").to_string()
        } else {
            n.chars().filter(|c| !c.is_ascii_digit()).collect()
        };
        if seen.insert(key) {
            cell.notes.push(n.clone());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::cell::Status;
    use super::*;

    #[test]
    fn aggregation_is_conservative() {
        let mut c = Cell::empty("redis", "holder_killed", Status::Measured, None);
        let reps = [
            Observed {
                failover_ms: Some(10.0),
                stale_rejected: Some(true),
                ..Observed::default()
            },
            Observed {
                overlap: true,
                failover_ms: Some(30.0),
                stale_rejected: Some(false),
                ..Observed::default()
            },
        ];
        aggregate(&mut c, &reps);
        assert_eq!(c.overlap_observed, Some(true));
        assert_eq!(c.stale_write_rejected, Some(false));
        assert_eq!(c.failover_ms.unwrap().median, 20.0);
        assert_eq!(c.holder_learned_before_handoff, None);
    }

    #[test]
    fn a_lock_that_did_not_move_says_who_kept_it() {
        let mut c = Cell::empty("zookeeper", "connection_reset", Status::Measured, None);
        let reps = [
            Observed {
                retained: Some(Retention::KeptByLiveHolder),
                ..Observed::default()
            },
            Observed {
                retained: Some(Retention::KeptByLiveHolder),
                ..Observed::default()
            },
        ];
        aggregate(&mut c, &reps);
        let text = crate::scenario::report::failover_text(&c);
        assert_eq!(text, "kept by the live holder");
        let reps = [
            Observed {
                failover_ms: Some(1800.0),
                ..Observed::default()
            },
            Observed {
                retained: Some(Retention::Stranded(7)),
                ..Observed::default()
            },
        ];
        let mut c = Cell::empty("zookeeper", "server_restart", Status::Measured, None);
        aggregate(&mut c, &reps);
        let text = crate::scenario::report::failover_text(&c);
        assert_eq!(text, "1800 (1800–1800) · stranded in 1 of 2");
    }

    #[test]
    fn failover_and_learning_come_from_the_marked_instants() {
        let mut h = History::new();
        h.resource.enter(0, Some(1), 1_000_000);
        h.resource.exit(0, 1_150_000);
        h.resource.enter(1, Some(2), 1_200_000);
        h.resource.write(1, Some(2), 1_200_000);
        h.handover(1_100_000, 1_200_000);
        h.lost_us = Some(1_149_500);
        let late = h.resource.late_write(0, Some(1), 1_300_000);
        h.stale(late);
        let o = check(h);
        assert!(!o.overlap);
        assert_eq!(o.failover_ms, Some(100.0));
        assert_eq!(o.learned, Some((true, 50.5)));
        assert_eq!(o.stale_rejected, Some(true));
        let t = o.timeline.expect("a timeline");
        assert_eq!(t.sections[1].from_ms, 100);
        assert_eq!(Retention::of(None), Retention::KeptByLiveHolder);
        assert_eq!(Retention::of(Some(5)), Retention::Stranded(5));
    }

    /// A holder that lived through the handover and never reported the loss (a peer
    /// library's has no way to) learned nothing: `learned first` is false, and the count says
    /// in how many repetitions.
    #[test]
    fn a_holder_that_never_reported_the_loss_never_learned() {
        let never = || {
            let mut h = History::new();
            h.resource.enter(0, None, 1_000_000);
            h.resource.enter(1, None, 3_000_000);
            h.handover(1_100_000, 3_000_000);
            h.never_learned();
            check(h)
        };
        let o = never();
        assert!(o.never_learned);
        assert_eq!(o.learned, None);
        let mut c = Cell::empty("redis", "holder_paused", Status::Measured, None);
        aggregate(&mut c, &[never(), never()]);
        assert_eq!(c.never_learned, 2);
        assert_eq!(c.holder_learned_before_handoff, Some(false));
        assert_eq!(c.learned_gap_ms, None);
        let text = crate::scenario::report::safety_text(&c);
        assert!(text.ends_with(" · never learned"), "{text}");
        // Mixed with a repetition in which it learned first.
        let learned = Observed {
            learned: Some((true, 12.0)),
            ..Observed::default()
        };
        let mut c = Cell::empty("redis", "holder_paused", Status::Measured, None);
        aggregate(&mut c, &[never(), learned]);
        assert_eq!(
            (c.never_learned, c.holder_learned_before_handoff),
            (1, Some(false))
        );
        let text = crate::scenario::report::safety_text(&c);
        assert!(
            text.ends_with(
                " · learned first no (+12.0 ms; +12.0 to +12.0) · never learned in 1 of 2"
            ),
            "{text}"
        );
        // Where the lock did not move, nothing was there to learn.
        let mut h = History::new();
        h.never_learned();
        assert!(!check(h).never_learned);
    }
}
