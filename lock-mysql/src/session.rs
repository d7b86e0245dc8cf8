//! Lock sessions: a MariaDB / MySQL connection that runs every statement of the locks it
//! holds, so `GET_LOCK` and `RELEASE_LOCK` always run on the same server session.
//!
//! `GET_LOCK` is re-entrant per session: a session that holds `job` and asks for `job` again
//! is granted it a second time. So a session never asks for a name it holds: the session
//! keeps the set of names it holds, and a second acquisition of one of them in this process
//! is `Contended` at once (or, when it may wait, goes to a session of its own, where the
//! server makes it wait like anyone else).
//!
//! Statements run one at a time on the calling task, under an async mutex around the
//! connection. A statement whose caller stops waiting is finished by a spawned task
//! ([`Finish`]), so a grant that arrives anyway is recorded and given back (through
//! [`PendingGrant`]). A blocking `GET_LOCK` runs only on a dedicated session that nothing else
//! references: dropping the call drops the connection, and the server ends the wait when it
//! sees the socket close (MariaDB 10.11: within 0.5 s, measured with a killed client).

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use lock_core::{Error, ErrorKind, Finish, LeaseMonitor, Operation, Result};
use sqlx::mysql::{MySqlConnectOptions, MySqlConnection};
use sqlx::{ConnectOptions, Connection, Executor};
use tokio::sync::OwnedMutexGuard;
use tokio::time::Instant;

use crate::BACKEND;
use crate::config::{Fencing, MySqlConfig};

static NEXT_SESSION: AtomicU64 = AtomicU64::new(1);

/// A handle on a lock session. Cloning shares the session; the connection closes when the
/// last handle goes.
#[derive(Clone)]
pub(crate) struct Session {
    inner: Arc<Inner>,
}

struct Inner {
    id: u64,
    /// `CONNECTION_ID()` of the server session, read at open.
    conn_id: u64,
    cfg: Arc<MySqlConfig>,
    alive: AtomicBool,
    /// Guards whose locks live on this session: told when it dies.
    monitors: Mutex<HashMap<u64, LeaseMonitor>>,
    state: Arc<tokio::sync::Mutex<State>>,
}

/// What only the statement running now may touch.
struct State {
    /// `None` once the session has died.
    conn: Option<MySqlConnection>,
    /// Server lock names this session holds.
    held: HashSet<String>,
    fencing_ready: bool,
    /// When the last successful session check was sent: a check asked for before that needs
    /// no statement of its own (checks from many guards coalesce).
    last_check_sent: Option<Instant>,
}

/// A granted lock not yet handed to a guard. Dropping it releases the lock, so a grant that
/// arrives after the caller gave up is never left behind.
pub(crate) struct PendingGrant {
    pub name: String,
    session: Option<Session>,
}

impl PendingGrant {
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
        let name = std::mem::take(&mut self.name);
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            rt.spawn(async move {
                let _ = session.unlock(name).await;
            });
        }
    }
}

/// Why a statement failed.
enum Failure {
    /// The statement failed; the session is fine.
    Statement(Error),
    /// The connection broke, the server ended the session, or no answer came in time (the
    /// session is closed: its locks are freed).
    Gone(Error),
}

impl Failure {
    fn into_error(self) -> Error {
        match self {
            Failure::Statement(e) | Failure::Gone(e) => e,
        }
    }
}

fn is_connection_error(e: &sqlx::Error) -> bool {
    match e {
        sqlx::Error::Io(_)
        | sqlx::Error::Tls(_)
        | sqlx::Error::Protocol(_)
        | sqlx::Error::PoolClosed
        | sqlx::Error::WorkerCrashed => true,
        // 1927 ER_CONNECTION_KILLED, 1053 ER_SERVER_SHUTDOWN, 2006/2013 gone away / lost,
        // 4031 (MySQL 8.0.24+) the server closed a session idle past wait_timeout.
        sqlx::Error::Database(d) => {
            matches!(d.code().as_deref(), Some("70100") | Some("08S01"))
                || d.try_downcast_ref::<sqlx::mysql::MySqlDatabaseError>()
                    .is_some_and(|m| matches!(m.number(), 1053 | 1927 | 2006 | 2013 | 4031))
        }
        _ => false,
    }
}

