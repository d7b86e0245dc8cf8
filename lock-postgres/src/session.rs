//! Lock sessions: a PostgreSQL connection that runs every statement of the locks it holds,
//! so lock and unlock always happen on the same server session.
//!
//! Statements run on the caller's task, one at a time (an async mutex around the
//! connection): no hand-off to another task on the hot path. A statement on a shared session
//! that the caller stops waiting for is not abandoned half-way: [`Finish`] moves it to a
//! spawned task that completes it, so a grant that arrives anyway is recorded and released
//! (through [`PendingGrant`]) and the session's bookkeeping stays true. A waiting acquisition
//! runs on a dedicated session that nothing else references: dropping it closes the
//! connection, and the server ends the wait (or frees a grant that raced with it).

mod check;
mod error;
mod statement;
mod watch;

use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use lock_core::{Error, ErrorKind, Finish, LeaseMonitor, LockMode, Operation, Result};
use sqlx::Executor;
use sqlx::postgres::PgConnection;
use tokio::sync::OwnedMutexGuard;
use tokio::time::Instant;

use crate::BACKEND;
use crate::config::PgConfig;
use crate::key::{KeyArg, KeyId, Statements};
use check::{CHECK, is_prepared_statement_gone, new_marker, pooler_error, session_mismatch};
use error::db_error;
use statement::{Ctx, Failure, StatementTimer};
pub(crate) use watch::{Opening, SessionWatch};

static NEXT_SESSION: AtomicU64 = AtomicU64::new(1);

/// A handle on a lock session. Cloning shares the session; the connection closes when the
/// last handle goes.
#[derive(Clone)]
pub(crate) struct Session {
    inner: Arc<Inner>,
}

struct Inner {
    id: u64,
    /// The server process behind the connection when it was opened.
    pid: i32,
    /// The value of `dlock.session` set on that server session at open.
    marker: String,
    cfg: Arc<PgConfig>,
    exclusive: Statements,
    shared_stmts: Statements,
    /// A semaphore's slots.
    permit_stmts: Statements,
    alive: AtomicBool,
    /// Guards whose locks live on this session: told when it dies.
    monitors: Mutex<HashMap<u64, LeaseMonitor>>,
    state: Arc<tokio::sync::Mutex<State>>,
}

/// What only the statement running now may touch.
struct State {
    /// `None` once the session has died.
    conn: Option<PgConnection>,
    /// Locks this session holds, by key: mode and how many grants (shared locks stack).
    held: HashMap<KeyId, (LockMode, u32)>,
    fencing_ready: bool,
    /// When the last successful session check was sent: a check asked for before that
    /// needs no statement of its own (checks from many guards coalesce).
    last_check_sent: Option<Instant>,
    timer: StatementTimer,
}

impl Drop for Inner {
    fn drop(&mut self) {
        // The last handle is gone, so no guard lives on this session any more; dropping the
        // connection closes its socket and the server frees whatever it still held.
        if self.alive.load(Ordering::Acquire) {
            tracing::debug!(session = self.id, pid = self.pid, "lock session closed");
        }
    }
}

impl Inner {
    fn stmts(&self, mode: LockMode) -> &Statements {
        match mode {
            LockMode::Exclusive => &self.exclusive,
            LockMode::Shared => &self.shared_stmts,
        }
    }

    /// The statements that lock `arg` (a semaphore's slot has its own).
    fn stmts_for(&self, arg: &KeyArg, mode: LockMode) -> &Statements {
        match arg {
            KeyArg::Slot(..) => &self.permit_stmts,
            _ => self.stmts(mode),
        }
    }
}

/// What a non-waiting attempt got.
pub(crate) enum Tried {
    /// The lock, not yet handed to a guard.
    Granted(PendingGrant),
    /// Held elsewhere (or, exclusive, by this session).
    Busy,
    /// A shared request for a key this session already holds shared: ask on another session
    /// (see `Ctx::try_lock`).
    HeldHere,
}

/// A granted lock that has not been handed to a guard yet. Dropping it unlocks, so a grant
/// that arrives after the caller gave up is never left behind.
pub(crate) struct PendingGrant {
    pub key: KeyId,
    pub mode: LockMode,
    session: Option<Session>,
}

impl PendingGrant {
    fn new(inner: &Arc<Inner>, key: KeyId, mode: LockMode) -> Self {
        PendingGrant {
            key,
            mode,
            session: Some(Session {
                inner: Arc::clone(inner),
            }),
        }
    }

