//! Leader election on top of any backend.

use std::sync::Arc;

use crate::backend::Backend;
use crate::error::Result;
use crate::guard::{FencingToken, Guard, LockState};
use crate::name::LockName;
use crate::options::{LockOptions, Wait};

/// Leader election: every candidate [`campaign`](Election::campaign)s on the same name; one
/// at a time is leader. Leadership is a held lock, so it ends when the leader resigns, drops
/// its [`Leadership`], or its lease/session is lost — and [`Leadership::lost`] tells the
/// leader the moment that may have happened, before anyone else can be elected wherever the
/// backend allows (see the backend's docs).
///
/// ```
/// # use std::sync::Arc;
/// # use lock_core::{Election, LockName, LockOptions, MemoryBackend};
/// # #[tokio::main(flavor = "current_thread")] async fn main() -> lock_core::Result<()> {
/// let backend = Arc::new(MemoryBackend::new());
/// let election = Election::new(backend, LockName::new("scheduler-leader")?, LockOptions::new());
/// let mut leadership = election.campaign().await?;
/// tokio::select! {
///     _ = leadership.lost() => { /* stop leading at once */ }
///     _ = async { /* lead */ } => {}
/// }
/// leadership.resign().await?;
/// # Ok(()) }
/// ```
#[derive(Debug, Clone)]
pub struct Election {
    backend: Arc<dyn Backend>,
    name: LockName,
    opts: LockOptions,
}

impl Election {
    /// An election on `name`. The options' wait policy is replaced by [`Wait::Forever`];
    /// everything else (ttl, renewal) applies to the leadership lock.
    pub fn new(backend: Arc<dyn Backend>, name: LockName, opts: LockOptions) -> Self {
        Election {
            backend,
            name,
            opts: opts.with_wait(Wait::Forever),
        }
    }

    /// Waits until this candidate is leader.
    pub async fn campaign(&self) -> Result<Leadership> {
        let guard = self.backend.acquire(&self.name, &self.opts).await?;
        tracing::info!(election = %self.name, token = guard.token().map(|t| t.get()), "elected leader");
        Ok(Leadership { guard })
    }

    /// Becomes leader only if nobody is; `Ok(None)` when someone else leads.
    pub async fn try_campaign(&self) -> Result<Option<Leadership>> {
        let opts = self.opts.clone().with_wait(Wait::No);
        match self.backend.acquire(&self.name, &opts).await {
            Ok(guard) => Ok(Some(Leadership { guard })),
            Err(e) if e.kind() == crate::ErrorKind::Contended => Ok(None),
            Err(e) => Err(e),
        }
    }
}

/// Being leader. Dropping it steps down (in the background, as a dropped [`Guard`] does).
#[derive(Debug)]
pub struct Leadership {
    guard: Guard,
}

impl Leadership {
    /// The leadership term: the fencing token of the leadership lock, where the backend has
    /// one. Later leaders have higher terms.
    pub fn term(&self) -> Option<FencingToken> {
        self.guard.token()
    }

    /// True while the leadership lock is `Held`.
    pub fn is_leader(&self) -> bool {
        self.guard.state() == LockState::Held
    }

    /// Completes when leadership may be lost (the lock left `Held`), with the new state.
    pub async fn lost(&mut self) -> LockState {
        self.guard.not_held().await
    }

    /// The underlying guard.
    pub fn guard(&self) -> &Guard {
        &self.guard
    }

    /// Steps down; `Ok(true)` if this candidate was still leader.
    pub async fn resign(self) -> Result<bool> {
        self.guard.release().await
    }
}
