//! Lock sessions: a PostgreSQL connection owned by one task that runs every statement of the
//! locks it holds, so lock and unlock always happen on the same server session.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use lock_core::{Error, ErrorKind, LeaseMonitor, LockMode, Operation, Result};
use sqlx::postgres::PgConnection;
use sqlx::{Connection, Executor, Row};
use tokio::sync::{mpsc, oneshot};

use crate::BACKEND;
use crate::config::{Fencing, PgConfig};
use crate::key::{KeyArg, KeyId, KeyScheme, Statements, key_id};

static NEXT_SESSION: AtomicU64 = AtomicU64::new(1);

/// A handle on a lock session. Cloning shares the session.
#[derive(Clone)]
pub(crate) struct Session {
    tx: mpsc::UnboundedSender<Cmd>,
    shared: Arc<Shared>,
}

struct Shared {
    alive: AtomicBool,
    /// Guards whose locks live on this session: told when it dies.
    monitors: Mutex<HashMap<u64, LeaseMonitor>>,
}

/// A granted lock that has not been handed to a guard yet. Dropping it unlocks, so a grant
/// that arrives after the caller gave up is never left behind.
pub(crate) struct PendingGrant {
    pub key: KeyId,
    pub mode: LockMode,
    tx: Option<mpsc::UnboundedSender<Cmd>>,
}

impl PendingGrant {
    /// The caller has taken responsibility for the lock.
    pub fn disarm(mut self) {
        self.tx = None;
    }
}

impl Drop for PendingGrant {
    fn drop(&mut self) {
        if let Some(tx) = self.tx.take() {
            let (reply, _) = oneshot::channel();
            let _ = tx.send(Cmd::Unlock {
                key: self.key,
                mode: self.mode,
                reply,
            });
        }
    }
}

enum Cmd {
    Try {
        arg: KeyArg,
        mode: LockMode,
        reply: oneshot::Sender<Result<Option<PendingGrant>>>,
    },
    /// Blocking lock with `lock_timeout` (`None`: no timeout).
    Lock {
        arg: KeyArg,
        mode: LockMode,
        timeout: Option<Duration>,
        reply: oneshot::Sender<Result<PendingGrant>>,
    },
    Unlock {
        key: KeyId,
        mode: LockMode,
        reply: oneshot::Sender<Result<bool>>,
    },
    Check {
        reply: oneshot::Sender<Result<bool>>,
    },
    Fence {
        name: String,
        reply: oneshot::Sender<Result<i64>>,
    },
}

