//! What a failed statement means for the lock session: which sqlx errors end it, and the
//! SQLSTATEs the lock statements expect.

use lock_core::{Error, ErrorKind, Operation};

use crate::BACKEND;

pub(super) fn dead() -> Error {
    Error::new(
        ErrorKind::Lost,
        BACKEND,
        Operation::Acquire,
        "the lock session has ended",
    )
}

/// Maps a sqlx error; connection-level failures are `Connection`.
pub(super) fn db_error(e: sqlx::Error, op: Operation) -> Error {
    let kind = match &e {
        sqlx::Error::Database(_) => ErrorKind::Backend,
        _ => ErrorKind::Connection,
    };
    Error::new(kind, BACKEND, op, "PostgreSQL statement failed").with_source(e)
}

/// Errors after which the connection cannot be trusted any more: I/O and protocol errors,
/// and the server's own "this session is over" errors (SQLSTATE class 08 connection
/// exception, 57P0x operator intervention such as `pg_terminate_backend` or a shutdown).
pub(super) fn is_connection_error(e: &sqlx::Error) -> bool {
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

pub(super) fn sqlstate(e: &Error) -> Option<String> {
    let src = std::error::Error::source(e)?;
    let sqlx_err = src.downcast_ref::<sqlx::Error>()?;
    match sqlx_err {
        sqlx::Error::Database(db) => db.code().map(|c| c.into_owned()),
        _ => None,
    }
}

pub(super) fn is_lock_timeout(e: &Error) -> bool {
    sqlstate(e).as_deref() == Some("55P03")
}

pub(super) fn is_duplicate(e: &Error) -> bool {
    matches!(sqlstate(e).as_deref(), Some("23505" | "42P07" | "42710"))
}
