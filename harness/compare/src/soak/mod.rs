//! The soak (`dlock compare --soak DURATION`): every selected backend in turn, 16 holders
//! on one lock, each a `dlock hold` process that waits, holds a random 20–200 ms, writes on
//! the harness's fenced resource with its token and releases, while random faults from the
//! scenario list (a holder killed, paused up to 1.5 ttl, its connections reset, the server
//! restarted) hit it at random intervals. The seed (printed first, `--seed` to replay) fixes
//! the fault schedule and the hold times; the timing of a run does not.
//!
//! On a backend with fencing tokens it checks that no write from a holder whose lock had
//! passed to another holder was accepted: any such write fails the soak. Where tokens do not
//! survive a restart (no `persistent_tokens`), a violation across a restart is reported as
//! documented. On a backend without tokens it counts overlaps (two holders inside at once, by
//! their timestamps) per fault kind: the backend's documented behaviour, not a failure.

mod backend;
mod fault;
pub mod log;
pub mod plan;
pub mod report;
pub mod rng;
pub mod slot;

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Result, bail};

pub use backend::BackendSoak;

/// Holders per backend.
pub const HOLDERS: usize = 16;

/// How often a progress line is printed.
pub const PROGRESS_EVERY: Duration = Duration::from_secs(5);

/// What `dlock compare --soak` runs.
#[derive(Debug, Clone)]
pub struct SoakOptions {
    /// The `dlock` binary whose `hold` subcommand the holders run.
    pub dlock_bin: PathBuf,
    /// The whole soak: split evenly across the backends, which run one after another.
    pub duration: Duration,
    /// The seed of the fault schedule and hold times.
    pub seed: u64,
    /// Backends (names from [`BACKENDS`](crate::scenario::BACKENDS)).
    pub backends: Vec<String>,
    /// Lease / session timeout given to the holders.
    pub ttl: Duration,
    /// Where `soak.json` and `soak.md` go.
    pub out: PathBuf,
}

/// The whole soak's result.
#[derive(Debug, Clone, serde::Serialize)]
pub struct SoakReport {
    /// The seed.
    pub seed: u64,
    /// The duration asked for, s.
    pub duration_s: f64,
    /// Each backend's share of it, s.
    pub per_backend_s: f64,
    /// Holders per backend.
    pub holders: usize,
    /// The ttl, ms.
    pub ttl_ms: u64,
    /// Per backend, in the order run.
    pub backends: Vec<BackendSoak>,
}

impl SoakReport {
    /// Whether any backend had a fencing violation (or could not run).
    pub fn failed(&self) -> bool {
        self.backends.iter().any(|b| b.failed())
    }
}

/// A seed from the clock and the process id, for a run without `--seed`.
pub fn fresh_seed() -> u64 {
    let t = crate::scenario::holder::wall_ms() as u64;
    rng::SplitMix64::new(t ^ (u64::from(std::process::id()) << 32)).next_u64()
}

/// Runs the soak; prints the seed first and progress as it goes.
pub async fn soak(opts: &SoakOptions) -> Result<SoakReport> {
    for b in &opts.backends {
        if !crate::scenario::BACKENDS.contains(&b.as_str()) {
            bail!(
                "unknown backend {b:?} (known: {})",
                crate::scenario::BACKENDS.join(", ")
            );
        }
    }
    if opts.backends.is_empty() {
        bail!("no backend to soak");
    }
    println!("[soak] seed {}", opts.seed);
    let share = opts.duration / opts.backends.len() as u32;
    println!(
        "[soak] {} backend(s), {} each (the duration split evenly, run one after another), \
         {HOLDERS} holders each, ttl {}; replay with --seed {}",
        opts.backends.len(),
        humantime::format_duration(Duration::from_millis(share.as_millis() as u64)),
        humantime::format_duration(opts.ttl),
        opts.seed
    );
    let mut report = SoakReport {
        seed: opts.seed,
        duration_s: opts.duration.as_secs_f64(),
        per_backend_s: share.as_secs_f64(),
        holders: HOLDERS,
        ttl_ms: opts.ttl.as_millis() as u64,
        backends: Vec::new(),
    };
    for b in &opts.backends {
        let r = backend::run(opts, b, share).await;
        println!("[soak] {}", r.summary());
        report.backends.push(r);
    }
    Ok(report)
}