    /// The caller has taken responsibility for the lock.
    pub fn disarm(mut self) {
        self.session = None;
    }
}

impl Drop for PendingGrant {
    fn drop(&mut self) {
        let Some(session) = self.session.take() else {
            return;
        };
        let (key, mode) = (self.key, self.mode);
        // Without a runtime (it is shutting down) the lock stays until the session closes,
        // which happens when the runtime's tasks and this process's handles are gone.
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            rt.spawn(async move {
                let _ = session.unlock(key, mode).await;
            });
        }
    }
}

impl Session {
    /// Opens a connection and applies the keepalive settings.
    pub async fn open(cfg: Arc<PgConfig>) -> Result<Session> {
        let scheme = cfg.key;
        let id = NEXT_SESSION.fetch_add(1, Ordering::Relaxed);
        let connect = async {
            let (mut conn, _) = crate::connect::connect(&cfg, None).await?;
            let setup = format!(
                "SET tcp_keepalives_idle = {}; SET tcp_keepalives_interval = {}; \
                 SET tcp_keepalives_count = {}; SET tcp_user_timeout = {}; \
                 SET application_name = 'dlock-lock-session'",
                cfg.keepalives_idle.as_secs(),
                cfg.keepalives_interval.as_secs(),
                cfg.keepalives_count,
                cfg.user_timeout.as_millis()
            );
            conn.execute(setup.as_str())
                .await
                .map_err(|e| db_error(e, Operation::Connect))?;
            // Mark the server session, then read the mark back twice over the simple-query
            // protocol: a pooler that hands consecutive transactions to different server
            // sessions shows up here already (later statements check it again).
            let marker = new_marker(id);
            conn.execute(format!("SET dlock.session = '{marker}'").as_str())
                .await
                .map_err(|e| db_error(e, Operation::Connect))?;
            // PostgreSQL 14+: notice a vanished client while a blocking lock call waits.
            let _ = conn
                .execute("SET client_connection_check_interval = 1000")
                .await;
            let pid: i32 = sqlx::query_scalar("SELECT pg_backend_pid()")
                .fetch_one(&mut conn)
                .await
                .map_err(|e| {
                    if is_prepared_statement_gone(&e) {
                        let what = format!("the new session's prepared statements do not match the server session ({e})");
                        pooler_error(Operation::Connect, &what)
                    } else {
                        db_error(e, Operation::Connect)
                    }
                })?;
            for _ in 0..2 {
                // A bare string without arguments goes over the simple-query protocol.
                let row = conn
                    .fetch_one(CHECK)
                    .await
                    .map_err(|e| db_error(e, Operation::Connect))?;
                let got: (i32, Option<String>) =
                    sqlx::FromRow::from_row(&row).map_err(|e| db_error(e, Operation::Connect))?;
                if let Some(what) = session_mismatch(pid, &marker, got.0, got.1.as_deref()) {
                    return Err(pooler_error(Operation::Connect, &what));
                }
            }
            Ok::<_, Error>((conn, pid, marker))
        };
        let (conn, pid, marker) =
            tokio::time::timeout(cfg.connect_timeout * cfg.hosts.len() as u32, connect)
                .await
                .map_err(|_| {
                    Error::new(
                        ErrorKind::Connection,
                        BACKEND,
                        Operation::Connect,
                        format!(
                            "connecting to {} timed out after {:?}",
                            cfg.display_url, cfg.connect_timeout
                        ),
                    )
                })??;
        tracing::debug!(session = id, pid, "lock session opened");
        Ok(Session {
            inner: Arc::new(Inner {
                id,
                pid,
                marker,
                cfg,
                exclusive: Statements::new(scheme, LockMode::Exclusive),
                shared_stmts: Statements::new(scheme, LockMode::Shared),
                permit_stmts: Statements::permits(),
                alive: AtomicBool::new(true),
                monitors: Mutex::new(HashMap::new()),
                state: Arc::new(tokio::sync::Mutex::new(State {
                    conn: Some(conn),
                    held: HashMap::new(),
                    fencing_ready: false,
                    last_check_sent: None,
                    timer: StatementTimer::default(),
                })),
            }),
        })
    }

    pub fn is_alive(&self) -> bool {
        self.inner.alive.load(Ordering::Acquire)
    }

