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

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::Poll;
use std::time::Duration;

use lock_core::{Error, ErrorKind, Finish, LeaseMonitor, LockMode, Operation, Result};
use sqlx::postgres::PgConnection;
use sqlx::{Connection, Executor};
use tokio::sync::OwnedMutexGuard;
use tokio::time::Instant;

use crate::BACKEND;
use crate::config::{Fencing, PgConfig};
use crate::key::{KeyArg, KeyId, Statements, key_id};

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
            let mut conn = PgConnection::connect_with(&cfg.connect)
                .await
                .map_err(|e| {
                    Error::new(
                        ErrorKind::Connection,
                        BACKEND,
                        Operation::Connect,
                        format!("cannot connect to {}", cfg.display_url),
                    )
                    .with_source(e)
                })?;
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
        let (conn, pid, marker) = tokio::time::timeout(cfg.connect_timeout, connect)
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

    pub async fn try_lock(&self, arg: KeyArg, mode: LockMode) -> Result<Option<PendingGrant>> {
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

fn dead() -> Error {
    Error::new(
        ErrorKind::Lost,
        BACKEND,
        Operation::Acquire,
        "the lock session has ended",
    )
}

/// Locks `m`; a poisoned lock still holds coherent data here (every update under these locks
/// is a map or vector operation).
pub(crate) fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Maps a sqlx error; connection-level failures are `Connection`.
pub(crate) fn db_error(e: sqlx::Error, op: Operation) -> Error {
    let kind = match &e {
        sqlx::Error::Database(_) => ErrorKind::Backend,
        _ => ErrorKind::Connection,
    };
    Error::new(kind, BACKEND, op, "PostgreSQL statement failed").with_source(e)
}

/// The session check: backend pid and session marker.
const CHECK: &str = "SELECT pg_backend_pid(), current_setting('dlock.session', true)";

/// Why a statement's (pid, marker) show that it ran on another server session than the one
/// the lock session was opened on (`pid0`, `marker0`), if they do.
fn session_mismatch(pid0: i32, marker0: &str, pid: i32, marker: Option<&str>) -> Option<String> {
    if pid != pid0 {
        return Some(format!(
            "the lock session's backend pid changed from {pid0} to {pid} between statements"
        ));
    }
    if marker != Some(marker0) {
        return Some(format!(
            "the lock session's marker (dlock.session = {marker0}) was {} on the server \
             session that answered",
            marker.map_or_else(|| "not set".to_string(), |m| format!("{m:?}"))
        ));
    }
    None
}

/// A value no other lock session has.
fn new_marker(id: u64) -> String {
    format!(
        "{:016x}-{id}-{}",
        lock_core::random_u64(),
        std::process::id()
    )
}

/// SQLSTATE 26000 (invalid_sql_statement_name: a statement this connection prepared does not
/// exist on the server session that got the next message) or 42P05 (duplicate_prepared_statement:
/// a name this new connection never used is already taken there): consecutive messages reached
/// different, shared server sessions — what a transaction-pooling proxy does.
fn is_prepared_statement_gone(e: &sqlx::Error) -> bool {
    matches!(e, sqlx::Error::Database(db) if matches!(db.code().as_deref(), Some("26000" | "42P05")))
}

/// The error for a lock session that is not one server session.
fn pooler_error(op: Operation, what: &str) -> Error {
    Error::new(
        ErrorKind::Unsupported,
        BACKEND,
        op,
        format!(
            "{what}: the connection goes through a transaction-pooling proxy (PgBouncer in \
             transaction mode?), where session advisory locks do not work. Connect to \
             PostgreSQL directly or use a session-pooling port"
        ),
    )
}

/// Errors after which the connection cannot be trusted any more: I/O and protocol errors,
/// and the server's own "this session is over" errors (SQLSTATE class 08 connection
/// exception, 57P0x operator intervention such as `pg_terminate_backend` or a shutdown).
fn is_connection_error(e: &sqlx::Error) -> bool {
    if let sqlx::Error::Database(db) = e {
        return db
            .code()
            .is_some_and(|c| c.starts_with("08") || c.starts_with("57P"));
    }
    matches!(
        e,
        sqlx::Error::Io(_)
            | sqlx::Error::Tls(_)
            | sqlx::Error::Protocol(_)
            | sqlx::Error::PoolTimedOut
            | sqlx::Error::PoolClosed
            | sqlx::Error::WorkerCrashed
    )
}

/// One statement's view of the session: the shared parts and the connection, locked.
struct Ctx<'a> {
    inner: &'a Arc<Inner>,
    st: &'a mut State,
}

