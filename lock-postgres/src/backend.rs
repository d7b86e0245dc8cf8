//! The PostgreSQL advisory-lock backend.

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use lock_core::{
    Backend, BoxFuture, Capabilities, Cleanups, ConnectUrl, Error, ErrorKind, FencingToken, Grant,
    Guard, IdlePool, Lease, LeaseMonitor, LockMode, LockName, LockOptions, Operation, Result,
    Supervisors, Wait, lease_deadline, session_lock_terms,
};
use tokio::sync::Mutex;
use tokio::time::Instant;

use crate::BACKEND;
use crate::config::{Fencing, PgConfig};
use crate::key::{KeyArg, KeyScheme};
use crate::session::{Opening, PendingGrant, Session, SessionWatch, Tried};

static NEXT_GRANT: AtomicU64 = AtomicU64::new(1);

/// PostgreSQL session advisory locks. See the crate docs for the key schemes, the sessions
/// and the timings.
pub struct PgBackend {
    cfg: Arc<PgConfig>,
    /// The multiplexed lock session for non-waiting acquisitions (opened on first use,
    /// replaced when it dies).
    shared: Mutex<Option<Session>>,
    /// Starts the guards' supervisors (session checks) only when due.
    supervisors: Supervisors,
    /// Releases running in the background (dropped guards, unlocks held back by `at_least`),
    /// which `close` waits for.
    cleanups: Cleanups,
    /// Dedicated sessions of released waiting acquisitions, kept for the next waits.
    idle: Arc<IdlePool<Session>>,
    /// Checks every lock session the moment the server's connections end (see
    /// `session/watch.rs`).
    watch: SessionWatch,
}

impl fmt::Debug for PgBackend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PgBackend")
            .field("config", &self.cfg)
            .finish()
    }
}

impl PgBackend {
    /// What the backend offers with the default options; `fencing` is true only with
    /// `?fencing=table`.
    pub const CAPABILITIES: Capabilities = Capabilities {
        fencing: false,
        shared: true,
        semaphore: false,
        lease: false,
        renew: false,
        at_least: false,
        notify: true,
        persistent_tokens: false,
        min_ttl: None,
    };