/// MariaDB's refusal of a plain-text client under `require_secure_transport`
/// (ER_SECURE_TRANSPORT_REQUIRED: 3159 in MySQL, 4036 in MariaDB).
fn needs_tls(e: &sqlx::Error) -> bool {
    matches!(e, sqlx::Error::Database(d)
        if d.try_downcast_ref::<sqlx::mysql::MySqlDatabaseError>()
            .is_some_and(|m| matches!(m.number(), 3159 | 4036)))
}

/// A statement error as a dlock error.
fn db_error(e: sqlx::Error, op: Operation) -> Error {
    if needs_tls(&e) {
        return Error::new(
            ErrorKind::Tls,
            BACKEND,
            op,
            format!("the server requires TLS (give ssl-mode=VERIFY_IDENTITY and ssl-ca=): {e}"),
        );
    }
    // A refused handshake (the server's certificate, or ours) comes as an I/O or TLS error
    // with rustls's reason inside.
    if let Some(cause) = lock_core::pg_tls::handshake_cause(&e) {
        return Error::new(ErrorKind::Tls, BACKEND, op, format!("{cause} ({e})"));
    }
    let kind = match &e {
        sqlx::Error::Tls(_) => ErrorKind::Tls,
        e if is_connection_error(e) => ErrorKind::Connection,
        sqlx::Error::Database(d)
            if d.try_downcast_ref::<sqlx::mysql::MySqlDatabaseError>()
                .is_some_and(|m| matches!(m.number(), 1044 | 1045 | 1142 | 1227 | 1698)) =>
        {
            ErrorKind::Auth
        }
        _ => ErrorKind::Backend,
    };
    Error::new(kind, BACKEND, op, e.to_string())
}

/// `host:port` of `o`, for messages.
fn label(o: &MySqlConnectOptions) -> String {
    format!("{}:{}", o.get_host(), o.get_port())
}

/// One host: connected, `wait_timeout` set, and its `CONNECTION_ID()` and
/// `@@global.read_only` read, all within `connect_timeout`.
async fn connect_host(
    cfg: &MySqlConfig,
    host: &MySqlConnectOptions,
) -> Result<(MySqlConnection, u64, bool)> {
    let attempt = async {
        let mut conn = host.connect().await.map_err(|e| {
            let e = db_error(e, Operation::Connect);
            if e.kind() == ErrorKind::Auth && !cfg.verifies_tls() {
                // MariaDB refuses a plain-text client of a TLS-only server
                // (`require_secure_transport`) with the same 1045 as a wrong password.
                return Error::new(
                    ErrorKind::Auth,
                    BACKEND,
                    Operation::Connect,
                    format!(
                        "{}; the connection was not verified TLS, and MariaDB refuses \
                         plain text to a server with require_secure_transport this way \
                         too: try ssl-mode=VERIFY_IDENTITY&ssl-ca=<CA file>",
                        e.message()
                    ),
                );
            }
            e
        })?;
        let setup = format!("SET SESSION wait_timeout = {}", cfg.wait_timeout.as_secs());
        conn.execute(setup.as_str())
            .await
            .map_err(|e| db_error(e, Operation::Connect))?;
        let (conn_id, read_only): (u64, i64) =
            sqlx::query_as("SELECT CONNECTION_ID(), @@global.read_only")
                .fetch_one(&mut conn)
                .await
                .map_err(|e| db_error(e, Operation::Connect))?;
        Ok::<_, Error>((conn, conn_id, read_only != 0))
    };
    tokio::time::timeout(cfg.connect_timeout, attempt)
        .await
        .map_err(|_| {
            Error::new(
                ErrorKind::Connection,
                BACKEND,
                Operation::Connect,
                format!(
                    "connecting to {} timed out after {:?}",
                    label(host),
                    cfg.connect_timeout
                ),
            )
        })?
}

