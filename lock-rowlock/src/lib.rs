#![doc = include_str!("../README.md")]
#![deny(missing_docs)]

pub mod optimistic;
pub mod pessimistic;
mod retry;
mod table;

pub use optimistic::{Versioned, VersionedTable};
pub use pessimistic::{RowLockTx, RowWait};
pub use retry::{MAX_ATTEMPTS, RetryPolicy, Retryable};
pub use table::Ident;

use std::time::Duration;

/// What went wrong, by kind: every outcome a caller handles differently has its own variant.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// Optimistic: the row's version was no longer the one read (someone else wrote first).
    #[error("conflict on {table} id {id}: expected version {expected}, found {current}")]
    Conflict {
        /// The table.
        table: String,
        /// The row.
        id: i64,
        /// The version the caller read.
        expected: i64,
        /// The version the row has now.
        current: i64,
    },
    /// The row does not exist (any more).
    #[error("{table} has no row with id {id}")]
    NotFound {
        /// The table.
        table: String,
        /// The row.
        id: i64,
    },
    /// Optimistic: every attempt of a [`RetryPolicy`] ended in a conflict.
    #[error("gave up after {attempts} attempts, each ended in a conflict (last: {last})")]
    RetriesExhausted {
        /// Attempts made.
        attempts: u32,
        /// The last conflict.
        last: Box<Error>,
    },
    /// Pessimistic with [`RowWait::NoWait`]: a row was locked by another transaction.
    #[error("a row of {table} is locked by another transaction (NOWAIT)")]
    LockNotAvailable {
        /// The table.
        table: String,
    },
    /// Pessimistic with [`RowWait::Timeout`]: the rows did not come free within the timeout.
    #[error("rows of {table} still locked by another transaction after {after:?} (lock_timeout)")]
    LockTimeout {
        /// The table.
        table: String,
        /// The timeout that ran out.
        after: Duration,
    },
    /// The server aborted the transaction for a serialization failure or a deadlock (SQLSTATE
    /// 40001 / 40P01): retrying the whole transaction is the documented remedy.
    #[error("transaction aborted by the server ({code}): {message}")]
    Aborted {
        /// The SQLSTATE.
        code: String,
        /// The server's message.
        message: String,
    },
    /// Bad input: an identifier, a timeout, a retry policy or a batch size out of range.
    #[error("invalid {what}: {why}")]
    InvalidInput {
        /// What was given.
        what: &'static str,
        /// Why it is refused.
        why: String,
    },
    /// Any other database or connection error.
    #[error(transparent)]
    Database(sqlx::Error),
}

impl Error {
    /// True for the outcomes a retry of the whole operation may cure: a conflict, a
    /// serialization failure or a deadlock.
    pub fn is_retryable(&self) -> bool {
        matches!(self, Error::Conflict { .. } | Error::Aborted { .. })
    }

    pub(crate) fn invalid(what: &'static str, why: impl Into<String>) -> Error {
        Error::InvalidInput {
            what,
            why: why.into(),
        }
    }
}

/// SQLSTATE `lock_not_available`: NOWAIT refused, or lock_timeout ran out.
pub(crate) const LOCK_NOT_AVAILABLE: &str = "55P03";

/// Maps a server error to [`Error::Aborted`] where it is one, else [`Error::Database`].
impl From<sqlx::Error> for Error {
    fn from(e: sqlx::Error) -> Error {
        if let sqlx::Error::Database(db) = &e {
            if let Some(code) = db.code() {
                if code == "40001" || code == "40P01" {
                    return Error::Aborted {
                        code: code.into_owned(),
                        message: db.message().to_string(),
                    };
                }
            }
        }
        Error::Database(e)
    }
}

/// The SQLSTATE of a server error, if `e` is one.
pub(crate) fn sqlstate(e: &sqlx::Error) -> Option<String> {
    match e {
        sqlx::Error::Database(db) => db.code().map(|c| c.into_owned()),
        _ => None,
    }
}
