//! Mutants: deliberately broken backends the behaviour suite must reject. Each must fail the
//! named behaviour; the unbroken twin of the toy backend must pass everything (so a failure
//! is the bug's doing, not the toy's).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use conformance::{Connector, Outcome};
use dlock::{
    Backend, BoxFuture, Capabilities, Error, ErrorKind, FencingToken, Grant, Guard, Lease,
    LeaseMonitor, LockName, LockOptions, Operation, Wait, WaitPlan, lease_deadline,
};
use tokio::sync::Notify;
use tokio::time::Instant;

/// What is wrong with a toy backend.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Bug {
    None,
    /// Every grant gets token 1.
    RepeatingTokens,
    /// Release removes whoever holds the name (no ownership check).
    ReleaseWithoutOwnerCheck,
    /// Waiters are never woken by a release; they sleep out their whole wait.
    WaiterMissesHandoff,
    /// The guard has no deadline and renewal always "succeeds": it never reports `Lost`.
    NeverLost,
}

#[derive(Debug, Default)]
struct Table {
    holders: HashMap<LockName, (u64, Instant)>,
    tokens: HashMap<LockName, u64>,
    next: u64,
}

/// A small in-memory lock service (exclusive only), with an optional bug.
#[derive(Debug)]
struct Toy {
    bug: Bug,
    table: Arc<Mutex<Table>>,
    released: Arc<Notify>,
}

struct ToyLease {
    bug: Bug,
    table: Arc<Mutex<Table>>,
    released: Arc<Notify>,
    name: LockName,
    id: u64,
}

impl Lease for ToyLease {
    fn extend(&self, ttl: Duration) -> BoxFuture<'_, dlock::Result<bool>> {
        let mut t = self.table.lock().unwrap();
        let now = Instant::now();
        let ours = match t.holders.get_mut(&self.name) {
            Some((id, exp)) if *id == self.id && *exp > now => {
                *exp = now + ttl;
                true
            }
            _ => self.bug == Bug::NeverLost,
        };
        Box::pin(std::future::ready(Ok(ours)))
    }

    fn release(&self) -> BoxFuture<'_, dlock::Result<bool>> {
        let mut t = self.table.lock().unwrap();
        let now = Instant::now();
        let ours = match t.holders.get(&self.name) {
            Some((id, exp)) => {
                (*id == self.id && *exp > now) || self.bug == Bug::ReleaseWithoutOwnerCheck
            }
            None => false,
        };
        if ours {
            t.holders.remove(&self.name);
            if self.bug != Bug::WaiterMissesHandoff {
                self.released.notify_waiters();
            }
        }
        Box::pin(std::future::ready(Ok(ours)))
    }
}

impl Backend for Toy {
    fn name(&self) -> &'static str {
        "toy"
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities {
            fencing: true,
            lease: true,
            renew: true,
            notify: true,
            ..Capabilities::default()
        }
    }

    fn acquire<'a>(
        &'a self,
        name: &'a LockName,
        opts: &'a LockOptions,
    ) -> BoxFuture<'a, dlock::Result<Guard>> {
        Box::pin(async move {
            opts.validate()?;
            if opts.mode() != dlock::LockMode::Exclusive || opts.permits().is_some() {
                return Err(Error::new(
                    ErrorKind::Unsupported,
                    "toy",
                    Operation::Acquire,
                    "exclusive only",
                ));
            }
            let plan = WaitPlan::new(opts);
            loop {
                let notified = self.released.notified();
                tokio::pin!(notified);
                notified.as_mut().enable();
                let expiry = {
                    let mut t = self.table.lock().unwrap();
                    let now = Instant::now();
                    match t.holders.get(name) {
                        Some((_, exp)) if *exp > now => Some(*exp),
                        _ => {
                            t.next += 1;
                            let id = t.next;
                            t.holders.insert(name.clone(), (id, now + opts.ttl()));
                            let token = t.tokens.entry(name.clone()).or_insert(0);
                            *token += 1;
                            let token = if self.bug == Bug::RepeatingTokens {
                                1
                            } else {
                                *token
                            };
                            drop(t);
                            let valid_until = (self.bug != Bug::NeverLost)
                                .then(|| lease_deadline(now, opts.ttl()));
                            let lease = Arc::new(ToyLease {
                                bug: self.bug,
                                table: self.table.clone(),
                                released: self.released.clone(),
                                name: name.clone(),
                                id,
                            });
                            return Ok(Guard::new(
                                Grant {
                                    name: name.clone(),
                                    backend: "toy",
                                    token: Some(FencingToken::new(token)),
                                    lease,
                                    monitor: LeaseMonitor::new(name, "toy", valid_until),
                                    requested_at: plan.requested_at,
                                },
                                opts,
                            ));
                        }
                    }
                };
                let now = Instant::now();
                if plan.expired(now) {
                    return Err(plan.busy_error("toy", name, ""));
                }
                let until = plan.cap(expiry.unwrap_or(now + Duration::from_secs(3600)));
                if self.bug == Bug::WaiterMissesHandoff {
                    tokio::time::sleep_until(plan.deadline.unwrap_or(until)).await;
                } else {
                    tokio::select! {
                        _ = &mut notified => {}
                        _ = tokio::time::sleep_until(until) => {}
                    }
                }
            }
        })
    }
}

