//! The report's **peers** section: dlock beside the lock libraries people run today, each in
//! its own harness process (`peers/README.md`), dlock in one too (`dlock peer URL`), on the
//! same servers in the same run, alternating round by round.
//!
//! Per backend and peer: uncontended acquire + release (p50, p99), handoff with 8 waiters,
//! throughput with 64 tasks on distinct names and on one name, and SIGKILL failover of a
//! holder process. Every row has dlock's number, the peer's, `dlock ÷ peer`, the spread of
//! that ratio over the rounds, and what the peer does less than dlock.

pub mod catalog;
pub mod measure;
pub mod proc;

use std::time::Duration;

use serde::Serialize;

pub use catalog::{Harnesses, Holds, MULTI_PEERS, PEERS, PeerSpec};
use measure::Rounds;
use proc::Group;

/// How long a `throughput` command may run past its duration (the harnesses' own grace).
pub const THROUGHPUT_SLACK: Duration = dlock_peer_proto::THROUGHPUT_GRACE;

/// Which side of a comparison.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    /// dlock's harness.
    Dlock,
    /// The peer's.
    Peer,
}

/// How much to measure per peer.
#[derive(Debug, Clone)]
pub struct PeersPlan {
    /// Uncontended acquire + release samples per side.
    pub samples: usize,
    /// Unmeasured acquire + release pairs per side first.
    pub warmup: usize,
    /// Rounds every measurement is split into (the spread is over them).
    pub rounds: usize,
    /// Waiters behind the holder in the handoff chain.
    pub waiters: usize,
    /// Handoffs measured per side.
    pub handoffs: usize,
    /// Workers of the throughput runs.
    pub tasks: usize,
    /// How long each throughput run lasts.
    pub throughput: Duration,
    /// SIGKILL failovers per side.
    pub failovers: usize,
}

impl PeersPlan {
    /// What `dlock compare` runs.
    pub fn short() -> Self {
        PeersPlan {
            samples: 300,
            warmup: 30,
            rounds: 3,
            waiters: 8,
            handoffs: 24,
            tasks: 64,
            throughput: Duration::from_secs(1),
            failovers: 3,
        }
    }

    /// `dlock compare --quick`.
    pub fn quick() -> Self {
        PeersPlan {
            samples: 60,
            warmup: 10,
            rounds: 2,
            waiters: 8,
            handoffs: 8,
            tasks: 64,
            throughput: Duration::from_millis(500),
            failovers: 1,
        }
    }
}

/// One row of the report's `peers` list.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct PeerRow {
    /// The comparison's backend.
    pub backend: String,
    /// The peer library (the protocol's `PEER`).
    pub peer: String,
    /// The query option dlock's URL had in this comparison, then the `dlock peer` mode
    /// arguments (`--shared`, `--permits 2`) for a reader or semaphore peer (empty: dlock's
    /// defaults, the exclusive lock).
    pub dlock_options: String,
    /// Its version, as its harness reported it.
    pub peer_version: String,
    /// `rust` or `python`.
    pub harness: String,
    /// `acquire_release_p50`, `acquire_release_p99`, `handoff_p50`, `throughput_64_distinct`,
    /// `throughput_64_same`, `failover_sigkill`; `all` for a peer that could not run.
    pub metric: String,
    /// `us`, `ops/s` or `ms`.
    pub unit: String,
    /// Which way is better: `lower` or `higher`.
    pub better: String,
    /// dlock's number (over every sample of every round).
    pub dlock: Option<f64>,
    /// The peer's number.
    pub peer_value: Option<f64>,
    /// `dlock ÷ peer`.
    pub ratio: Option<f64>,
    /// Samples per side.
    pub samples: usize,
    /// The smallest and largest per-round ratio.
    pub spread: Option<[f64; 2]>,
    /// Rounds the ratio was taken over.
    pub rounds: usize,
    /// What the peer leaves out that dlock does (empty: nothing measurable).
    pub does_less: String,
    /// How the peer's waiters wake.
    pub waits_by: String,
    /// The raw floor of this backend, for reading both numbers.
    pub floor: String,
    /// `measured`, `unavailable` (could not be installed or started), `n/a` (the metric
    /// does not apply to this kind of grant) or `failed`.
    pub status: String,
    /// Why, when not measured.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// How it was measured.
    pub notes: String,
}

