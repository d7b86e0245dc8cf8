//! Failure scenarios and the comparison report (`dlock compare`).
//!
//! Each scenario runs a holder and a waiter as `dlock hold` child processes ([`holder`]),
//! injects one fault into the holder, and measures with a harness-owned fenced resource
//! ([`resource`]) whether two holders were ever inside at once, whether a late write of the
//! previous holder was rejected by its fencing token, and how long the lock took to reach the
//! waiter (the failover time). The fault is injected once the waiter has printed `waiting`
//! (its first try found the lock held) plus [`WAITER_SETTLE`].
//!
//! Faults on the holder: `clean_handoff`, `holder_killed`, `holder_paused`,
//! `holder_partitioned`, `connection_reset`; on the server: `server_restart`; on the holder's
//! surroundings ([`degraded`]): `latency` (a slow link to every server), `quorum_loss` (2 of 3
//! servers down, then back) and `clock_skew` (the holders' wall clocks shifted by an hour).
//! Every backend × scenario cell of the matrix is present in the report: measured,
//! `not_applicable` (with the reason) or `not_measured` (with the reason: something the cell
//! needs is missing here, e.g. libfaketime) — never an invented number.

pub mod degraded;
pub mod holder;
mod partition;
pub mod report;
pub mod resource;

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Result, anyhow, bail};
use serde::Serialize;

use crate::bench::{self, BenchEntry, BenchPlan};
use dlock_fixtures as fixtures;
use dlock_fixtures::faults::{Fault, FaultProxy};
use holder::{Event, EventKind, HoldSpec, Holder, wall_ms};
use resource::FencedResource;

/// The backends of the matrix, in report order.
pub const BACKENDS: [&str; 7] = [
    "postgres",
    "redis",
    "redlock",
    "etcd",
    "zookeeper",
    "shedlock-postgres",
    "shedlock-redis",
];

/// The scenarios of the matrix, in report order.
pub const SCENARIOS: [&str; 9] = [
    "clean_handoff",
    "holder_killed",
    "holder_paused",
    "holder_partitioned",
    "connection_reset",
    "server_restart",
    "latency",
    "quorum_loss",
    "clock_skew",
];

/// Scenarios whose fault sits in a [`FaultProxy`] between the holder and each of its servers
/// (unless the holder runs in a network namespace).
const PROXIED: [&str; 2] = ["holder_partitioned", "connection_reset"];

/// How long the proxy resets connections in `connection_reset` before passing traffic
/// again: the fault's length (long enough for every relay to see it), not a synchronisation.
pub const RESET_FOR: Duration = Duration::from_millis(200);

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
    /// The benchmarks to run after each backend's scenarios (`None`: none).
    pub bench: Option<BenchPlan>,
}

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
    /// Time from the fault to the next holder's grant, over the repetitions that had one.
    pub failover_ms: Option<Stats>,
    /// The faulty holder learned it had lost the lock before the next grant (every
    /// repetition); `null` where it cannot learn (released on purpose, or dead).
    pub holder_learned_before_handoff: Option<bool>,
    /// Median of (next grant − the holder learning), ms: positive = learned that much before.
    pub learned_before_handoff_ms: Option<f64>,
    /// Lease / session timeout / `at_most` in force, ms (`null`: the lock has none).
    pub ttl_ms: Option<u64>,
    /// Observations.
    pub notes: Vec<String>,
    /// Who was inside the critical section around the fault, in the first repetition that
    /// had a failover (for the report's timeline chart).
    pub timeline: Option<Timeline>,
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
    fn of(res: &FencedResource, failover_ms: f64) -> Option<Timeline> {
        let grant = res
            .sections()
            .iter()
            .filter(|s| s.holder != 0)
            .map(|s| s.enter_ms)
            .min()?;
        let fault = grant - failover_ms.round() as i64;
        Some(Timeline {
            sections: res
                .sections()
                .iter()
                .map(|s| TimelineSection {
                    holder: s.holder,
                    from_ms: s.enter_ms - fault,
                    to_ms: s.exit_ms.map(|e| e - fault),
                })
                .collect(),
        })
    }
}

impl Cell {
    fn empty(backend: &str, scenario: &str, status: Status, reason: Option<String>) -> Cell {
        Cell {
            backend: backend.to_string(),
            scenario: scenario.to_string(),
            status,
            reason,
            repetitions: 0,
            overlap_observed: None,
            stale_write_rejected: None,
            failover_ms: None,
            holder_learned_before_handoff: None,
            learned_before_handoff_ms: None,
            ttl_ms: None,
            notes: Vec::new(),
            timeline: None,
        }
    }
}

/// One backend as the report describes it.
#[derive(Debug, Clone, Serialize)]
pub struct BackendInfo {
    /// Name from [`BACKENDS`].
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
}

/// A backend whose benchmarks could not run to the end.
#[derive(Debug, Clone, Serialize)]
pub struct BenchFailure {
    /// Backend name.
    pub backend: String,
    /// What went wrong.
    pub reason: String,
}

/// A backend's URL and the servers that keep it alive.
struct Target {
    url: String,
    /// The one server's address, for backends a single proxy can sit in front of.
    addr: Option<std::net::SocketAddr>,
    /// Every server address in the URL (one proxy each in `latency`); empty when unknown
    /// (external servers).
    members: Vec<std::net::SocketAddr>,
    ttl_ms: Option<u64>,
    frees_by: &'static str,
    /// The one server, for backends that have one (restarted by `server_restart`).
    server: Option<fixtures::Server>,
    /// The servers of a multi-server backend (Redlock's instances, an etcd cluster, a
    /// ZooKeeper ensemble); `quorum_loss` kills and restarts their members. Dropping it stops
    /// them.
    cluster: Option<fixtures::Cluster>,
}

impl Target {
    fn single(
        url: String,
        server: fixtures::Server,
        ttl_ms: Option<u64>,
        frees_by: &'static str,
    ) -> Target {
        Target {
            url,
            addr: server.addr(),
            members: server.addr().into_iter().collect(),
            ttl_ms,
            frees_by,
            server: Some(server),
            cluster: None,
        }
    }