fn toy(bug: Bug) -> Connector {
    let table = Arc::new(Mutex::new(Table::default()));
    let released = Arc::new(Notify::new());
    Arc::new(move |_: &str| {
        let b: Arc<dyn Backend> = Arc::new(Toy {
            bug,
            table: table.clone(),
            released: released.clone(),
        });
        Box::pin(async move { Ok(b) })
    })
}

/// Runs the whole suite; returns the names of the failed behaviours.
async fn failures(url: &str, connect: Connector) -> Vec<&'static str> {
    let mut failed = Vec::new();
    for b in conformance::all() {
        if let Outcome::Failed(why) = conformance::run_with(&b, url, connect.clone()).await {
            eprintln!("{}: {why}", b.name);
            failed.push(b.name);
        }
    }
    failed
}

/// The mutant must fail behaviour `by` (only that one is run: the full suite on every mutant
/// would take minutes, and the unbroken twin shows the others pass).
async fn assert_caught(url: &str, connect: Connector, by: &str) {
    let b = conformance::all()
        .into_iter()
        .find(|b| b.name == by)
        .unwrap_or_else(|| panic!("no behaviour {by}"));
    match conformance::run_with(&b, url, connect).await {
        Outcome::Failed(why) => eprintln!("{by} caught the mutant: {why}"),
        other => panic!("expected {by} to fail on the mutant, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_unbroken_toy_passes_the_suite() {
    let failed = failures("", toy(Bug::None)).await;
    assert!(failed.is_empty(), "{failed:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn repeating_tokens_are_caught() {
    assert_caught(
        "",
        toy(Bug::RepeatingTokens),
        "behavior::test_fencing_tokens_increase",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn release_without_owner_check_is_caught() {
    assert_caught(
        "",
        toy(Bug::ReleaseWithoutOwnerCheck),
        "behavior::test_stale_release_is_refused",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn waiter_missing_the_handoff_is_caught() {
    assert_caught(
        "",
        toy(Bug::WaiterMissesHandoff),
        "behavior::test_waiter_wakes_on_release",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn guard_that_never_reports_lost_is_caught() {
    assert_caught(
        "",
        toy(Bug::NeverLost),
        "behavior::test_lease_expires_without_renewal",
    )
    .await;
}

/// A boxed grant for the server-backed mutants: lease deadline from the send time.
fn grant(
    name: &LockName,
    backend: &'static str,
    sent: Instant,
    opts: &LockOptions,
    lease: Arc<dyn Lease>,
    token: Option<u64>,
) -> Guard {
    Guard::new(
        Grant {
            name: name.clone(),
            backend,
            token: token.map(FencingToken::new),
            lease,
            monitor: LeaseMonitor::new(name, backend, Some(lease_deadline(sent, opts.ttl()))),
            requested_at: sent,
        },
        opts,
    )
}

fn contended(backend: &'static str) -> Error {
    Error::new(ErrorKind::Contended, backend, Operation::Acquire, "held")
}

fn failed(backend: &'static str) -> impl Fn(String) -> Error {
    move |m| Error::new(ErrorKind::Backend, backend, Operation::Acquire, m)
}

/// Try-only acquire loop for the mutants (they do not need notifications to be wrong).
async fn try_until<F, Fut>(opts: &LockOptions, mut once: F) -> dlock::Result<Guard>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = dlock::Result<Option<Guard>>>,
{
    let deadline = match opts.wait() {
        Wait::No => None,
        Wait::For(d) => Some(Instant::now() + d),
        Wait::Forever => Some(Instant::now() + Duration::from_secs(3600)),
    };
    loop {
        if let Some(g) = once().await? {
            return Ok(g);
        }
        match deadline {
            Some(d) if d > Instant::now() => tokio::time::sleep(Duration::from_millis(20)).await,
            Some(_) => {
                return Err(Error::new(
                    ErrorKind::Timeout,
                    "mutant",
                    Operation::Acquire,
                    "held",
                ));
            }
            None => return Err(contended("mutant")),
        }
    }
}

mod redis_mutant {
    //! Redis release and extend without the token check: `DEL` / `PEXPIRE` whatever is there.
    use super::*;

    #[derive(Debug)]
    pub struct NoTokenCheck {
        pub conn: redis::aio::MultiplexedConnection,
    }

    struct L {
        conn: redis::aio::MultiplexedConnection,
        key: String,
    }

    impl Lease for L {
        fn extend(&self, ttl: Duration) -> BoxFuture<'_, dlock::Result<bool>> {
            Box::pin(async move {
                let mut c = self.conn.clone();
                let n: i64 = redis::cmd("PEXPIRE")
                    .arg(&self.key)
                    .arg(ttl.as_millis() as u64)
                    .query_async(&mut c)
                    .await
                    .map_err(|e| failed("redis-mutant")(e.to_string()))?;
                Ok(n == 1)
            })
        }
        fn release(&self) -> BoxFuture<'_, dlock::Result<bool>> {
            Box::pin(async move {
                let mut c = self.conn.clone();
                let n: i64 = redis::cmd("DEL")
                    .arg(&self.key)
                    .query_async(&mut c)
                    .await
                    .map_err(|e| failed("redis-mutant")(e.to_string()))?;
                Ok(n == 1)
            })
        }
    }

    impl Backend for NoTokenCheck {
        fn name(&self) -> &'static str {
            "redis-mutant"
        }
        fn capabilities(&self) -> Capabilities {
            Capabilities {
                lease: true,
                renew: true,
                ..Capabilities::default()
            }
        }
        fn acquire<'a>(
            &'a self,
            name: &'a LockName,
            opts: &'a LockOptions,
        ) -> BoxFuture<'a, dlock::Result<Guard>> {
            Box::pin(try_until(opts, move || async move {
                let key = format!("mutant:{}", name.as_str());
                let mut c = self.conn.clone();
                let sent = Instant::now();
                let ok: Option<String> = redis::cmd("SET")
                    .arg(&key)
                    .arg("token")
                    .arg("NX")
                    .arg("PX")
                    .arg(opts.ttl().as_millis() as u64)
                    .query_async(&mut c)
                    .await
                    .map_err(|e| failed("redis-mutant")(e.to_string()))?;
                Ok(ok.map(|_| {
                    grant(
                        name,
                        "redis-mutant",
                        sent,
                        opts,
                        Arc::new(L {
                            conn: self.conn.clone(),
                            key,
                        }),
                        None,
                    )
                }))
            }))
        }
    }
}

mod postgres_mutant {
    //! The classic advisory-lock leak: the lock is taken on one pooled connection and the
    //! unlock runs on another (here deterministically: connection A locks, B unlocks), so the
    //! unlock returns false and the lock stays on A's session.
    use super::*;
    use sqlx::PgConnection;
    use tokio::sync::Mutex as AsyncMutex;

    #[derive(Debug)]
    pub struct PooledLock {
        pub a: Arc<AsyncMutex<PgConnection>>,
        pub b: Arc<AsyncMutex<PgConnection>>,
    }

    struct L {
        b: Arc<AsyncMutex<PgConnection>>,
        name: String,
    }

    impl Lease for L {
        fn extend(&self, _ttl: Duration) -> BoxFuture<'_, dlock::Result<bool>> {
            Box::pin(async { Ok(true) })
        }
        fn release(&self) -> BoxFuture<'_, dlock::Result<bool>> {
            Box::pin(async move {
                let mut b = self.b.lock().await;
                sqlx::query_scalar::<_, bool>("SELECT pg_advisory_unlock(hashtextextended($1, 0))")
                    .bind(&self.name)
                    .fetch_one(&mut *b)
                    .await
                    .map_err(|e| failed("pg-mutant")(e.to_string()))
            })
        }
    }

    impl Backend for PooledLock {
        fn name(&self) -> &'static str {
            "pg-mutant"
        }
        fn capabilities(&self) -> Capabilities {
            Capabilities::default()
        }
        fn acquire<'a>(
            &'a self,
            name: &'a LockName,
            opts: &'a LockOptions,
        ) -> BoxFuture<'a, dlock::Result<Guard>> {
            Box::pin(try_until(opts, move || async move {
                let sent = Instant::now();
                let ok: bool = {
                    let mut a = self.a.lock().await;
                    sqlx::query_scalar("SELECT pg_try_advisory_lock(hashtextextended($1, 0))")
                        .bind(name.as_str())
                        .fetch_one(&mut *a)
                        .await
                        .map_err(|e| failed("pg-mutant")(e.to_string()))?
                };
                let lease = Arc::new(L {
                    b: self.b.clone(),
                    name: name.as_str().to_string(),
                });
                Ok(ok.then(|| {
                    grant(
                        name,
                        "pg-mutant",
                        sent,
                        &opts.clone().with_ttl(Duration::from_secs(3600)),
                        lease,
                        None,
                    )
                }))
            }))
        }
    }
}

