//! One backend's soak: its servers, 16 holder slots behind fault proxies, the fault loop,
//! progress lines, and the check at the end.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Result;
use serde::Serialize;
use tokio::time::Instant;

use super::log::{AppliedFault, Findings, Log};
use super::plan::{self, PlannedFault};
use super::rng::{SplitMix64, stream_of};
use super::slot::{self, Shared};
use super::{HOLDERS, PROGRESS_EVERY, SoakOptions, fault};
use crate::scenario::holder::{mono_us, wall_ms};
use crate::scenario::target::{Target, start_target};
use dlock_fixtures::faults::Fault;

/// How long the slots get, after the deadline, to finish their last hold and exit.
const WIND_DOWN: Duration = Duration::from_secs(30);

/// One backend's soak result.
#[derive(Debug, Clone, Default, Serialize)]
pub struct BackendSoak {
    /// The backend.
    pub backend: String,
    /// The URL the holders were given (redacted; through a proxy per slot).
    pub url: String,
    /// Whether its capabilities (with the URL's options) include fencing tokens.
    pub capability_fencing: bool,
    /// Whether its tokens survive a server restart.
    pub persistent_tokens: bool,
    /// The servers' start, s.
    pub startup_s: f64,
    /// The soak itself, from the first holder to the last one's exit, s.
    pub run_s: f64,
    /// Holder processes started.
    pub holders_started: usize,
    /// Of those, how many ended before their grant (cut off by a restart or a reset).
    pub ended_before_grant: usize,
    /// The planned faults (from the seed), in order; a run applies a prefix of them.
    pub schedule: Vec<PlannedFault>,
    /// The faults applied.
    pub applied: Vec<AppliedFault>,
    /// Applied faults per kind.
    pub faults_by_kind: BTreeMap<String, usize>,
    /// What the check found.
    pub findings: Findings,
    /// Why it could not run (servers, a restart that failed), if it could not.
    pub error: Option<String>,
}

impl BackendSoak {
    /// Whether it failed: a fencing violation, or it could not run.
    pub fn failed(&self) -> bool {
        self.error.is_some() || !self.findings.violations.is_empty()
    }

    /// One line: acquisitions, faults, violations or overlaps.
    pub fn summary(&self) -> String {
        if let Some(e) = &self.error {
            return format!("{}: FAILED to run: {e}", self.backend);
        }
        let f = &self.findings;
        let faults: Vec<String> = self
            .faults_by_kind
            .iter()
            .map(|(k, n)| format!("{k} {n}"))
            .collect();
        let safety = if f.fenced {
            format!(
                "{} fencing violation(s), {} documented, {} stale write(s) rejected",
                f.violations.len(),
                f.documented.len(),
                f.rejected
            )
        } else {
            "no fencing tokens".to_string()
        };
        format!(
            "{}: {} acquisitions in {:.1} s, {} fault(s) ({}), {safety}, {} overlap(s) {:?}",
            self.backend,
            f.acquisitions,
            self.run_s,
            self.applied.len(),
            faults.join(", "),
            f.overlaps,
            f.overlaps_by_fault
        )
    }
}

/// Runs `backend` for `share`; any error is kept in the result.
pub(crate) async fn run(opts: &SoakOptions, backend: &str, share: Duration) -> BackendSoak {
    let mut out = BackendSoak {
        backend: backend.to_string(),
        ..BackendSoak::default()
    };
    if let Err(e) = run_inner(opts, backend, share, &mut out).await {
        out.error = Some(format!("{e:#}"));
    }
    out
}

/// `url` with the query option `opt` added.
fn with_option(url: &str, opt: &str) -> String {
    let sep = if url.contains('?') { '&' } else { '?' };
    format!("{url}{sep}{opt}")
}

/// The backend's URL with fencing where an option gives it (and this build accepts the
/// option), and its capabilities.
async fn fenced_url(backend: &str, url: &str) -> Result<(String, dlock::Capabilities)> {
    let option = match backend {
        "postgres" | "shedlock-postgres" | "mariadb" => Some("fencing=table"),
        "shedlock-redis" => Some("fencing=on"),
        _ => None,
    };
    if let Some(opt) = option {
        let candidate = with_option(url, opt);
        if let Ok(b) = dlock::connect(&candidate).await {
            let caps = b.capabilities();
            b.close().await;
            if caps.fencing {
                return Ok((candidate, caps));
            }
        }
    }
    let b = dlock::connect(url).await?;
    let caps = b.capabilities();
    b.close().await;
    Ok((url.to_string(), caps))
}

