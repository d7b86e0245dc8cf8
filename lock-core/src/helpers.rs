//! Conveniences written once for every backend: [`BackendExt::with_lock`] and
//! [`BackendExt::run_exclusive`].

use std::future::Future;
use std::time::Duration;

use crate::backend::Backend;
use crate::error::{Error, ErrorKind, Operation, Result};
use crate::guard::{FencingToken, Guard, LockState, StateWatch};
use crate::name::LockName;
use crate::options::{LockOptions, Renew, Wait};

/// What the closure given to [`BackendExt::with_lock`] gets: the grant's token and a watch on
/// its state (the guard itself stays with the helper, which releases it).
#[derive(Debug, Clone)]
pub struct Held {
    name: LockName,
    token: Option<FencingToken>,
    watch: StateWatch,
}

impl Held {
    fn of(guard: &Guard) -> Self {
        Held {
            name: guard.name().clone(),
            token: guard.token(),
            watch: guard.watch(),
        }
    }

    /// The lock name.
    pub fn name(&self) -> &LockName {
        &self.name
    }

    /// The fencing token, if the backend has one.
    pub fn token(&self) -> Option<FencingToken> {
        self.token
    }

    /// The current state.
    pub fn state(&self) -> LockState {
        self.watch.state()
    }

    /// A watch on the state.
    pub fn watch(&self) -> StateWatch {
        self.watch.clone()
    }
}

/// The outcome of [`BackendExt::run_exclusive`].
#[derive(Debug, PartialEq, Eq)]
pub enum JobOutcome<T, E> {
    /// This process held the lock and the job finished with `Ok`.
    Ran(T),
    /// Someone else held the lock; the job did not run.
    Skipped,
    /// This process held the lock and the job returned `Err`.
    Failed(E),
}

impl<T, E> JobOutcome<T, E> {
    /// True for [`JobOutcome::Ran`].
    pub fn ran(&self) -> bool {
        matches!(self, JobOutcome::Ran(_))
    }

    /// True for [`JobOutcome::Skipped`].
    pub fn skipped(&self) -> bool {
        matches!(self, JobOutcome::Skipped)
    }
}

/// Helpers available on every [`Backend`] (including `dyn Backend` and `Arc<dyn Backend>`).
pub trait BackendExt: Backend {
    /// Acquires `name`, runs `f`, releases, and returns `f`'s output.
    ///
    /// If the lock turns `Lost` while `f` runs, `f`'s future is dropped at its next await
    /// point and the result is an [`ErrorKind::Lost`] error: code after the loss never runs
    /// as if it still held the lock. (`Unverifiable` does not cancel; `f` can watch
    /// [`Held::state`] itself.) If the release finds the lock was no longer ours, the result
    /// is also `Lost`, since `f` may have overlapped another holder.
    fn with_lock<F, Fut, T>(
        &self,
        name: &LockName,
        opts: &LockOptions,
        f: F,
    ) -> impl Future<Output = Result<T>> + Send
    where
        F: FnOnce(Held) -> Fut + Send,
        Fut: Future<Output = T> + Send,
        T: Send,
    {
        async move {
            let guard = self.acquire(name, opts).await?;
            let held = Held::of(&guard);
            let mut watch = guard.watch();
            let out = tokio::select! {
                out = f(held) => out,
                state = watch.lost_or_released() => {
                    drop(guard);
                    return Err(lost(self.name(), name, state));
                }
            };
            if guard.release().await? {
                Ok(out)
            } else {
                Err(Error::new(
                    ErrorKind::Lost,
                    self.name(),
                    Operation::Release,
                    format!(
                        "lock {:?} was no longer held when the closure finished; its work may \
                         have overlapped another holder",
                        name.as_str()
                    ),
                ))
            }
        }
    }

    /// The scheduled-job pattern (ShedLock's): run `job` only if nobody else holds `name`.
    ///
    /// - The lock is tried once (no waiting): held elsewhere → [`JobOutcome::Skipped`].
    /// - `at_most` is the lease (`lockAtMostFor`), not renewed: if this process dies the lock
    ///   frees itself after `at_most`. If the job is still running when its guard turns
    ///   `Lost`, the job is cancelled and the result is an [`ErrorKind::Lost`] error.
    /// - `at_least` (`lockAtLeastFor`) keeps the lock taken until at least that long after the
    ///   start, so that a fast job on one replica is not re-run by a replica whose clock
    ///   fires a little later.
    fn run_exclusive<J, Fut, T, E>(
        &self,
        name: &LockName,
        at_most: Duration,
        at_least: Option<Duration>,
        job: J,
    ) -> impl Future<Output = Result<JobOutcome<T, E>>> + Send
    where
        J: FnOnce(Held) -> Fut + Send,
        Fut: Future<Output = std::result::Result<T, E>> + Send,
        T: Send,
        E: Send,
    {
        async move {
            let mut opts = LockOptions::new()
                .with_ttl(at_most)
                .with_wait(Wait::No)
                .with_renew(Renew::Off);
            if let Some(at_least) = at_least {
                opts = opts.with_at_least(at_least);
            }
            match self.with_lock(name, &opts, job).await {
                Ok(Ok(v)) => Ok(JobOutcome::Ran(v)),
                Ok(Err(e)) => Ok(JobOutcome::Failed(e)),
                Err(e) if e.kind() == ErrorKind::Contended => {
                    tracing::info!(lock = %name, "job skipped: the lock is held elsewhere");
                    Ok(JobOutcome::Skipped)
                }
                Err(e) => Err(e),
            }
        }
    }
}

impl<B: Backend + ?Sized> BackendExt for B {}

fn lost(backend: &'static str, name: &LockName, state: LockState) -> Error {
    Error::new(
        ErrorKind::Lost,
        backend,
        Operation::Acquire,
        format!(
            "lock {:?} turned {state} while the closure was running; the closure was cancelled",
            name.as_str()
        ),
    )
}