mod mariadb_mutant {
    //! `GET_LOCK` on one connection per client without keeping the set of held names: the
    //! server grants a name the session holds a second time (re-entrance), so two guards of
    //! one process overlap.
    use super::*;
    use sqlx::MySqlConnection;
    use tokio::sync::Mutex as AsyncMutex;

    #[derive(Debug)]
    pub struct Reentrant {
        pub conn: Arc<AsyncMutex<MySqlConnection>>,
    }

    struct L {
        conn: Arc<AsyncMutex<MySqlConnection>>,
        name: String,
    }

    impl Lease for L {
        fn extend(&self, _ttl: Duration) -> BoxFuture<'_, dlock::Result<bool>> {
            Box::pin(async { Ok(true) })
        }
        fn release(&self) -> BoxFuture<'_, dlock::Result<bool>> {
            Box::pin(async move {
                let mut c = self.conn.lock().await;
                let r: Option<i64> = sqlx::query_scalar("SELECT RELEASE_LOCK(?)")
                    .bind(&self.name)
                    .fetch_one(&mut *c)
                    .await
                    .map_err(|e| failed("mariadb-mutant")(e.to_string()))?;
                Ok(r == Some(1))
            })
        }
    }

    impl Backend for Reentrant {
        fn name(&self) -> &'static str {
            "mariadb-mutant"
        }
        fn capabilities(&self) -> Capabilities {
            Capabilities::default()
        }
        fn acquire<'a>(
            &'a self,
            name: &'a LockName,
            opts: &'a LockOptions,
        ) -> BoxFuture<'a, dlock::Result<Guard>> {
            Box::pin(try_until(opts, move || async move {
                let sent = Instant::now();
                let server = lock_mysql::name::mapped(name.as_str());
                let got: Option<i64> = {
                    let mut c = self.conn.lock().await;
                    sqlx::query_scalar("SELECT GET_LOCK(?, 0)")
                        .bind(&server)
                        .fetch_one(&mut *c)
                        .await
                        .map_err(|e| failed("mariadb-mutant")(e.to_string()))?
                };
                let lease = Arc::new(L {
                    conn: self.conn.clone(),
                    name: server,
                });
                Ok((got == Some(1)).then(|| {
                    grant(
                        name,
                        "mariadb-mutant",
                        sent,
                        &opts.clone().with_ttl(Duration::from_secs(3600)),
                        lease,
                        None,
                    )
                }))
            }))
        }
    }
}

