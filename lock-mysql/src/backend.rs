//! The MariaDB / MySQL `GET_LOCK` backend.

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use lock_core::{
    Backend, BoxFuture, Capabilities, Cleanups, ConnectUrl, Error, ErrorKind, FencingToken, Grant,
    Guard, IdlePool, Lease, LeaseMonitor, LockMode, LockName, LockOptions, Operation, Result,
    Supervisors, Wait, lease_deadline, session_lock_terms,
};
use tokio::sync::Mutex;
use tokio::time::Instant;

use crate::BACKEND;
use crate::config::{Fencing, MySqlConfig};
use crate::session::{PendingGrant, Session};
use crate::watch::SessionWatch;

static NEXT_GRANT: AtomicU64 = AtomicU64::new(1);

/// MariaDB / MySQL user locks (`GET_LOCK`). See the crate docs for the name mapping, the
/// sessions and the timings.
pub struct MySqlBackend {
    cfg: Arc<MySqlConfig>,
    /// The multiplexed lock session for non-waiting acquisitions (opened at `connect`,
    /// replaced when it dies).
    shared: Mutex<Option<Session>>,
    supervisors: Supervisors,
    cleanups: Cleanups,
    /// Dedicated sessions of released waiting acquisitions, kept for the next waits.
    idle: Arc<IdlePool<Session>>,
    /// Checks every lock session the moment the server's connections end (`watch.rs`).
    watch: SessionWatch,
}

impl fmt::Debug for MySqlBackend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MySqlBackend")
            .field("config", &self.cfg)
            .finish()
    }
}

impl MySqlBackend {
    /// What the backend offers with the default options; `fencing` is true only with
    /// `?fencing=table`. `GET_LOCK` has no shared mode.
    pub const CAPABILITIES: Capabilities = Capabilities {
        fencing: false,
        shared: false,
        semaphore: false,
        lease: false,
        renew: false,
        at_least: false,
        notify: true,
        persistent_tokens: false,
        min_ttl: None,
    };

    /// Parses the URL and opens the shared lock session (so a wrong address, user or
    /// password fails here).
    pub async fn connect(url: &ConnectUrl) -> Result<Self> {
        let cfg = Arc::new(MySqlConfig::from_url(url)?);
        let session = Session::open(cfg.clone()).await?;
        let watch = SessionWatch::start(cfg.clone());
        watch.register(&session);
        Ok(MySqlBackend {
            // A kept session is quiet: the server ends it after wait_timeout, so it is kept
            // for at most half of that.
            idle: Arc::new(IdlePool::new(
                cfg.idle_sessions,
                cfg.idle_timeout.min(cfg.wait_timeout / 2),
            )),
            cfg,
            shared: Mutex::new(Some(session)),
            supervisors: Supervisors::new(),
            cleanups: Cleanups::new(),
            watch,
        })
    }

    /// Opens a lock session and puts it under the session watch.
    async fn open_session(&self) -> Result<Session> {
        let s = Session::open(self.cfg.clone()).await?;
        self.watch.register(&s);
        Ok(s)
    }

    /// The parsed configuration.
    pub fn config(&self) -> &MySqlConfig {
        &self.cfg
    }

    /// The shared session, opened again if it died. A session that died while it held no
    /// lock (the server's `wait_timeout` ends a quiet one) is found dead only by its next
    /// statement, which marks it dead; the acquisitions that saw it fail all come here, and
    /// the first opens the one new session the others then use.
    async fn shared_session(&self) -> Result<Session> {
        let mut slot = self.shared.lock().await;
        if let Some(s) = slot.as_ref().filter(|s| s.is_alive()) {
            return Ok(s.clone());
        }
        let s = self.open_session().await?;
        *slot = Some(s.clone());
        Ok(s)
    }