    fn multi(
        url: String,
        cluster: fixtures::Cluster,
        ttl_ms: Option<u64>,
        frees_by: &'static str,
    ) -> Target {
        Target {
            url,
            addr: None,
            members: cluster
                .ports()
                .into_iter()
                .map(|p| std::net::SocketAddr::from(([127, 0, 0, 1], p)))
                .collect(),
            ttl_ms,
            frees_by,
            server: None,
            cluster: Some(cluster),
        }
    }
}

async fn start_target(backend: &str, ttl: Duration) -> Result<Target> {
    let ttl_ms = Some(ttl.as_millis() as u64);
    Ok(match backend {
        "postgres" => {
            let pg = fixtures::postgres().await?;
            Target::single(
                pg.url().to_string(),
                pg,
                None,
                "session lock: freed when the holder's connection closes",
            )
        }
        "shedlock-postgres" => {
            let pg = fixtures::postgres().await?;
            Target::single(
                format!("shedlock+{}", pg.url()),
                pg,
                ttl_ms,
                "lock_until in the table (at_most), renewed by the holder",
            )
        }
        "redis" | "shedlock-redis" => {
            let r = fixtures::redis().await?;
            let (url, frees_by) = if backend == "redis" {
                (
                    r.url().to_string(),
                    "key expiry (PX ttl), renewed by the holder",
                )
            } else {
                (
                    format!("shedlock+{}", r.url()),
                    "key expiry (at_most), renewed by the holder",
                )
            };
            Target::single(url, r, ttl_ms, frees_by)
        }
        "redlock" => {
            let c = fixtures::redlock(3).await?;
            Target::multi(
                c.url().to_string(),
                c,
                ttl_ms,
                "key expiry on a majority of 3 instances, renewed by the holder",
            )
        }
        "etcd" => {
            let e = fixtures::etcd().await?;
            Target::single(
                e.url().to_string(),
                e,
                ttl_ms,
                "lease expiry, kept alive by the holder",
            )
        }
        "zookeeper" => {
            let z = fixtures::zookeeper().await?;
            let url = zk_url(z.url(), ttl);
            Target::single(
                url,
                z,
                ttl_ms,
                "session expiry (ephemeral node), kept alive by the client's pings",
            )
        }
        other => bail!("unknown backend {other:?} (known: {})", BACKENDS.join(", ")),
    })
}

/// A ZooKeeper URL asking for `ttl` as the session timeout.
fn zk_url(url: &str, ttl: Duration) -> String {
    let sep = if url.contains('?') { '&' } else { '?' };
    format!("{url}{sep}session_timeout={}ms", ttl.as_millis())
}

/// The 3-member cluster `quorum_loss` needs for etcd and ZooKeeper (always managed: the
/// scenario kills and restarts members). Other backends use their usual target.
async fn start_cluster_target(backend: &str, ttl: Duration) -> Result<Target> {
    let ttl_ms = Some(ttl.as_millis() as u64);
    Ok(match backend {
        "etcd" => {
            let c = fixtures::etcd_cluster(3, fixtures::EtcdOptions::default()).await?;
            Target::multi(
                c.url().to_string(),
                c,
                ttl_ms,
                "lease expiry, kept alive by the holder",
            )
        }
        "zookeeper" => {
            let c = fixtures::zookeeper_ensemble(3, fixtures::ZooKeeperOptions::default()).await?;
            Target::multi(
                zk_url(c.url(), ttl),
                c,
                ttl_ms,
                "session expiry (ephemeral node), kept alive by the client's pings",
            )
        }
        other => bail!("{other} has no cluster target"),
    })
}

fn capabilities(url: &str) -> String {
    let scheme = url.split("://").next().unwrap_or("");
    for (s, status) in dlock::registry().schemes() {
        if s == scheme {
            if let dlock::SchemeStatus::Available(caps) = status {
                return caps.to_string();
            }
        }
    }
    String::new()
}

/// Why a scenario does not apply to a backend, if it does not.
fn not_applicable(backend: &str, scenario: &str) -> Option<String> {
    match (scenario, backend) {
        ("quorum_loss", "postgres" | "redis" | "shedlock-postgres" | "shedlock-redis") => {
            Some("single server: there is no quorum to lose".into())
        }
        _ => None,
    }
}

/// What one repetition observed.
#[derive(Debug, Default)]
struct Rep {
    overlap: bool,
    /// The critical sections around the fault.
    timeline: Option<Timeline>,
    /// `None`: no stale write was possible.
    stale_rejected: Option<bool>,
    failover_ms: Option<f64>,
    /// (learned before handoff, next grant − learned).
    learned: Option<(bool, f64)>,
    /// holder_paused: from SIGCONT to the holder's `lost`.
    learn_after_resume_ms: Option<f64>,
    /// latency: from spawning the probe holder to its grant through the ttl/10 link…
    acquire_ms: Option<f64>,
    /// …or why it got none.
    acquire_error: Option<String>,
    /// clock_skew: the skewed holders kept the lock while holding (guards stayed held,
    /// nobody else granted).
    kept_held: Option<bool>,
    /// latency: per step the holder went through (delay each way, ms): whether it kept the
    /// lock (guard held, nobody else granted) for the whole step.
    kept_at: Vec<(u64, bool)>,
    /// latency: the delay each way (ms) of the step at which the lock moved.
    moved_at: Option<u64>,
    /// quorum_loss: from the majority going down to the holder's first state other than
    /// `held`.
    left_held_ms: Option<f64>,
    /// clock_skew: the behind-clock holder's clean release → the next holder's grant.
    handoff_ms: Option<f64>,
    notes: Vec<String>,
}

/// Bounds for waiting on the next grant after a fault: generous, so a slow machine reads as
/// a slow number rather than a failure.
fn grant_bound(ttl: Duration) -> Duration {
    ttl * 3 + Duration::from_secs(10)
}