/// The metrics, in report order: name, unit, better.
pub const METRICS: &[(&str, &str, &str)] = &[
    ("acquire_release_p50", "us", "lower"),
    ("acquire_release_p99", "us", "lower"),
    ("handoff_p50", "us", "lower"),
    ("throughput_64_distinct", "ops/s", "higher"),
    ("throughput_64_same", "ops/s", "higher"),
    ("failover_sigkill", "ms", "lower"),
];

fn percentile(v: &[f64], p: f64) -> f64 {
    if v.is_empty() {
        return 0.0;
    }
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    let rank = ((p / 100.0) * s.len() as f64).ceil() as usize;
    s[rank.clamp(1, s.len()) - 1]
}

fn mean(v: &[f64]) -> f64 {
    if v.is_empty() {
        0.0
    } else {
        v.iter().sum::<f64>() / v.len() as f64
    }
}

/// How one metric reduces samples to a number.
#[derive(Debug, Clone, Copy)]
enum Reduce {
    Percentile(f64),
    Mean,
}

impl Reduce {
    fn of(self, v: &[f64]) -> f64 {
        match self {
            Reduce::Percentile(p) => percentile(v, p),
            Reduce::Mean => mean(v),
        }
    }
}

/// How dlock ran beside `spec`: its URL option (`fencing=off`) and its mode's arguments
/// (`--shared`, `--permits 2`), space-separated; empty for its defaults.
fn dlock_options(spec: &PeerSpec) -> String {
    let mut parts = spec.holds.dlock_args();
    if !spec.dlock_option.is_empty() {
        parts.insert(0, spec.dlock_option.to_string());
    }
    parts.join(" ")
}

fn template(spec: &PeerSpec, version: &str, metric: &str) -> PeerRow {
    let (unit, better) = METRICS
        .iter()
        .find(|m| m.0 == metric)
        .map(|m| (m.1, m.2))
        .unwrap_or(("", ""));
    PeerRow {
        backend: spec.backend.into(),
        peer: spec.peer.into(),
        dlock_options: dlock_options(spec),
        peer_version: version.into(),
        harness: spec.harness.as_str().into(),
        metric: metric.into(),
        unit: unit.into(),
        better: better.into(),
        dlock: None,
        peer_value: None,
        ratio: None,
        samples: 0,
        spread: None,
        rounds: 0,
        does_less: spec.does_less.into(),
        waits_by: spec.waits_by.into(),
        floor: catalog::floor_of(spec.backend).into(),
        status: "measured".into(),
        reason: None,
        notes: String::new(),
    }
}

/// A measured row from rounds of samples.
fn row(
    spec: &PeerSpec,
    version: &str,
    metric: &str,
    r: &Rounds,
    how: Reduce,
    notes: String,
) -> PeerRow {
    let all = |v: &Vec<Vec<f64>>| v.iter().flatten().copied().collect::<Vec<f64>>();
    let (d, p) = (how.of(&all(&r.dlock)), how.of(&all(&r.peer)));
    let ratios: Vec<f64> = r
        .dlock
        .iter()
        .zip(&r.peer)
        .map(|(d, p)| how.of(d) / how.of(p).max(1e-9))
        .collect();
    let spread = (!ratios.is_empty()).then(|| {
        [
            ratios.iter().copied().fold(f64::INFINITY, f64::min),
            ratios.iter().copied().fold(f64::NEG_INFINITY, f64::max),
        ]
    });
    PeerRow {
        dlock: Some(d),
        peer_value: Some(p),
        ratio: Some(d / p.max(1e-9)),
        samples: r.peer.iter().map(Vec::len).sum(),
        spread,
        rounds: r.dlock.len(),
        notes,
        ..template(spec, version, metric)
    }
}

fn not_measured(
    spec: &PeerSpec,
    version: &str,
    metric: &str,
    status: &str,
    reason: String,
) -> PeerRow {
    PeerRow {
        status: status.into(),
        reason: Some(reason),
        ..template(spec, version, metric)
    }
}

