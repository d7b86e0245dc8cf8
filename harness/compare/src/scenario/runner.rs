//! The runner: backends × workloads × nemeses, each measured cell repeated (dlock's
//! workloads, then each selected peer library's on the same servers, through
//! [`PEER_SCENARIOS`]), then each backend's benchmarks on the same servers.

use std::time::Instant;

use anyhow::{Result, bail};

use super::cell::{BackendInfo, BenchFailure, Cell, Report, RunInfo, Status};
use super::checker::{self, Observed};
use super::holder::wall_ms;
use super::nemesis::{self, Nemesis};
use super::target::{Target, live_capabilities, start_target};
use super::workload::peer::library;
use super::workload::{
    Ctx, ExclusiveLock, PEER_SCENARIOS, PeerLock, SharedLock, WORKLOADS, Workload, lock_name, multi,
};
use super::{BACKENDS, CompareOptions, SCENARIOS, estimate, report};
use crate::bench::{self, BenchEntry};
use dlock_fixtures as fixtures;

/// Runs the matrix and returns the report (written by [`report::write`]). Progress goes to
/// stderr.
pub async fn compare(opts: &CompareOptions, quick: bool) -> Result<Report> {
    validate(opts)?;
    let started = Instant::now();
    let started_ms = wall_ms();
    let mut run = Run::new(opts);
    let plan = estimate::Plan::of(opts);
    crate::say!("[compare] {}", plan.describe());
    crate::progress::start(run.total);
    for backend in BACKENDS
        .iter()
        .filter(|b| opts.backends.iter().any(|x| x == *b))
    {
        run.backend(backend).await;
    }
    let strategies = match &opts.strategies {
        Some(p) if opts.backends.iter().any(|b| b == "postgres") => {
            crate::progress::set(run.done, "strategies: the purge on three workers");
            crate::strategies::run_section(p).await
        }
        _ => crate::strategies::StrategiesReport::default(),
    };
    crate::progress::finish();
    let took = started.elapsed();
    crate::say!(
        "[compare] done in {} (estimated {})",
        estimate::minutes(took),
        estimate::minutes(plan.total())
    );
    let fault_injection = format!(
        "signals to the holder process (SIGKILL, SIGSTOP/SIGCONT); stdin close for the \
         clean release; an in-process TCP fault proxy between the holder and its \
         server(s) (blackhole, RST, added latency); SIGKILL and restart of the server \
         process, or of 2 of 3 cluster members; the holder's wall clock shifted with \
         libfaketime; {}",
        nemesis::netns::fault_injection(&run.cells)
    );
    Ok(Report {
        run: RunInfo {
            host: hostname(),
            cpus: std::thread::available_parallelism().map_or(1, |n| n.get()),
            started_ms,
            duration_s: took.as_secs_f64(),
            repeat: opts.repeat,
            quick,
            fault_injection,
            commit: command_line("git", &["rev-parse", "--short", "HEAD"]),
            servers: server_packages(),
        },
        backends: run.backends,
        scenarios: run.cells,
        benchmarks: run.benchmarks,
        benchmark_failures: run.benchmark_failures,
        peers: run.peers,
        strategies,
    })
}

/// The first line a command prints, if it runs and succeeds.
fn command_line(program: &str, args: &[&str]) -> Option<String> {
    let out = std::process::Command::new(program)
        .args(args)
        .output()
        .ok()?;
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text.lines().next()?.trim();
    (out.status.success() && !line.is_empty()).then(|| line.to_string())
}

/// The Debian packages of the servers the fixtures start, with their versions.
fn server_packages() -> Vec<String> {
    [
        "postgresql",
        "redis-server",
        "etcd-server",
        "zookeeper",
        "mariadb-server",
    ]
    .iter()
    .filter_map(|p| command_line("dpkg-query", &["-W", "-f", "${Package} ${Version}", p]))
    .collect()
}

/// Unknown names and a zero repeat are usage errors.
fn validate(opts: &CompareOptions) -> Result<()> {
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
    Ok(())
}

/// The report as it fills up, and the progress count.
struct Run<'o> {
    opts: &'o CompareOptions,
    /// Scenarios to measure (selected, in report order).
    to_run: Vec<&'static str>,
    /// Cells to measure in all.
    total: usize,
    /// Cells measured (or failed) so far.
    done: usize,
    backends: Vec<BackendInfo>,
    cells: Vec<Cell>,
    benchmarks: Vec<BenchEntry>,
    benchmark_failures: Vec<BenchFailure>,
    peers: Vec<crate::peers::PeerRow>,
}