/// A connection to the first host of the URL that connects and, under
/// `target_session_attrs=read-write` or `primary`, takes writes (`@@global.read_only` is 0:
/// MariaDB has no recovery state, so both mean the same). Each host gets `connect_timeout`.
/// With one host, its error as it is; with several, every host's reason, and the kind of
/// a TLS or authentication refusal if one host gave it (retrying cannot help).
pub(crate) async fn connect(cfg: &MySqlConfig) -> Result<(MySqlConnection, u64)> {
    let mut why = Vec::new();
    let mut kind = ErrorKind::Connection;
    for host in &cfg.hosts {
        match connect_host(cfg, host).await {
            Ok((conn, id, read_only)) if !(read_only && cfg.target.checks_role()) => {
                return Ok((conn, id));
            }
            Ok((conn, ..)) => {
                why.push(format!(
                    "{}: does not take writes (read_only = ON: a replica)",
                    label(host)
                ));
                let _ = tokio::time::timeout(cfg.check_timeout, conn.close()).await;
            }
            Err(e) if cfg.hosts.len() == 1 => return Err(e),
            Err(e) => {
                if matches!(e.kind(), ErrorKind::Auth | ErrorKind::Tls) {
                    kind = e.kind();
                }
                why.push(format!("{}: {}", label(host), e.message()));
            }
        }
    }
    Err(Error::new(
        kind,
        BACKEND,
        Operation::Connect,
        format!("cannot connect to {}: {}", cfg.display_url, why.join("; ")),
    ))
}

fn dead() -> Error {
    Error::new(
        ErrorKind::Connection,
        BACKEND,
        Operation::Acquire,
        "the lock session has ended",
    )
}

