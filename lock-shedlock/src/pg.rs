//! `shedlock+postgres://`: the ShedLock JDBC table, database time.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use lock_core::{
    Backend, BoxFuture, Capabilities, ConnectUrl, Error, ErrorKind, FencingToken, Finish, Grant,
    Guard, Lease, LeaseMonitor, LockName, LockOptions, Operation, PendingLease, Result,
    Supervisors, WaitPlan, lease_deadline,
};
use sqlx::postgres::PgListener;
use tokio::sync::{OnceCell, broadcast};
use tokio::time::Instant;

use crate::BACKEND_PG;
use crate::config::{ShedPgConfig, TableLayout, quote_ident};
use crate::owner::owner;
use crate::primary::PrimaryPool;

/// The channel releases notify on (payload: the lock name), so waiting dlock clients wake at
/// once. Java ShedLock does not notify; its releases are noticed at the row's `lock_until`.
const CHANNEL: &str = "dlock_shedlock";
/// "Now" in ShedLock's database-time mode.
const NOW: &str = "timezone('utc', CURRENT_TIMESTAMP)";

/// Every statement for one table layout, built once at connect. The text is the contract
/// with ShedLock and with other dlock versions (pinned by the crate's golden tests).
pub(crate) struct Sql {
    /// Creates the ShedLock table (ShedLock's documented DDL) when `create_table` is on.
    pub(crate) create_table: String,
    /// Creates the fencing table, when there is one.
    pub(crate) create_fence_table: Option<String>,
    pub(crate) acquire: String,
    pub(crate) extend: String,
    pub(crate) unlock: String,
    pub(crate) remaining: String,
    /// With a fencing table: `acquire` and the name's next token in one statement, so the
    /// token is counted in the same transaction as the grant (no other grant between).
    pub(crate) acquire_fenced: Option<String>,
}

impl Sql {
    /// The statements for layout `l` (and fencing table `fencing_table`), plus the quoted
    /// table name; `Err` names an identifier that cannot be quoted.
    pub(crate) fn new(
        l: &TableLayout,
        fencing_table: Option<&str>,
    ) -> std::result::Result<(Sql, String), String> {
        let q = |s: &str| quote_ident(s);
        let t = match &l.schema {
            Some(schema) => format!("{}.{}", q(schema)?, q(&l.table)?),
            None => q(&l.table)?,
        };
        let (n, lu, la, lb) = (
            q(&l.name)?,
            q(&l.lock_until)?,
            q(&l.locked_at)?,
            q(&l.locked_by)?,
        );
        let acquire = format!(
            "INSERT INTO {t} AS s ({n}, {lu}, {la}, {lb}) \
             VALUES ($1, {NOW} + make_interval(secs => $2), {NOW}, $3) \
             ON CONFLICT ({n}) DO UPDATE SET {lu} = EXCLUDED.{lu}, {la} = EXCLUDED.{la}, {lb} = EXCLUDED.{lb} \
             WHERE s.{lu} <= {NOW}"
        );
        let sql = Sql {
            create_table: format!(
                "CREATE TABLE IF NOT EXISTS {t} ({n} VARCHAR(64) NOT NULL, {lu} TIMESTAMP NOT NULL, \
                 {la} TIMESTAMP NOT NULL, {lb} VARCHAR(255) NOT NULL, PRIMARY KEY ({n}))"
            ),
            create_fence_table: match fencing_table {
                Some(ft) => Some(format!(
                    "CREATE TABLE IF NOT EXISTS {} (name text PRIMARY KEY, token bigint NOT NULL)",
                    q(ft)?
                )),
                None => None,
            },
            acquire_fenced: match fencing_table {
                // The fencing row is taken only when `won` took the ShedLock row: an empty
                // `won` inserts nothing and returns no token.
                Some(ft) => Some(format!(
                    "WITH won AS ({acquire} RETURNING 1) \
                     INSERT INTO {} AS f (name, token) SELECT $1, 1 FROM won \
                     ON CONFLICT (name) DO UPDATE SET token = f.token + 1 RETURNING token",
                    q(ft)?
                )),
                None => None,
            },
            acquire,
            extend: format!(
                "UPDATE {t} SET {lu} = {NOW} + make_interval(secs => $3) \
                 WHERE {n} = $1 AND {lb} = $2 AND {lu} > {NOW}"
            ),
            // GREATEST(locked_at + at_least, now): ShedLock's unlock. The release notifies
            // waiting dlock clients (NOTIFY is sent at commit, only if a row was updated).
            unlock: format!(
                "WITH u AS (UPDATE {t} SET {lu} = GREATEST({la} + make_interval(secs => $3), {NOW}) \
                 WHERE {n} = $1 AND {lb} = $2 AND {lu} > {NOW} RETURNING 1) \
                 SELECT count(*) FROM u, LATERAL (SELECT pg_notify('{CHANNEL}', $1)) AS n"
            ),
            remaining: format!(
                "SELECT EXTRACT(EPOCH FROM ({lu} - {NOW}))::float8 FROM {t} WHERE {n} = $1"
            ),
        };
        Ok((sql, t))
    }
}