impl Session {
    /// Opens a connection, applies the keepalive settings, and starts the session task.
    pub async fn open(cfg: Arc<PgConfig>, scheme: KeyScheme) -> Result<Session> {
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
            // PostgreSQL 14+: notice a vanished client while a blocking lock call waits.
            let _ = conn
                .execute("SET client_connection_check_interval = 1000")
                .await;
            let pid: i32 = sqlx::query_scalar("SELECT pg_backend_pid()")
                .fetch_one(&mut conn)
                .await
                .map_err(|e| db_error(e, Operation::Connect))?;
            Ok::<_, Error>((conn, pid))
        };
        let (conn, pid) = tokio::time::timeout(cfg.connect_timeout, connect)
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
        let id = NEXT_SESSION.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = mpsc::unbounded_channel();
        let shared = Arc::new(Shared {
            alive: AtomicBool::new(true),
            monitors: Mutex::new(HashMap::new()),
        });
        let task = SessionTask {
            id,
            conn: Some(conn),
            pid,
            cfg,
            scheme,
            exclusive: Statements::new(scheme, LockMode::Exclusive),
            shared_stmts: Statements::new(scheme, LockMode::Shared),
            held: HashMap::new(),
            fencing_ready: false,
            tx: tx.downgrade(),
            shared: shared.clone(),
        };
        tokio::spawn(task.run(rx));
        tracing::debug!(session = id, pid, "lock session opened");
        Ok(Session { tx, shared })
    }

    pub fn is_alive(&self) -> bool {
        self.shared.alive.load(Ordering::Acquire)
    }

    pub fn watch(&self, grant: u64, monitor: LeaseMonitor) {
        lock(&self.shared.monitors).insert(grant, monitor);
        if !self.is_alive() {
            if let Some(m) = lock(&self.shared.monitors).remove(&grant) {
                m.report_lost("the lock session ended");
            }
        }
    }

    pub fn unwatch(&self, grant: u64) {
        lock(&self.shared.monitors).remove(&grant);
    }

    async fn call<T>(&self, make: impl FnOnce(oneshot::Sender<Result<T>>) -> Cmd) -> Result<T> {
        let (reply, rx) = oneshot::channel();
        if self.tx.send(make(reply)).is_err() {
            return Err(dead());
        }
        rx.await.unwrap_or_else(|_| Err(dead()))
    }

    pub async fn try_lock(&self, arg: KeyArg, mode: LockMode) -> Result<Option<PendingGrant>> {
        self.call(|reply| Cmd::Try { arg, mode, reply }).await
    }

    pub async fn lock(
        &self,
        arg: KeyArg,
        mode: LockMode,
        timeout: Option<Duration>,
    ) -> Result<PendingGrant> {
        self.call(|reply| Cmd::Lock {
            arg,
            mode,
            timeout,
            reply,
        })
        .await
    }

    pub async fn unlock(&self, key: KeyId, mode: LockMode) -> Result<bool> {
        self.call(|reply| Cmd::Unlock { key, mode, reply }).await
    }

    /// `Ok(true)`: the session answered after this call was made; `Ok(false)`: the session
    /// is gone (its locks are freed or will be); `Err`: no answer in time.
    pub async fn check(&self) -> Result<bool> {
        if !self.is_alive() {
            return Ok(false);
        }
        match self.call(|reply| Cmd::Check { reply }).await {
            Err(e) if !self.is_alive() && e.kind() == ErrorKind::Lost => Ok(false),
            other => other,
        }
    }

    pub async fn fence(&self, name: &str) -> Result<i64> {
        let name = name.to_string();
        self.call(|reply| Cmd::Fence { name, reply }).await
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

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
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

struct SessionTask {
    id: u64,
    conn: Option<PgConnection>,
    pid: i32,
    cfg: Arc<PgConfig>,
    scheme: KeyScheme,
    exclusive: Statements,
    shared_stmts: Statements,
    /// Locks this session holds, by key: mode and how many grants (shared locks stack).
    held: HashMap<KeyId, (LockMode, u32)>,
    fencing_ready: bool,
    tx: mpsc::WeakUnboundedSender<Cmd>,
    shared: Arc<Shared>,
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

async fn reply_closed<T>(reply: &mut oneshot::Sender<T>) {
    reply.closed().await
}

fn fail(cmd: Cmd) {
    match cmd {
        Cmd::Try { reply, .. } => drop(reply.send(Err(dead()))),
        Cmd::Lock { reply, .. } => drop(reply.send(Err(dead()))),
        // The session is gone, so are its locks: not ours any more.
        Cmd::Unlock { reply, .. } => drop(reply.send(Ok(false))),
        Cmd::Check { reply } => drop(reply.send(Ok(false))),
        Cmd::Fence { reply, .. } => drop(reply.send(Err(dead()))),
    }
}

impl SessionTask {
    async fn run(mut self, mut rx: mpsc::UnboundedReceiver<Cmd>) {
        let mut backlog: VecDeque<Cmd> = VecDeque::new();
        loop {
            let cmd = match backlog.pop_front() {
                Some(c) => c,
                None => match rx.recv().await {
                    Some(c) => c,
                    None => break,
                },
            };
            if self.conn.is_none() {
                fail(cmd);
                continue;
            }
            match cmd {
                Cmd::Check { reply } => {
                    // Coalesce the checks already queued into this one statement: each was
                    // asked for before it is sent, so the caller's "sent" time stays
                    // conservative.
                    let mut replies = vec![reply];
                    while let Ok(next) = rx.try_recv() {
                        match next {
                            Cmd::Check { reply } => replies.push(reply),
                            other => backlog.push_back(other),
                        }
                    }
                    let r = match self.check().await {
                        Ok(()) => Ok(true),
                        Err(Failure::Gone(_)) => Ok(false),
                        Err(Failure::Timeout(e) | Failure::Statement(e)) => Err(e),
                    };
                    for reply in replies {
                        let _ = reply.send(r.as_ref().map(|b| *b).map_err(clone_error));
                    }
                }
                Cmd::Try { arg, mode, reply } => {
                    let r = self.try_lock(&arg, mode).await.map_err(Failure::into_error);
                    if let Err(Ok(Some(grant))) = reply.send(r) {
                        drop(grant); // the caller gave up: unlock (queued behind us)
                    }
                }
                Cmd::Lock {
                    arg,
                    mode,
                    timeout,
                    mut reply,
                } => {
                    let r = tokio::select! {
                        r = self.lock(&arg, mode, timeout) => r,
                        _ = reply_closed(&mut reply) => {
                            // The waiter gave up mid-statement: close the connection; the
                            // server ends the wait (or frees a grant that raced with it) as
                            // soon as it sees the client gone.
                            self.die("the waiting acquire was cancelled");
                            continue;
                        }
                    };
                    if let Err(Ok(grant)) = reply.send(r.map_err(Failure::into_error)) {
                        drop(grant);
                    }
                }
                Cmd::Unlock { key, mode, reply } => {
                    let r = match self.unlock(key, mode).await {
                        Ok(b) => Ok(b),
                        Err(Failure::Gone(_)) => Ok(false),
                        Err(f) => Err(f.into_error()),
                    };
                    let _ = reply.send(r);
                }
                Cmd::Fence { name, reply } => {
                    let r = self.fence(&name).await.map_err(Failure::into_error);
                    let _ = reply.send(r);
                }
            }
        }
        for cmd in backlog {
            fail(cmd);
        }
        self.die("the session was closed");
    }

    /// Closes the connection and tells every guard on it.
    fn die(&mut self, reason: &str) {
        self.shared.alive.store(false, Ordering::Release);
        if let Some(conn) = self.conn.take() {
            // Dropping the connection closes its socket at once; no goodbye is needed.
            drop(conn);
            tracing::debug!(
                session = self.id,
                pid = self.pid,
                reason,
                "lock session closed"
            );
        }
        let monitors: Vec<LeaseMonitor> = lock(&self.shared.monitors)
            .drain()
            .map(|(_, m)| m)
            .collect();
        for m in monitors {
            m.report_lost(&format!("the lock session ended: {reason}"));
        }
        self.held.clear();
    }

    /// Turns a statement's outcome into an [`Op`], ending the session when it cannot be
    /// trusted any more.
    fn classify<T>(
        &mut self,
        op: Operation,
        r: std::result::Result<std::result::Result<T, sqlx::Error>, tokio::time::error::Elapsed>,
    ) -> Op<T> {
        match r {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e)) if is_connection_error(&e) => {
                self.die(&format!("connection error: {e}"));
                Err(Failure::Gone(db_error(e, op)))
            }
            Ok(Err(e)) => Err(Failure::Statement(db_error(e, op))),
            Err(_) => {
                let limit = self.cfg.check_timeout;
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

    fn check_pid(&mut self, pid: i32, op: Operation) -> Op<()> {
        if pid == self.pid {
            return Ok(());
        }
        let msg = format!(
            "the lock session's backend pid changed from {} to {pid} between statements: the \
             connection goes through a transaction-pooling proxy (PgBouncer in transaction \
             mode?), where session advisory locks do not work. Connect to PostgreSQL directly \
             or use a session-pooling port",
            self.pid
        );
        self.die("pooler detected");
        Err(Failure::Statement(Error::new(
            ErrorKind::Unsupported,
            BACKEND,
            op,
            msg,
        )))
    }

    fn stmts(&self, mode: LockMode) -> &Statements {
        match mode {
            LockMode::Exclusive => &self.exclusive,
            LockMode::Shared => &self.shared_stmts,
        }
    }

    fn pending(&self, key: KeyId, mode: LockMode) -> PendingGrant {
        PendingGrant {
            key,
            mode,
            tx: self.tx.upgrade(),
        }
    }

    async fn check(&mut self) -> Op<()> {
        let limit = Some(self.cfg.check_timeout);
        let Some(conn) = self.conn.as_mut() else {
            return Err(Failure::Gone(dead()));
        };
        let r = with_limit(
            limit,
            sqlx::query_scalar::<_, i32>("SELECT pg_backend_pid()").fetch_one(conn),
        )
        .await;
        let pid = self.classify(Operation::Extend, r)?;
        self.check_pid(pid, Operation::Extend)
    }

    async fn try_lock(&mut self, arg: &KeyArg, mode: LockMode) -> Op<Option<PendingGrant>> {
        let limit = Some(self.cfg.check_timeout);
        let sql = self.stmts(mode).try_lock.clone();
        let Some(conn) = self.conn.as_mut() else {
            return Err(Failure::Gone(dead()));
        };
        let r = with_limit(limit, bind(sqlx::query(&sql), arg).fetch_one(conn)).await;
        let row = self.classify(Operation::Acquire, r)?;
        let decode =
            |row: &sqlx::postgres::PgRow| -> std::result::Result<(bool, i32, i64), sqlx::Error> {
                Ok((row.try_get(0)?, row.try_get(1)?, row.try_get(2)?))
            };
        let (acquired, pid, key) =
            decode(&row).map_err(|e| Failure::Statement(db_error(e, Operation::Acquire)))?;
        self.check_pid(pid, Operation::Acquire)?;
        if !acquired {
            return Ok(None);
        }
        let key = key_id(self.scheme, key);
        // Session locks are re-entrant: a second grant of a key this session already holds
        // would let two guards of this process in at once. Undo it and report contention.
        if let Some((held_mode, _)) = self.held.get(&key) {
            if mode == LockMode::Exclusive || *held_mode == LockMode::Exclusive {
                self.unlock_stmt(key, mode).await?;
                return Ok(None);
            }
        }
        self.note_held(key, mode);
        Ok(Some(self.pending(key, mode)))
    }

    async fn lock(
        &mut self,
        arg: &KeyArg,
        mode: LockMode,
        timeout: Option<Duration>,
    ) -> Op<PendingGrant> {
        let sql = self.stmts(mode).lock.clone();
        let Some(conn) = self.conn.as_mut() else {
            return Err(Failure::Gone(dead()));
        };
        // lock_timeout bounds the server-side wait; 0 means no limit.
        let ms = timeout.map(|d| d.as_millis().max(1)).unwrap_or(0);
        let r = with_limit(
            None,
            conn.execute(format!("SET lock_timeout = {ms}").as_str()),
        )
        .await
        .map(|r| r.map(|_| ()));
        self.classify(Operation::Acquire, r)?;
        let conn = self.conn.as_mut().ok_or_else(|| Failure::Gone(dead()))?;
        let r = with_limit(None, bind(sqlx::query(&sql), arg).fetch_one(conn)).await;
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
            (|| Ok::<_, sqlx::Error>((row.try_get(0)?, row.try_get(1)?)))()
                .map_err(|e| Failure::Statement(db_error(e, Operation::Acquire)))?;
        self.check_pid(pid, Operation::Acquire)?;
        let key = key_id(self.scheme, key);
        self.note_held(key, mode);
        Ok(self.pending(key, mode))
    }

    fn note_held(&mut self, key: KeyId, mode: LockMode) {
        let entry = self.held.entry(key).or_insert((mode, 0));
        entry.1 += 1;
    }

    async fn unlock(&mut self, key: KeyId, mode: LockMode) -> Op<bool> {
        let was = self.unlock_stmt(key, mode).await?;
        if let Some(entry) = self.held.get_mut(&key) {
            entry.1 = entry.1.saturating_sub(1);
            if entry.1 == 0 {
                self.held.remove(&key);
            }
        }
        Ok(was)
    }

    async fn unlock_stmt(&mut self, key: KeyId, mode: LockMode) -> Op<bool> {
        let limit = Some(self.cfg.check_timeout);
        let stmts = self.stmts(mode);
        let (sql, big, pair) = match key {
            KeyId::Big(k) => (stmts.unlock_big.clone(), Some(k), None),
            KeyId::Pair(a, b) => (stmts.unlock_pair.clone(), None, Some((a, b))),
        };
        let Some(conn) = self.conn.as_mut() else {
            return Err(Failure::Gone(dead()));
        };
        let mut q = sqlx::query(&sql);
        if let Some(k) = big {
            q = q.bind(k);
        }
        if let Some((a, b)) = pair {
            q = q.bind(a).bind(b);
        }
        let r = with_limit(limit, q.fetch_one(conn)).await;
        let row = self.classify(Operation::Release, r)?;
        let (was, pid): (bool, i32) =
            (|| Ok::<_, sqlx::Error>((row.try_get(0)?, row.try_get(1)?)))()
                .map_err(|e| Failure::Statement(db_error(e, Operation::Release)))?;
        self.check_pid(pid, Operation::Release)?;
        Ok(was)
    }

    async fn fence(&mut self, name: &str) -> Op<i64> {
        let Fencing::Table(table) = &self.cfg.fencing else {
            return Err(Failure::Statement(Error::new(
                ErrorKind::Unsupported,
                BACKEND,
                Operation::Acquire,
                "fencing is not enabled (?fencing=table)",
            )));
        };
        let table = table.clone();
        let limit = Some(self.cfg.check_timeout);
        if !self.fencing_ready {
            // The table name is a validated identifier (config.rs), never user text.
            let create = format!(
                "CREATE TABLE IF NOT EXISTS {table} (name text PRIMARY KEY, token bigint NOT NULL)"
            );
            let conn = self.conn.as_mut().ok_or_else(|| Failure::Gone(dead()))?;
            let r = with_limit(limit, conn.execute(create.as_str())).await;
            match self.classify(Operation::Acquire, r) {
                Ok(_) => {}
                // Two sessions creating the table at once: the other one won.
                Err(Failure::Statement(e)) if is_duplicate(&e) => {}
                Err(f) => return Err(f),
            }
            self.fencing_ready = true;
        }
        let sql = format!(
            "INSERT INTO {table} AS t (name, token) VALUES ($1, 1) \
             ON CONFLICT (name) DO UPDATE SET token = t.token + 1 RETURNING token"
        );
        let conn = self.conn.as_mut().ok_or_else(|| Failure::Gone(dead()))?;
        let r = with_limit(
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

fn clone_error(e: &Error) -> Error {
    Error::new(e.kind(), e.backend(), e.operation(), e.to_string())
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

async fn with_limit<F: std::future::Future>(
    limit: Option<Duration>,
    f: F,
) -> std::result::Result<F::Output, tokio::time::error::Elapsed> {
    match limit {
        Some(d) => tokio::time::timeout(d, f).await,
        None => Ok(f.await),
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