    async fn acquire_inner(&self, name: &LockName, opts: &LockOptions) -> Result<Guard> {
        opts.validate().map_err(|e| e.in_backend(BACKEND))?;
        if opts.mode() == LockMode::Shared || opts.permits().is_some() {
            return Err(Error::new(
                ErrorKind::Unsupported,
                BACKEND,
                Operation::Acquire,
                "GET_LOCK has no shared mode and no semaphore: MariaDB and MySQL user locks \
                 are exclusive",
            ));
        }
        let server_name = self.cfg.names.server_name(name)?;
        let requested_at = Instant::now();
        let mut session = self.shared_session().await?;
        let mut sent = Instant::now();
        let mut tried = session.try_lock(server_name.clone()).await;
        if let Err(e) = &tried {
            if e.kind() == ErrorKind::Connection && !session.is_alive() {
                // The shared session had ended while it was quiet; nothing of ours was on
                // it unless guards were, and they have been told.
                tracing::debug!(error = %e, "the shared lock session had ended; opening a new one");
                session = self.shared_session().await?;
                sent = Instant::now();
                tried = session.try_lock(server_name.clone()).await;
            }
        }
        if let Some(grant) = tried? {
            return self
                .finish(name, opts, session, None, grant, sent, requested_at)
                .await;
        }
        if matches!(opts.wait(), Wait::No | Wait::For(Duration::ZERO)) {
            // Who holds it, for the message (`dlock run` / `dlock hold` print it): one more
            // statement, on the busy path only.
            let who = match session.holder(server_name.clone()).await {
                Ok(Some((_, true))) => " by another guard of this process".to_string(),
                Ok(Some((id, false))) => {
                    format!(" by the server session with CONNECTION_ID() {id} (IS_USED_LOCK)")
                }
                Ok(None) => " (free again by now)".to_string(),
                Err(_) => " by another session".to_string(),
            };
            return Err(Error::new(
                ErrorKind::Contended,
                BACKEND,
                Operation::Acquire,
                format!("lock {:?} is held{who}", name.as_str()),
            ));
        }
        let wait = || match opts.wait() {
            Wait::For(d) => Some(
                d.saturating_sub(requested_at.elapsed())
                    .max(Duration::from_millis(1)),
            ),
            _ => None,
        };
        // A blocking GET_LOCK stalls its session, so a wait gets a session of its own, which
        // then holds the lock. The server wakes it the moment the lock is free.
        let kept = self.idle.take();
        let reused = kept.is_some();
        let mut dedicated = match kept {
            Some(s) => s,
            None => self.open_session().await?,
        };
        let mut sent = Instant::now();
        let mut granted = dedicated
            .lock(server_name.clone(), name.as_str(), wait())
            .await;
        if let Err(e) = &granted {
            if reused && !dedicated.is_alive() {
                tracing::debug!(error = %e, "a kept lock session had ended; opening a new one");
                dedicated = self.open_session().await?;
                sent = Instant::now();
                granted = dedicated.lock(server_name, name.as_str(), wait()).await;
            }
        }
        let grant = match granted {
            Ok(g) => g,
            Err(e) => {
                if e.kind() == ErrorKind::Timeout && dedicated.is_alive() {
                    self.idle.keep(&dedicated);
                }
                return Err(e);
            }
        };
        // After a long wait the request's send time is too old to date the grant by: a
        // session check dates it now.
        if sent.elapsed() > self.cfg.session_deadline / 4 {
            let checked = Instant::now();
            if !dedicated.check().await? {
                return Err(Error::new(
                    ErrorKind::Lost,
                    BACKEND,
                    Operation::Acquire,
                    format!(
                        "lock {:?}: the session ended right after the server granted the lock",
                        name.as_str()
                    ),
                ));
            }
            sent = checked;
        }
        let idle = Some(Arc::clone(&self.idle));
        self.finish(name, opts, dedicated, idle, grant, sent, requested_at)
            .await
    }

    #[allow(clippy::too_many_arguments)]
    async fn finish(
        &self,
        name: &LockName,
        opts: &LockOptions,
        session: Session,
        idle: Option<Arc<IdlePool<Session>>>,
        grant: PendingGrant,
        sent: Instant,
        requested_at: Instant,
    ) -> Result<Guard> {
        // Still armed: if this future is dropped here, the grant releases itself.
        let token = match &self.cfg.fencing {
            Fencing::None => None,
            Fencing::Table(_) => Some(FencingToken::new(session.fence(grant.name.clone()).await?)),
        };
        let server_name = grant.name.clone();
        grant.disarm();
        let id = NEXT_GRANT.fetch_add(1, Ordering::Relaxed);
        let (deadline, guard_opts) = session_lock_terms(opts, self.cfg.session_deadline);
        let monitor = LeaseMonitor::new(name, BACKEND, Some(lease_deadline(sent, deadline)));
        session.watch(id, monitor.clone());
        let lease = Arc::new(MySqlLease {
            session,
            idle,
            released: AtomicBool::new(false),
            server_name,
            id,
            session_deadline: self.cfg.session_deadline,
            wait_timeout: self.cfg.wait_timeout,
            supervisors: self.supervisors.clone(),
            cleanups: self.cleanups.clone(),
        });
        Ok(Guard::new(
            Grant {
                name: name.clone(),
                backend: BACKEND,
                token,
                lease,
                monitor,
                requested_at,
            },
            &guard_opts,
        ))
    }
}

