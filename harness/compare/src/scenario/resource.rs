//! The fenced resource owned by the harness.
//!
//! Holders enter it, write to it with their fencing token and exit it. It records every
//! critical section as an interval of `CLOCK_MONOTONIC` microseconds (the `t_mono_us` the
//! holders print, see [`mono_us`](super::holder::mono_us)),
//! so an overlap is decided by the timestamps, not by the order in which the harness happened
//! to read the events. A write carrying a token lower than one already accepted is rejected —
//! what a storage service that checks fencing tokens does. A write without a token (the
//! backend has none) cannot be checked and is accepted.
//!
//! Timestamps have microsecond resolution, so two sections that share a microsecond do not
//! count as overlapping by time alone. A write is evidence too: a write made at `t` by a holder
//! that had not yet left (its exit is at `t` or later) while another holder was inside at `t`
//! is an overlap, even when the sections only share that microsecond.

use std::collections::BTreeMap;

/// Identifies a holder within one repetition (the harness numbers them 0, 1, …).
pub type HolderId = usize;

/// One critical section: `[enter_us, exit_us)`; `exit_us` is `None` while still inside.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Section {
    /// The holder.
    pub holder: HolderId,
    /// Its fencing token, if the backend gave one.
    pub token: Option<u64>,
    /// When it entered (`CLOCK_MONOTONIC` µs).
    pub enter_us: i64,
    /// When it left, or `None` if it has not.
    pub exit_us: Option<i64>,
}

/// What became of one write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WriteOutcome {
    /// Accepted; the token was at least the highest accepted so far.
    Accepted,
    /// Accepted without any check: the write carried no token.
    Unfenced,
    /// Rejected: the token is lower than `highest`, which was already accepted.
    RejectedStale {
        /// The token the write carried.
        token: u64,
        /// The highest token accepted before it.
        highest: u64,
    },
}

impl WriteOutcome {
    /// Whether the write was rejected.
    pub fn rejected(self) -> bool {
        matches!(self, WriteOutcome::RejectedStale { .. })
    }
}

/// The resource: critical sections and writes.
#[derive(Debug, Default)]
pub struct FencedResource {
    sections: Vec<Section>,
    open: BTreeMap<HolderId, usize>,
    highest: Option<u64>,
    /// (writer, token, t_us, outcome, sent from inside: `false` for a late delivery).
    writes: Vec<(HolderId, Option<u64>, i64, WriteOutcome, bool)>,
}

impl FencedResource {
    /// An empty resource.
    pub fn new() -> FencedResource {
        FencedResource::default()
    }

    /// `holder` enters at `t_us` with `token`. Entering again without exiting first is a
    /// no-op (the first entry counts).
    pub fn enter(&mut self, holder: HolderId, token: Option<u64>, t_us: i64) {
        if self.open.contains_key(&holder) {
            return;
        }
        self.open.insert(holder, self.sections.len());
        self.sections.push(Section {
            holder,
            token,
            enter_us: t_us,
            exit_us: None,
        });
    }

    /// `holder` leaves at `t_us` (no-op if it is not inside).
    pub fn exit(&mut self, holder: HolderId, t_us: i64) {
        if let Some(i) = self.open.remove(&holder) {
            // A section never ends before it began.
            let s = &mut self.sections[i];
            s.exit_us = Some(t_us.max(s.enter_us));
        }
    }

    /// Whether `holder` is inside.
    pub fn is_inside(&self, holder: HolderId) -> bool {
        self.open.contains_key(&holder)
    }

    /// A write by `holder` with `token` at `t_us`.
    pub fn write(&mut self, holder: HolderId, token: Option<u64>, t_us: i64) -> WriteOutcome {
        self.record_write(holder, token, t_us, true)
    }

    /// A write that `holder` sent from inside its critical section, before leaving it, and
    /// that reaches the resource only now, at `t_us` (a delayed request of a holder that has
    /// since left or died). It is checked against the fencing tokens like any write, but it
    /// is no overlap: it was not made while another holder was inside.
    pub fn late_write(&mut self, holder: HolderId, token: Option<u64>, t_us: i64) -> WriteOutcome {
        self.record_write(holder, token, t_us, false)
    }

    fn record_write(
        &mut self,
        holder: HolderId,
        token: Option<u64>,
        t_us: i64,
        from_inside: bool,
    ) -> WriteOutcome {
        let outcome = match (token, self.highest) {
            (None, _) => WriteOutcome::Unfenced,
            (Some(t), Some(h)) if t < h => WriteOutcome::RejectedStale {
                token: t,
                highest: h,
            },
            (Some(t), _) => {
                self.highest = Some(self.highest.map_or(t, |h| h.max(t)));
                WriteOutcome::Accepted
            }
        };
        self.writes
            .push((holder, token, t_us, outcome, from_inside));
        outcome
    }

    /// Every critical section so far, in the order they were entered.
    pub fn sections(&self) -> &[Section] {
        &self.sections
    }