/// ShedLock's JDBC table on PostgreSQL, in database-time mode.
pub struct ShedPgBackend {
    /// Starts the guards' renewal supervisors only when due.
    supervisors: Supervisors,
    cfg: ShedPgConfig,
    primary: Arc<PrimaryPool>,
    sql: Arc<Sql>,
    /// Longest name the `name` column takes, in characters (`None`: unlimited).
    name_max: Option<usize>,
    locked_by_max: usize,
    releases: OnceCell<Listening>,
}

impl fmt::Debug for ShedPgBackend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ShedPgBackend")
            .field("config", &self.cfg)
            .finish()
    }
}

fn db(op: Operation) -> impl Fn(sqlx::Error) -> Error {
    move |e| {
        let kind = match &e {
            sqlx::Error::Database(_) => ErrorKind::Backend,
            _ => ErrorKind::Connection,
        };
        Error::new(kind, BACKEND_PG, op, "PostgreSQL statement failed").with_source(e)
    }
}

impl ShedPgBackend {
    /// Capabilities without `?fencing=on`; with it, `fencing` and `persistent_tokens` too.
    pub const CAPABILITIES: Capabilities = Capabilities {
        fencing: false,
        shared: false,
        semaphore: false,
        lease: true,
        renew: true,
        at_least: true,
        notify: true,
        persistent_tokens: false,
        min_ttl: Some(Duration::from_millis(1)),
    };

    /// Connects, checks (or creates) the table and reads its column sizes.
    pub async fn connect(url: &ConnectUrl) -> Result<Self> {
        let cfg = ShedPgConfig::from_url(url)?;
        let (sql, table) = Sql::new(&cfg.layout, cfg.fencing_table.as_deref())
            .map_err(|e| Error::invalid_url(BACKEND_PG, e))?;
        // With several hosts: the first that qualifies now, and again after a failover.
        // A TLS or authentication refusal is reported as such (`Tls`, `Auth`), not as an
        // unreachable host.
        let primary = PrimaryPool::connect(&cfg)
            .await
            .map_err(|e| lock_core::pg_tls::reclassify(e, crate::config::pg_refusal))?;
        let pool = primary.pool();
        let exists: Option<String> = sqlx::query_scalar("SELECT to_regclass($1)::text")
            .bind(&table)
            .fetch_one(pool)
            .await
            .map_err(db(Operation::Connect))?;
        if exists.is_none() {
            if !cfg.create_table {
                return Err(Error::new(
                    ErrorKind::Backend,
                    BACKEND_PG,
                    Operation::Connect,
                    format!("table {table} does not exist and create_table=false"),
                ));
            }
            ignore_duplicate(sqlx::query(&sql.create_table).execute(pool).await)
                .map_err(db(Operation::Connect))?;
            tracing::info!(%table, "created the ShedLock table");
        }
        if let Some(create) = &sql.create_fence_table {
            ignore_duplicate(sqlx::query(create).execute(pool).await)
                .map_err(db(Operation::Connect))?;
        }
        let sizes: Vec<(String, Option<i32>)> = sqlx::query_as(
            "SELECT column_name::text, character_maximum_length::int4 FROM information_schema.columns \
             WHERE table_schema = coalesce($1, current_schema()) AND table_name = $2",
        )
        .bind(cfg.layout.schema.as_deref())
        .bind(&cfg.layout.table)
        .fetch_all(pool)
        .await
        .map_err(db(Operation::Connect))?;
        let size = |col: &str| {
            sizes
                .iter()
                .find(|(c, _)| c == col)
                .and_then(|(_, s)| s.map(|s| s as usize))
        };
        let name_max = size(&cfg.layout.name);
        let locked_by_max = size(&cfg.layout.locked_by).unwrap_or(255);
        Ok(ShedPgBackend {
            supervisors: Supervisors::new(),
            cfg,
            primary,
            sql: Arc::new(sql),
            name_max,
            locked_by_max,
            releases: OnceCell::new(),
        })
    }