/// A fault proxy in front of every server of `target` (Redlock: each instance) and `url`
/// rerouted through them.
async fn proxy_members(target: &Target, url: &str) -> Result<(Vec<FaultProxy>, String)> {
    if target.members.is_empty() {
        bail!("no server address to put a proxy in front of");
    }
    let mut proxies = Vec::new();
    let mut pairs = Vec::new();
    for m in &target.members {
        let p = FaultProxy::start(*m).await?;
        pairs.push((*m, p.addr()));
        proxies.push(p);
    }
    let rerouted = degraded::reroute(url, &pairs)?;
    Ok((proxies, rerouted))
}

/// How long a fault (pause, blackhole, reset, restart) is given to produce a grant: three
/// ttls, at least 6 s.
fn fault_bound(ttl: Duration) -> Duration {
    (ttl * 3).max(Duration::from_secs(6))
}

const FIRST_GRANT: Duration = Duration::from_secs(30);

fn lock_name(backend: &str, scenario: &str, rep: usize) -> String {
    format!(
        "cmp-{backend}-{scenario}-{}-{rep}-{:x}",
        std::process::id(),
        wall_ms()
    )
}

/// How `dlock hold` is started for holder A (`wait_forever` false) or a waiter.
fn hold_spec(url: &str, name: &str, ttl: Duration, wait_forever: bool) -> HoldSpec {
    HoldSpec {
        url: url.to_string(),
        name: name.to_string(),
        ttl,
        wait_forever,
        skew: None,
    }
}

/// Holder A acquires, waiter B is started and settles; returns both with A's grant.
async fn holder_and_waiter(
    opts: &CompareOptions,
    url_a: &str,
    url: &str,
    name: &str,
    res: &mut FencedResource,
) -> Result<(Holder, Option<u64>, Holder)> {
    holder_and_waiter_in(opts, None, url_a, url, name, res).await
}

/// [`holder_and_waiter`] with holder A inside the network namespace `ns_a` when given.
async fn holder_and_waiter_in(
    opts: &CompareOptions,
    ns_a: Option<&dlock_fixtures::netns::Netns>,
    url_a: &str,
    url: &str,
    name: &str,
    res: &mut FencedResource,
) -> Result<(Holder, Option<u64>, Holder)> {
    holder_and_waiter_with(
        opts,
        ns_a,
        hold_spec(url_a, name, opts.ttl, false),
        hold_spec(url, name, opts.ttl, true),
        res,
    )
    .await
}

/// [`holder_and_waiter_in`] with the two holders' specs given.
async fn holder_and_waiter_with(
    opts: &CompareOptions,
    ns_a: Option<&dlock_fixtures::netns::Netns>,
    spec_a: HoldSpec,
    spec_b: HoldSpec,
    res: &mut FencedResource,
) -> Result<(Holder, Option<u64>, Holder)> {
    let mut a = Holder::spawn_in(&opts.dlock_bin, &spec_a, ns_a)?;
    let ev = match a.acquired(FIRST_GRANT).await {
        Ok(Some(ev)) => ev,
        Ok(None) => {
            let err = a.stderr();
            a.finish().await;
            bail!("the first holder got no grant within {FIRST_GRANT:?}: {err}");
        }
        Err(e) => {
            a.finish().await;
            return Err(e);
        }
    };
    let EventKind::Acquired { token } = ev.kind else {
        unreachable!("acquired() returns acquired events")
    };
    res.enter(0, token, ev.t_ms);
    res.write(0, token, ev.t_ms);
    let mut b = Holder::spawn(&opts.dlock_bin, &spec_b)?;
    let b_ended = |err: String| anyhow!("the waiter ended before the fault: {err}");
    // B tries once, finds the lock held and says `waiting`; a grant instead is an overlap
    // (A holds), recorded as such.
    match b.waiting_or_acquired(FIRST_GRANT).await {
        Ok(Some(Event {
            kind: EventKind::Acquired { token },
            t_ms,
            ..
        })) => res.enter(1, token, t_ms),
        Ok(Some(_)) => {
            // Settle: the waiting request is sent right after the event (see WAITER_SETTLE).
            if let Some(ev) = b.next_event(WAITER_SETTLE).await {
                match ev.kind {
                    EventKind::Acquired { token } => res.enter(1, token, ev.t_ms),
                    EventKind::Ended => {
                        let err = b.stderr();
                        a.finish().await;
                        b.finish().await;
                        return Err(b_ended(err));
                    }
                    _ => {}
                }
            }
        }
        Ok(None) => {
            let err = b.stderr();
            a.finish().await;
            b.finish().await;
            bail!("the waiter printed neither waiting nor acquired within {FIRST_GRANT:?}: {err}");
        }
        Err(e) => {
            a.finish().await;
            b.finish().await;
            return Err(b_ended(format!("{e:#}")));
        }
    }
    Ok((a, token, b))
}

/// Waits for B's grant (unless it came already), records it, has B write. Returns the grant
/// time and token.
async fn await_grant(
    b: &mut Holder,
    res: &mut FencedResource,
    within: Duration,
) -> Result<Option<(i64, Option<u64>)>> {
    await_grant_as(1, b, res, within).await
}

/// [`await_grant`] for the holder numbered `id`.
async fn await_grant_as(
    id: resource::HolderId,
    b: &mut Holder,
    res: &mut FencedResource,
    within: Duration,
) -> Result<Option<(i64, Option<u64>)>> {
    if let Some(s) = res.sections().iter().find(|s| s.holder == id) {
        let (t, tok) = (s.enter_ms, s.token);
        res.write(id, tok, t);
        return Ok(Some((t, tok)));
    }
    match b.acquired(within).await? {
        Some(ev) => {
            let EventKind::Acquired { token } = ev.kind else {
                unreachable!("acquired() returns acquired events")
            };
            res.enter(id, token, ev.t_ms);
            res.write(id, token, ev.t_ms);
            Ok(Some((ev.t_ms, token)))
        }
        None => Ok(None),
    }
}