    /// Parses the URL and checks that the server answers: opens the shared lock session and,
    /// beside it (at the same time), the session-watch connection (`session_watch=off`: not
    /// that one).
    pub async fn connect(url: &ConnectUrl) -> Result<Self> {
        let cfg = Arc::new(PgConfig::from_url(url)?);
        // Both at once. A lock session that cannot be opened fails `connect` at once, without
        // waiting for the watch (whose pool retries a refused connection until
        // `connect_timeout`); a watch still connecting when the lock session is open is left
        // to the watch task, so `connect` never takes longer for it.
        let mut watch_opening = SessionWatch::connect(&cfg);
        let mut watch_opened = None;
        let open = Session::open(cfg.clone());
        tokio::pin!(open);
        let session = loop {
            tokio::select! {
                s = &mut open => break s,
                w = async {
                    match watch_opening.as_mut() {
                        Some(f) => f.await,
                        None => std::future::pending().await,
                    }
                }, if watch_opened.is_none() && watch_opening.is_some() => {
                    watch_opened = Some(w);
                }
            }
        };
        let session = session?;
        // Once per backend: a pooler that hands this lone client the same server session
        // every time passes every check inside the session (see `probe_pooler`).
        session.probe_pooler().await?;
        let first = match (watch_opened, watch_opening) {
            (Some(done), _) => Opening::Done(done),
            (None, Some(pending)) => Opening::Pending(pending),
            (None, None) => Opening::Off,
        };
        let watch = SessionWatch::start(cfg.clone(), first);
        watch.register(&session);
        Ok(PgBackend {
            idle: Arc::new(IdlePool::new(cfg.idle_sessions, cfg.idle_timeout)),
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

    /// A session of the acquisition's own: a kept one (`true`: it may have died while kept),
    /// or a new one.
    async fn dedicated_session(&self) -> Result<(Session, bool)> {
        match self.idle.take() {
            Some(s) => Ok((s, true)),
            None => Ok((self.open_session().await?, false)),
        }
    }

    /// The parsed configuration.
    pub fn config(&self) -> &PgConfig {
        &self.cfg
    }

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
        opts.check_for(BACKEND, &self.capabilities())?;
        if let Some(limit) = opts.permits() {
            return self.acquire_permit(name, opts, limit).await;
        }
        let arg = self.cfg.key.arg(name)?;
        let requested_at = Instant::now();
        let session = self.shared_session().await?;
        let sent = Instant::now();
        let no_wait = matches!(opts.wait(), Wait::No | Wait::For(Duration::ZERO));
        match session.try_lock(arg, opts.mode()).await? {
            Tried::Granted(grant) => {
                return self
                    .finish(
                        name,
                        opts,
                        On::Shared(session),
                        grant,
                        sent,
                        requested_at,
                        None,
                    )
                    .await;
            }
            // Another reader of this process holds it on the shared session: this one asks
            // on a session of its own, where PostgreSQL queues it behind waiting writers.
            Tried::HeldHere if no_wait => {
                let (mut dedicated, kept) = self.dedicated_session().await?;
                if kept && !dedicated.is_alive() {
                    dedicated = self.open_session().await?;
                }
                let sent = Instant::now();
                let arg = self.cfg.key.arg(name)?;
                if let Tried::Granted(grant) = dedicated.try_lock(arg, opts.mode()).await? {
                    let on = On::Dedicated(dedicated);
                    return self
                        .finish(name, opts, on, grant, sent, requested_at, None)
                        .await;
                }
                self.idle.keep(&dedicated);
            }
            Tried::HeldHere | Tried::Busy => {}
        }
        if no_wait {
            return Err(Error::new(
                ErrorKind::Contended,
                BACKEND,
                Operation::Acquire,
                format!("lock {:?} is held by another session", name.as_str()),
            ));
        }
        // What is left of the caller's wait (`None`: no limit).
        let wait = || match opts.wait() {
            Wait::For(d) => Some(
                d.saturating_sub(requested_at.elapsed())
                    .max(Duration::from_millis(1)),
            ),
            _ => None,
        };
        // Waiting blocks a session in the server, so it gets a session of its own, which then
        // holds the lock. The server wakes it the moment the lock is free: no polling. A
        // session kept from an earlier wait is used first; if it died while it was kept
        // (nothing of ours was on it), a new one takes its place.
        let (mut dedicated, reused) = self.dedicated_session().await?;
        let mut sent = Instant::now();
        // Made again rather than cloned before the try: the try is the common path.
        let arg = self.cfg.key.arg(name)?;
        let mut granted = dedicated.lock(arg.clone(), opts.mode(), wait()).await;
        if let Err(e) = &granted {
            if reused && !dedicated.is_alive() {
                tracing::debug!(error = %e, "a kept lock session had died; opening a new one");
                dedicated = self.open_session().await?;
                sent = Instant::now();
                granted = dedicated.lock(arg, opts.mode(), wait()).await;
            }
        }
        let grant = match granted {
            Ok(grant) => grant,
            Err(e) => {
                // A wait that ran out leaves a healthy session behind.
                if e.kind() == ErrorKind::Timeout {
                    self.idle.keep(&dedicated);
                }
                return Err(e);
            }
        };
        // The waiting request was sent when the wait began; after a long wait its send time is
        // too old to date the grant by (the guard would start out past its deadline). A
        // session check dates it now. If the check fails, `grant` unlocks as it drops.
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
        let on = On::Dedicated(dedicated);
        self.finish(name, opts, on, grant, sent, requested_at, None)
            .await
    }

    /// A permit: the first free slot of `0..limit`, each an exclusive advisory lock on
    /// `hashtextextended(name, 1 + slot)`, tried on the shared session. Waiting polls (from
    /// 10 ms, doubling to 200 ms): no server notification says "one of these keys is free",
    /// and a dead holder's session frees its key without a word.
    async fn acquire_permit(
        &self,
        name: &LockName,
        opts: &LockOptions,
        limit: u32,
    ) -> Result<Guard> {
        let plan = lock_core::WaitPlan::new(opts);
        let mut pause = Duration::from_millis(10);
        let mut reopened = false;
        loop {
            let session = self.shared_session().await?;
            for slot in 0..limit {
                let arg = KeyArg::Slot(name.clone(), 1 + i64::from(slot));
                let sent = Instant::now();
                let tried = match session.try_lock(arg, LockMode::Exclusive).await {
                    Err(e)
                        if e.kind() == ErrorKind::Connection
                            && !session.is_alive()
                            && !reopened =>
                    {
                        // The shared session had ended while quiet: once more on a new one.
                        reopened = true;
                        break;
                    }
                    other => other?,
                };
                if let Tried::Granted(grant) = tried {
                    return self
                        .finish(
                            name,
                            opts,
                            On::Shared(session),
                            grant,
                            sent,
                            plan.requested_at,
                            Some(slot),
                        )
                        .await;
                }
            }
            let now = Instant::now();
            if !session.is_alive() {
                continue;
            }
            // A whole pass went through: a later death of the session may be retried again.
            reopened = false;
            if plan.expired(now) {
                return Err(plan.busy_error(
                    BACKEND,
                    name,
                    &format!(" (all {limit} permits of the semaphore are held)"),
                ));
            }
            let until = plan.deadline.map_or(now + pause, |d| d.min(now + pause));
            tokio::time::sleep_until(until).await;
            pause = (pause * 2).min(Duration::from_millis(200));
        }
    }

    #[allow(clippy::too_many_arguments)]
    async fn finish(
        &self,
        name: &LockName,
        opts: &LockOptions,
        on: On,
        grant: PendingGrant,
        sent: Instant,
        requested_at: Instant,
        slot: Option<u32>,
    ) -> Result<Guard> {
        let (session, idle) = match on {
            On::Shared(s) => (s, None),
            On::Dedicated(s) => (s, Some(Arc::clone(&self.idle))),
        };
        // Still armed: if this future is dropped here, the grant unlocks itself.
        // Readers do not write: shared grants have no token. A permit's counter is its
        // slot's (a row per slot; a lock whose name happens to be the same row name shares
        // the counter, which only makes both sets of tokens skip numbers).
        let token = match &self.cfg.fencing {
            Fencing::Table(_) if opts.mode() == LockMode::Exclusive => {
                let row = match slot {
                    None => name.as_str().to_string(),
                    Some(s) => format!("{}#permit/{s}", name.as_str()),
                };
                let t = session.fence(&row).await?;
                Some(FencingToken::new(t as u64))
            }
            _ => None,
        };
        let (key, mode) = (grant.key, grant.mode);
        grant.disarm();
        let id = NEXT_GRANT.fetch_add(1, Ordering::Relaxed);
        // The client-side deadline is session_deadline after each session check was sent.
        let (deadline, guard_opts) = session_lock_terms(opts, self.cfg.session_deadline);
        let monitor = LeaseMonitor::new(name, BACKEND, Some(lease_deadline(sent, deadline)));
        session.watch(id, monitor.clone());
        let lease = Arc::new(PgLease {
            session,
            idle,
            released: std::sync::atomic::AtomicBool::new(false),
            key,
            mode,
            slot,
            id,
            session_deadline: self.cfg.session_deadline,
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

impl Backend for PgBackend {
    fn name(&self) -> &'static str {
        BACKEND
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities {
            fencing: matches!(self.cfg.fencing, Fencing::Table(_)),
            persistent_tokens: matches!(self.cfg.fencing, Fencing::Table(_)),
            // A slot's key is `hashtextextended(name, 1 + slot)`: the default key scheme.
            semaphore: self.cfg.key == KeyScheme::HashTextExtended,
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
    /// The sessions themselves end with their connections, and their locks with them.
    fn close(&self) -> BoxFuture<'_, ()> {
        Box::pin(self.cleanups.finished())
    }
}

/// The session a grant is on.
enum On {
    /// The backend's shared lock session.
    Shared(Session),
    /// The acquisition's own session, kept for the next wait after the release.
    Dedicated(Session),
}

struct PgLease {
    session: Session,
    /// Where a dedicated session goes after its lock is released (`None`: the shared one).
    idle: Option<Arc<IdlePool<Session>>>,
    /// Set when the release unlocked the lock: the session may be kept once this lease is
    /// gone (see `Drop`).
    released: std::sync::atomic::AtomicBool,
    key: crate::key::KeyId,
    mode: LockMode,
    /// A permit's slot.
    slot: Option<u32>,
    id: u64,
    session_deadline: Duration,
    supervisors: Supervisors,
    cleanups: Cleanups,
}

impl Lease for PgLease {
    /// Session locks have no lease: "extending" is checking that the session is alive,
    /// which confirms the lock for at most `session_deadline`.
    fn extend(&self, ttl: Duration) -> BoxFuture<'_, Result<bool>> {
        Box::pin(async move {
            if ttl > self.session_deadline {
                return Err(Error::new(
                    ErrorKind::Unsupported,
                    BACKEND,
                    Operation::Extend,
                    format!(
                        "PostgreSQL session locks have no lease to extend; the lock lasts as \
                         long as its session, which is checked every {:?}/3 (a guard can be \
                         confirmed for at most session_deadline = {:?})",
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

    fn slot(&self) -> Option<u32> {
        self.slot
    }

    fn release(&self) -> BoxFuture<'_, Result<bool>> {
        Box::pin(async move {
            self.session.unwatch(self.id);
            let released = self.session.unlock(self.key, self.mode).await;
            if matches!(released, Ok(true)) {
                self.released.store(true, Ordering::Relaxed);
            }
            released
        })
    }

    /// `at_least` for session locks: keep the lock on the session and unlock it from a
    /// background task once `keep` has passed. If this process exits first, the session ends
    /// and the lock is freed early (documented); [`Backend::close`] waits for the task, so a
    /// process that closes its backend before exiting keeps the lock until `at_least` has
    /// passed (the `dlock` CLI does).
    fn release_after(&self, keep: Duration) -> BoxFuture<'_, Result<bool>> {
        Box::pin(async move {
            self.session.unwatch(self.id);
            let session = self.session.clone();
            let (key, mode) = (self.key, self.mode);
            self.cleanups.spawn(async move {
                tokio::time::sleep(keep).await;
                let _ = session.unlock(key, mode).await;
            });
            Ok(self.session.is_alive())
        })
    }
}

impl Drop for PgLease {
    /// A dedicated session whose lock was released goes to the idle pool only now, when no
    /// supervisor can reach it through this lease any more (a supervisor that started before
    /// the release could otherwise run a session check on it after a new waiter took it).
    fn drop(&mut self) {
        if let Some(idle) = &self.idle {
            if self.released.load(Ordering::Relaxed) {
                idle.keep(&self.session);
            }
        }
    }
}