impl Backend for MySqlBackend {
    fn name(&self) -> &'static str {
        BACKEND
    }

    fn capabilities(&self) -> Capabilities {
        let fenced = matches!(self.cfg.fencing, Fencing::Table(_));
        Capabilities {
            fencing: fenced,
            persistent_tokens: fenced,
            ..Self::CAPABILITIES
        }
    }

    fn acquire<'a>(
        &'a self,
        name: &'a LockName,
        opts: &'a LockOptions,
    ) -> BoxFuture<'a, Result<Guard>> {
        lock_core::observe::instrument_acquire(BACKEND, name, opts, self.acquire_inner(name, opts))
    }

    /// Waits for the background releases (dropped guards, unlocks held back by `at_least`).
    /// The sessions end with their connections, and their locks with them.
    fn close(&self) -> BoxFuture<'_, ()> {
        Box::pin(self.cleanups.finished())
    }
}

struct MySqlLease {
    session: Session,
    /// Where a dedicated session goes after its lock is released (`None`: the shared one).
    idle: Option<Arc<IdlePool<Session>>>,
    /// Set when the release freed the lock: the session may be kept once this lease is gone.
    released: AtomicBool,
    server_name: String,
    id: u64,
    session_deadline: Duration,
    wait_timeout: Duration,
    supervisors: Supervisors,
    cleanups: Cleanups,
}

impl Lease for MySqlLease {
    /// User locks have no lease: "extending" is checking that the session is alive, which
    /// confirms the lock for at most `session_deadline`.
    fn extend(&self, ttl: Duration) -> BoxFuture<'_, Result<bool>> {
        Box::pin(async move {
            if ttl > self.session_deadline {
                return Err(Error::new(
                    ErrorKind::Unsupported,
                    BACKEND,
                    Operation::Extend,
                    format!(
                        "GET_LOCK locks have no lease to extend; the lock lasts as long as its \
                         session, which is checked every {:?}/3 (a guard can be confirmed for \
                         at most session_deadline = {:?})",
                        self.session_deadline, self.session_deadline
                    ),
                ));
            }
            self.session.check().await
        })
    }

    fn supervisors(&self) -> Option<&Supervisors> {
        Some(&self.supervisors)
    }

    fn cleanups(&self) -> Option<&Cleanups> {
        Some(&self.cleanups)
    }

    fn release(&self) -> BoxFuture<'_, Result<bool>> {
        Box::pin(async move {
            self.session.unwatch(self.id);
            let released = self.session.unlock(self.server_name.clone()).await;
            if matches!(released, Ok(true)) {
                self.released.store(true, Ordering::Relaxed);
            }
            released
        })
    }

    /// `at_least`: keep the lock on the session and release it from a background task once
    /// `keep` has passed. Meanwhile the task checks the session every `wait_timeout / 3`, so
    /// the server does not end it as quiet (and free the lock early). If this process exits
    /// first, the session ends and the lock is freed early (documented); [`Backend::close`]
    /// waits for the task.
    fn release_after(&self, keep: Duration) -> BoxFuture<'_, Result<bool>> {
        Box::pin(async move {
            self.session.unwatch(self.id);
            let session = self.session.clone();
            let name = self.server_name.clone();
            let every = (self.wait_timeout / 3).max(Duration::from_millis(100));
            self.cleanups.spawn(async move {
                let until = Instant::now() + keep;
                while Instant::now() < until {
                    tokio::time::sleep_until(until.min(Instant::now() + every)).await;
                    if Instant::now() < until && !matches!(session.check().await, Ok(true)) {
                        tracing::warn!(
                            lock = %name,
                            "the session holding the lock for at_least ended early; the lock \
                             is free before at_least"
                        );
                        return;
                    }
                }
                let _ = session.unlock(name).await;
            });
            Ok(self.session.is_alive())
        })
    }
}

impl Drop for MySqlLease {
    /// A dedicated session whose lock was released goes to the idle pool only now, when no
    /// supervisor can reach it through this lease any more.
    fn drop(&mut self) {
        if let Some(idle) = &self.idle {
            if self.released.load(Ordering::Relaxed) {
                idle.keep(&self.session);
            }
        }
    }
}