async fn run_rep(
    opts: &CompareOptions,
    backend: &str,
    target: &Target,
    scenario: &str,
    rep: usize,
) -> Result<Rep> {
    if degraded::SCENARIOS.contains(&scenario) {
        return degraded::run_rep(opts, backend, target, scenario, rep).await;
    }
    let name = lock_name(backend, scenario, rep);
    let url = target.url.as_str();
    let mut res = FencedResource::new();
    // holder_partitioned: the holder runs in a network namespace where it can.
    let mut partition_note = None;
    let netns = match scenario {
        "holder_partitioned" => match partition::namespace(backend, target) {
            Ok(ns) => Some(ns),
            Err(why) => {
                partition_note = Some(partition::proxy_note(&why));
                None
            }
        },
        _ => None,
    };
    // The holder talks to its server through a fault proxy in the proxied scenarios (unless
    // it is in a namespace); the waiter always talks to it directly.
    let (proxies, url_a) = if let Some((_, url_ns)) = &netns {
        (Vec::new(), url_ns.clone())
    } else if PROXIED.contains(&scenario) {
        proxy_members(target, url).await?
    } else {
        (Vec::new(), url.to_string())
    };
    let ns = netns.as_ref().map(|(ns, _)| ns);
    let (mut a, token_a, mut b) =
        holder_and_waiter_in(opts, ns, &url_a, url, &name, &mut res).await?;
    let mut out = Rep::default();
    if let Some(ns) = ns {
        partition_note = Some(partition::netns_note(ns, target.addr.map(|a| a.port())));
    }
    out.notes.extend(partition_note);
    let bound = grant_bound(opts.ttl);
    let result: Result<()> = async {
        match scenario {
            "clean_handoff" => {
                // The application leaves its critical section, then releases.
                let t0 = wall_ms();
                res.exit(0, t0);
                a.release();
                let Some((t_grant, _)) = await_grant(&mut b, &mut res, bound).await? else {
                    bail!("the waiter got no grant within {bound:?} of the release");
                };
                out.failover_ms = Some((t_grant - t0) as f64);
                // A write of the previous holder that arrives late.
                out.stale_rejected = Some(res.late_write(0, token_a, wall_ms()).rejected());
            }
            "holder_killed" => {
                let t0 = wall_ms();
                a.kill()?;
                res.exit(0, t0);
                let Some((t_grant, _)) = await_grant(&mut b, &mut res, bound).await? else {
                    bail!("the waiter got no grant within {bound:?} of the SIGKILL");
                };
                out.failover_ms = Some((t_grant - t0) as f64);
                // A write the dead holder sent just before dying, delivered late.
                out.stale_rejected = Some(res.late_write(0, token_a, wall_ms()).rejected());
            }
            "holder_paused" => {
                let pause_bound = fault_bound(opts.ttl);
                let t0 = wall_ms();
                a.pause()?;
                let grant = await_grant(&mut b, &mut res, pause_bound).await?;
                let t_resume = wall_ms();
                a.resume()?;
                // The holder wakes up inside its critical section and writes at once.
                let outcome = res.write(0, token_a, t_resume);
                match grant {
                    Some((t_grant, _)) => {
                        out.failover_ms = Some((t_grant - t0) as f64);
                        out.stale_rejected = Some(outcome.rejected());
                        // Does the woken holder learn, and when?
                        match a.state("lost", bound).await {
                            Some(ev) => {
                                res.exit(0, ev.t_ms);
                                let margin = (t_grant - ev.t_ms) as f64;
                                out.learned = Some((ev.t_ms < t_grant, margin));
                                out.learn_after_resume_ms = Some((ev.t_ms - t_resume) as f64);
                            }
                            None => {
                                res.exit(0, wall_ms());
                                out.notes.push(format!(
                                    "the resumed holder reported no loss within {bound:?}"
                                ));
                            }
                        }
                    }
                    None => {
                        out.notes.push(format!(
                            "not freed within {} s of the pause: the lock stays with the \
                             paused holder (no lease expires)",
                            pause_bound.as_secs()
                        ));
                        // Still its lock: the write is legitimate. Hand over cleanly.
                        let t1 = wall_ms();
                        res.exit(0, t1);
                        a.release();
                        if await_grant(&mut b, &mut res, bound).await?.is_none() {
                            bail!("the waiter got no grant after the paused holder released");
                        }
                    }
                }
            }
            "holder_partitioned" | "connection_reset" => {
                let mut bound = fault_bound(opts.ttl);
                if ns.is_some() {
                    bound = bound.max(partition::NETNS_FAULT_BOUND);
                }
                let set_all = |f: Fault| {
                    for p in &proxies {
                        p.set(f);
                    }
                };
                if ns.is_none() && proxies.is_empty() {
                    bail!("no fault proxy");
                }
                let t0 = wall_ms();
                let grant = if let Some(ns) = ns {
                    ns.link_down()?;
                    let g = await_grant(&mut b, &mut res, bound).await?;
                    ns.link_up()?;
                    g
                } else if scenario == "connection_reset" {
                    set_all(Fault::Reset);
                    tokio::time::sleep(RESET_FOR).await;
                    set_all(Fault::Pass);
                    await_grant(&mut b, &mut res, bound).await?
                } else {
                    set_all(Fault::Blackhole);
                    let g = await_grant(&mut b, &mut res, bound).await?;
                    set_all(Fault::Pass);
                    g
                };
                // What the holder reported meanwhile (its events wait in the channel).
                let mut lost = None;
                let mut states = Vec::new();
                while let Some(ev) = a.try_event() {
                    if let EventKind::State(st) = &ev.kind {
                        states.push(format!("{st} at +{} ms", ev.t_ms - t0));
                        if st == "lost" && lost.is_none() {
                            lost = Some(ev.t_ms);
                        }
                    }
                }
                if lost.is_none() && grant.is_some() {
                    // The lock moved on; give the holder until the bound to notice.
                    if let Some(ev) = a.state("lost", bound).await {
                        states.push(format!("lost at +{} ms", ev.t_ms - t0));
                        lost = Some(ev.t_ms);
                    }
                }
                if !states.is_empty() {
                    out.notes
                        .push(format!("holder reported: {}", states.join(", ")));
                }
                if let Some(t) = lost {
                    res.exit(0, t);
                }
                match grant {
                    Some((t_grant, _)) => {
                        out.failover_ms = Some((t_grant - t0) as f64);
                        match lost {
                            Some(t) => out.learned = Some((t < t_grant, (t_grant - t) as f64)),
                            None => out
                                .notes
                                .push("the holder never reported the loss".to_string()),
                        }
                        if ns.is_some() {
                            crate::say!(
                                "[compare] {backend} × {scenario} (network namespace): link \
                                 down → grant {} ms; holder lost at {}",
                                t_grant - t0,
                                lost.map_or("never".into(), |t| format!(
                                    "+{} ms ({} ms before the grant)",
                                    t - t0,
                                    t_grant - t
                                ))
                            );
                        }
                        // The old holder's write, sent before it knew, arrives now.
                        out.stale_rejected = Some(res.write(0, token_a, wall_ms()).rejected());
                        if lost.is_none() {
                            res.exit(0, wall_ms());
                        }
                    }
                    None => {
                        let why = match (lost, scenario) {
                            (Some(t), _) => format!(
                                "the holder reported the loss at +{} ms but the server kept \
                                 the lock: orphaned until the holder's session ends or it \
                                 releases",
                                t - t0
                            ),
                            (None, "holder_partitioned") if ns.is_some() => "the link stayed \
                                down and the server did not end the holder's session"
                                .to_string(),
                            (None, "holder_partitioned") => "fault proxy blackhole: the \
                                server's kernel still sees a live peer, so server-side \
                                keepalives cannot fire"
                                .to_string(),
                            (None, _) => "the holder reconnected and kept its lock".to_string(),
                        };
                        out.notes.push(format!(
                            "not freed within {} s of the fault ({why})",
                            bound.as_secs()
                        ));
                        let t1 = wall_ms();
                        res.exit(0, lost.unwrap_or(t1));
                        a.release();
                        if await_grant(&mut b, &mut res, bound).await?.is_none() {
                            bail!("the waiter got no grant after the holder released");
                        }
                    }
                }
            }
            "server_restart" => {
                let restart_bound = fault_bound(opts.ttl);
                let t0 = wall_ms();
                let what = match (&target.server, &target.cluster) {
                    (Some(server), _) if server.is_managed() => {
                        server.kill().await?;
                        server.start().await?;
                        "server"
                    }
                    (_, Some(cluster)) if cluster.is_managed() => {
                        // Every instance at once (Redlock: the whole set).
                        cluster.kill().await?;
                        let all: Vec<usize> = (0..cluster.len()).collect();
                        cluster.restart_members(&all).await?;
                        "every server"
                    }
                    _ => bail!("no managed server to restart"),
                };
                let restarted_ms = wall_ms() - t0;
                out.notes.push(format!(
                    "{what} back (SIGKILL + start on the same port and data) after {restarted_ms} ms"
                ));
                // The waiter may give up when its connection dies; a fresh one takes over.
                let mut grant = match await_grant(&mut b, &mut res, restart_bound).await {
                    Ok(g) => g,
                    Err(e) => {
                        out.notes.push(format!(
                            "the waiter exited when the server went away ({}); a new waiter \
                             was started",
                            first_line(&format!("{e:#}"))
                        ));
                        None
                    }
                };
                let mut c = None;
                if grant.is_none() && b_ended(&mut b).await {
                    let mut w = Holder::spawn(
                        &opts.dlock_bin,
                        &hold_spec(url, &name, opts.ttl, true),
                    )?;
                    grant = await_grant_as(2, &mut w, &mut res, restart_bound).await?;
                    c = Some(w);
                }
                let mut states = degraded::Reported::default();
                let mut lost = degraded::drain_states(&mut a, 0, t0, &mut res, &mut states);
                if !states.is_empty() {
                    out.notes.push(format!("holder reported: {}", states.join(", ")));
                }
                match grant {
                    Some((t_grant, _)) => {
                        out.failover_ms = Some((t_grant - t0) as f64);
                        if lost.is_none() {
                            // Does it learn at all, and how late?
                            if let Some(ev) = a.state("lost", bound).await {
                                states_late(&mut out, ev.t_ms - t0);
                                res.exit(0, ev.t_ms);
                                lost = Some(ev.t_ms);
                            } else {
                                out.notes.push(format!(
                                    "the holder reported no loss within {} s of the new grant",
                                    bound.as_secs()
                                ));
                            }
                        }
                        if let Some(t) = lost {
                            out.learned = Some((t < t_grant, (t_grant - t) as f64));
                        }
                        out.stale_rejected = Some(res.write(0, token_a, wall_ms()).rejected());
                    }
                    None => out.notes.push(format!(
                        "no other holder got the lock within {} s of the restart: it survived \
                         the restart{}",
                        restart_bound.as_secs(),
                        if lost.is_some() {
                            " although the holder reported it lost (orphaned until the holder \
                             releases or its session ends)"
                        } else {
                            ""
                        }
                    )),
                }
                res.exit(0, wall_ms());
                if let Some(w) = c {
                    w.finish().await;
                }
            }
            other => bail!("scenario {other:?} is not implemented"),
        }
        Ok(())
    }
    .await;
    conclude(out, &res, a, b, result).await
}