    fn check_name(&self, name: &LockName) -> Result<()> {
        if let Some(max) = self.name_max {
            let len = name.as_str().chars().count();
            if len > max {
                return Err(Error::invalid_name(
                    BACKEND_PG,
                    format!(
                        "lock name is {len} characters; the {} column takes at most {max}",
                        self.cfg.layout.name
                    ),
                ));
            }
        }
        Ok(())
    }

    /// A receiver of released names, backed by one LISTEN connection (started on first use).
    async fn release_notifications(&self) -> Option<broadcast::Receiver<String>> {
        let tx = self
            .releases
            .get_or_try_init(|| async {
                let mut listener = PgListener::connect_with(self.primary.pool()).await?;
                listener.listen(CHANNEL).await?;
                let (tx, _) = broadcast::channel(256);
                let task = tokio::spawn(listen(Arc::clone(&self.primary), listener, tx.clone()));
                Ok::<_, sqlx::Error>(Listening { tx, task })
            })
            .await
            .ok()?;
        Some(tx.tx.subscribe())
    }

    /// One upsert attempt, as a future that owns what it needs (so that it can be finished
    /// by a spawned task, see [`Finish`]). `Ok(None)`: the row is someone else's;
    /// `Ok(Some(token))`: the row is ours, with its fencing token when there is a fencing table.
    fn attempt(
        &self,
        name: &LockName,
        opts: &LockOptions,
        owner: &str,
    ) -> impl Future<Output = Result<Option<Option<FencingToken>>>> + Send + 'static {
        let (primary, sql) = (Arc::clone(&self.primary), Arc::clone(&self.sql));
        let (name, owner) = (name.as_str().to_owned(), owner.to_owned());
        let secs = opts.ttl().as_secs_f64();
        async move {
            let mut conn = primary
                .conn()
                .await
                .inspect_err(|e| primary.failed(e))
                .map_err(db(Operation::Acquire))?;
            if let Some(fenced) = &sql.acquire_fenced {
                let token: Option<i64> = sqlx::query_scalar(fenced)
                    .bind(&name)
                    .bind(secs)
                    .bind(&owner)
                    .fetch_optional(&mut *conn)
                    .await
                    .inspect_err(|e| primary.failed(e))
                    .map_err(db(Operation::Acquire))?;
                return Ok(token.map(|t| Some(FencingToken::new(t as u64))));
            }
            let r = sqlx::query(&sql.acquire)
                .bind(&name)
                .bind(secs)
                .bind(&owner)
                .execute(&mut *conn)
                .await
                .inspect_err(|e| primary.failed(e))
                .map_err(db(Operation::Acquire))?;
            Ok((r.rows_affected() == 1).then_some(None))
        }
    }

    async fn acquire_inner(&self, name: &LockName, opts: &LockOptions) -> Result<Guard> {
        opts.check_for(BACKEND_PG, &self.capabilities())?;
        self.check_name(name)?;
        let plan = WaitPlan::new(opts);
        let requested_at = plan.requested_at;
        let lease = Arc::new(ShedPgLease {
            supervisors: self.supervisors.clone(),
            primary: Arc::clone(&self.primary),
            sql: self.sql.clone(),
            name: name.clone(),
            owner: owner(self.locked_by_max),
            at_least: opts.at_least().unwrap_or(Duration::ZERO),
        });
        let mut releases = None;
        let mut listening = false;
        loop {
            let sent = Instant::now();
            // Armed before the upsert: if this future is dropped while it is in flight, the row
            // is released in the background.
            let pending = PendingLease::new(lease.clone());
            let attempt = self.attempt(name, opts, &lease.owner);
            // If this future is dropped while the upsert runs, `Finish` completes it first and
            // only then drops `pending`, which gives a won row back: a release sent beside the
            // unfinished upsert would find no row (an uncommitted insert is invisible to it) and
            // the row the insert then takes would stay until its `lock_until`.
            let (won, pending) = Finish::new(async move {
                let won = attempt.await;
                if let Ok(None) = won {
                    pending.disarm();
                    return (won, None);
                }
                (won, Some(pending))
            })
            .await;
            // An error drops `pending`, which releases the row in case the upsert went through.
            if let (Some(token), Some(pending)) = (won?, pending) {
                let monitor =
                    LeaseMonitor::new(name, BACKEND_PG, Some(lease_deadline(sent, opts.ttl())));
                return Ok(Guard::new(
                    Grant {
                        name: name.clone(),
                        backend: BACKEND_PG,
                        token,
                        lease: pending.into_lease(),
                        monitor,
                        requested_at,
                    },
                    opts,
                ));
            }
            if plan.expired(Instant::now()) {
                return Err(plan.busy_error(BACKEND_PG, name, " (row not expired yet)"));
            }
            if !listening {
                listening = true;
                releases = self.release_notifications().await;
                // A release between the attempt above and the LISTEN would be missed: retry once.
                continue;
            }
            // Sleep until the row expires or a dlock release of this name is announced.
            let mut conn = self
                .primary
                .conn()
                .await
                .inspect_err(|e| self.primary.failed(e))
                .map_err(db(Operation::Acquire))?;
            let remaining: Option<f64> = sqlx::query_scalar(&self.sql.remaining)
                .bind(name.as_str())
                .fetch_optional(&mut *conn)
                .await
                .inspect_err(|e| self.primary.failed(e))
                .map_err(db(Operation::Acquire))?;
            // Back to the pool before sleeping: a waiter that kept it would starve the
            // holder's release (and the other waiters) of connections — with 8 waiters in one
            // process, 2 handoffs a second (measured by `dlock compare`'s strategies section).
            drop(conn);
            let wake =
                Instant::now() + Duration::from_secs_f64(remaining.unwrap_or(0.0).clamp(0.0, 1e9));
            let announced = async {
                let Some(rx) = releases.as_mut() else {
                    // LISTEN failed: the row's expiry is the only wake-up.
                    return std::future::pending::<()>().await;
                };
                loop {
                    match rx.recv().await {
                        // Empty: the listener was disconnected and may have missed releases.
                        Ok(n) if n == name.as_str() || n.is_empty() => return,
                        Ok(_) => {}
                        Err(broadcast::error::RecvError::Lagged(_)) => return,
                        Err(broadcast::error::RecvError::Closed) => {
                            std::future::pending::<()>().await
                        }
                    }
                }
            };
            tokio::select! {
                _ = announced => {}
                _ = tokio::time::sleep_until(plan.cap(wake)) => {}
            }
        }
    }
}

