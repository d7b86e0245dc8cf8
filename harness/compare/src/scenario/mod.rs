//! Failure scenarios and the comparison report (`dlock compare`), Jepsen's way: a
//! [`workload`] (holders of a lock, as `dlock hold` child processes, [`holder`]) runs while a
//! [`nemesis`] (the fault) acts, into a [`history`] (grants, releases, state events, fenced
//! writes on a harness-owned resource, [`resource`]); the [`checker`] turns the histories of
//! a cell's repetitions into the cell: whether two holders were ever inside at once, whether
//! a late write of the previous holder was rejected by its fencing token, how long the lock
//! took to reach the waiter (the failover time), and whether the faulty holder learned
//! first. The runner loops backends × workloads × nemeses. The fault is injected once the
//! waiter has printed `waiting` (its first try found the lock held) plus [`WAITER_SETTLE`].
//!
//! Faults on the holder: `clean_handoff` (none: a release), `holder_killed`, `holder_paused`,
//! `holder_partitioned`, `connection_reset`; on the server: `server_restart`; on the holder's
//! surroundings: `latency` (a slow link to every server), `quorum_loss` (2 of 3 servers down,
//! then back) and `clock_skew` (the holders' wall clocks shifted by an hour). Every backend ×
//! scenario cell of the matrix is present in the report: measured, `not_applicable` (with
//! the reason) or `not_measured` (with the reason: something the cell needs is missing here,
//! e.g. libfaketime) — never an invented number.

mod cell;
pub mod checker;
pub mod estimate;
pub mod history;
pub mod holder;
mod lease_left;
pub mod nemesis;
pub mod report;
pub mod resource;
mod runner;
pub mod target;
pub mod workload;

use std::path::PathBuf;
use std::time::Duration;

use crate::bench::BenchPlan;

pub use cell::{
    BackendInfo, BenchFailure, Cell, Library, NotFreed, Report, RunInfo, Stats, Status, Timeline,
    TimelineSection,
};
pub use nemesis::RESET_FOR;
pub use runner::compare;

/// The backends of the matrix, in report order.
pub const BACKENDS: [&str; 8] = [
    "postgres",
    "redis",
    "redlock",
    "etcd",
    "zookeeper",
    "shedlock-postgres",
    "shedlock-redis",
    "mariadb",
];

/// The scenarios of the matrix, in report order.
pub const SCENARIOS: [&str; 10] = [
    "clean_handoff",
    "holder_killed",
    "holder_paused",
    "holder_partitioned",
    "connection_reset",
    "server_restart",
    "latency",
    "quorum_loss",
    "primary_failover",
    "clock_skew",
];

/// How long the waiter gets after its `waiting` event before the fault is injected. The
/// harness synchronises on that event (the waiter's first try found the lock held); the
/// waiting request itself (a blocking call, a subscription, a watch) is sent right after it
/// and prints nothing, so this short settle covers that one request. A waiter that had not
/// queued yet would make the failover look slower, never faster.
pub const WAITER_SETTLE: Duration = Duration::from_millis(100);

/// What `dlock compare` runs.
#[derive(Debug, Clone)]
pub struct CompareOptions {
    /// The `dlock` binary whose `hold` subcommand the holders run.
    pub dlock_bin: PathBuf,
    /// Repetitions per measured cell.
    pub repeat: usize,
    /// Backends to run (names from [`BACKENDS`]).
    pub backends: Vec<String>,
    /// Scenarios to run (names from [`SCENARIOS`]); the others are reported `not_measured`.
    pub scenarios: Vec<String>,
    /// Lease / session timeout / `at_most` given to every holder (etcd's minimum is 2 s).
    pub ttl: Duration,
    /// Where the report goes.
    pub out: PathBuf,
    /// Whether the failure scenarios run at all (`--only bench`: no; their cells are then
    /// reported `not_measured`).
    pub run_scenarios: bool,
    /// The benchmarks to run after each backend's scenarios (`None`: none).
    pub bench: Option<BenchPlan>,
    /// The peers section, run beside the benchmarks (`None`: none).
    pub peers: Option<crate::peers::PeersPlan>,
    /// The peer libraries whose holders go through the scenarios of
    /// [`workload::PEER_SCENARIOS`] after dlock's, each its own row.
    pub peer_holders: workload::PeerHolders,
    /// The strategies section (`None`: left out); it runs when `postgres` is among the
    /// backends.
    pub strategies: Option<crate::strategies::StrategiesPlan>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stats_take_the_middle() {
        assert_eq!(Stats::of(&[]), None);
        let s = Stats::of(&[3.0, 1.0, 2.0]).unwrap();
        assert_eq!((s.median, s.min, s.max), (2.0, 1.0, 3.0));
        assert_eq!(Stats::of(&[4.0, 1.0]).unwrap().median, 2.5);
    }

    /// The numbers in the nemeses' descriptions are the ones they run with (a number written
    /// into a note by hand would drift from its constant).
    #[test]
    fn scenario_notes_follow_the_constants() {
        use nemesis::SKEW_HOLD_TTLS;
        use nemesis::latency::{ACQUIRE_LINK_DIVISOR, LOSING_LINK_TTLS, SLOW_LINK_DIVISOR};
        use nemesis::quorum::{OUTAGE_MIN, OUTAGE_TTLS};
        let note = |name: &str| {
            nemesis::all()
                .into_iter()
                .find(|n| n.name() == name)
                .map(|n| n.describe())
                .unwrap_or_default()
        };
        for s in SCENARIOS {
            assert!(!note(s).is_empty(), "{s} has no note");
        }
        let reset = note("connection_reset");
        let reset_for = humantime::format_duration(RESET_FOR).to_string();
        assert!(reset.contains(&format!("for {reset_for},")), "{reset}");
        let latency = note("latency");
        for part in [
            format!("ttl/{ACQUIRE_LINK_DIVISOR}"),
            format!("ttl/{SLOW_LINK_DIVISOR}"),
            format!("then {LOSING_LINK_TTLS} ttl"),
        ] {
            assert!(latency.contains(&part), "{part:?} not in {latency}");
        }
        let quorum = note("quorum_loss");
        let min = humantime::format_duration(OUTAGE_MIN).to_string();
        assert!(
            quorum.contains(&format!("for {OUTAGE_TTLS} ttl (at least {min})")),
            "{quorum}"
        );
        let skew = note("clock_skew");
        assert!(
            skew.contains(&format!("holds {SKEW_HOLD_TTLS} ttl")),
            "{skew}"
        );
        assert!(skew.contains("+1h"), "{skew}");
    }
}