/// The end of every repetition: overlap and rejection notes from the resource, the two
/// holders stopped, an error carrying their stderr.
async fn conclude(
    mut out: Rep,
    res: &FencedResource,
    a: Holder,
    b: Holder,
    result: Result<()>,
) -> Result<Rep> {
    out.overlap = res.overlap_observed();
    if let Some(f) = out.failover_ms {
        out.timeline = Timeline::of(res, f);
    }
    if out.overlap {
        let pairs: Vec<String> = res
            .overlaps()
            .iter()
            .map(|(x, y)| {
                let end = |e: Option<i64>| e.map_or("open".into(), |e| e.to_string());
                let tok = |t: Option<u64>| t.map_or("none".into(), |t| t.to_string());
                format!(
                    "holder {} (token {}) [{}, {}) and holder {} (token {}) [{}, {})",
                    x.holder,
                    tok(x.token),
                    x.enter_ms,
                    end(x.exit_ms),
                    y.holder,
                    tok(y.token),
                    y.enter_ms,
                    end(y.exit_ms)
                )
            })
            .collect();
        let writes: Vec<String> = res
            .concurrent_writes()
            .iter()
            .map(|(w, o, t)| format!("holder {w} wrote at {t} while holder {o} was inside"))
            .collect();
        let all: Vec<String> = pairs.into_iter().chain(writes).collect();
        out.notes.push(format!("overlap: {}", all.join("; ")));
    }
    for (h, t, highest) in res.rejected() {
        if h != 0 {
            out.notes.push(format!(
                "the new holder's own write was rejected: its token {t} is lower than {highest}, \
                 accepted before (tokens went backwards)"
            ));
        }
    }
    let err_a = a.stderr();
    let err_b = b.stderr();
    a.finish().await;
    b.release_and_finish(Duration::from_secs(10)).await;
    result.map_err(|e| {
        anyhow!(
            "{e:#}{}{}",
            if err_a.is_empty() {
                String::new()
            } else {
                format!(" (holder: {err_a})")
            },
            if err_b.is_empty() {
                String::new()
            } else {
                format!(" (waiter: {err_b})")
            }
        )
    })?;
    Ok(out)
}