/// The LISTEN connection's task and its broadcast; dropping it (with the backend) stops the
/// task and closes the connection.
struct Listening {
    tx: broadcast::Sender<String>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Listening {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Forwards released names from `listener` to `tx` for as long as the backend lives. A lost
/// connection is replaced through the pool (so on the current primary after a failover);
/// releases sent meanwhile were missed, so every waiter is woken (an empty name) once a
/// listener listens again. No receiver right now is fine: later waiters subscribe again.
async fn listen(
    primary: Arc<PrimaryPool>,
    mut listener: PgListener,
    tx: broadcast::Sender<String>,
) {
    loop {
        match listener.try_recv().await {
            Ok(Some(n)) => {
                let _ = tx.send(n.payload().to_string());
            }
            // The connection was lost, and the listener reconnected and listens again.
            Ok(None) => {
                let _ = tx.send(String::new());
            }
            Err(sqlx::Error::PoolClosed) => return,
            // The server ended the session (a FATAL error), or no new connection could be
            // opened: a new listener, as soon as one listens.
            Err(e) => {
                tracing::debug!(error = %e, "the LISTEN connection is down; replacing it");
                primary.failed(&e);
                drop(listener);
                listener = relisten(&primary).await;
                let _ = tx.send(String::new());
            }
        }
    }
}

/// A new listener on [`CHANNEL`], retried (10 ms doubling up to 1 s apart) until one
/// listens.
async fn relisten(primary: &Arc<PrimaryPool>) -> PgListener {
    let mut pause = Duration::from_millis(10);
    loop {
        let attempt = async {
            let mut l = PgListener::connect_with(primary.pool()).await?;
            l.listen(CHANNEL).await?;
            Ok::<_, sqlx::Error>(l)
        };
        match attempt.await {
            Ok(l) => return l,
            Err(e) => {
                primary.failed(&e);
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(Duration::from_secs(1));
            }
        }
    }
}

fn ignore_duplicate(
    r: std::result::Result<sqlx::postgres::PgQueryResult, sqlx::Error>,
) -> std::result::Result<(), sqlx::Error> {
    match r {
        Ok(_) => Ok(()),
        Err(sqlx::Error::Database(d))
            if matches!(d.code().as_deref(), Some("23505" | "42P07" | "42710")) =>
        {
            Ok(())
        }
        Err(e) => Err(e),
    }
}

impl Backend for ShedPgBackend {
    fn name(&self) -> &'static str {
        BACKEND_PG
    }

    fn capabilities(&self) -> Capabilities {
        let fencing = self.sql.acquire_fenced.is_some();
        Capabilities {
            fencing,
            persistent_tokens: fencing,
            ..Self::CAPABILITIES
        }
    }

    fn acquire<'a>(
        &'a self,
        name: &'a LockName,
        opts: &'a LockOptions,
    ) -> BoxFuture<'a, Result<Guard>> {
        lock_core::observe::instrument_acquire(
            BACKEND_PG,
            name,
            opts,
            self.acquire_inner(name, opts),
        )
    }
}

