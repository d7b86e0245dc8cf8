//! Whether a lock session is still one server session. Session advisory locks belong to the
//! server session that took them, so a transaction-pooling proxy that hands consecutive
//! statements to different server sessions would make them meaningless: every lock session
//! marks its server session at open, and its statements report the backend pid and the mark.

use lock_core::{Error, ErrorKind, Operation};

use crate::BACKEND;

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