impl Session {
    /// Opens a connection to the first host of the URL that qualifies (see [`connect`]), sets
    /// `wait_timeout` and reads `CONNECTION_ID()`.
    pub async fn open(cfg: Arc<MySqlConfig>) -> Result<Session> {
        let id = NEXT_SESSION.fetch_add(1, Ordering::Relaxed);
        let (conn, conn_id) = connect(&cfg).await?;
        tracing::debug!(session = id, conn_id, "lock session opened");
        Ok(Session {
            inner: Arc::new(Inner {
                id,
                conn_id,
                cfg,
                alive: AtomicBool::new(true),
                monitors: Mutex::new(HashMap::new()),
                state: Arc::new(tokio::sync::Mutex::new(State {
                    conn: Some(conn),
                    held: HashSet::new(),
                    fencing_ready: false,
                    last_check_sent: None,
                })),
            }),
        })
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

    /// `GET_LOCK(name, 0)`. `None`: another session holds it — or this one does, for another
    /// guard of this process (re-entrance is never used).
    pub async fn try_lock(&self, name: String) -> Result<Option<PendingGrant>> {
        self.run(move |inner, mut st| async move {
            if st.held.contains(&name) {
                return Ok(None);
            }
            let limit = inner.cfg.check_timeout;
            // The server decides what "the same name" is (MySQL 8 folds case, a connection
            // charset may fold more): a name this session already holds answers 2, never a
            // re-entrant grant.
            let got = statement(&inner, &mut st, Operation::Acquire, Some(limit), |c| {
                Box::pin(
                    sqlx::query_scalar::<_, Option<i64>>(
                        "SELECT CASE WHEN IS_USED_LOCK(?) = CONNECTION_ID() THEN 2 \
                         ELSE GET_LOCK(?, 0) END",
                    )
                    .bind(name.clone())
                    .bind(name.clone())
                    .fetch_one(c),
                )
            })
            .await
            .map_err(Failure::into_error)?;
            if got == Some(2) {
                return Ok(None);
            }
            let display = name.clone();
            grant_or_not(&inner, &mut st, name, &display, got)
        })
        .await
    }

    /// A blocking `GET_LOCK` for up to `timeout` (`None`: no limit), `display` naming the
    /// lock in errors. Only on a dedicated session: nothing else waits behind it, and dropping
    /// the call (with the session) closes the connection, which ends the wait on the server.
    ///
    /// The wait is asked for in pieces of at most `session_deadline`, each under a client
    /// limit of the piece plus `check_timeout`: the socket has no keepalive, so a server cut
    /// off during a long wait is noticed at the end of the piece instead of never. The server
    /// wakes a waiter inside a piece the moment the lock is free; a new piece queues again.
    pub async fn lock(
        &self,
        name: String,
        display: &str,
        timeout: Option<Duration>,
    ) -> Result<PendingGrant> {
        let mut st = self.inner.state.lock().await;
        let started = Instant::now();
        let piece = self.inner.cfg.session_deadline;
        loop {
            let left = match timeout {
                Some(t) => t.saturating_sub(started.elapsed()),
                None => piece,
            };
            let this = left.min(piece).max(Duration::from_millis(1));
            let limit = Some(this + self.inner.cfg.check_timeout);
            let secs = this.as_secs_f64();
            let bound = name.clone();
            let got = statement(&self.inner, &mut st, Operation::Acquire, limit, move |c| {
                Box::pin(async move {
                    sqlx::query_scalar::<_, Option<i64>>("SELECT GET_LOCK(?, ?)")
                        .bind(bound)
                        .bind(secs)
                        .fetch_one(c)
                        .await
                })
            })
            .await
            .map_err(Failure::into_error)?;
            if let Some(g) = grant_or_not(&self.inner, &mut st, name.clone(), display, got)? {
                return Ok(g);
            }
            if timeout.is_some_and(|t| started.elapsed() >= t) {
                return Err(Error::new(
                    ErrorKind::Timeout,
                    BACKEND,
                    Operation::Acquire,
                    format!(
                        "lock {display:?} still held by another session after {:?}",
                        timeout.unwrap_or_default()
                    ),
                ));
            }
        }
    }

    /// `RELEASE_LOCK(name)`. `Ok(true)`: the lock was ours until now; `Ok(false)`: it was
    /// not — the server says another session holds it (0) or nobody does (NULL), or the
    /// session is gone and its locks with it.
    pub async fn unlock(&self, name: String) -> Result<bool> {
        self.run(move |inner, mut st| async move {
            if st.conn.is_none() {
                return Ok(false);
            }
            let was_held = st.held.contains(&name);
            let limit = inner.cfg.check_timeout;
            let got = statement(&inner, &mut st, Operation::Release, Some(limit), |c| {
                Box::pin(
                    sqlx::query_scalar::<_, Option<i64>>("SELECT RELEASE_LOCK(?)")
                        .bind(name.clone())
                        .fetch_one(c),
                )
            })
            .await;
            if got.is_ok() {
                // Forgotten only once the server has answered: a name whose release failed
                // stays "held", so this session never asks for it again (which the server
                // would grant re-entrantly).
                st.held.remove(&name);
            }
            match got {
                Ok(Some(1)) => Ok(true),
                Ok(answer) => {
                    let why = match answer {
                        Some(0) => "another session holds it",
                        _ => "no session holds it",
                    };
                    tracing::warn!(
                        lock = %name,
                        session = inner.id,
                        was_held,
                        "RELEASE_LOCK: the lock was not ours any more: {why}"
                    );
                    Ok(false)
                }
                Err(Failure::Gone(_)) => Ok(false),
                Err(Failure::Statement(e)) => {
                    // The lock may still be ours on the server and nothing would release it
                    // while the session lives: end the session, which frees it.
                    die(&inner, &mut st, &format!("RELEASE_LOCK failed: {e}"));
                    Err(e)
                }
            }
        })
        .await
    }

    /// Who holds `name` now: `IS_USED_LOCK(name)`, the holder's `CONNECTION_ID()` (`None`:
    /// nobody), and whether that is this session.
    pub async fn holder(&self, name: String) -> Result<Option<(u64, bool)>> {
        self.run(move |inner, mut st| async move {
            let limit = Some(inner.cfg.check_timeout);
            let id = statement(&inner, &mut st, Operation::Acquire, limit, move |c| {
                Box::pin(async move {
                    // BIGINT, signed (CONNECTION_ID() is unsigned).
                    sqlx::query_scalar::<_, Option<i64>>("SELECT IS_USED_LOCK(?)")
                        .bind(name)
                        .fetch_one(c)
                        .await
                })
            })
            .await
            .map_err(Failure::into_error)?;
            Ok(id.map(|id| (id as u64, id as u64 == inner.conn_id)))
        })
        .await
    }

    /// `Ok(true)`: the session answered after this call was made, as the same server
    /// session; `Ok(false)`: the session is gone (its locks are freed or will be); `Err`: the
    /// check failed without ending the session.
    pub async fn check(&self) -> Result<bool> {
        if !self.is_alive() {
            return Ok(false);
        }
        let asked = Instant::now();
        self.run(move |inner, mut st| async move {
            if st.conn.is_none() {
                return Ok(false);
            }
            if st.last_check_sent.is_some_and(|t| t >= asked) {
                return Ok(true);
            }
            let sent = Instant::now();
            let limit = inner.cfg.check_timeout;
            let got = statement(&inner, &mut st, Operation::Extend, Some(limit), |c| {
                Box::pin(sqlx::query_scalar::<_, u64>("SELECT CONNECTION_ID()").fetch_one(c))
            })
            .await;
            match got {
                Ok(id) if id == inner.conn_id => {
                    st.last_check_sent = Some(sent);
                    Ok(true)
                }
                Ok(other) => {
                    let why = format!(
                        "the session's connection id changed from {} to {other} (a proxy \
                         between dlock and the server?)",
                        inner.conn_id
                    );
                    die(&inner, &mut st, &why);
                    Ok(false)
                }
                Err(Failure::Gone(_)) => Ok(false),
                Err(Failure::Statement(e)) => Err(e),
            }
        })
        .await
    }

    /// The next fencing token of `name`, from the fencing table (created on first use).
    /// Called while the lock is held, so only the holder increments the counter.
    pub async fn fence(&self, name: String) -> Result<u64> {
        self.run(move |inner, mut st| async move {
            let Fencing::Table(table) = inner.cfg.fencing.clone() else {
                return Err(Error::new(
                    ErrorKind::Unsupported,
                    BACKEND,
                    Operation::Acquire,
                    "fencing is off (?fencing=table turns it on)",
                ));
            };
            let limit = Some(inner.cfg.check_timeout);
            if !st.fencing_ready {
                let create = format!(
                    "CREATE TABLE IF NOT EXISTS {table} (name VARBINARY(192) PRIMARY KEY, \
                     token BIGINT UNSIGNED NOT NULL) ENGINE=InnoDB"
                );
                statement(&inner, &mut st, Operation::Acquire, limit, |c| {
                    Box::pin(async move { c.execute(create.as_str()).await.map(|_| ()) })
                })
                .await
                .map_err(Failure::into_error)?;
                st.fencing_ready = true;
            }
            // LAST_INSERT_ID(expr) hands the new value back in the OK packet: one round trip.
            let upsert = format!(
                "INSERT INTO {table} (name, token) VALUES (?, LAST_INSERT_ID(1)) \
                 ON DUPLICATE KEY UPDATE token = LAST_INSERT_ID(token + 1)"
            );
            let done = statement(&inner, &mut st, Operation::Acquire, limit, move |c| {
                Box::pin(async move { sqlx::query(&upsert).bind(name).execute(c).await })
            })
            .await
            .map_err(Failure::into_error)?;
            Ok(done.last_insert_id())
        })
        .await
    }

    pub fn is_alive(&self) -> bool {
        self.inner.alive.load(Ordering::Acquire)
    }

    /// A handle that does not keep the session open.
    pub fn downgrade(&self) -> WeakSession {
        WeakSession(Arc::downgrade(&self.inner))
    }
}

/// A session handle that does not keep it open (for the session watch's list).
pub(crate) struct WeakSession(std::sync::Weak<Inner>);

impl WeakSession {
    /// The session, if it is still open and alive.
    pub fn upgrade(&self) -> Option<Session> {
        self.0
            .upgrade()
            .map(|inner| Session { inner })
            .filter(Session::is_alive)
    }
}

impl lock_core::Reusable for Session {
    fn is_alive(&self) -> bool {
        Session::is_alive(self)
    }

