//! Pessimistic locking: `SELECT … FOR UPDATE` in a transaction this module owns, with the
//! three ways not to wait forever — `NOWAIT`, `SKIP LOCKED` and a `lock_timeout`.
//!
//! A [`RowLockTx`] is one transaction: [`RowLockTx::begin`] opens it (and sets `lock_timeout`
//! for [`RowWait::Timeout`]), the `lock_*` calls take row locks in it, [`RowLockTx::conn`]
//! runs the caller's statements in it, and [`RowLockTx::commit`] ends it. Dropped without a
//! commit — an early return, an error, a panic — it rolls back, and the server frees its row
//! locks with it. Rows are locked in id order, so two transactions locking overlapping sets
//! do not deadlock each other.

use std::time::Duration;

use sqlx::{PgConnection, PgPool, Postgres, QueryBuilder, Transaction};

use crate::{Error, Ident, LOCK_NOT_AVAILABLE, sqlstate};

/// What a row lock does when another transaction holds the row.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RowWait {
    /// Wait until it is free (`FOR UPDATE`; the server's deadlock detector is the only bound).
    Wait,
    /// Fail at once: [`Error::LockNotAvailable`] (`FOR UPDATE NOWAIT`).
    NoWait,
    /// Leave it out of the result (`FOR UPDATE SKIP LOCKED`): for work queues and batches.
    SkipLocked,
    /// Wait at most this long (`SET LOCAL lock_timeout`), then [`Error::LockTimeout`];
    /// 1 ms to 1 h.
    Timeout(Duration),
}

/// The longest [`RowWait::Timeout`].
pub const MAX_LOCK_TIMEOUT: Duration = Duration::from_secs(3600);

/// A transaction holding row locks; see the module docs.
pub struct RowLockTx {
    tx: Transaction<'static, Postgres>,
    wait: RowWait,
}

impl std::fmt::Debug for RowLockTx {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RowLockTx")
            .field("wait", &self.wait)
            .finish_non_exhaustive()
    }
}

impl RowLockTx {
    /// Opens a transaction on a connection of `pool` whose row locks follow `wait`.
    pub async fn begin(pool: &PgPool, wait: RowWait) -> Result<RowLockTx, Error> {
        if let RowWait::Timeout(d) = wait {
            if d < Duration::from_millis(1) || d > MAX_LOCK_TIMEOUT {
                return Err(Error::invalid(
                    "lock timeout",
                    format!("{d:?}: between 1 ms and {MAX_LOCK_TIMEOUT:?}"),
                ));
            }
        }
        let mut tx = pool.begin().await?;
        if let RowWait::Timeout(d) = wait {
            // SET takes no bind parameters; the value is a checked integer.
            sqlx::query(&format!("SET LOCAL lock_timeout = {}", d.as_millis()))
                .execute(&mut *tx)
                .await?;
        }
        Ok(RowLockTx { tx, wait })
    }

    /// How this transaction's row locks wait.
    pub fn wait(&self) -> RowWait {
        self.wait
    }

    /// Locks the rows of `table` whose `id_column` is in `ids`, in id order, and returns the
    /// ids it locked: all that exist, except, with [`RowWait::SkipLocked`], those another
    /// transaction holds. A missing id is simply not in the answer.
    pub async fn lock_ids(
        &mut self,
        table: &Ident,
        id_column: &Ident,
        ids: &[i64],
    ) -> Result<Vec<i64>, Error> {
        self.lock_where(
            table,
            id_column,
            |q| {
                q.push(format!("{id_column} = ANY("));
                q.push_bind(ids.to_vec());
                q.push(")");
            },
            None,
        )
        .await
    }

    /// Locks up to `limit` rows of `table` matching the condition `filter` writes (with bound
    /// values), in id order, and returns their ids — the batch step of a purge or a queue
    /// (`RowWait::SkipLocked` lets several workers take disjoint batches at once).
    pub async fn lock_where<F>(
        &mut self,
        table: &Ident,
        id_column: &Ident,
        filter: F,
        limit: Option<i64>,
    ) -> Result<Vec<i64>, Error>
    where
        F: FnOnce(&mut QueryBuilder<'static, Postgres>),
    {
        if let Some(n) = limit {
            if n < 1 {
                return Err(Error::invalid("batch size", format!("{n}: at least 1")));
            }
        }
        let mut q =
            QueryBuilder::<Postgres>::new(format!("SELECT {id_column} FROM {table} WHERE "));
        filter(&mut q);
        q.push(format!(" ORDER BY {id_column}"));
        if let Some(n) = limit {
            q.push(" LIMIT ");
            q.push_bind(n);
        }
        q.push(match self.wait {
            RowWait::Wait | RowWait::Timeout(_) => " FOR UPDATE",
            RowWait::NoWait => " FOR UPDATE NOWAIT",
            RowWait::SkipLocked => " FOR UPDATE SKIP LOCKED",
        });
        q.build_query_scalar::<i64>()
            .fetch_all(&mut *self.tx)
            .await
            .map_err(|e| self.lock_error(table, e))
    }

    /// The transaction's connection, for the caller's own statements on the locked rows.
    pub fn conn(&mut self) -> &mut PgConnection {
        &mut self.tx
    }

    /// Commits: the writes become visible and the row locks are released.
    pub async fn commit(self) -> Result<(), Error> {
        Ok(self.tx.commit().await?)
    }

    /// Rolls back (what dropping it does too, without waiting for the answer).
    pub async fn rollback(self) -> Result<(), Error> {
        Ok(self.tx.rollback().await?)
    }

    fn lock_error(&self, table: &Ident, e: sqlx::Error) -> Error {
        if sqlstate(&e).as_deref() == Some(LOCK_NOT_AVAILABLE) {
            match self.wait {
                RowWait::NoWait => {
                    return Error::LockNotAvailable {
                        table: table.name(),
                    };
                }
                RowWait::Timeout(after) => {
                    return Error::LockTimeout {
                        table: table.name(),
                        after,
                    };
                }
                RowWait::Wait | RowWait::SkipLocked => {}
            }
        }
        e.into()
    }
}
