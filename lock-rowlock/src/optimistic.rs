//! Optimistic locking: a version column, read with the row, compared and bumped by the write.
//!
//! ```text
//! UPDATE inventory SET stock = stock - $3, version = version + 1
//!  WHERE id = $1 AND version = $2 RETURNING version
//! ```
//!
//! No row comes back when another writer got there first: the helper then reads the row's
//! version and answers [`Error::Conflict`] (or [`Error::NotFound`] when the row is gone).
//! Under PostgreSQL's default READ COMMITTED the `WHERE` is evaluated again on the newest
//! committed row if a concurrent writer held it, so two writers that read the same version
//! never both succeed.

use sqlx::{PgConnection, Postgres, QueryBuilder};

use crate::{Error, Ident};

/// A row's id and the version the caller read it at.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Versioned {
    /// The row's `id`.
    pub id: i64,
    /// Its version column.
    pub version: i64,
}

/// A table with a `bigint` id column and a `bigint` version column (`id` and `version`
/// unless named otherwise).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VersionedTable {
    table: Ident,
    id: Ident,
    version: Ident,
}

impl VersionedTable {
    /// `table` with columns `id` and `version`.
    pub fn new(table: &str) -> Result<VersionedTable, Error> {
        VersionedTable::with_columns(table, "id", "version")
    }

    /// `table` with the given id and version columns.
    pub fn with_columns(table: &str, id: &str, version: &str) -> Result<VersionedTable, Error> {
        Ok(VersionedTable {
            table: Ident::new(table)?,
            id: Ident::new(id)?,
            version: Ident::new(version)?,
        })
    }

    /// The table's name, as given.
    pub fn name(&self) -> String {
        self.table.name()
    }

    /// The row's current version ([`Error::NotFound`] without the row).
    pub async fn version(&self, conn: &mut PgConnection, id: i64) -> Result<Versioned, Error> {
        let sql = format!(
            "SELECT {v} FROM {t} WHERE {i} = $1",
            v = self.version,
            t = self.table,
            i = self.id
        );
        match sqlx::query_scalar::<_, i64>(&sql)
            .bind(id)
            .fetch_optional(conn)
            .await?
        {
            Some(version) => Ok(Versioned { id, version }),
            None => Err(self.not_found(id)),
        }
    }

    /// Writes row `read.id` if it is still at `read.version`: `set` adds the assignments
    /// (`stock = stock - ` then a bound value; not the version column, which the helper
    /// bumps), and the row's new version comes back. [`Error::Conflict`] when another writer
    /// changed it since it was read, [`Error::NotFound`] when it is gone; nothing is written
    /// then.
    pub async fn update<F>(
        &self,
        conn: &mut PgConnection,
        read: Versioned,
        set: F,
    ) -> Result<Versioned, Error>
    where
        F: FnOnce(&mut QueryBuilder<'static, Postgres>),
    {
        let mut q = QueryBuilder::<Postgres>::new(format!("UPDATE {} SET ", self.table));
        set(&mut q);
        q.push(format!(
            ", {v} = {v} + 1 WHERE {i} = ",
            v = self.version,
            i = self.id
        ));
        q.push_bind(read.id);
        q.push(format!(" AND {} = ", self.version));
        q.push_bind(read.version);
        q.push(format!(" RETURNING {}", self.version));
        let updated: Option<i64> = q.build_query_scalar().fetch_optional(&mut *conn).await?;
        match updated {
            Some(version) => Ok(Versioned {
                id: read.id,
                version,
            }),
            None => Err(self.conflict(conn, read).await),
        }
    }

    /// Deletes row `read.id` if it is still at `read.version` (the same conflict rules as
    /// [`VersionedTable::update`]).
    pub async fn delete(&self, conn: &mut PgConnection, read: Versioned) -> Result<(), Error> {
        let sql = format!(
            "DELETE FROM {t} WHERE {i} = $1 AND {v} = $2",
            t = self.table,
            i = self.id,
            v = self.version
        );
        let done = sqlx::query(&sql)
            .bind(read.id)
            .bind(read.version)
            .execute(&mut *conn)
            .await?
            .rows_affected();
        if done == 1 {
            return Ok(());
        }
        Err(self.conflict(conn, read).await)
    }

    /// Why a write at `read.version` found no row: the row's version now
    /// ([`Error::Conflict`]), or [`Error::NotFound`] (or the error reading it).
    async fn conflict(&self, conn: &mut PgConnection, read: Versioned) -> Error {
        match self.version(conn, read.id).await {
            Ok(now) => Error::Conflict {
                table: self.name(),
                id: read.id,
                expected: read.version,
                current: now.version,
            },
            Err(e) => e,
        }
    }

    fn not_found(&self, id: i64) -> Error {
        Error::NotFound {
            table: self.name(),
            id,
        }
    }
}