fn states_late(out: &mut Rep, after_ms: i64) {
    out.notes.push(format!(
        "holder reported lost at +{after_ms} ms, after the new grant"
    ));
}

fn first_line(s: &str) -> &str {
    s.lines().next().unwrap_or("")
}

/// Whether the holder's output has ended (it exited), waiting briefly for the end.
async fn b_ended(b: &mut Holder) -> bool {
    // Bounded: consumes events until the end or one second without any.
    for _ in 0..64 {
        match b.next_event(Duration::from_secs(1)).await {
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

fn aggregate(cell: &mut Cell, reps: &[Rep]) {
    cell.repetitions = reps.len();
    cell.timeline = reps.iter().find_map(|r| r.timeline.clone());
    cell.overlap_observed = Some(reps.iter().any(|r| r.overlap));
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
    if !learned.is_empty() {
        cell.holder_learned_before_handoff = Some(learned.iter().all(|l| l.0));
        let margins: Vec<f64> = learned.iter().map(|l| l.1).collect();
        cell.learned_before_handoff_ms = Stats::of(&margins).map(|s| s.median);
    }
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
    let range = |s: Stats| format!("{:.0} ms (median; {:.0}–{:.0})", s.median, s.min, s.max);
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
            "a holder could not acquire through the ttl/10 link in {} of {} repetitions \
             (first: {first})",
            failed.len(),
            reps.len()
        ));
    }
    let left: Vec<f64> = reps.iter().filter_map(|r| r.left_held_ms).collect();
    if let Some(s) = Stats::of(&left) {
        cell.notes.push(format!(
            "the holder's guard left held {} after the majority went down, in {} of {} \
             repetitions",
            range(s),
            left.len(),
            reps.len()
        ));
    }
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
    let kept: Vec<bool> = reps.iter().filter_map(|r| r.kept_held).collect();
    if !kept.is_empty() {
        cell.notes.push(format!(
            "the skewed holders kept the lock while holding (guards held, nobody else \
             granted) in {} of {} repetitions",
            kept.iter().filter(|k| **k).count(),
            kept.len()
        ));
    }
    let handoff: Vec<f64> = reps.iter().filter_map(|r| r.handoff_ms).collect();
    if let Some(s) = Stats::of(&handoff) {
        cell.notes.push(format!(
            "clean release by the -1 h holder → the unskewed waiter's grant: {}",
            range(s)
        ));
    }
    let mut seen = std::collections::BTreeSet::new();
    for n in reps.iter().flat_map(|r| r.notes.iter()) {
        // Notes that repeat across repetitions once; overlap details are per repetition.
        // Notes that differ only in their numbers are the same observation.
        let key = if n.starts_with("overlap:") || n.starts_with("holder reported:") {
            n.split(':').next().unwrap_or("").to_string()
        } else {
            n.chars().filter(|c| !c.is_ascii_digit()).collect()
        };
        if seen.insert(key) {
            cell.notes.push(n.clone());
        }
    }
}

/// What a scenario does and what its failover time measures, for the report's notes. The
/// numbers come from the constants the scenarios run with.
fn scenario_note(scenario: &str) -> String {
    use degraded::{
        ACQUIRE_LINK_DIVISOR, LOSING_LINK_TTLS, OUTAGE_MIN, OUTAGE_TTLS, SKEW_HOLD_TTLS, SKEW_MS,
        SLOW_LINK_DIVISOR, SLOW_PHASE_TTLS,
    };
    let skew = humantime::format_duration(Duration::from_millis(SKEW_MS.unsigned_abs()));
    match scenario {
        "clean_handoff" => "failover = release requested → waiter's grant".into(),
        "holder_killed" => {
            "failover = SIGKILL → waiter's grant; the holder is dead, it cannot learn".into()
        }
        "holder_partitioned" => {
            "holder's traffic to the server blackholed (no RST, no FIN) until the waiter's grant or the bound, then healed; how: see the partition note".into()
        }
        "connection_reset" => format!(
            "the holder's connections reset (RST) by a fault proxy for {}, then traffic passes again; failover = reset → grant",
            humantime::format_duration(RESET_FOR)
        ),
        "server_restart" => {
            "the server SIGKILLed and started again on the same port and data; failover = kill → another holder's grant (a new waiter is started if the first one gave up)".into()
        }
        "holder_paused" => {
            "SIGSTOP until the waiter's grant (or the bound), SIGCONT, then the holder writes with its old token".into()
        }
        "latency" => format!(
            "the holder's traffic to every server through a fault proxy delaying each chunk each way: a probe holder acquires through ttl/{ACQUIRE_LINK_DIVISOR}; the holder, connected on a clean link, then gets ttl/{ACQUIRE_LINK_DIVISOR} and ttl/{SLOW_LINK_DIVISOR} for {SLOW_PHASE_TTLS} ttl each (it should keep the lock), then {LOSING_LINK_TTLS} ttl, until it reports trouble or the waiter is granted; failover = start of that step → waiter's grant (the step is in the notes)"
        ),
        "quorum_loss" => format!(
            "2 of 3 servers SIGKILLed (etcd/ZooKeeper: the leader and one more) for {OUTAGE_TTLS} ttl (at least {}), then restarted; failover = restart of the majority begins → another holder's grant (start-up included)",
            humantime::format_duration(OUTAGE_MIN)
        ),
        "clock_skew" => format!(
            "holder's wall clock +{skew}, waiter's -{skew} (libfaketime, monotonic clock untouched); each holds {SKEW_HOLD_TTLS} ttl against a waiter; failover = SIGKILL of the +{skew} holder → the -{skew} waiter's grant"
        ),
        _ => String::new(),
    }
}