/// Why an operation failed.
enum Failure {
    /// The statement failed; the session is fine.
    Statement(Error),
    /// No answer in time: the session is closed (its locks will be freed).
    Timeout(Error),
    /// The connection broke or the server ended the session.
    Gone(Error),
}

type Op<T> = std::result::Result<T, Failure>;

impl<'a> Ctx<'a> {
    /// `Err` when the session has already died.
    fn new(inner: &'a Arc<Inner>, st: &'a mut State) -> Result<Self> {
        if st.conn.is_none() {
            return Err(dead());
        }
        Ok(Ctx { inner, st })
    }

    /// Closes the connection and tells every guard on it.
    fn die(&mut self, reason: &str) {
        self.inner.alive.store(false, Ordering::Release);
        if let Some(conn) = self.st.conn.take() {
            // Dropping the connection closes its socket at once; no goodbye is needed.
            drop(conn);
            tracing::debug!(
                session = self.inner.id,
                pid = self.inner.pid,
                reason,
                "lock session closed"
            );
        }
        let monitors: Vec<LeaseMonitor> =
            lock(&self.inner.monitors).drain().map(|(_, m)| m).collect();
        for m in monitors {
            m.report_lost(&format!("the lock session ended: {reason}"));
        }
        self.st.held.clear();
    }