impl<'o> Run<'o> {
    fn new(opts: &'o CompareOptions) -> Run<'o> {
        let to_run = selected(opts);
        let peer_cells: usize = opts
            .backends
            .iter()
            .map(|b| opts.peer_holders.of(b).len() * peer_scenarios(&to_run).len())
            .sum();
        let multi_cells: usize = opts
            .backends
            .iter()
            .map(|b| multi_scenarios(b, &to_run).len() * (WORKLOADS.len() - 1))
            .sum();
        Run {
            opts,
            total: opts.backends.len() * to_run.len() + peer_cells + multi_cells,
            to_run,
            done: 0,
            backends: Vec::new(),
            cells: Vec::new(),
            benchmarks: Vec::new(),
            benchmark_failures: Vec::new(),
            peers: Vec::new(),
        }
    }

    /// One backend: its servers, every workload × nemesis cell, its benchmarks.
    async fn backend(&mut self, backend: &'static str) {
        crate::say!("[compare] {backend}: starting servers");
        let target = match start_target(backend, self.opts.ttl).await {
            Ok(t) => t,
            Err(e) => return self.no_servers(backend, &e),
        };
        self.backends.push(BackendInfo {
            name: backend.to_string(),
            url: dlock::redact(&target.url).to_string(),
            capabilities: live_capabilities(&target.url).await,
            ttl_ms: target.ttl_ms,
            frees_by: target.frees_by.to_string(),
        });
        for workload in WORKLOADS {
            for mut nemesis in nemesis::all() {
                if !multi::runs(workload.name(), backend, nemesis.name())
                    || !offers(&target.url, workload.name()).await
                {
                    continue;
                }
                let mut cell = self
                    .cell(backend, &target, workload, nemesis.as_mut())
                    .await;
                if workload.name() != ExclusiveLock.name() {
                    cell.workload = Some(workload.name().to_string());
                }
                self.cells.push(cell);
            }
        }
        for spec in self.peer_holders(backend) {
            self.peer_cells(backend, &target, spec).await;
        }
        if self.opts.bench.is_some() || self.opts.peers.is_some() {
            self.bench(backend, &target).await;
        }
    }

    /// Every cell of a backend whose servers did not start: failed, or not measured where
    /// not selected.
    fn no_servers(&mut self, backend: &str, e: &anyhow::Error) {
        crate::say!("[compare] {backend}: cannot start servers: {e:#}");
        self.backends.push(BackendInfo {
            name: backend.to_string(),
            url: String::new(),
            capabilities: String::new(),
            ttl_ms: None,
            frees_by: String::new(),
        });
        // A cell that could not run: failed where it was asked for, not measured otherwise.
        let unrun = |s: &'static str, to_run: &[&str]| {
            let mut c = Cell::empty(
                backend,
                s,
                Status::Failed,
                Some(format!("servers did not start: {e:#}")),
            );
            if !to_run.contains(&s) {
                c.status = Status::NotMeasured;
            }
            c
        };
        for s in SCENARIOS {
            self.cells.push(unrun(s, &self.to_run));
        }
        self.done += self.to_run.len();
        for spec in self.peer_holders(backend) {
            for s in PEER_SCENARIOS {
                let mut c = unrun(s, &self.to_run);
                c.library = Some(library(spec, None));
                self.cells.push(c);
            }
            self.done += peer_scenarios(&self.to_run).len();
        }
    }