async fn run_inner(
    opts: &SoakOptions,
    backend: &str,
    share: Duration,
    out: &mut BackendSoak,
) -> Result<()> {
    let started = Instant::now();
    let mut target: Target = start_target(backend, opts.ttl).await?;
    out.startup_s = started.elapsed().as_secs_f64();
    let (url, caps) = fenced_url(backend, &target.url).await?;
    target.url = url;
    out.url = dlock::redact(&target.url);
    out.capability_fencing = caps.fencing;
    out.persistent_tokens = caps.persistent_tokens;
    let proxied = !target.members.is_empty();
    let (mut proxies, mut urls) = (Vec::new(), Vec::new());
    for _ in 0..HOLDERS {
        if proxied {
            let (p, u) = target.proxied(Fault::Pass).await?;
            proxies.push(p);
            urls.push(u);
        } else {
            proxies.push(Vec::new());
            urls.push(target.url.clone());
        }
    }
    let kinds = fault::applicable(&target, proxied);
    let mut rng = SplitMix64::derive(opts.seed, stream_of(backend));
    out.schedule = plan::plan(&mut rng, share, opts.ttl, &kinds);
    let name = format!("soak-{backend}-{}-{:x}", std::process::id(), wall_ms());
    let run_started = Instant::now();
    let deadline = run_started + share;
    let sh = Arc::new(Shared::new(
        Log::new(mono_us()),
        proxies,
        urls,
        name,
        opts.ttl,
        opts.dlock_bin.clone(),
        opts.seed,
        deadline,
    ));
    let slots: Vec<_> = (0..HOLDERS)
        .map(|i| tokio::spawn(slot::run(sh.clone(), i)))
        .collect();
    let progress = tokio::spawn(progress(sh.clone(), backend.to_string(), share));
    let faults = fault_loop(&sh, &target, &out.schedule).await;
    for s in slots {
        let left = (deadline + WIND_DOWN).saturating_duration_since(Instant::now());
        let _ = tokio::time::timeout(left, s).await;
    }
    progress.abort();
    out.run_s = run_started.elapsed().as_secs_f64();
    let log = sh.log();
    out.holders_started = log.holders_started;
    out.ended_before_grant = log.ended_before_grant;
    out.applied = log.faults().to_vec();
    for f in &out.applied {
        *out.faults_by_kind
            .entry(f.kind.name().to_string())
            .or_default() += 1;
    }
    out.findings = log.check(caps.persistent_tokens);
    if std::env::var_os("DLOCK_SOAK_LOG").is_some() {
        for l in log.window(i64::MIN, i64::MAX, usize::MAX) {
            eprintln!("{l}");
        }
    }
    faults
}

/// Applies the planned faults at their gaps until the deadline.
async fn fault_loop(sh: &Shared, target: &Target, schedule: &[PlannedFault]) -> Result<()> {
    for (n, f) in schedule.iter().enumerate() {
        let gap = Duration::from_millis(f.gap_ms);
        if Instant::now() + gap >= sh.deadline {
            break;
        }
        tokio::time::sleep(gap).await;
        let applied = fault::apply(sh, target, n, f).await?;
        sh.log().fault(applied);
    }
    Ok(())
}

/// A progress line every [`PROGRESS_EVERY`].
async fn progress(sh: Arc<Shared>, backend: String, share: Duration) {
    let started = Instant::now();
    loop {
        tokio::time::sleep(PROGRESS_EVERY).await;
        let (acq, faults, started_n) = {
            let log = sh.log();
            (log.acquisitions(), log.faults().len(), log.holders_started)
        };
        println!(
            "[soak] {backend} {:.0}/{:.0} s: {acq} acquisitions, {faults} fault(s), {started_n} holder processes",
            started.elapsed().as_secs_f64(),
            share.as_secs_f64()
        );
    }
}
