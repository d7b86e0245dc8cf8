//! Each cell's safety verdict in one word, so a reader sees the unsafe cells at a glance:
//! safe, fenced, documented overlap, undocumented overlap, or n/a.

use super::super::{Cell, Status};

/// Overlaps the backend's README names as inherent, with where it says so. An overlap that is
/// not listed here is reported as undocumented: a bug in the backend or in its README.
pub const DOCUMENTED_OVERLAPS: &[(&str, &str, &str)] = &[
    (
        "postgres",
        "connection_reset",
        "lock-postgres/README.md: a reset reaches holder and server at once; the gap is measured",
    ),
    (
        "redis",
        "holder_paused",
        "lock-redis/README.md, Pauses: a holder paused past its ttl loses the lock",
    ),
    (
        "redis",
        "server_restart",
        "lock-redis/README.md: a restart without persistence forgets every lock",
    ),
    (
        "redlock",
        "holder_paused",
        "lock-redis/README.md: Redlock's safety rests on bounded pauses",
    ),
    (
        "redlock",
        "server_restart",
        "lock-redis/README.md: a restart without persistence forgets every lock",
    ),
    (
        "etcd",
        "holder_paused",
        "lock-etcd/README.md: a paused holder's lease runs out while it cannot learn it",
    ),
    (
        "zookeeper",
        "holder_paused",
        "lock-zookeeper/README.md: a pause past the session timeout expires the session",
    ),
    (
        "shedlock-postgres",
        "holder_paused",
        "lock-shedlock/README.md, Pauses: lockAtMostFor runs out while the holder is paused",
    ),
    (
        "shedlock-redis",
        "holder_paused",
        "lock-shedlock/README.md, Pauses: lockAtMostFor runs out while the holder is paused",
    ),
    (
        "shedlock-redis",
        "server_restart",
        "lock-shedlock/README.md: a Redis restart without persistence forgets the lock",
    ),
    (
        "mariadb",
        "connection_reset",
        "lock-mysql/README.md, Faults: a reset reaches holder and server at once; the gap is measured",
    ),
    (
        "mariadb",
        "holder_paused",
        "lock-mysql/README.md, Faults: a holder paused past wait_timeout loses its session",
    ),
];

/// A cell's safety verdict.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Measured, and no two holders were inside at once.
    Safe,
    /// Two holders overlapped, but fencing rejected the stale write.
    Fenced,
    /// Two holders overlapped where the backend's README says they can; where it says so.
    DocumentedOverlap(&'static str),
    /// Two holders overlapped and nothing documents it.
    UndocumentedOverlap,
    /// A peer library's holders overlapped, with no fencing token to stop the stale write
    /// (what the library does: dlock's READMEs do not document other libraries).
    LibraryOverlap,
    /// Not applicable, not measured, or failed to run.
    NotApplicable,
}

impl Verdict {
    /// The verdict of `c`.
    pub fn of(c: &Cell) -> Verdict {
        if c.status != Status::Measured {
            return Verdict::NotApplicable;
        }
        match (c.overlap_observed, c.stale_write_rejected) {
            (Some(true), Some(true)) => Verdict::Fenced,
            (Some(true), _) if c.library.is_some() => Verdict::LibraryOverlap,
            (Some(true), _) => DOCUMENTED_OVERLAPS
                .iter()
                .find(|(b, s, _)| *b == c.backend && *s == c.scenario)
                .map_or(Verdict::UndocumentedOverlap, |(_, _, why)| {
                    Verdict::DocumentedOverlap(why)
                }),
            _ => Verdict::Safe,
        }
    }

    /// The word the tables show.
    pub fn word(self) -> &'static str {
        match self {
            Verdict::Safe => "safe",
            Verdict::Fenced => "fenced",
            Verdict::DocumentedOverlap(_) => "documented overlap",
            Verdict::UndocumentedOverlap => "undocumented overlap",
            Verdict::LibraryOverlap => "unfenced overlap (library)",
            Verdict::NotApplicable => "n/a",
        }
    }

    /// A background colour for the HTML table (green, blue, amber, red, grey).
    pub fn colour(self) -> &'static str {
        match self {
            Verdict::Safe => "#d8f0d8",
            Verdict::Fenced => "#d8e6f8",
            Verdict::DocumentedOverlap(_) => "#fbe7c0",
            Verdict::UndocumentedOverlap => "#f6c9c9",
            Verdict::LibraryOverlap => "#f6d5b8",
            Verdict::NotApplicable => "#eeeeee",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cell(backend: &str, scenario: &str, overlap: Option<bool>, rejected: Option<bool>) -> Cell {
        let mut c = Cell::empty(backend, scenario, Status::Measured, None);
        c.overlap_observed = overlap;
        c.stale_write_rejected = rejected;
        c
    }

    #[test]
    fn verdicts_follow_overlap_fencing_and_the_documented_list() {
        assert_eq!(
            Verdict::of(&cell("redis", "holder_killed", Some(false), None)),
            Verdict::Safe
        );
        assert_eq!(
            Verdict::of(&cell("redis", "holder_paused", Some(true), Some(true))),
            Verdict::Fenced
        );
        assert!(matches!(
            Verdict::of(&cell("redis", "holder_paused", Some(true), Some(false))),
            Verdict::DocumentedOverlap(_)
        ));
        assert_eq!(
            Verdict::of(&cell("postgres", "holder_paused", Some(true), None)),
            Verdict::UndocumentedOverlap
        );
        // A peer library's overlap is the library's, not in dlock's READMEs.
        let mut peer = cell("redis", "holder_paused", Some(true), Some(false));
        peer.library = Some(crate::scenario::Library {
            name: "redisson".into(),
            version: Some("3.27.2".into()),
            harness: "java".into(),
        });
        assert_eq!(Verdict::of(&peer), Verdict::LibraryOverlap);
        peer.overlap_observed = Some(false);
        assert_eq!(Verdict::of(&peer), Verdict::Safe);
        let mut na = cell("redis", "quorum_loss", None, None);
        na.status = Status::NotApplicable;
        assert_eq!(Verdict::of(&na), Verdict::NotApplicable);
    }
}