    /// Turns a statement's outcome into an [`Op`], ending the session when it cannot be
    /// trusted any more.
    fn classify<T>(
        &mut self,
        op: Operation,
        r: std::result::Result<std::result::Result<T, sqlx::Error>, TimedOut>,
    ) -> Op<T> {
        match r {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e)) if is_connection_error(&e) => {
                self.die(&format!("connection error: {e}"));
                Err(Failure::Gone(db_error(e, op)))
            }
            Ok(Err(e)) if is_prepared_statement_gone(&e) => {
                self.die("pooler detected");
                let what = format!(
                    "the lock session's prepared statements do not match the server session ({e})"
                );
                Err(Failure::Statement(pooler_error(op, &what)))
            }
            Ok(Err(e)) => Err(Failure::Statement(db_error(e, op))),
            Err(_) => {
                let limit = self.inner.cfg.check_timeout;
                self.die(&format!("no answer within {limit:?}"));
                Err(Failure::Timeout(Error::new(
                    ErrorKind::Connection,
                    BACKEND,
                    op,
                    format!(
                        "PostgreSQL did not answer within {limit:?}; the lock session was closed"
                    ),
                )))
            }
        }
    }

    /// Fails (and closes the session) unless the session check ran on the session this
    /// lock session was opened on: same backend pid, our marker.
    fn check_session(&mut self, pid: i32, marker: Option<&str>, op: Operation) -> Op<()> {
        let Some(what) = session_mismatch(self.inner.pid, &self.inner.marker, pid, marker) else {
            return Ok(());
        };
        self.die("pooler detected");
        Err(Failure::Statement(pooler_error(op, &what)))
    }

    /// Fails (and closes the session) unless a lock statement ran on the server process
    /// this lock session was opened on. (The marker is left to the session checks.)
    fn check_pid(&mut self, pid: i32, op: Operation) -> Op<()> {
        let inner = self.inner;
        self.check_session(pid, Some(&inner.marker), op)
    }

    async fn check(&mut self) -> Op<()> {
        let limit = Some(self.inner.cfg.check_timeout);
        let Some(conn) = self.st.conn.as_mut() else {
            return Err(Failure::Gone(dead()));
        };
        let r = self
            .st
            .timer
            .limit(limit, sqlx::query_as(CHECK).fetch_one(conn))
            .await;
        let (pid, marker): (i32, Option<String>) = self.classify(Operation::Extend, r)?;
        self.check_session(pid, marker.as_deref(), Operation::Extend)
    }

    async fn try_lock(&mut self, arg: &KeyArg, mode: LockMode) -> Op<Option<PendingGrant>> {
        let limit = Some(self.inner.cfg.check_timeout);
        let inner = self.inner;
        let sql = inner.stmts(mode).try_lock.as_str();
        let Some(conn) = self.st.conn.as_mut() else {
            return Err(Failure::Gone(dead()));
        };
        let r = self
            .st
            .timer
            .limit(limit, bind(sqlx::query(sql), arg).fetch_one(conn))
            .await;
        let row = self.classify(Operation::Acquire, r)?;
        let (acquired, pid, key): (bool, i32, i64) = sqlx::FromRow::from_row(&row)
            .map_err(|e| Failure::Statement(db_error(e, Operation::Acquire)))?;
        self.check_pid(pid, Operation::Acquire)?;
        if !acquired {
            return Ok(None);
        }
        let key = key_id(self.inner.cfg.key, key);
        // Session locks are re-entrant: a second grant of a key this session already holds
        // would let two guards of this process in at once. Undo it and report contention.
        if let Some((held_mode, _)) = self.st.held.get(&key) {
            if mode == LockMode::Exclusive || *held_mode == LockMode::Exclusive {
                self.unlock_stmt(key, mode).await?;
                return Ok(None);
            }
        }
        self.note_held(key, mode);
        Ok(Some(PendingGrant::new(self.inner, key, mode)))
    }

    async fn lock(
        &mut self,
        arg: &KeyArg,
        mode: LockMode,
        timeout: Option<Duration>,
    ) -> Op<PendingGrant> {
        let inner = self.inner;
        let sql = inner.stmts(mode).lock.as_str();
        let Some(conn) = self.st.conn.as_mut() else {
            return Err(Failure::Gone(dead()));
        };
        // lock_timeout bounds the server-side wait; 0 means no limit. The SET is bounded by
        // check_timeout like every short statement (a kept session may have died unseen).
        let ms = timeout.map(|d| d.as_millis().max(1)).unwrap_or(0);
        let set = format!("SET lock_timeout = {ms}");
        let limit = Some(self.inner.cfg.check_timeout);
        let r = self
            .st
            .timer
            .limit(limit, conn.execute(set.as_str()))
            .await
            .map(|r| r.map(|_| ()));
        self.classify(Operation::Acquire, r)?;
        let conn = self.st.conn.as_mut().ok_or_else(|| Failure::Gone(dead()))?;
        let r = Ok(bind(sqlx::query(sql), arg).fetch_one(conn).await);
        let row = match self.classify(Operation::Acquire, r) {
            Err(Failure::Statement(e)) if is_lock_timeout(&e) => {
                return Err(Failure::Statement(Error::new(
                    ErrorKind::Timeout,
                    BACKEND,
                    Operation::Acquire,
                    format!("the lock was still held when the wait of {ms} ms ran out"),
                )));
            }
            other => other?,
        };
        let (pid, key): (i32, i64) =
            // Column 2 is the void result of the lock function, as text.
            <(i32, i64, Option<String>) as sqlx::FromRow<_>>::from_row(&row)
                .map(|(pid, key, _)| (pid, key))
                .map_err(|e| Failure::Statement(db_error(e, Operation::Acquire)))?;
        self.check_pid(pid, Operation::Acquire)?;
        let key = key_id(self.inner.cfg.key, key);
        self.note_held(key, mode);
        Ok(PendingGrant::new(self.inner, key, mode))
    }

    fn note_held(&mut self, key: KeyId, mode: LockMode) {
        let entry = self.st.held.entry(key).or_insert((mode, 0));
        entry.1 += 1;
    }

    async fn unlock(&mut self, key: KeyId, mode: LockMode) -> Op<bool> {
        let was = self.unlock_stmt(key, mode).await?;
        if let Some(entry) = self.st.held.get_mut(&key) {
            entry.1 = entry.1.saturating_sub(1);
            if entry.1 == 0 {
                self.st.held.remove(&key);
            }
        }
        Ok(was)
    }

    async fn unlock_stmt(&mut self, key: KeyId, mode: LockMode) -> Op<bool> {
        let limit = Some(self.inner.cfg.check_timeout);
        let inner = self.inner;
        let stmts = inner.stmts(mode);
        let (sql, big, pair) = match key {
            KeyId::Big(k) => (stmts.unlock_big.as_str(), Some(k), None),
            KeyId::Pair(a, b) => (stmts.unlock_pair.as_str(), None, Some((a, b))),
        };
        let Some(conn) = self.st.conn.as_mut() else {
            return Err(Failure::Gone(dead()));
        };
        let mut q = sqlx::query(sql);
        if let Some(k) = big {
            q = q.bind(k);
        }
        if let Some((a, b)) = pair {
            q = q.bind(a).bind(b);
        }
        let r = self.st.timer.limit(limit, q.fetch_one(conn)).await;
        let row = self.classify(Operation::Release, r)?;
        let (was, pid): (bool, i32) = sqlx::FromRow::from_row(&row)
            .map_err(|e| Failure::Statement(db_error(e, Operation::Release)))?;
        self.check_pid(pid, Operation::Release)?;
        Ok(was)
    }

    async fn fence(&mut self, name: &str) -> Op<i64> {
        let Fencing::Table(table) = &self.inner.cfg.fencing else {
            return Err(Failure::Statement(Error::new(
                ErrorKind::Unsupported,
                BACKEND,
                Operation::Acquire,
                "fencing is not enabled (?fencing=table)",
            )));
        };
        let table = table.clone();
        let limit = Some(self.inner.cfg.check_timeout);
        if !self.st.fencing_ready {
            // The table name is a validated identifier (config.rs), never user text.
            let create = format!(
                "CREATE TABLE IF NOT EXISTS {table} (name text PRIMARY KEY, token bigint NOT NULL)"
            );
            let conn = self.st.conn.as_mut().ok_or_else(|| Failure::Gone(dead()))?;
            let r = self
                .st
                .timer
                .limit(limit, conn.execute(create.as_str()))
                .await;
            match self.classify(Operation::Acquire, r) {
                Ok(_) => {}
                // Two sessions creating the table at once: the other one won.
                Err(Failure::Statement(e)) if is_duplicate(&e) => {}
                Err(f) => return Err(f),
            }
            self.st.fencing_ready = true;
        }
        let sql = format!(
            "INSERT INTO {table} AS t (name, token) VALUES ($1, 1) \
             ON CONFLICT (name) DO UPDATE SET token = t.token + 1 RETURNING token"
        );
        let conn = self.st.conn.as_mut().ok_or_else(|| Failure::Gone(dead()))?;
        let r = self
            .st
            .timer
            .limit(
                limit,
                sqlx::query_scalar::<_, i64>(&sql)
                    .bind(name)
                    .fetch_one(conn),
            )
            .await;
        self.classify(Operation::Acquire, r)
    }
}

