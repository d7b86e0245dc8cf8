//! Payment grade: exactly one execution per key, on PostgreSQL.
//!
//! One row per key in the store's table (`idempotency_keys` unless configured):
//!
//! ```sql
//! CREATE TABLE idempotency_keys (
//!   key             text PRIMARY KEY,
//!   fingerprint     bytea NOT NULL,          -- SHA-256 of the request (Fingerprint)
//!   status          text NOT NULL,           -- in_progress | done | failed
//!   token           bigint NOT NULL,         -- fencing: +1 on every claim of the key
//!   lease_until     timestamptz NOT NULL,    -- an in_progress claim's lease
//!   response_status int,                     -- done: the stored response
//!   content_type    text,
//!   response_body   bytea,
//!   created_at      timestamptz NOT NULL DEFAULT now(),
//!   expires_at      timestamptz NOT NULL     -- after it the key may be used afresh
//! );
//! ```
//!
//! Every time is the server's (`now()`): no client clock is compared with another.

use std::time::Duration;

use sqlx::postgres::PgRow;
use sqlx::{PgConnection, PgPool, Postgres, Row, Transaction};

use crate::{Error, Fingerprint, check_key};

/// What [`IdempotencyStore::begin`] does when the key's first request is still running.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnInProgress {
    /// Answer [`Error::InProgress`] at once (the client retries; HTTP 409).
    Reject,
    /// Look again every `poll` until it is done, its lease runs out (then this request
    /// recovers the key) or `max` has passed (then [`Error::InProgress`]).
    Wait {
        /// The longest wait.
        max: Duration,
        /// How often to look.
        poll: Duration,
    },
}

/// How a store behaves; [`StoreConfig::default`] for the defaults.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoreConfig {
    /// The table (`[a-z_][a-z0-9_]*`, at most 63 bytes): `idempotency_keys`.
    pub table: String,
    /// How long a claim is the key's before a retry may recover it: 30 s. Longer than the
    /// slowest request; [`Claim`]s of longer work call [`IdempotencyStore::extend`].
    pub lease: Duration,
    /// How long a key is remembered after its first use: 24 h.
    pub retention: Duration,
    /// What a request finds while the key's first request runs: [`OnInProgress::Reject`].
    pub on_in_progress: OnInProgress,
    /// The largest request body [`IdempotencyStore::begin`] takes: 1 MiB.
    pub max_body: usize,
    /// The largest response body it stores: 1 MiB.
    pub max_response: usize,
}

impl Default for StoreConfig {
    fn default() -> Self {
        StoreConfig {
            table: "idempotency_keys".into(),
            lease: Duration::from_secs(30),
            retention: Duration::from_secs(24 * 3600),
            on_in_progress: OnInProgress::Reject,
            max_body: 1 << 20,
            max_response: 1 << 20,
        }
    }
}

impl StoreConfig {
    fn check(&self) -> Result<(), Error> {
        let t = &self.table;
        let ok = t.len() <= 63
            && t.chars()
                .next()
                .is_some_and(|c| c.is_ascii_lowercase() || c == '_')
            && t.chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
        if !ok {
            return Err(Error::InvalidConfig(format!(
                "table {t:?}: 1–63 of [a-z0-9_], not starting with a digit"
            )));
        }
        let ms = Duration::from_millis;
        if self.lease < ms(10) || self.lease > Duration::from_secs(24 * 3600) {
            return Err(Error::InvalidConfig(format!(
                "lease {:?}: between 10 ms and 24 h",
                self.lease
            )));
        }
        if self.retention < self.lease || self.retention > Duration::from_secs(366 * 24 * 3600) {
            return Err(Error::InvalidConfig(format!(
                "retention {:?}: at least the lease, at most 366 days",
                self.retention
            )));
        }
        if let OnInProgress::Wait { max, poll } = self.on_in_progress {
            if poll < ms(1) || poll > max || max > Duration::from_secs(3600) {
                return Err(Error::InvalidConfig(format!(
                    "wait {max:?} polling every {poll:?}: poll at least 1 ms and at most the wait, the wait at most 1 h"
                )));
            }
        }
        if self.max_body == 0 || self.max_response == 0 {
            return Err(Error::InvalidConfig(
                "max_body and max_response: at least 1".into(),
            ));
        }
        Ok(())
    }
}

/// A stored response: replayed byte for byte to every retry of a done key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredResponse {
    /// HTTP status (or any code of the caller's protocol).
    pub status: u16,
    /// Its content type, if any.
    pub content_type: Option<String>,
    /// The body, exactly.
    pub body: Vec<u8>,
}