    /// The peer libraries whose holders go through this run's scenarios on `backend` (none
    /// when no scenario of theirs is selected).
    fn peer_holders(&self, backend: &str) -> Vec<&'static crate::peers::PeerSpec> {
        if peer_scenarios(&self.to_run).is_empty() {
            return Vec::new();
        }
        self.opts.peer_holders.of(backend)
    }

    /// The cells of one peer library's holders on `backend`: measured as dlock's are, each
    /// with its `library`; `not_measured` with the reason when its harness cannot run here.
    async fn peer_cells(
        &mut self,
        backend: &str,
        target: &Target,
        spec: &'static crate::peers::PeerSpec,
    ) {
        let peer = spec.peer;
        crate::say!("[compare] {backend}: peer holder {peer}");
        let harnesses = crate::peers::Harnesses::locate(&self.opts.dlock_bin);
        let nemeses = nemesis::all()
            .into_iter()
            .filter(|n| PEER_SCENARIOS.contains(&n.name()));
        let workload = match PeerLock::start(spec, &harnesses, target, self.opts.ttl).await {
            Ok(w) => w,
            Err(why) => {
                crate::say!("[compare] {backend}: peer holder {peer} not measured: {why}");
                for n in nemeses {
                    let mut c = self
                        .skipped(backend, target, n.as_ref())
                        .unwrap_or_else(|| {
                            self.done += 1;
                            let why = format!("the {peer} harness cannot run here: {why}");
                            Cell::empty(backend, n.name(), Status::NotMeasured, Some(why))
                        });
                    c.library = Some(library(spec, None));
                    self.cells.push(c);
                }
                return;
            }
        };
        for mut n in nemeses {
            let mut c = self.cell(backend, target, &workload, n.as_mut()).await;
            c.library = workload.library();
            self.cells.push(c);
        }
    }

    /// Why the cell is not measured before anything starts for it, if it is not.
    fn skipped(&self, backend: &str, target: &Target, n: &dyn Nemesis) -> Option<Cell> {
        let scenario = n.name();
        let skip = |status, why| Some(Cell::empty(backend, scenario, status, Some(why)));
        if let Some(why) = n.not_applicable(backend) {
            return skip(Status::NotApplicable, why);
        }
        if let Some(why) = n.external(target) {
            return skip(Status::NotMeasured, why);
        }
        if !self.to_run.contains(&scenario) {
            let why = if self.opts.run_scenarios {
                "not selected for this run (--scenarios)"
            } else {
                "not selected for this run (--only bench)"
            };
            return skip(Status::NotMeasured, why.into());
        }
        None
    }

    /// One backend × workload × nemesis cell.
    async fn cell(
        &mut self,
        backend: &str,
        target: &Target,
        workload: &dyn Workload,
        n: &mut dyn Nemesis,
    ) -> Cell {
        if let Some(c) = self.skipped(backend, target, n) {
            return c;
        }
        let scenario = n.name();
        self.done += 1;
        // Some nemeses run on servers of their own (quorum_loss: a 3-member etcd cluster or
        // ZooKeeper ensemble where the other scenarios use a single server); they stop when
        // the cell is done.
        let own;
        let target = if n.own_servers(backend) {
            crate::say!("[compare] {backend}: starting servers of its own for {scenario}");
            match n.servers(backend, self.opts.ttl).await {
                Ok(t) => {
                    own = t;
                    &own
                }
                Err(e) => {
                    crate::say!("[compare] {backend}: cannot start its servers: {e:#}");
                    let why = format!("the servers of {scenario} did not start: {e:#}");
                    return Cell::empty(backend, scenario, Status::Failed, Some(why));
                }
            }
        } else {
            target
        };
        if let Some(why) = n.not_measurable(target) {
            return Cell::empty(backend, scenario, Status::NotMeasured, Some(why));
        }
        let started = Instant::now();
        let cell = self.measure(backend, target, workload, n).await;
        crate::say!(
            "[compare {}/{}] {} × {scenario}: {} repetition(s) in {:.1} s",
            self.done,
            self.total,
            workload.label(backend),
            cell.repetitions,
            started.elapsed().as_secs_f64()
        );
        cell
    }

    /// The repetitions of a measured cell, checked and aggregated.
    async fn measure(
        &mut self,
        backend: &str,
        target: &Target,
        workload: &dyn Workload,
        n: &mut dyn Nemesis,
    ) -> Cell {
        let (scenario, done, total, repeat) = (n.name(), self.done, self.total, self.opts.repeat);
        let who = workload.label(backend);
        let mut cell = Cell::empty(backend, scenario, Status::Measured, None);
        cell.ttl_ms = target.ttl_ms;
        cell.notes.extend(n.cell_notes(target));
        let mut reps = Vec::new();
        let mut voids = 0;
        let mut rep = 0;
        while rep < repeat {
            crate::say!(
                "[compare {done}/{total}] {who} × {scenario}: repetition {}/{repeat}",
                rep + 1,
            );
            crate::progress::set(
                done - 1,
                format!("{who} × {scenario}, repetition {}/{repeat}", rep + 1),
            );
            let ctx = Ctx {
                opts: self.opts,
                backend,
                scenario,
                target,
                name: lock_name(backend, scenario, rep),
                workload,
            };
            match repetition(&ctx, n).await {
                Ok(r) => {
                    reps.push(r);
                    rep += 1;
                }
                Err(e) if voids < MAX_VOIDS && e.downcast_ref::<nemesis::Void>().is_some() => {
                    voids += 1;
                    crate::say!(
                        "[compare] {who} × {scenario}: repetition {} void, run again: {e:#}",
                        rep + 1
                    );
                    cell.notes
                        .push(format!("repetition {} void and run again: {e:#}", rep + 1));
                }
                Err(e) => {
                    crate::say!("[compare] {who} × {scenario}: failed: {e:#}");
                    cell.status = Status::Failed;
                    cell.reason = Some(format!("repetition {}: {e:#}", rep + 1));
                    break;
                }
            }
        }
        checker::aggregate(&mut cell, &reps);
        if let Some(f) = cell.failover_ms {
            crate::say!(
                "[compare {done}/{total}] {who} × {scenario}: failover median {:.0} ms, overlap {}, stale write rejected {}",
                f.median,
                report::yes_no(cell.overlap_observed),
                report::yes_no(cell.stale_write_rejected)
            );
        }
        cell
    }

    /// The benchmarks and the peers of one backend, its servers pinned apart from this
    /// process.
    async fn bench(&mut self, backend: &str, target: &Target) {
        crate::say!("[compare] {backend}: benchmarks");
        crate::progress::set(self.done, format!("{backend}: benchmarks"));
        let started = Instant::now();
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
        let measured = match &self.opts.bench {
            Some(plan) => {
                bench::run_backend(backend, &target.bench_url, plan, Some(&self.opts.dlock_bin))
                    .await
            }
            None => Ok(Vec::new()),
        };
        if let Some(peers) = &self.opts.peers {
            crate::progress::set(self.done, format!("{backend}: peers"));
            let harnesses = crate::peers::Harnesses::locate(&self.opts.dlock_bin);
            let rows = crate::peers::run_backend(
                backend,
                &target.bench_url,
                self.opts.ttl,
                peers,
                &harnesses,
            )
            .await;
            let pinned = pinning.pinned;
            self.peers.extend(rows.into_iter().map(|mut r| {
                if pinned && r.status == "measured" {
                    r.notes.push_str(
                        "; servers on one CPU, the driver and every harness (dlock's and the peer's) on the other",
                    );
                }
                r
            }));
        }
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
                self.benchmarks.extend(entries)
            }
            Err(e) => {
                crate::say!("[compare] {backend}: benchmarks failed: {e:#}");
                self.benchmark_failures.push(BenchFailure {
                    backend: backend.to_string(),
                    reason: format!("{e:#}"),
                });
            }
        }
        crate::say!(
            "[compare] {backend}: benchmarks in {:.1} s",
            started.elapsed().as_secs_f64()
        );
    }
}

