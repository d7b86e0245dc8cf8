//! Whether a lock session is still one server session. Session advisory locks belong to the
//! server session that took them, so a transaction-pooling proxy that hands consecutive
//! statements to different server sessions would make them meaningless: every lock session
//! marks its server session at open, and its statements report the backend pid and the mark.
//! A pooler that hands a lone client the same server session every time shows nothing from
//! inside: once per backend, the pooler probe (another connection) looks for the mark.

use lock_core::{Error, ErrorKind, Operation, Result};
use sqlx::postgres::PgConnection;
use sqlx::{Connection, Executor};

use super::Session;
use crate::BACKEND;

/// `application_name` of the pooler probe's connection.
pub(crate) const PROBE_APP_NAME: &str = "dlock-pooler-probe";

/// The session check: backend pid and session marker.
pub(super) const CHECK: &str = "SELECT pg_backend_pid(), current_setting('dlock.session', true)";

/// Why a statement's (pid, marker) show that it ran on another server session than the one
/// the lock session was opened on (`pid0`, `marker0`), if they do.
pub(super) fn session_mismatch(
    pid0: i32,
    marker0: &str,
    pid: i32,
    marker: Option<&str>,
) -> Option<String> {
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
pub(super) fn new_marker(id: u64) -> String {
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
pub(super) fn is_prepared_statement_gone(e: &sqlx::Error) -> bool {
    matches!(e, sqlx::Error::Database(db) if matches!(db.code().as_deref(), Some("26000" | "42P05")))
}

/// The error for a lock session that is not one server session.
pub(super) fn pooler_error(op: Operation, what: &str) -> Error {
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

/// The session check on the probe's connection, over the simple-query protocol: no
/// prepared statement is left on a shared server session.
async fn probe_check(conn: &mut PgConnection) -> sqlx::Result<(i32, Option<String>)> {
    let row = conn.fetch_one(CHECK).await?;
    sqlx::FromRow::from_row(&row)
}

impl Session {
    /// The pooler probe, once per backend, right after its first lock session is open: one
    /// more connection runs the session check and must not see this session's marker.
    ///
    /// The checks inside a lock session catch a pooler only when it hands the session's
    /// statements to different server sessions. A pooler that hands a lone client the same
    /// server session every time shows nothing from inside: PgBouncer's default (LIFO: the
    /// most recently released server connection is reused first), or a pool with a single
    /// server connection. Another client is what it hands that same server session to next:
    /// the probe's statement, sent just after the lock session's last one released it. On a
    /// direct server (or a session-pooling port) the probe is a server session of its own and
    /// cannot see the marker, whatever the timing: no false positive. The marker alone
    /// decides, not the pid: two hosts may have equal pids.
    ///
    /// A probe that cannot connect or answer within `check_timeout` (a server at
    /// `max_connections`, an exhausted session pool) proves nothing either way: `connect`
    /// goes on, and only the lock session's own checks remain.
    pub(crate) async fn probe_pooler(&self) -> Result<()> {
        let inner = &self.inner;
        let probe = async {
            // The host the lock sessions pick (the first that qualifies, as for them).
            let (mut conn, _) = crate::connect::connect(&inner.cfg, Some(PROBE_APP_NAME))
                .await
                .map_err(|e| e.to_string())?;
            let got = probe_check(&mut conn).await.map_err(|e| e.to_string());
            let _ = conn.close().await;
            got
        };
        let (pid, marker) = match tokio::time::timeout(inner.cfg.check_timeout, probe).await {
            Ok(Ok(got)) => got,
            Ok(Err(e)) => {
                tracing::debug!(error = %e, "the pooler probe could not run; no evidence");
                return Ok(());
            }
            Err(_) => {
                tracing::debug!("the pooler probe did not answer in time; no evidence");
                return Ok(());
            }
        };
        if marker.as_deref() != Some(inner.marker.as_str()) {
            return Ok(());
        }
        let what = format!(
            "another connection (the pooler probe) was handed the lock session's server \
             session: it saw the lock session's marker (dlock.session = {}, backend pid {pid}; \
             the lock session's pid is {})",
            inner.marker, inner.pid
        );
        Err(pooler_error(Operation::Connect, &what))
    }
}