/// The right to run a key's request: this one runs it, nobody else, while the claim's token
/// is the key's.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Claim {
    /// The key.
    pub key: String,
    /// The fencing token: the key's claim count.
    pub token: i64,
    /// True when an earlier claim's lease had run out with the request unfinished (a process
    /// that died mid-request) and this claim took the key over.
    pub recovered: bool,
}

/// What [`IdempotencyStore::begin`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Begin {
    /// Run the request; finish with [`IdempotencyStore::transaction`] +
    /// [`ClaimTx::complete`] (or [`IdempotencyStore::complete`]), or give the key back with
    /// [`IdempotencyStore::fail`].
    Claimed(Claim),
    /// The key's request is done: answer with this, run nothing.
    Replay(StoredResponse),
}

/// Payment-grade idempotency keys in a PostgreSQL table.
#[derive(Debug, Clone)]
pub struct IdempotencyStore {
    pool: PgPool,
    cfg: StoreConfig,
}

/// How often [`IdempotencyStore::begin`] starts over when a key row vanished between its
/// insert and its read (a concurrent [`IdempotencyStore::purge_expired`]).
const BEGIN_ATTEMPTS: usize = 3;

impl IdempotencyStore {
    /// A store on `pool` (checks `cfg`; creates nothing: see [`IdempotencyStore::create_table`]).
    pub fn new(pool: PgPool, cfg: StoreConfig) -> Result<IdempotencyStore, Error> {
        cfg.check()?;
        Ok(IdempotencyStore { pool, cfg })
    }

    /// The configuration.
    pub fn config(&self) -> &StoreConfig {
        &self.cfg
    }