    fn is_idle(&self) -> bool {
        self.is_alive()
            && lock(&self.inner.monitors).is_empty()
            && self
                .inner
                .state
                .try_lock()
                .is_ok_and(|st| st.conn.is_some() && st.held.is_empty())
    }
}

/// A `GET_LOCK` answer: 1 granted, 0 not (timed out), NULL an error on the server (the
/// statement was killed, the server ran out of memory).
fn grant_or_not(
    inner: &Arc<Inner>,
    st: &mut State,
    name: String,
    display: &str,
    got: Option<i64>,
) -> Result<Option<PendingGrant>> {
    match got {
        Some(1) => {
            st.held.insert(name.clone());
            Ok(Some(PendingGrant {
                name,
                session: Some(Session {
                    inner: Arc::clone(inner),
                }),
            }))
        }
        Some(0) => Ok(None),
        other => Err(Error::new(
            ErrorKind::Backend,
            BACKEND,
            Operation::Acquire,
            format!(
                "GET_LOCK for lock {display:?} answered {other:?} (an error on the server, or \
                 the statement was killed)"
            ),
        )),
    }
}

type StatementFuture<'c, T> =
    std::pin::Pin<Box<dyn Future<Output = std::result::Result<T, sqlx::Error>> + Send + 'c>>;

/// Runs one statement on the session's connection within `limit`; a connection error or no
/// answer in time ends the session (and tells its guards).
async fn statement<T>(
    inner: &Arc<Inner>,
    st: &mut State,
    op: Operation,
    limit: Option<Duration>,
    f: impl for<'c> FnOnce(&'c mut MySqlConnection) -> StatementFuture<'c, T>,
) -> std::result::Result<T, Failure> {
    let Some(conn) = st.conn.as_mut() else {
        return Err(Failure::Gone(dead()));
    };
    let r = match limit {
        Some(limit) => match tokio::time::timeout(limit, f(conn)).await {
            Ok(r) => r,
            Err(_) => {
                // Not `Timeout`, which means "still held when the wait ran out".
                let e = Error::new(
                    ErrorKind::Connection,
                    BACKEND,
                    op,
                    format!("the server did not answer within {limit:?}; the session is closed"),
                );
                die(inner, st, &format!("no answer within {limit:?}"));
                return Err(Failure::Gone(e));
            }
        },
        None => f(conn).await,
    };
    match r {
        Ok(v) => Ok(v),
        Err(e) if is_connection_error(&e) => {
            die(inner, st, &format!("connection error: {e}"));
            Err(Failure::Gone(db_error(e, op)))
        }
        Err(e) => Err(Failure::Statement(db_error(e, op))),
    }
}

/// Closes the connection and tells every guard on the session.
fn die(inner: &Arc<Inner>, st: &mut State, reason: &str) {
    inner.alive.store(false, Ordering::Release);
    if let Some(conn) = st.conn.take() {
        // Dropping the connection closes its socket at once; the server frees its locks.
        drop(conn);
        tracing::debug!(
            session = inner.id,
            conn_id = inner.conn_id,
            reason,
            "lock session closed"
        );
    }
    let monitors: Vec<LeaseMonitor> = lock(&inner.monitors).drain().map(|(_, m)| m).collect();
    for m in monitors {
        m.report_lost(&format!("the lock session ended: {reason}"));
    }
    st.held.clear();
}

/// Locks `m`; a poisoned lock still holds coherent data here (map operations only).
pub(crate) fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}