mod shedlock_mutant {
    //! ShedLock unlock without the owner check (`WHERE name = ?` only).
    use super::*;
    use sqlx::postgres::PgPool;

    #[derive(Debug)]
    pub struct NoOwnerCheck {
        pub pool: PgPool,
    }

    struct L {
        pool: PgPool,
        name: String,
        owner: String,
    }

    const NOW: &str = "timezone('utc', CURRENT_TIMESTAMP)";

    impl Lease for L {
        fn extend(&self, ttl: Duration) -> BoxFuture<'_, dlock::Result<bool>> {
            Box::pin(async move {
                let r = sqlx::query(&format!("UPDATE shedlock SET lock_until = {NOW} + make_interval(secs => $3) WHERE name = $1 AND locked_by = $2 AND lock_until > {NOW}"))
                    .bind(&self.name).bind(&self.owner).bind(ttl.as_secs_f64())
                    .execute(&self.pool).await.map_err(|e| failed("shedlock-mutant")(e.to_string()))?;
                Ok(r.rows_affected() == 1)
            })
        }
        fn release(&self) -> BoxFuture<'_, dlock::Result<bool>> {
            Box::pin(async move {
                let r = sqlx::query(&format!(
                    "UPDATE shedlock SET lock_until = {NOW} WHERE name = $1"
                ))
                .bind(&self.name)
                .execute(&self.pool)
                .await
                .map_err(|e| failed("shedlock-mutant")(e.to_string()))?;
                Ok(r.rows_affected() == 1)
            })
        }
    }

    impl Backend for NoOwnerCheck {
        fn name(&self) -> &'static str {
            "shedlock-mutant"
        }
        fn capabilities(&self) -> Capabilities {
            Capabilities {
                lease: true,
                renew: true,
                ..Capabilities::default()
            }
        }
        fn acquire<'a>(
            &'a self,
            name: &'a LockName,
            opts: &'a LockOptions,
        ) -> BoxFuture<'a, dlock::Result<Guard>> {
            Box::pin(try_until(opts, move || async move {
                let owner = format!("mutant-{}", rand_suffix());
                let sent = Instant::now();
                let r = sqlx::query(&format!(
                    "INSERT INTO shedlock AS s (name, lock_until, locked_at, locked_by) VALUES ($1, {NOW} + make_interval(secs => $2), {NOW}, $3) \
                     ON CONFLICT (name) DO UPDATE SET lock_until = EXCLUDED.lock_until, locked_at = EXCLUDED.locked_at, locked_by = EXCLUDED.locked_by WHERE s.lock_until <= {NOW}"))
                    .bind(name.as_str()).bind(opts.ttl().as_secs_f64()).bind(&owner)
                    .execute(&self.pool).await.map_err(|e| failed("shedlock-mutant")(e.to_string()))?;
                let lease = Arc::new(L {
                    pool: self.pool.clone(),
                    name: name.as_str().to_string(),
                    owner,
                });
                Ok((r.rows_affected() == 1)
                    .then(|| grant(name, "shedlock-mutant", sent, opts, lease, None)))
            }))
        }
    }

    fn rand_suffix() -> u64 {
        use std::sync::atomic::{AtomicU64, Ordering};
        static N: AtomicU64 = AtomicU64::new(0);
        N.fetch_add(1, Ordering::Relaxed)
    }
}

