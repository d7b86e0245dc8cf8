//! What the comparison reports: a cell per backend × scenario (its verdicts and numbers),
//! the backends, the run, and the whole report.

use serde::Serialize;

use super::resource::FencedResource;
use crate::bench::BenchEntry;

/// Median, minimum and maximum over the repetitions.
#[derive(Debug, Clone, Copy, Serialize, PartialEq)]
pub struct Stats {
    /// Median (mean of the middle two for an even count).
    pub median: f64,
    /// Minimum.
    pub min: f64,
    /// Maximum.
    pub max: f64,
}

impl Stats {
    /// The statistics of `values`, `None` when empty.
    pub fn of(values: &[f64]) -> Option<Stats> {
        if values.is_empty() {
            return None;
        }
        let mut v = values.to_vec();
        v.sort_by(|a, b| a.total_cmp(b));
        let n = v.len();
        let median = if n % 2 == 1 {
            v[n / 2]
        } else {
            (v[n / 2 - 1] + v[n / 2]) / 2.0
        };
        Some(Stats {
            median,
            min: v[0],
            max: v[n - 1],
        })
    }
}

/// Whether a cell was measured.
#[derive(Debug, Clone, Copy, Serialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    /// Measured; the numbers are real.
    Measured,
    /// The scenario cannot apply to this backend (see `reason`).
    NotApplicable,
    /// Not measured by this build yet (see `reason`).
    NotMeasured,
    /// The run failed (see `reason`).
    Failed,
}

/// One backend × scenario cell.
#[derive(Debug, Clone, Serialize)]
pub struct Cell {
    /// Backend name.
    pub backend: String,
    /// Scenario id.
    pub scenario: String,
    /// The peer library whose harness processes were the holders, on the backend's servers
    /// (`null`: dlock's own holders, `dlock hold`).
    pub library: Option<Library>,
    /// The workload when it is not the exclusive lock: `shared` (a reader holds, a writer
    /// waits) or `semaphore` (two of 2 permits held, a third holder waits; an overlap is more
    /// than 2 holders at once).
    pub workload: Option<String>,
    /// Measured or not, and why not.
    pub status: Status,
    /// Why the cell is not measured (or failed).
    pub reason: Option<String>,
    /// Repetitions that completed.
    pub repetitions: usize,
    /// Two holders inside the critical section at once in any repetition.
    pub overlap_observed: Option<bool>,
    /// A late write with the previous holder's token was rejected in every repetition
    /// (`null`: no stale write was possible, the previous holder still held the lock).
    pub stale_write_rejected: Option<bool>,
    /// The stale write carried no fencing token: the backend (as configured) issues none, so
    /// `stale_write_rejected` is false by construction, not by a check that failed.
    pub no_token: bool,
    /// Time from the fault to the next holder's grant, over the repetitions that had one.
    pub failover_ms: Option<Stats>,
    /// The faulty holder learned it had lost the lock before the next grant (every
    /// repetition); `null` where it cannot learn (released on purpose, or dead).
    pub holder_learned_before_handoff: Option<bool>,
    /// Median of (next grant − the holder learning), ms: positive = learned that much before.
    pub learned_before_handoff_ms: Option<f64>,
    /// (next grant − the holder learning), ms, over the repetitions: median, min and max. Both
    /// instants are `CLOCK_MONOTONIC` µs taken by the two holder processes, so the gap is
    /// exact to the microsecond plus each holder's own delay in printing its event.
    pub learned_gap_ms: Option<Stats>,
    /// The repetitions in which the lock moved on while the faulty holder lived and it never
    /// reported the loss (within the bound; a peer library's holder has no way to); they make
    /// `holder_learned_before_handoff` false.
    pub never_learned: usize,
    /// The repetitions in which nobody else got the lock within the bound, by where it
    /// stayed (`null`: it moved in every repetition).
    pub not_freed: Option<NotFreed>,
    /// holder_killed on backends whose lease the harness can read or set (etcd, Redis,
    /// ShedLock on Redis): failover minus what was left of the holder's lease at the kill, ms
    /// (etcd: its 500 ms expiry sweep shows here).
    pub beyond_lease_ms: Option<Stats>,
    /// Lease / session timeout / `at_most` in force, ms (`null`: the lock has none).
    pub ttl_ms: Option<u64>,
    /// Observations.
    pub notes: Vec<String>,
    /// Who was inside the critical section around the fault, in the first repetition that
    /// had a failover (for the report's timeline chart).
    pub timeline: Option<Timeline>,
}

/// A peer library that held the lock in a cell's repetitions.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Library {
    /// The peer's name (`peers/README.md`: `redisson`, `shedlock-jdbc`, …).
    pub name: String,
    /// Its version as its harness's `ready` line gave it (`null`: the harness did not start).
    pub version: Option<String>,
    /// The harness it runs in (`java`, `go`, `python`, `rust`).
    pub harness: String,
}

impl Library {
    /// `redisson 4.7.0` (the name alone without a version).
    pub fn label(&self) -> String {
        library_label(&self.name, self.version.as_deref())
    }
}

/// `NAME VERSION`, the version without the library's own name in front where the harness
/// puts it there (`redisson-4.7.0` → `redisson 4.7.0`; `shedlock-7.10.1+spring-data-redis-…`
/// of `shedlock-redis` → `shedlock-redis 7.10.1+spring-data-redis-…`).
pub fn library_label(name: &str, version: Option<&str>) -> String {
    let Some(v) = version.filter(|v| !v.is_empty()) else {
        return name.to_string();
    };
    let family = name.split('-').next().unwrap_or(name);
    let v = v
        .strip_prefix(name)
        .or_else(|| v.strip_prefix(family))
        .and_then(|rest| rest.strip_prefix('-'))
        .filter(|rest| rest.starts_with(|c: char| c.is_ascii_digit()))
        .unwrap_or(v);
    format!("{name} {v}")
}