/// Every peer of `backend`, measured beside dlock on the servers of `dlock_url`.
pub async fn run_backend(
    backend: &str,
    dlock_url: &str,
    ttl: Duration,
    plan: &PeersPlan,
    harnesses: &Harnesses,
) -> Vec<PeerRow> {
    let mut rows = Vec::new();
    for spec in catalog::all_peers().filter(|p| p.backend == backend) {
        let dlock_with = if spec.dlock_option.is_empty() {
            String::new()
        } else {
            format!(" (dlock with ?{})", spec.dlock_option)
        };
        let dlock_as = spec.holds.dlock_args().join(" ");
        let dlock_with = if dlock_as.is_empty() {
            dlock_with
        } else {
            format!(" (dlock peer {dlock_as}{dlock_with})")
        };
        crate::say!("[peers] {backend}: {} beside dlock{dlock_with}", spec.peer);
        let started = std::time::Instant::now();
        let got = run_peer(spec, dlock_url, ttl, plan, harnesses).await;
        for r in &got {
            match (&r.status[..], r.ratio) {
                ("measured", Some(ratio)) => crate::say!(
                    "[peers] {backend} × {} {}: dlock {:.1} {} · peer {:.1} · dlock÷peer {ratio:.2}",
                    r.peer,
                    r.metric,
                    r.dlock.unwrap_or(0.0),
                    r.unit,
                    r.peer_value.unwrap_or(0.0)
                ),
                _ => crate::say!(
                    "[peers] {backend} × {} {}: {} ({})",
                    r.peer,
                    r.metric,
                    r.status,
                    r.reason.as_deref().unwrap_or("")
                ),
            }
        }
        crate::say!(
            "[peers] {backend}: {} in {:.1} s",
            spec.peer,
            started.elapsed().as_secs_f64()
        );
        rows.extend(got);
    }
    rows
}

async fn run_peer(
    spec: &PeerSpec,
    dlock_url: &str,
    ttl: Duration,
    plan: &PeersPlan,
    harnesses: &Harnesses,
) -> Vec<PeerRow> {
    let ttl_ms = ttl.as_millis() as u64;
    let Some(peer_url) = catalog::peer_url(spec.backend, dlock_url) else {
        let why = format!("no peer URL for {dlock_url}");
        return vec![not_measured(spec, "", "all", "unavailable", why)];
    };
    let launch = match harnesses.launch(spec, ttl_ms) {
        Ok(l) => l,
        Err(why) => return vec![not_measured(spec, "", "all", "unavailable", why)],
    };
    let dlock_launch = harnesses.dlock_as(spec.holds, ttl_ms);
    let with_option;
    let dlock_url = if spec.dlock_option.is_empty() {
        dlock_url
    } else {
        let sep = if dlock_url.contains('?') { '&' } else { '?' };
        with_option = format!("{dlock_url}{sep}{}", spec.dlock_option);
        &with_option
    };
    let mut peer = match Group::start(&launch, &peer_url, 1).await {
        Ok(g) => g,
        Err(e) => {
            let why = format!("{e:#}");
            return vec![not_measured(spec, "", "all", "unavailable", why)];
        }
    };
    let version = peer.version();
    let mut dlock = match Group::start(&dlock_launch, dlock_url, 1).await {
        Ok(g) => g,
        Err(e) => {
            peer.quit_all(measure::QUIT_WITHIN).await;
            let why = format!("dlock's harness: {e:#}");
            return vec![not_measured(spec, &version, "all", "failed", why)];
        }
    };
    let mut rows = Vec::new();
    let failed = |metric: &str, e: anyhow::Error| {
        not_measured(spec, &version, metric, "failed", format!("{e:#}"))
    };
    let ttl_note = format!("ttl {ttl_ms} ms on both sides");
    match measure::uncontended(&mut dlock, &mut peer, plan, ttl).await {
        Ok(r) => {
            let n = format!(
                "one process each, {} samples per side in {} rounds after {} warm-up, alternating one by one; library time of the two calls (T1-T0 of acquire + of release); {ttl_note}",
                plan.samples, plan.rounds, plan.warmup
            );
            rows.push(row(
                spec,
                &version,
                "acquire_release_p50",
                &r,
                Reduce::Percentile(50.0),
                n.clone(),
            ));
            rows.push(row(
                spec,
                &version,
                "acquire_release_p99",
                &r,
                Reduce::Percentile(99.0),
                n,
            ));
        }
        Err(e) => {
            rows.push(failed("acquire_release_p50", e));
        }
    }
    throughput_rows(
        &mut rows, spec, &version, &mut dlock, &mut peer, plan, false, ttl,
    )
    .await;
    let Some(companions) = spec.holds.companions() else {
        // Readers: nobody to hand off to, no waiter for a killed holder to free.
        for (metric, why) in [
            (
                "handoff_p50",
                "a reader waits for no reader: there is no handoff between readers",
            ),
            (
                "failover_sigkill",
                "a killed reader holds up no reader; the return of a killed reader's hold to a waiting writer is measured in the failure table's `· shared` rows",
            ),
        ] {
            rows.push(not_measured(spec, &version, metric, "n/a", why.into()));
        }
        throughput_rows(
            &mut rows, spec, &version, &mut dlock, &mut peer, plan, true, ttl,
        )
        .await;
        dlock.quit_all(measure::QUIT_WITHIN).await;
        peer.quit_all(measure::QUIT_WITHIN).await;
        return rows;
    };
    let companion_note = if companions == 0 {
        String::new()
    } else {
        format!(
            "; {companions} more process(es) took the semaphore's other permit(s) first and kept them, so the measured ones contend for the last permit"
        )
    };
    match measure::handoff(
        (&dlock_launch, dlock_url),
        (&launch, &peer_url),
        plan,
        companions,
        ttl,
    )
    .await
    {
        Ok(r) => {
            let n = format!(
                "{} waiting processes behind a holder on one name, {} handoffs per side alternating; from the holder's harness reading its release command to the next grant (the release call included){companion_note}; {ttl_note}",
                plan.waiters, plan.handoffs
            );
            rows.push(row(
                spec,
                &version,
                "handoff_p50",
                &r,
                Reduce::Percentile(50.0),
                n,
            ));
        }
        Err(e) => rows.push(failed("handoff_p50", e)),
    }
    match measure::failover(
        (&dlock_launch, dlock_url),
        (&launch, &peer_url),
        plan,
        companions,
        ttl,
    )
    .await
    {
        Ok((r, kill_ms)) => {
            let n = format!(
                "holder process SIGKILLed at most {kill_ms:.0} ms after its grant (well inside the ttl, so peers that do not renew are measured too), the waiter had found it busy{companion_note}; from the kill to the waiter's grant; {} per side alternating; {ttl_note}",
                plan.failovers
            );
            rows.push(row(
                spec,
                &version,
                "failover_sigkill",
                &r,
                Reduce::Percentile(50.0),
                n,
            ));
        }
        Err(e) => rows.push(failed("failover_sigkill", e)),
    }
    // One name for 64 workers last: etcd 3.4's lock service, once the run's deadline has
    // cancelled a queue of waiting Lock requests, granted no later waiter on any name (new
    // clients included) until the server restarted; dlock's own layout kept working there.
    throughput_rows(
        &mut rows, spec, &version, &mut dlock, &mut peer, plan, true, ttl,
    )
    .await;
    dlock.quit_all(measure::QUIT_WITHIN).await;
    peer.quit_all(measure::QUIT_WITHIN).await;
    rows
}

