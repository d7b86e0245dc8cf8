//! The statements of a lock session, run one at a time on its connection under a time limit,
//! and what their outcome does to the session.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::task::Poll;
use std::time::Duration;

use lock_core::{Error, ErrorKind, LeaseMonitor, LockMode, Operation, Result};
use sqlx::Executor;
use tokio::time::Instant;

use super::check::{CHECK, is_prepared_statement_gone, pooler_error, session_mismatch};
use super::error::{db_error, dead, is_connection_error, is_duplicate, is_lock_timeout};
use super::{Inner, PendingGrant, State, Tried, lock};
use crate::BACKEND;
use crate::config::Fencing;
use crate::key::{KeyArg, KeyId, key_id};

/// One statement's view of the session: the shared parts and the connection, locked.
pub(super) struct Ctx<'a> {
    inner: &'a Arc<Inner>,
    st: &'a mut State,
}

/// Why an operation failed.
pub(super) enum Failure {
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
    pub(super) fn new(inner: &'a Arc<Inner>, st: &'a mut State) -> Result<Self> {
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

    pub(super) async fn check(&mut self) -> Op<()> {
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

    pub(super) async fn try_lock(&mut self, arg: &KeyArg, mode: LockMode) -> Op<Tried> {
        let limit = Some(self.inner.cfg.check_timeout);
        let inner = self.inner;
        let sql = inner.stmts_for(arg, mode).try_lock.as_str();
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
            return Ok(Tried::Busy);
        }
        let key = key_id(self.inner.cfg.key, key);
        // Session locks are re-entrant: a second grant of a key this session already holds
        // would let two guards of this process in at once. Undo it and report contention.
        // A second shared grant is undone too: PostgreSQL grants it from the session's own
        // count without looking at waiting requests, so readers of one session taking turns
        // would starve a waiting writer. The caller asks on a session of its own instead.
        if let Some((held_mode, _)) = self.st.held.get(&key) {
            let both_shared = mode == LockMode::Shared && *held_mode == LockMode::Shared;
            self.unlock_stmt(key, mode).await?;
            return Ok(if both_shared {
                Tried::HeldHere
            } else {
                Tried::Busy
            });
        }
        self.note_held(key, mode);
        Ok(Tried::Granted(PendingGrant::new(self.inner, key, mode)))
    }

    pub(super) async fn lock(
        &mut self,
        arg: &KeyArg,
        mode: LockMode,
        timeout: Option<Duration>,
    ) -> Op<PendingGrant> {
        let inner = self.inner;
        let sql = inner.stmts_for(arg, mode).lock.as_str();
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

    pub(super) async fn unlock(&mut self, key: KeyId, mode: LockMode) -> Op<bool> {
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

    pub(super) async fn fence(&mut self, name: &str) -> Op<i64> {
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
    pub(super) fn into_error(self) -> Error {
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
        KeyArg::Slot(s, seed) => q.bind(s.as_str()).bind(*seed),
    }
}

/// A statement that did not answer within its time limit.
struct TimedOut;

/// The time limit of a session's statements: one tokio timer per session, moved forward for
/// each statement. Moving a registered timer later is an atomic store; a fresh timer per
/// statement (`tokio::time::timeout`) costs a timer-wheel insertion and a removal, which
/// measured 1.5 µs per acquire + release (two statements) on a 2-core VM.
#[derive(Default)]
pub(super) struct StatementTimer {
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