    /// Alive, holding no lock, watched by no guard and running no statement: fit to be kept
    /// for another waiting acquisition.
    pub fn is_idle(&self) -> bool {
        self.is_alive()
            && lock(&self.inner.monitors).is_empty()
            && self
                .inner
                .state
                .try_lock()
                .is_ok_and(|st| st.conn.is_some() && st.held.is_empty())
    }

    pub fn watch(&self, grant: u64, monitor: LeaseMonitor) {
        lock(&self.inner.monitors).insert(grant, monitor);
        if !self.is_alive() {
            if let Some(m) = lock(&self.inner.monitors).remove(&grant) {
                m.report_lost("the lock session ended");
            }
        }
    }

    pub fn unwatch(&self, grant: u64) {
        lock(&self.inner.monitors).remove(&grant);
    }

    /// Waits for the connection, then runs `op` on it to completion even if the caller goes
    /// away meanwhile (see [`Finish`]).
    async fn run<T, F>(&self, op: impl FnOnce(Arc<Inner>, OwnedMutexGuard<State>) -> F) -> T
    where
        T: Send + 'static,
        F: Future<Output = T> + Send + 'static,
    {
        let st = Arc::clone(&self.inner.state).lock_owned().await;
        Finish::new(op(Arc::clone(&self.inner), st)).await
    }

    pub async fn try_lock(&self, arg: KeyArg, mode: LockMode) -> Result<Tried> {
        self.run(move |inner, mut st| async move {
            let mut cx = Ctx::new(&inner, &mut st)?;
            cx.try_lock(&arg, mode).await.map_err(Failure::into_error)
        })
        .await
    }

    /// A blocking lock with `lock_timeout` (`None`: no timeout). Only for a dedicated
    /// session: nothing else may wait behind it, and dropping the call (with the session)
    /// closes the connection.
    pub async fn lock(
        &self,
        arg: KeyArg,
        mode: LockMode,
        timeout: Option<Duration>,
    ) -> Result<PendingGrant> {
        let mut st = self.inner.state.lock().await;
        let mut cx = Ctx::new(&self.inner, &mut st)?;
        cx.lock(&arg, mode, timeout)
            .await
            .map_err(Failure::into_error)
    }

    /// `Ok(true)`: the lock was ours until now; `Ok(false)`: it was not (or the session is
    /// gone, and its locks with it).
    pub async fn unlock(&self, key: KeyId, mode: LockMode) -> Result<bool> {
        self.run(move |inner, mut st| async move {
            let Ok(mut cx) = Ctx::new(&inner, &mut st) else {
                return Ok(false);
            };
            match cx.unlock(key, mode).await {
                Ok(b) => Ok(b),
                Err(Failure::Gone(_)) => Ok(false),
                Err(f) => Err(f.into_error()),
            }
        })
        .await
    }

    /// `Ok(true)`: the session answered after this call was made; `Ok(false)`: the session
    /// is gone (its locks are freed or will be); `Err`: no answer in time.
    pub async fn check(&self) -> Result<bool> {
        if !self.is_alive() {
            return Ok(false);
        }
        let asked = Instant::now();
        self.run(move |inner, mut st| async move {
            if st.conn.is_none() {
                return Ok(false);
            }
            // A check sent after this one was asked for already confirmed the session.
            if st.last_check_sent.is_some_and(|t| t >= asked) {
                return Ok(true);
            }
            let sent = Instant::now();
            let Ok(mut cx) = Ctx::new(&inner, &mut st) else {
                return Ok(false);
            };
            match cx.check().await {
                Ok(()) => {
                    st.last_check_sent = Some(sent);
                    Ok(true)
                }
                Err(Failure::Gone(_)) => Ok(false),
                Err(Failure::Timeout(e) | Failure::Statement(e)) => Err(e),
            }
        })
        .await
    }

    pub async fn fence(&self, name: &str) -> Result<i64> {
        let name = name.to_string();
        self.run(move |inner, mut st| async move {
            let mut cx = Ctx::new(&inner, &mut st)?;
            cx.fence(&name).await.map_err(Failure::into_error)
        })
        .await
    }
}

impl lock_core::Reusable for Session {
    fn is_alive(&self) -> bool {
        Session::is_alive(self)
    }

    fn is_idle(&self) -> bool {
        Session::is_idle(self)
    }
}

/// Locks `m`; a poisoned lock still holds coherent data here (every update under these locks
/// is a map or vector operation).
pub(crate) fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}