/// The throughput row of one mode (`same`: one name for every worker).
#[allow(clippy::too_many_arguments)]
async fn throughput_rows(
    rows: &mut Vec<PeerRow>,
    spec: &PeerSpec,
    version: &str,
    dlock: &mut Group,
    peer: &mut Group,
    plan: &PeersPlan,
    same: bool,
    ttl: Duration,
) {
    let metric = if same {
        "throughput_64_same"
    } else {
        "throughput_64_distinct"
    };
    let ttl_note = format!("ttl {} ms on both sides", ttl.as_millis());
    match measure::throughput(dlock, peer, plan, same, ttl).await {
        Ok(Some(r)) => {
            let n = format!(
                "{} workers in one process for {} ms, {} rounds alternating; completed acquire+release pairs per second; {ttl_note}",
                plan.tasks,
                plan.throughput.as_millis(),
                plan.rounds
            );
            rows.push(row(spec, version, metric, &r, Reduce::Mean, n));
        }
        Ok(None) => rows.push(not_measured(
            spec,
            version,
            metric,
            "unavailable",
            "the harness has no throughput command".into(),
        )),
        Err(e) => rows.push(not_measured(
            spec,
            version,
            metric,
            "failed",
            format!("{e:#}"),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_row_pools_samples_and_spreads_round_ratios() {
        let spec = &PEERS[0];
        let r = Rounds {
            dlock: vec![vec![10.0, 12.0], vec![20.0, 22.0]],
            peer: vec![vec![10.0, 10.0], vec![10.0, 10.0]],
        };
        let row = row(
            spec,
            "1.0",
            "acquire_release_p50",
            &r,
            Reduce::Percentile(50.0),
            String::new(),
        );
        assert_eq!(row.dlock, Some(12.0));
        assert_eq!(row.peer_value, Some(10.0));
        assert_eq!(row.ratio, Some(1.2));
        assert_eq!(row.spread, Some([1.0, 2.0]));
        assert_eq!((row.samples, row.rounds), (4, 2));
        assert_eq!((row.unit.as_str(), row.better.as_str()), ("us", "lower"));
    }
}