impl Failure {
    fn into_error(self) -> Error {
        match self {
            Failure::Statement(e) | Failure::Timeout(e) | Failure::Gone(e) => e,
        }
    }
}

fn bind<'q>(
    q: sqlx::query::Query<'q, sqlx::Postgres, sqlx::postgres::PgArguments>,
    arg: &'q KeyArg,
) -> sqlx::query::Query<'q, sqlx::Postgres, sqlx::postgres::PgArguments> {
    match arg {
        KeyArg::Text(s) => q.bind(s.as_str()),
        KeyArg::Big(k) => q.bind(*k),
        KeyArg::Pair(a, b) => q.bind(*a).bind(*b),
    }
}

/// A statement that did not answer within its time limit.
struct TimedOut;

/// The time limit of a session's statements: one tokio timer per session, moved forward for
/// each statement. Moving a registered timer later is an atomic store; a fresh timer per
/// statement (`tokio::time::timeout`) costs a timer-wheel insertion and a removal, which
/// measured 1.5 µs per acquire + release (two statements) on a 2-core VM.
#[derive(Default)]
struct StatementTimer {
    /// The timer and the runtime it belongs to: a session used from another runtime gets a
    /// new timer there (the timer of a runtime that has shut down must not be polled).
    timer: Option<(tokio::runtime::Id, Pin<Box<tokio::time::Sleep>>)>,
}

impl StatementTimer {
    /// Runs `f`, giving up after `limit` (`None`: no limit).
    async fn limit<F: Future>(
        &mut self,
        limit: Option<Duration>,
        f: F,
    ) -> std::result::Result<F::Output, TimedOut> {
        let (Some(limit), Ok(rt)) = (limit, tokio::runtime::Handle::try_current()) else {
            return Ok(f.await);
        };
        let deadline = Instant::now() + limit;
        if !matches!(&self.timer, Some((id, _)) if *id == rt.id()) {
            let timer = Box::pin(tokio::time::sleep_until(deadline));
            self.timer = Some((rt.id(), timer));
        }
        let Some((_, timer)) = self.timer.as_mut() else {
            return Ok(f.await);
        };
        timer.as_mut().reset(deadline);
        let mut f = std::pin::pin!(f);
        std::future::poll_fn(|cx| {
            if let Poll::Ready(out) = f.as_mut().poll(cx) {
                return Poll::Ready(Ok(out));
            }
            timer.as_mut().poll(cx).map(|()| Err(TimedOut))
        })
        .await
    }
}

fn sqlstate(e: &Error) -> Option<String> {
    let src = std::error::Error::source(e)?;
    let sqlx_err = src.downcast_ref::<sqlx::Error>()?;
    match sqlx_err {
        sqlx::Error::Database(db) => db.code().map(|c| c.into_owned()),
        _ => None,
    }
}

fn is_lock_timeout(e: &Error) -> bool {
    sqlstate(e).as_deref() == Some("55P03")
}

fn is_duplicate(e: &Error) -> bool {
    matches!(sqlstate(e).as_deref(), Some("23505" | "42P07" | "42710"))
}