    /// Pairs of sections of different holders whose intervals intersect (an open section
    /// extends to infinity). Sections that merely touch (one exits at the instant the other
    /// enters) do not count.
    pub fn overlaps(&self) -> Vec<(Section, Section)> {
        let mut found = Vec::new();
        for (i, a) in self.sections.iter().enumerate() {
            for b in &self.sections[i + 1..] {
                if a.holder == b.holder {
                    continue;
                }
                let a_end = a.exit_us.unwrap_or(i64::MAX);
                let b_end = b.exit_us.unwrap_or(i64::MAX);
                if a.enter_us < b_end && b.enter_us < a_end {
                    found.push((*a, *b));
                }
            }
        }
        found
    }

    /// Writes made from inside the critical section while another holder was inside:
    /// (writer, other holder, t_us).
    pub fn concurrent_writes(&self) -> Vec<(HolderId, HolderId, i64)> {
        let mut found = Vec::new();
        for &(w, _, t, _, from_inside) in &self.writes {
            if !from_inside {
                continue;
            }
            let writer_inside = self
                .sections
                .iter()
                .any(|s| s.holder == w && s.enter_us <= t && s.exit_us.is_none_or(|e| t <= e));
            if !writer_inside {
                continue;
            }
            if let Some(o) = self
                .sections
                .iter()
                .find(|s| s.holder != w && s.enter_us <= t && s.exit_us.is_none_or(|e| t < e))
            {
                found.push((w, o.holder, t));
            }
        }
        found
    }

    /// Whether any two holders were inside at once: intersecting sections, or a write from
    /// inside while another holder was inside.
    pub fn overlap_observed(&self) -> bool {
        !self.overlaps().is_empty() || !self.concurrent_writes().is_empty()
    }

    /// The rejected writes: (holder, its token, the highest token accepted before).
    pub fn rejected(&self) -> Vec<(HolderId, u64, u64)> {
        self.writes
            .iter()
            .filter_map(|w| match w.3 {
                WriteOutcome::RejectedStale { token, highest } => Some((w.0, token, highest)),
                _ => None,
            })
            .collect()
    }

    /// How many writes were rejected as stale.
    pub fn rejected_writes(&self) -> usize {
        self.writes.iter().filter(|w| w.3.rejected()).count()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sequential_sections_do_not_overlap() {
        let mut r = FencedResource::new();
        r.enter(0, Some(1), 100);
        r.exit(0, 200);
        r.enter(1, Some(2), 200);
        assert!(!r.overlap_observed());
        r.exit(1, 300);
        assert!(!r.overlap_observed());
    }

    #[test]
    fn intersecting_sections_overlap_whatever_the_reading_order() {
        let mut r = FencedResource::new();
        r.enter(0, Some(1), 100);
        // The second holder's grant is read first but the first one exited later.
        r.enter(1, Some(2), 150);
        r.exit(0, 180);
        assert_eq!(r.overlaps().len(), 1);
        let mut open = FencedResource::new();
        open.enter(0, None, 100);
        open.enter(1, None, 5_000);
        assert!(open.overlap_observed());
    }

    #[test]
    fn a_write_while_another_holder_is_inside_is_an_overlap_even_within_one_tick() {
        let mut r = FencedResource::new();
        r.enter(0, Some(1), 100);
        r.enter(1, Some(2), 200);
        // The first holder wakes up in the same microsecond, writes, then learns.
        r.write(0, Some(1), 200);
        r.exit(0, 200);
        assert!(r.overlaps().is_empty());
        assert_eq!(r.concurrent_writes(), [(0, 1, 200)]);
        assert!(r.overlap_observed());
        // A late write from outside is not an overlap.
        let mut late = FencedResource::new();
        late.enter(0, Some(1), 100);
        late.exit(0, 150);
        late.enter(1, Some(2), 200);
        late.write(0, Some(1), 250);
        assert!(!late.overlap_observed());
        // Nor is a write sent before leaving that arrives in the microsecond of the handover.
        let mut same_ms = FencedResource::new();
        same_ms.enter(0, Some(1), 100);
        same_ms.exit(0, 200);
        same_ms.enter(1, Some(2), 200);
        same_ms.write(1, Some(2), 200);
        assert!(same_ms.late_write(0, Some(1), 200).rejected());
        assert!(!same_ms.overlap_observed());
        // Learned (and left) before the other holder's grant, recorded in any order.
        let mut first = FencedResource::new();
        first.enter(0, Some(1), 100);
        first.enter(1, Some(2), 300);
        first.write(1, Some(2), 300);
        first.exit(0, 200);
        assert!(!first.overlap_observed());
    }

    #[test]
    fn lower_tokens_are_rejected_and_missing_tokens_are_unchecked() {
        let mut r = FencedResource::new();
        assert_eq!(r.write(0, Some(5), 1), WriteOutcome::Accepted);
        assert_eq!(r.write(1, Some(7), 2), WriteOutcome::Accepted);
        assert_eq!(r.write(1, Some(7), 3), WriteOutcome::Accepted);
        assert_eq!(
            r.write(0, Some(5), 4),
            WriteOutcome::RejectedStale {
                token: 5,
                highest: 7
            }
        );
        assert_eq!(r.write(0, None, 5), WriteOutcome::Unfenced);
        assert_eq!(r.rejected_writes(), 1);
    }
}