/// Runs the matrix and returns the report (also written by [`report::write`]). Progress
/// goes to stderr.
pub async fn compare(opts: &CompareOptions, quick: bool) -> Result<Report> {
    for b in &opts.backends {
        if !BACKENDS.contains(&b.as_str()) {
            bail!("unknown backend {b:?} (known: {})", BACKENDS.join(", "));
        }
    }
    for s in &opts.scenarios {
        if !SCENARIOS.contains(&s.as_str()) {
            bail!("unknown scenario {s:?} (known: {})", SCENARIOS.join(", "));
        }
    }
    if opts.repeat == 0 {
        bail!("--repeat must be at least 1");
    }
    let started = std::time::Instant::now();
    let started_ms = wall_ms();
    let selected = |s: &str| opts.scenarios.iter().any(|x| x == s);
    let to_run: Vec<&str> = SCENARIOS.iter().copied().filter(|s| selected(s)).collect();
    let total = opts.backends.len() * to_run.len();
    let mut done = 0;
    crate::progress::start(total);
    let mut backends = Vec::new();
    let mut cells = Vec::new();
    let mut benchmarks = Vec::new();
    let mut benchmark_failures = Vec::new();
    for backend in BACKENDS
        .iter()
        .filter(|b| opts.backends.iter().any(|x| x == *b))
    {
        crate::say!("[compare] {backend}: starting servers");
        let target = match start_target(backend, opts.ttl).await {
            Ok(t) => Some(t),
            Err(e) => {
                crate::say!("[compare] {backend}: cannot start servers: {e:#}");
                backends.push(BackendInfo {
                    name: backend.to_string(),
                    url: String::new(),
                    capabilities: String::new(),
                    ttl_ms: None,
                    frees_by: String::new(),
                });
                for s in SCENARIOS {
                    let mut c = Cell::empty(
                        backend,
                        s,
                        Status::Failed,
                        Some(format!("servers did not start: {e:#}")),
                    );
                    if !to_run.contains(&s) {
                        c.status = Status::NotMeasured;
                    }
                    cells.push(c);
                }
                done += to_run.len();
                None
            }
        };
        let Some(target) = target else { continue };
        backends.push(BackendInfo {
            name: backend.to_string(),
            url: dlock::redact(&target.url).to_string(),
            capabilities: capabilities(&target.url),
            ttl_ms: target.ttl_ms,
            frees_by: target.frees_by.to_string(),
        });
        for scenario in SCENARIOS {
            if let Some(why) = not_applicable(backend, scenario) {
                cells.push(Cell::empty(
                    backend,
                    scenario,
                    Status::NotApplicable,
                    Some(why),
                ));
                continue;
            }
            if scenario == "server_restart"
                && !target.server.as_ref().is_some_and(|s| s.is_managed())
                && !target.cluster.as_ref().is_some_and(|c| c.is_managed())
            {
                cells.push(Cell::empty(
                    backend,
                    scenario,
                    Status::NotMeasured,
                    Some(
                        "not measured: the servers are external (DLOCK_TEST_*_URL); only servers \
                         this run started can be killed and restarted"
                            .into(),
                    ),
                ));
                continue;
            }
            if PROXIED.contains(&scenario) && target.members.is_empty() {
                cells.push(Cell::empty(
                    backend,
                    scenario,
                    Status::NotMeasured,
                    Some(
                        "not measured: the server addresses are not known (external servers), so \
                         no fault proxy can be put in front of them"
                            .into(),
                    ),
                ));
                continue;
            }
            if !selected(scenario) {
                cells.push(Cell::empty(
                    backend,
                    scenario,
                    Status::NotMeasured,
                    Some("not selected for this run (--scenarios)".into()),
                ));
                continue;
            }
            done += 1;
            // quorum_loss on etcd and ZooKeeper runs on a 3-member cluster of its own (the
            // other scenarios use a single server); it stops when the cell is done.
            let cluster_target;
            let target = if scenario == "quorum_loss" && matches!(*backend, "etcd" | "zookeeper") {
                crate::say!("[compare] {backend}: starting a 3-member cluster for {scenario}");
                match start_cluster_target(backend, opts.ttl).await {
                    Ok(t) => {
                        cluster_target = t;
                        &cluster_target
                    }
                    Err(e) => {
                        crate::say!("[compare] {backend}: cannot start the cluster: {e:#}");
                        cells.push(Cell::empty(
                            backend,
                            scenario,
                            Status::Failed,
                            Some(format!("the 3-member cluster did not start: {e:#}")),
                        ));
                        continue;
                    }
                }
            } else {
                &target
            };
            if let Some(why) = degraded::not_measurable(scenario, target) {
                cells.push(Cell::empty(
                    backend,
                    scenario,
                    Status::NotMeasured,
                    Some(why),
                ));
                continue;
            }
            let mut cell = Cell::empty(backend, scenario, Status::Measured, None);
            cell.ttl_ms = target.ttl_ms;
            cell.notes.push(scenario_note(scenario));
            if target.cluster.is_some() && scenario == "quorum_loss" {
                cell.notes
                    .push(format!("servers: {}", dlock::redact(&target.url)));
            }
            let mut reps = Vec::new();
            let mut failure = None;
            for rep in 0..opts.repeat {
                crate::say!(
                    "[compare {done}/{total}] {backend} × {scenario}: repetition {}/{}",
                    rep + 1,
                    opts.repeat
                );
                crate::progress::set(
                    done - 1,
                    format!(
                        "{backend} × {scenario}, repetition {}/{}",
                        rep + 1,
                        opts.repeat
                    ),
                );
                match run_rep(opts, backend, target, scenario, rep).await {
                    Ok(r) => reps.push(r),
                    Err(e) => {
                        crate::say!("[compare] {backend} × {scenario}: failed: {e:#}");
                        failure = Some(format!("repetition {}: {e:#}", rep + 1));
                        break;
                    }
                }
            }
            if let Some(why) = failure {
                cell.status = Status::Failed;
                cell.reason = Some(why);
            }
            aggregate(&mut cell, &reps);
            if let Some(f) = cell.failover_ms {
                crate::say!(
                    "[compare {done}/{total}] {backend} × {scenario}: failover median {:.0} ms, overlap {}, stale write rejected {}",
                    f.median,
                    report::yes_no(cell.overlap_observed),
                    report::yes_no(cell.stale_write_rejected)
                );
            }
            cells.push(cell);
        }
        if let Some(plan) = &opts.bench {
            crate::say!("[compare] {backend}: benchmarks");
            crate::progress::set(done, format!("{backend}: benchmarks"));
            // The server on a CPU of its own and this process on the others, as if the server
            // were another machine: on a small machine the scheduler's placement otherwise
            // decides the ratios (PostgreSQL's jumped between 0.89× and 1.34×). The servers
            // stop after this backend; this process gets its CPUs back.
            let pids: Vec<u32> = target
                .server
                .iter()
                .filter_map(fixtures::Server::pid)
                .chain(
                    target
                        .cluster
                        .iter()
                        .flat_map(|c| c.pids().into_iter().flatten()),
                )
                .collect();
            let pinning = bench::pin_server_apart(&pids);
            crate::say!("[compare] {backend}: {}", pinning.description);
            let measured =
                bench::run_backend(backend, &target.url, plan, Some(&opts.dlock_bin)).await;
            if !pinning.undo() {
                crate::say!("[compare] {backend}: could not give dlock its CPUs back");
            }
            match measured {
                Ok(mut entries) => {
                    if pinning.pinned {
                        for e in &mut entries {
                            e.notes
                                .push_str("; server and client pinned to separate CPUs");
                        }
                    }
                    benchmarks.extend(entries)
                }
                Err(e) => {
                    crate::say!("[compare] {backend}: benchmarks failed: {e:#}");
                    benchmark_failures.push(BenchFailure {
                        backend: backend.to_string(),
                        reason: format!("{e:#}"),
                    });
                }
            }
        }
    }
    crate::progress::finish();
    Ok(Report {
        run: RunInfo {
            host: hostname(),
            cpus: std::thread::available_parallelism().map_or(1, |n| n.get()),
            started_ms,
            duration_s: started.elapsed().as_secs_f64(),
            repeat: opts.repeat,
            quick,
            fault_injection: format!(
                "signals to the holder process (SIGKILL, SIGSTOP/SIGCONT); stdin close for the \
                 clean release; an in-process TCP fault proxy between the holder and its \
                 server(s) (blackhole, RST, added latency); SIGKILL and restart of the server \
                 process, or of 2 of 3 cluster members; the holder's wall clock shifted with \
                 libfaketime; {}",
                partition::fault_injection(&cells)
            ),
        },
        backends,
        scenarios: cells,
        benchmarks,
        benchmark_failures,
    })
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| "unknown".into())
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

    #[test]
    fn aggregation_is_conservative() {
        let mut c = Cell::empty("redis", "holder_killed", Status::Measured, None);
        let reps = [
            Rep {
                failover_ms: Some(10.0),
                stale_rejected: Some(true),
                ..Rep::default()
            },
            Rep {
                overlap: true,
                failover_ms: Some(30.0),
                stale_rejected: Some(false),
                ..Rep::default()
            },
        ];
        aggregate(&mut c, &reps);
        assert_eq!(c.overlap_observed, Some(true));
        assert_eq!(c.stale_write_rejected, Some(false));
        assert_eq!(c.failover_ms.unwrap().median, 20.0);
        assert_eq!(c.holder_learned_before_handoff, None);
    }
}