    /// `CREATE TABLE IF NOT EXISTS` the store's table (the module docs show it).
    pub async fn create_table(&self) -> Result<(), Error> {
        sqlx::query(&format!(
            "CREATE TABLE IF NOT EXISTS {} (
               key text PRIMARY KEY,
               fingerprint bytea NOT NULL,
               status text NOT NULL CHECK (status IN ('in_progress', 'done', 'failed')),
               token bigint NOT NULL,
               lease_until timestamptz NOT NULL,
               response_status int,
               content_type text,
               response_body bytea,
               created_at timestamptz NOT NULL DEFAULT now(),
               expires_at timestamptz NOT NULL)",
            self.cfg.table
        ))
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Starts a request with `key` and this `body` (fingerprinted with
    /// [`Fingerprint::of_body`]): see [`IdempotencyStore::begin_fingerprint`].
    pub async fn begin(&self, key: &str, body: &[u8]) -> Result<Begin, Error> {
        if body.len() > self.cfg.max_body {
            return Err(Error::BodyTooLarge {
                len: body.len(),
                max: self.cfg.max_body,
            });
        }
        self.begin_fingerprint(key, Fingerprint::of_body(body))
            .await
    }

    /// Starts a request: the first with `key` claims it atomically ([`Begin::Claimed`]); a
    /// retry of a done request gets its stored response ([`Begin::Replay`]); a retry while it
    /// runs gets [`Error::InProgress`] (or waits, [`OnInProgress::Wait`]); a retry after its
    /// lease ran out with it unfinished recovers the key (`Claim::recovered`, a new token); a
    /// retry after [`IdempotencyStore::fail`] claims it again; the key with another
    /// fingerprint is [`Error::KeyReused`]. A key past its retention (and not running under
    /// a live lease) is claimed afresh.
    pub async fn begin_fingerprint(&self, key: &str, fp: Fingerprint) -> Result<Begin, Error> {
        check_key(key)?;
        let deadline = match self.cfg.on_in_progress {
            OnInProgress::Reject => None,
            OnInProgress::Wait { max, poll } => Some((tokio::time::Instant::now() + max, poll)),
        };
        loop {
            match self.begin_once(key, &fp).await {
                Err(Error::InProgress { key, lease_left }) => match deadline {
                    Some((at, poll)) if tokio::time::Instant::now() + poll <= at => {
                        tokio::time::sleep(poll.min(lease_left.max(Duration::from_millis(1))))
                            .await;
                    }
                    _ => return Err(Error::InProgress { key, lease_left }),
                },
                other => return other,
            }
        }
    }

    async fn begin_once(&self, key: &str, fp: &Fingerprint) -> Result<Begin, Error> {
        let t = &self.cfg.table;
        let (lease, keep) = (
            self.cfg.lease.as_millis() as i64,
            self.cfg.retention.as_millis() as i64,
        );
        for _ in 0..BEGIN_ATTEMPTS {
            let inserted: Option<i64> = sqlx::query_scalar(&format!(
                "INSERT INTO {t} (key, fingerprint, status, token, lease_until, expires_at)
                 VALUES ($1, $2, 'in_progress', 1, now() + $3 * interval '1 millisecond',
                         now() + $4 * interval '1 millisecond')
                 ON CONFLICT (key) DO NOTHING RETURNING token"
            ))
            .bind(key)
            .bind(&fp.0[..])
            .bind(lease)
            .bind(keep)
            .fetch_optional(&self.pool)
            .await?;
            if let Some(token) = inserted {
                return Ok(Begin::Claimed(Claim {
                    key: key.into(),
                    token,
                    recovered: false,
                }));
            }
            let mut tx = self.pool.begin().await?;
            let row = sqlx::query(&format!(
                "SELECT fingerprint, status, token, response_status, content_type, response_body,
                        expires_at < now() AND (status <> 'in_progress' OR lease_until < now()) AS expired,
                        GREATEST(0, EXTRACT(EPOCH FROM lease_until - now()) * 1000)::bigint AS lease_left_ms
                   FROM {t} WHERE key = $1 FOR UPDATE"
            ))
            .bind(key)
            .fetch_optional(&mut *tx)
            .await?;
            let Some(row) = row else {
                continue; // purged in between: insert again
            };
            let found = Found::read(&row)?;
            let claim_again = |fresh: bool, recovered: bool| async move {
                self.reclaim(tx, key, fp, fresh).await.map(|token| {
                    Begin::Claimed(Claim {
                        key: key.into(),
                        token,
                        recovered,
                    })
                })
            };
            if found.expired {
                return claim_again(true, false).await;
            }
            if found.fingerprint != fp.0 {
                return Err(Error::KeyReused { key: key.into() });
            }
            return match found.status.as_str() {
                "done" => Ok(Begin::Replay(found.response.ok_or_else(|| {
                    Error::InvalidConfig(format!("key {key:?} is done without a response"))
                })?)),
                "failed" => claim_again(false, false).await,
                _ if found.lease_left_ms > 0 => Err(Error::InProgress {
                    key: key.into(),
                    lease_left: Duration::from_millis(found.lease_left_ms as u64),
                }),
                _ => claim_again(false, true).await,
            };
        }
        Err(Error::Database(sqlx::Error::RowNotFound))
    }

    /// Takes the locked key row over: a new token and lease (and, `fresh`, a new fingerprint
    /// and retention: the old key had expired).
    async fn reclaim(
        &self,
        mut tx: Transaction<'static, Postgres>,
        key: &str,
        fp: &Fingerprint,
        fresh: bool,
    ) -> Result<i64, Error> {
        let t = &self.cfg.table;
        let token: i64 = sqlx::query_scalar(&format!(
            "UPDATE {t} SET status = 'in_progress', token = token + 1,
                    lease_until = now() + $2 * interval '1 millisecond',
                    response_status = NULL, content_type = NULL, response_body = NULL,
                    fingerprint = CASE WHEN $3 THEN $4 ELSE fingerprint END,
                    created_at = CASE WHEN $3 THEN now() ELSE created_at END,
                    expires_at = CASE WHEN $3 THEN now() + $5 * interval '1 millisecond' ELSE expires_at END
              WHERE key = $1 RETURNING token"
        ))
        .bind(key)
        .bind(self.cfg.lease.as_millis() as i64)
        .bind(fresh)
        .bind(&fp.0[..])
        .bind(self.cfg.retention.as_millis() as i64)
        .fetch_one(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(token)
    }

    /// Opens the transaction that finishes `claim`: the key row is locked and checked to be
    /// still this claim's ([`Error::Fenced`] if a retry recovered it). Run the request's
    /// writes on [`ClaimTx::conn`], then [`ClaimTx::complete`] stores the response and commits
    /// both at once — a late request whose key was taken over can neither store its response
    /// nor keep its writes.
    pub async fn transaction(&self, claim: &Claim) -> Result<ClaimTx, Error> {
        let mut tx = self.pool.begin().await?;
        let ours: Option<i64> = sqlx::query_scalar(&format!(
            "SELECT token FROM {} WHERE key = $1 AND token = $2 AND status = 'in_progress' FOR UPDATE",
            self.cfg.table
        ))
        .bind(&claim.key)
        .bind(claim.token)
        .fetch_optional(&mut *tx)
        .await?;
        if ours.is_none() {
            return Err(fenced(claim));
        }
        Ok(ClaimTx {
            tx,
            claim: claim.clone(),
            table: self.cfg.table.clone(),
            max_response: self.cfg.max_response,
        })
    }

    /// Stores `response` for `claim` without other writes (a request whose effects are
    /// elsewhere): [`IdempotencyStore::transaction`] + [`ClaimTx::complete`].
    pub async fn complete(&self, claim: &Claim, response: &StoredResponse) -> Result<(), Error> {
        self.transaction(claim).await?.complete(response).await
    }

    /// Gives the key back after a failure that changed nothing (a retry may run the request
    /// again); [`Error::Fenced`] if the claim is no longer the key's. A failure that must be
    /// answered the same way to every retry (a declined card) is a response: complete it.
    pub async fn fail(&self, claim: &Claim) -> Result<(), Error> {
        let n = sqlx::query(&format!(
            "UPDATE {} SET status = 'failed' WHERE key = $1 AND token = $2 AND status = 'in_progress'",
            self.cfg.table
        ))
        .bind(&claim.key)
        .bind(claim.token)
        .execute(&self.pool)
        .await?
        .rows_affected();
        if n == 1 { Ok(()) } else { Err(fenced(claim)) }
    }

    /// Renews `claim`'s lease for another [`StoreConfig::lease`] ([`Error::Fenced`] if it is
    /// no longer the key's).
    pub async fn extend(&self, claim: &Claim) -> Result<(), Error> {
        let n = sqlx::query(&format!(
            "UPDATE {} SET lease_until = now() + $3 * interval '1 millisecond'
              WHERE key = $1 AND token = $2 AND status = 'in_progress'",
            self.cfg.table
        ))
        .bind(&claim.key)
        .bind(claim.token)
        .bind(self.cfg.lease.as_millis() as i64)
        .execute(&self.pool)
        .await?
        .rows_affected();
        if n == 1 { Ok(()) } else { Err(fenced(claim)) }
    }

    /// Deletes keys past their retention that are not running; returns how many.
    pub async fn purge_expired(&self) -> Result<u64, Error> {
        Ok(sqlx::query(&format!(
            "DELETE FROM {} WHERE expires_at < now() AND (status <> 'in_progress' OR lease_until < now())",
            self.cfg.table
        ))
        .execute(&self.pool)
        .await?
        .rows_affected())
    }
}

fn fenced(claim: &Claim) -> Error {
    Error::Fenced {
        key: claim.key.clone(),
        token: claim.token,
    }
}

/// A key row as `begin` read it.
struct Found {
    fingerprint: Vec<u8>,
    status: String,
    response: Option<StoredResponse>,
    expired: bool,
    lease_left_ms: i64,
}

impl Found {
    fn read(row: &PgRow) -> Result<Found, Error> {
        let status: Option<i32> = row.try_get("response_status")?;
        let body: Option<Vec<u8>> = row.try_get("response_body")?;
        Ok(Found {
            fingerprint: row.try_get("fingerprint")?,
            status: row.try_get("status")?,
            response: match (status, body) {
                (Some(s), Some(body)) => Some(StoredResponse {
                    status: u16::try_from(s).unwrap_or(0),
                    content_type: row.try_get("content_type")?,
                    body,
                }),
                _ => None,
            },
            expired: row.try_get("expired")?,
            lease_left_ms: row.try_get("lease_left_ms")?,
        })
    }
}

/// The transaction that finishes a claim: see [`IdempotencyStore::transaction`]. Dropped
/// without [`ClaimTx::complete`], it rolls back and the claim stays in progress (until
/// [`IdempotencyStore::fail`] or its lease ends).
pub struct ClaimTx {
    tx: Transaction<'static, Postgres>,
    claim: Claim,
    table: String,
    max_response: usize,
}

impl std::fmt::Debug for ClaimTx {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClaimTx")
            .field("claim", &self.claim)
            .finish_non_exhaustive()
    }
}

impl ClaimTx {
    /// The transaction's connection, for the request's own writes (the charge).
    pub fn conn(&mut self) -> &mut PgConnection {
        &mut self.tx
    }

    /// Stores `response`, marks the key done and commits the request's writes with it.
    pub async fn complete(mut self, response: &StoredResponse) -> Result<(), Error> {
        if response.body.len() > self.max_response {
            return Err(Error::ResponseTooLarge {
                len: response.body.len(),
                max: self.max_response,
            });
        }
        sqlx::query(&format!(
            "UPDATE {} SET status = 'done', response_status = $3, content_type = $4, response_body = $5
              WHERE key = $1 AND token = $2",
            self.table
        ))
        .bind(&self.claim.key)
        .bind(self.claim.token)
        .bind(i32::from(response.status))
        .bind(response.content_type.as_deref())
        .bind(&response.body[..])
        .execute(&mut *self.tx)
        .await?;
        self.tx.commit().await?;
        Ok(())
    }
}