fn fixed(b: Arc<dyn Backend>) -> Connector {
    Arc::new(move |_: &str| {
        let b = b.clone();
        Box::pin(async move { Ok(b) })
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_release_without_token_check_is_caught() {
    let r = dlock_fixtures::redis().await.unwrap();
    let conn = redis::Client::open(r.url())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let b: Arc<dyn Backend> = Arc::new(redis_mutant::NoTokenCheck { conn });
    assert_caught("", fixed(b), "behavior::test_stale_release_is_refused").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_lock_on_a_pooled_connection_is_caught() {
    let pg = dlock_fixtures::postgres().await.unwrap();
    let url = pg.url().to_string();
    // every client of the mutant is its own "process" with its own two pooled connections
    let connect: Connector = Arc::new(move |_: &str| {
        let url = url.clone();
        Box::pin(async move {
            use sqlx::Connection;
            let a = sqlx::PgConnection::connect(&url).await?;
            let b = sqlx::PgConnection::connect(&url).await?;
            let backend: Arc<dyn Backend> = Arc::new(postgres_mutant::PooledLock {
                a: Arc::new(tokio::sync::Mutex::new(a)),
                b: Arc::new(tokio::sync::Mutex::new(b)),
            });
            Ok(backend)
        })
    });
    assert_caught("", connect, "behavior::test_exclusion").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shedlock_unlock_without_owner_check_is_caught() {
    let pg = dlock_fixtures::postgres().await.unwrap();
    // let dlock create the ShedLock table
    dlock::connect(&format!("shedlock+{}", pg.url()))
        .await
        .unwrap();
    let pool = sqlx::postgres::PgPoolOptions::new()
        .max_connections(4)
        .connect(pg.url())
        .await
        .unwrap();
    let b: Arc<dyn Backend> = Arc::new(shedlock_mutant::NoOwnerCheck { pool });
    assert_caught("", fixed(b), "behavior::test_stale_release_is_refused").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mariadb_reentrant_get_lock_is_caught() {
    let db = dlock_fixtures::mariadb().await.unwrap();
    // sqlx's MySQL driver takes mysql:// URLs.
    let url = db.url().replacen("mariadb://", "mysql://", 1);
    let connect: Connector = Arc::new(move |_: &str| {
        let url = url.clone();
        Box::pin(async move {
            use sqlx::Connection;
            let conn = sqlx::MySqlConnection::connect(&url).await?;
            let backend: Arc<dyn Backend> = Arc::new(mariadb_mutant::Reentrant {
                conn: Arc::new(tokio::sync::Mutex::new(conn)),
            });
            Ok(backend)
        })
    });
    assert_caught("", connect, "behavior::test_not_reentrant").await;
}