/// Where the lock stayed in the repetitions that had no failover.
#[derive(Debug, Clone, Copy, Serialize, PartialEq, Eq, Default)]
pub struct NotFreed {
    /// Kept by the same live holder, which never reported a loss: legitimate (its session
    /// or lease survived the fault, as the backend's rules say it should).
    pub kept_by_live_holder: usize,
    /// Stranded: the holder reported the loss, but the server kept the lock for it, so nobody
    /// could have it until the holder released or its session ended.
    pub stranded: usize,
}

/// The critical sections of one repetition, in ms relative to the fault (the next grant minus
/// the failover time).
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Timeline {
    /// Sections as (holder, from, to); `to` is `None` for a section still open at the end.
    pub sections: Vec<TimelineSection>,
}

/// One holder's stay in the critical section, relative to the fault.
#[derive(Debug, Clone, Copy, Serialize, PartialEq)]
pub struct TimelineSection {
    /// 0: the holder the fault hit; 1, 2: the waiters.
    pub holder: usize,
    /// Entered, ms from the fault (negative: before it).
    pub from_ms: i64,
    /// Left (released, or learned it had lost the lock), ms from the fault; `None`: still
    /// inside when the repetition ended.
    pub to_ms: Option<i64>,
}

impl Timeline {
    /// The sections of `res`, relative to the fault: the first grant to a holder other than
    /// 0 minus `failover_ms`.
    pub(crate) fn of(res: &FencedResource, failover_ms: f64) -> Option<Timeline> {
        let grant = res
            .sections()
            .iter()
            .filter(|s| s.holder != 0)
            .map(|s| s.enter_us)
            .min()?;
        let fault = grant - (failover_ms * 1000.0).round() as i64;
        let ms = |us: i64| (us - fault).div_euclid(1000);
        Some(Timeline {
            sections: res
                .sections()
                .iter()
                .map(|s| TimelineSection {
                    holder: s.holder,
                    from_ms: ms(s.enter_us),
                    to_ms: s.exit_us.map(ms),
                })
                .collect(),
        })
    }
}

impl Cell {
    /// The row the cell belongs to: the backend, and the peer library if any (`redis ·
    /// redisson 3.27.2`).
    pub fn row_label(&self) -> String {
        match (&self.library, &self.workload) {
            (Some(l), _) => format!("{} · {}", self.backend, l.label()),
            (None, Some(w)) => format!("{} · {w}", self.backend),
            (None, None) => self.backend.clone(),
        }
    }

    /// A cell with no observations yet.
    pub fn empty(backend: &str, scenario: &str, status: Status, reason: Option<String>) -> Cell {
        Cell {
            backend: backend.to_string(),
            scenario: scenario.to_string(),
            library: None,
            workload: None,
            status,
            reason,
            repetitions: 0,
            overlap_observed: None,
            stale_write_rejected: None,
            no_token: false,
            failover_ms: None,
            holder_learned_before_handoff: None,
            learned_before_handoff_ms: None,
            learned_gap_ms: None,
            never_learned: 0,
            not_freed: None,
            beyond_lease_ms: None,
            ttl_ms: None,
            notes: Vec::new(),
            timeline: None,
        }
    }
}

/// One backend as the report describes it.
#[derive(Debug, Clone, Serialize)]
pub struct BackendInfo {
    /// Name from [`super::BACKENDS`].
    pub name: String,
    /// The URL used (credentials redacted).
    pub url: String,
    /// Capabilities as `dlock backends` prints them.
    pub capabilities: String,
    /// Lease / session timeout / `at_most` in force, ms.
    pub ttl_ms: Option<u64>,
    /// How its lock frees itself when the holder goes silent.
    pub frees_by: String,
}

/// Where and how the report was made.
#[derive(Debug, Clone, Serialize)]
pub struct RunInfo {
    /// Host name.
    pub host: String,
    /// Logical CPUs.
    pub cpus: usize,
    /// Start, ms since the Unix epoch.
    pub started_ms: i64,
    /// Wall time of the whole run, s.
    pub duration_s: f64,
    /// Repetitions per measured cell.
    pub repeat: usize,
    /// Whether `--quick`.
    pub quick: bool,
    /// How faults are injected (for the scenarios measured).
    pub fault_injection: String,
    /// The git commit of the working directory the run started in (`git rev-parse --short
    /// HEAD`), when there is one.
    pub commit: Option<String>,
    /// The server packages the fixtures ran, as `package version` (Debian's `dpkg-query`;
    /// empty elsewhere).
    pub servers: Vec<String>,
}

/// The whole comparison.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// Where and how.
    pub run: RunInfo,
    /// The backends.
    pub backends: Vec<BackendInfo>,
    /// Every backend × scenario cell.
    pub scenarios: Vec<Cell>,
    /// Benchmarks (the short set of [`crate::bench`]; empty with `--no-bench`).
    pub benchmarks: Vec<BenchEntry>,
    /// Backends whose benchmarks failed, and why.
    pub benchmark_failures: Vec<BenchFailure>,
    /// dlock beside the peer libraries (empty without the peers section).
    pub peers: Vec<crate::peers::PeerRow>,
    /// The seed's strategies: the purge on three workers (empty without the section).
    pub strategies: crate::strategies::StrategiesReport,
}

/// A backend whose benchmarks could not run to the end.
#[derive(Debug, Clone, Serialize)]
pub struct BenchFailure {
    /// Backend name.
    pub backend: String,
    /// What went wrong.
    pub reason: String,
}