/// How many void repetitions ([`nemesis::Void`]) a cell runs again before it fails.
const MAX_VOIDS: usize = 3;

/// One repetition: the nemesis prepares, the workload begins, the nemesis runs its schedule,
/// the holders stop, the checker reads the history.
async fn repetition(ctx: &Ctx<'_>, n: &mut dyn Nemesis) -> Result<Observed> {
    let approach = n.prepare(ctx).await;
    let trial = match approach {
        Ok(how) => ctx.workload.begin(ctx, &how, n.namespace()).await,
        Err(e) => Err(e),
    };
    let history = match trial {
        Ok(mut trial) => {
            let result = n.run(&mut trial).await;
            trial.finish(result).await
        }
        Err(e) => Err(e),
    };
    // The proxies and the namespace go only now: the holders that used them are gone.
    n.teardown();
    Ok(checker::check(history?))
}

/// Whether the backend at `url` (as connected, options included) offers what `workload`
/// takes: shared grants for `shared`, permits for `semaphore`.
async fn offers(url: &str, workload: &str) -> bool {
    let need = match workload {
        "shared" => "shared",
        "semaphore" => "semaphore",
        _ => return true,
    };
    crate::scenario::target::live_capabilities(url)
        .await
        .split(|c: char| !c.is_ascii_alphanumeric() && c != '_')
        .any(|w| w == need)
}

/// The scenarios of `to_run` that the shared-lock and semaphore workloads go through on
/// `backend` (none where it has neither).
pub(super) fn multi_scenarios(backend: &str, to_run: &[&'static str]) -> Vec<&'static str> {
    to_run
        .iter()
        .copied()
        .filter(|s| multi::runs(SharedLock.name(), backend, s))
        .collect()
}

/// The scenarios of `to_run` that peer holders go through.
pub(super) fn peer_scenarios(to_run: &[&'static str]) -> Vec<&'static str> {
    to_run
        .iter()
        .copied()
        .filter(|s| PEER_SCENARIOS.contains(s))
        .collect()
}

/// The scenarios this run measures, in report order.
pub(super) fn selected(opts: &CompareOptions) -> Vec<&'static str> {
    if !opts.run_scenarios {
        return Vec::new();
    }
    SCENARIOS
        .iter()
        .copied()
        .filter(|s| opts.scenarios.iter().any(|x| x == s))
        .collect()
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| "unknown".into())
}
