//! Cron-style scheduling of exclusive jobs (feature `cron`): every replica runs the same
//! schedule, and at each tick [`BackendExt::run_exclusive`] lets exactly one of them run the
//! job.

use std::future::Future;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};

use crate::backend::Backend;
use crate::error::{Error, Result};
use crate::helpers::{BackendExt, Held, JobOutcome};
use crate::name::LockName;

/// A job that fires on a cron schedule (UTC) and runs on one replica per tick.
///
/// ```no_run
/// # use std::{sync::Arc, time::Duration};
/// # use lock_core::{LockName, MemoryBackend, schedule::ScheduledJob};
/// # async fn purge() -> Result<u64, std::io::Error> { Ok(0) }
/// # async fn demo() -> lock_core::Result<()> {
/// let job = ScheduledJob::new(
///     Arc::new(MemoryBackend::new()),
///     LockName::new("emp_details_purge")?,
///     "0 0 2 * * *",               // sec min hour day month weekday: 02:00:00 every day
///     Duration::from_secs(600),    // at_most: the lock frees itself if this replica dies
///     Some(Duration::from_secs(60)), // at_least: covers clock differences between replicas
/// )?;
/// job.run_forever(|_held| purge()).await;
/// # Ok(()) }
/// ```
#[derive(Debug, Clone)]
pub struct ScheduledJob {
    backend: Arc<dyn Backend>,
    name: LockName,
    schedule: cron::Schedule,
    at_most: Duration,
    at_least: Option<Duration>,
}

/// What happened at one tick.
#[derive(Debug)]
pub struct Tick<T, E> {
    /// The scheduled time of the tick.
    pub at: DateTime<Utc>,
    /// What the job did there (`Err`: the lock service failed, the job did not run).
    pub outcome: Result<JobOutcome<T, E>>,
}

impl ScheduledJob {
    /// A job on `cron` (the `cron` crate's syntax, with a leading seconds field:
    /// `sec min hour day-of-month month day-of-week [year]`). A bad expression or
    /// `at_least > at_most` is [`ErrorKind::InvalidOptions`](crate::ErrorKind::InvalidOptions).
    pub fn new(
        backend: Arc<dyn Backend>,
        name: LockName,
        cron: &str,
        at_most: Duration,
        at_least: Option<Duration>,
    ) -> Result<Self> {
        let schedule = cron::Schedule::from_str(cron).map_err(|e| {
            Error::invalid_options(format!("{cron:?} is not a cron expression: {e}"))
        })?;
        if at_least.is_some_and(|l| l > at_most) {
            return Err(Error::invalid_options("at_least must not exceed at_most"));
        }
        if at_most.is_zero() {
            return Err(Error::invalid_options("at_most must be greater than zero"));
        }
        Ok(ScheduledJob {
            backend,
            name,
            schedule,
            at_most,
            at_least,
        })
    }

    /// The first tick strictly after `after`.
    pub fn next_after(&self, after: DateTime<Utc>) -> Option<DateTime<Utc>> {
        self.schedule.after(&after).next()
    }

    /// Waits for the next tick and runs the job there if no other replica holds the lock.
    /// `None` when the schedule has no more ticks.
    pub async fn run_next<J, Fut, T, E>(&self, job: J) -> Option<Tick<T, E>>
    where
        J: FnOnce(Held) -> Fut + Send,
        Fut: Future<Output = std::result::Result<T, E>> + Send,
        T: Send,
        E: Send,
    {
        let at = self.next_after(Utc::now())?;
        let wait = (at - Utc::now()).to_std().unwrap_or(Duration::ZERO);
        tokio::time::sleep(wait).await;
        let outcome = self
            .backend
            .run_exclusive(&self.name, self.at_most, self.at_least, job)
            .await;
        match &outcome {
            Ok(JobOutcome::Ran(_)) => tracing::info!(job = %self.name, %at, "job ran"),
            Ok(JobOutcome::Skipped) => {
                tracing::info!(job = %self.name, %at, "job skipped: another replica holds the lock")
            }
            Ok(JobOutcome::Failed(_)) => tracing::warn!(job = %self.name, %at, "job failed"),
            Err(e) => tracing::warn!(job = %self.name, %at, error = %e, "job not run: lock error"),
        }
        Some(Tick { at, outcome })
    }

    /// Runs the schedule until it ends (forever, for most expressions).
    pub async fn run_forever<J, Fut, T, E>(&self, mut job: J)
    where
        J: FnMut(Held) -> Fut + Send,
        Fut: Future<Output = std::result::Result<T, E>> + Send,
        T: Send,
        E: Send,
    {
        while self.run_next(&mut job).await.is_some() {}
    }
}