struct ShedPgLease {
    supervisors: Supervisors,
    primary: Arc<PrimaryPool>,
    sql: Arc<Sql>,
    name: LockName,
    owner: String,
    at_least: Duration,
}

impl ShedPgLease {
    async fn unlock(&self) -> Result<bool> {
        let mut conn = self
            .primary
            .conn()
            .await
            .inspect_err(|e| self.primary.failed(e))
            .map_err(db(Operation::Release))?;
        let n: i64 = sqlx::query_scalar(&self.sql.unlock)
            .bind(self.name.as_str())
            .bind(&self.owner)
            .bind(self.at_least.as_secs_f64())
            .fetch_one(&mut *conn)
            .await
            .inspect_err(|e| self.primary.failed(e))
            .map_err(db(Operation::Release))?;
        Ok(n == 1)
    }
}

impl Lease for ShedPgLease {
    fn supervisors(&self) -> Option<&Supervisors> {
        Some(&self.supervisors)
    }

    fn extend(&self, ttl: Duration) -> BoxFuture<'_, Result<bool>> {
        Box::pin(async move {
            let mut conn = self
                .primary
                .conn()
                .await
                .inspect_err(|e| self.primary.failed(e))
                .map_err(db(Operation::Extend))?;
            let r = sqlx::query(&self.sql.extend)
                .bind(self.name.as_str())
                .bind(&self.owner)
                .bind(ttl.as_secs_f64())
                .execute(&mut *conn)
                .await
                .inspect_err(|e| self.primary.failed(e))
                .map_err(db(Operation::Extend))?;
            Ok(r.rows_affected() == 1)
        })
    }

    fn release(&self) -> BoxFuture<'_, Result<bool>> {
        Box::pin(self.unlock())
    }

    /// `at_least` is enforced by the table itself: the unlock statement sets `lock_until` to
    /// `locked_at + at_least` when that is later than now.
    fn release_after(&self, _keep: Duration) -> BoxFuture<'_, Result<bool>> {
        Box::pin(self.unlock())
    }
}