#[cfg(test)]
mod note_tests {
    use super::*;
    use degraded::{
        ACQUIRE_LINK_DIVISOR, LOSING_LINK_TTLS, OUTAGE_MIN, OUTAGE_TTLS, SKEW_HOLD_TTLS,
        SLOW_LINK_DIVISOR,
    };

    /// Every scenario has a note, and the numbers in the notes are the ones the scenarios run
    /// with (a number written into a note by hand would drift from its constant).
    #[test]
    fn scenario_notes_follow_the_constants() {
        for s in SCENARIOS {
            assert!(!scenario_note(s).is_empty(), "{s} has no note");
        }
        let reset = scenario_note("connection_reset");
        let reset_for = humantime::format_duration(RESET_FOR).to_string();
        assert!(reset.contains(&format!("for {reset_for},")), "{reset}");
        let latency = scenario_note("latency");
        for part in [
            format!("ttl/{ACQUIRE_LINK_DIVISOR}"),
            format!("ttl/{SLOW_LINK_DIVISOR}"),
            format!("then {LOSING_LINK_TTLS} ttl"),
        ] {
            assert!(latency.contains(&part), "{part:?} not in {latency}");
        }
        let quorum = scenario_note("quorum_loss");
        let min = humantime::format_duration(OUTAGE_MIN).to_string();
        assert!(
            quorum.contains(&format!("for {OUTAGE_TTLS} ttl (at least {min})")),
            "{quorum}"
        );
        let skew = scenario_note("clock_skew");
        assert!(
            skew.contains(&format!("holds {SKEW_HOLD_TTLS} ttl")),
            "{skew}"
        );
        assert!(skew.contains("+1h"), "{skew}");
    }
}
