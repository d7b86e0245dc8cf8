//! Measurements of speed and scale, shared by `dlock compare` (a short run into the report)
//! and the `benches` crate (`make bench`, the full run).
//!
//! Per backend: uncontended acquire + release beside its **raw floor** (the backend's
//! minimal commands on a raw client of the same server, measured alternately one by one so
//! load from elsewhere hits both alike); handoff latency with 8 waiters beside one round
//! trip; throughput with 64 tasks on distinct names; and 10,000 locks held at once by one
//! process (time, resident memory, connections). Every number is measured in this run on
//! this machine; nothing is estimated.

use std::future::Future;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use dlock::{Backend, LockName, LockOptions, Wait};
use serde::Serialize;

/// Latency samples of one operation.
#[derive(Debug, Clone, Default)]
pub struct Samples {
    sorted: Vec<Duration>,
}

impl Samples {
    /// Runs `op` `warmup` times unmeasured, then `n` times measured, one after another.
    pub async fn collect<F, Fut, E>(warmup: usize, n: usize, mut op: F) -> Result<Samples, E>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<(), E>>,
    {
        for _ in 0..warmup {
            op().await?;
        }
        let mut v = Vec::with_capacity(n);
        for _ in 0..n {
            let t = Instant::now();
            op().await?;
            v.push(t.elapsed());
        }
        Ok(Samples::from(v))
    }

    /// The `p`-th percentile (0.0–100.0), nearest-rank; zero without samples.
    pub fn percentile(&self, p: f64) -> Duration {
        if self.sorted.is_empty() {
            return Duration::ZERO;
        }
        let rank = ((p / 100.0) * self.sorted.len() as f64).ceil() as usize;
        self.sorted[rank.clamp(1, self.sorted.len()) - 1]
    }

    /// The median.
    pub fn p50(&self) -> Duration {
        self.percentile(50.0)
    }

    /// The 99th percentile.
    pub fn p99(&self) -> Duration {
        self.percentile(99.0)
    }

    /// Number of samples.
    pub fn len(&self) -> usize {
        self.sorted.len()
    }

    /// True when there are no samples.
    pub fn is_empty(&self) -> bool {
        self.sorted.is_empty()
    }

    /// The percentiles of [`DISTRIBUTION`] in microseconds, for the report's charts.
    pub fn distribution_us(&self) -> Vec<f64> {
        DISTRIBUTION
            .iter()
            .map(|p| micros(self.percentile(*p)))
            .collect()
    }
}

impl From<Vec<Duration>> for Samples {
    fn from(mut v: Vec<Duration>) -> Self {
        v.sort_unstable();
        Samples { sorted: v }
    }
}

/// The percentiles a latency distribution is reported at.
pub const DISTRIBUTION: [f64; 9] = [1.0, 10.0, 25.0, 50.0, 75.0, 90.0, 95.0, 99.0, 99.9];

/// Microseconds as a float.
pub fn micros(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}

/// One line comparing an operation with its floor: `p50`, `p99`, and the p50 ratio, which it
/// returns.
pub fn report_vs_floor(label: &str, measured: &Samples, floor: &Samples) -> f64 {
    let ratio = measured.p50().as_secs_f64() / floor.p50().as_secs_f64().max(1e-9);
    println!(
        "{label}: p50 {:>8.1} µs  p99 {:>8.1} µs | floor p50 {:>8.1} µs  p99 {:>8.1} µs | p50 ratio {ratio:.3}× ({} samples each)",
        micros(measured.p50()),
        micros(measured.p99()),
        micros(floor.p50()),
        micros(floor.p99()),
        measured.len(),
    );
    ratio
}

/// One measured number of the report's `benchmarks` list.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct BenchEntry {
    /// Backend name (`postgres`, `redlock`, …).
    pub backend: String,
    /// What was measured: `acquire_release_p50`, `acquire_release_p99`, `handoff_p50`,
    /// `handoff_p99`, `throughput_64_tasks`, `hold_many_seconds`, `hold_many_rss_mib`,
    /// `hold_many_connections`.
    pub metric: String,
    /// The number.
    pub value: f64,
    /// Its unit (`us`, `ops/s`, `s`, `MiB`, `connections`).
    pub unit: String,
    /// The same measure for the raw floor (for handoffs: one round trip), when there is one.
    pub floor: Option<f64>,
    /// Latency percentiles at [`DISTRIBUTION`] (µs), for the latency entries.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub distribution: Option<Vec<f64>>,
    /// The floor's percentiles at [`DISTRIBUTION`] (µs).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub floor_distribution: Option<Vec<f64>>,
    /// How it was measured (sample count, what the floor is).
    pub notes: String,
}

/// How much to measure.
#[derive(Debug, Clone)]
pub struct BenchPlan {
    /// Latency samples per side for acquire + release.
    pub samples: usize,
    /// Waiters queued behind the holder in the handoff measurement.
    pub waiters: usize,
    /// Handoffs measured.
    pub handoffs: usize,
    /// Tasks in the throughput measurement, each on its own name.
    pub tasks: usize,
    /// Acquire + release cycles per task.
    pub per_task: usize,
    /// Locks held at once by one process.
    pub many: usize,
}

impl BenchPlan {
    /// What `dlock compare` runs by default (a couple of seconds per backend, plus the many
    /// locks).
    pub fn short() -> Self {
        BenchPlan {
            samples: 500,
            waiters: 8,
            handoffs: 40,
            tasks: 64,
            per_task: 20,
            many: 10_000,
        }
    }

    /// `dlock compare --quick`: a smoke run.
    pub fn quick() -> Self {
        BenchPlan {
            samples: 100,
            waiters: 8,
            handoffs: 16,
            tasks: 64,
            per_task: 3,
            many: 1_000,
        }
    }
}

/// A raw client doing the least a lock on this backend needs, with no dlock code involved.
pub enum Floor {
    /// `pg_try_advisory_lock(hashtextextended(name, 0))` + `pg_advisory_unlock`.
    #[cfg(feature = "postgres")]
    Postgres(tokio::sync::Mutex<sqlx::PgConnection>),
    /// ShedLock's JDBC statements: the insert-or-update-if-expired and the unlock update.
    #[cfg(feature = "shedlock")]
    ShedlockPostgres(tokio::sync::Mutex<sqlx::PgConnection>),
    /// `SET key token NX PX ttl` + the token-checked delete script, on every instance at
    /// once (one instance for Redis, N for Redlock).
    #[cfg(feature = "redis")]
    Redis(Vec<redis::aio::MultiplexedConnection>),
    /// A put-if-absent txn + a delete.
    #[cfg(feature = "etcd")]
    Etcd(Box<dlock::etcd::etcd_client::Client>),
    /// Create an ephemeral sequential node + delete it.
    #[cfg(feature = "zookeeper")]
    ZooKeeper(zookeeper_client::Client),
    /// Never built: keeps the enum inhabited-looking in a build without any backend.
    #[doc(hidden)]
    Never(std::convert::Infallible),
}

#[cfg(feature = "redis")]
const FLOOR_TTL_MS: u64 = 30_000;

#[cfg(feature = "redis")]
const REDIS_RELEASE: &str =
    "if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end return 0";

/// `host:port` pairs of a URL's authority (`scheme://[user@]h:p[,h:p…][/…][?…]`).
pub fn url_hosts(url: &str) -> Result<Vec<String>> {
    let rest = url
        .split_once("://")
        .map(|(_, r)| r)
        .ok_or_else(|| anyhow!("not a URL: {}", dlock::redact(url)))?;
    let authority = rest.split(['/', '?']).next().unwrap_or("");
    let hosts = authority.rsplit('@').next().unwrap_or("");
    let v: Vec<String> = hosts
        .split(',')
        .filter(|h| !h.is_empty())
        .map(str::to_string)
        .collect();
    if v.is_empty() {
        bail!("no host in {}", dlock::redact(url));
    }
    Ok(v)
}

/// The URL without its query (dlock's options, which raw clients do not know).
#[cfg(any(feature = "postgres", feature = "shedlock"))]
fn without_query(url: &str) -> &str {
    url.split('?').next().unwrap_or(url)
}

impl Floor {
    /// A raw client for `backend` (a name from the comparison matrix) at `url`; `None` when
    /// the backend has no floor in this build.
    pub async fn connect(backend: &str, url: &str) -> Result<Option<Floor>> {
        let _ = url;
        Ok(match backend {
            #[cfg(feature = "postgres")]
            "postgres" => {
                use sqlx::Connection;
                let conn = sqlx::PgConnection::connect(without_query(url)).await?;
                Some(Floor::Postgres(tokio::sync::Mutex::new(conn)))
            }
            #[cfg(feature = "shedlock")]
            "shedlock-postgres" => {
                use sqlx::{Connection, Executor};
                let raw = without_query(url.trim_start_matches("shedlock+"));
                let mut conn = sqlx::PgConnection::connect(raw).await?;
                // The table ShedLock's documentation gives (dlock creates the same one).
                conn.execute(
                    "CREATE TABLE IF NOT EXISTS shedlock (name VARCHAR(64) NOT NULL, \
                     lock_until TIMESTAMP NOT NULL, locked_at TIMESTAMP NOT NULL, \
                     locked_by VARCHAR(255) NOT NULL, PRIMARY KEY (name))",
                )
                .await?;
                Some(Floor::ShedlockPostgres(tokio::sync::Mutex::new(conn)))
            }
            #[cfg(feature = "redis")]
            "redis" | "redlock" | "shedlock-redis" => {
                let mut conns = Vec::new();
                for host in url_hosts(url)? {
                    let client = redis::Client::open(format!("redis://{host}"))?;
                    conns.push(client.get_multiplexed_async_connection().await?);
                }
                Some(Floor::Redis(conns))
            }
            #[cfg(feature = "etcd")]
            "etcd" => {
                let client =
                    dlock::etcd::etcd_client::Client::connect(url_hosts(url)?, None).await?;
                Some(Floor::Etcd(Box::new(client)))
            }
            #[cfg(feature = "zookeeper")]
            "zookeeper" => {
                let host = url_hosts(url)?.join(",");
                let client = zookeeper_client::Client::connector()
                    .with_session_timeout(Duration::from_secs(10))
                    .connect(&host)
                    .await?;
                client
                    .mkdir(
                        "/dlock-floor/job",
                        &zookeeper_client::CreateMode::Container
                            .with_acls(zookeeper_client::Acls::anyone_all()),
                    )
                    .await
                    .or_else(|e| match e {
                        zookeeper_client::Error::NodeExists => Ok(()),
                        e => Err(e),
                    })?;
                Some(Floor::ZooKeeper(client))
            }
            _ => None,
        })
    }

    /// What the floor is, for the report's notes.
    pub fn describe(&self) -> &'static str {
        match self {
            #[cfg(feature = "postgres")]
            Floor::Postgres(_) => {
                "pg_try_advisory_lock(hashtextextended($1,0)) + pg_advisory_unlock on a raw sqlx connection"
            }
            #[cfg(feature = "shedlock")]
            Floor::ShedlockPostgres(_) => {
                "ShedLock's insert-on-conflict-update-if-expired + unlock update on a raw sqlx connection"
            }
            #[cfg(feature = "redis")]
            Floor::Redis(c) if c.len() > 1 => {
                "SET NX PX + token-checked DEL script on every instance at once, raw redis-rs"
            }
            #[cfg(feature = "redis")]
            Floor::Redis(_) => "SET NX PX + token-checked DEL script, raw redis-rs",
            #[cfg(feature = "etcd")]
            Floor::Etcd(_) => "txn put-if-absent + delete on a raw etcd-client",
            #[cfg(feature = "zookeeper")]
            Floor::ZooKeeper(_) => {
                "create EPHEMERAL_SEQUENTIAL + delete on a raw zookeeper-client session"
            }
            Floor::Never(never) => match *never {},
        }
    }

    /// Takes and frees the lock `key` once.
    // Built without any backend, only the uninhabited arm is left and the end unreachable.
    #[allow(unreachable_code)]
    pub async fn lock_unlock(&self, key: &str, nonce: u64) -> Result<()> {
        let _ = (key, nonce);
        match self {
            #[cfg(feature = "postgres")]
            Floor::Postgres(conn) => {
                let mut conn = conn.lock().await;
                let ok: bool =
                    sqlx::query_scalar("SELECT pg_try_advisory_lock(hashtextextended($1, 0))")
                        .bind(key)
                        .fetch_one(&mut *conn)
                        .await?;
                anyhow::ensure!(ok, "floor: {key} was taken");
                let _: bool =
                    sqlx::query_scalar("SELECT pg_advisory_unlock(hashtextextended($1, 0))")
                        .bind(key)
                        .fetch_one(&mut *conn)
                        .await?;
            }
            #[cfg(feature = "shedlock")]
            Floor::ShedlockPostgres(conn) => {
                let mut conn = conn.lock().await;
                let by = format!("floor-{nonce}");
                let n = sqlx::query(
                    "INSERT INTO shedlock (name, lock_until, locked_at, locked_by) \
                     VALUES ($1, now() + interval '30 seconds', now(), $2) \
                     ON CONFLICT (name) DO UPDATE SET lock_until = EXCLUDED.lock_until, \
                     locked_at = EXCLUDED.locked_at, locked_by = EXCLUDED.locked_by \
                     WHERE shedlock.lock_until <= now()",
                )
                .bind(key)
                .bind(&by)
                .execute(&mut *conn)
                .await?
                .rows_affected();
                anyhow::ensure!(n == 1, "floor: {key} was taken");
                sqlx::query(
                    "UPDATE shedlock SET lock_until = now() WHERE name = $1 AND locked_by = $2",
                )
                .bind(key)
                .bind(&by)
                .execute(&mut *conn)
                .await?;
            }
            #[cfg(feature = "redis")]
            Floor::Redis(conns) => {
                let token = format!("floor-{nonce:016x}");
                let one = |mut c: redis::aio::MultiplexedConnection| {
                    let token = token.clone();
                    async move {
                        let set: Option<String> = redis::cmd("SET")
                            .arg(key)
                            .arg(&token)
                            .arg("NX")
                            .arg("PX")
                            .arg(FLOOR_TTL_MS)
                            .query_async(&mut c)
                            .await?;
                        anyhow::ensure!(set.is_some(), "floor: {key} was taken");
                        let n: i64 = redis::Script::new(REDIS_RELEASE)
                            .key(key)
                            .arg(&token)
                            .invoke_async(&mut c)
                            .await?;
                        anyhow::ensure!(n == 1, "floor: release said not ours");
                        anyhow::Ok(())
                    }
                };
                let all = conns.iter().cloned().map(one).collect::<Vec<_>>();
                for r in futures_util::future::join_all(all).await {
                    r?;
                }
            }
            #[cfg(feature = "etcd")]
            Floor::Etcd(client) => {
                use dlock::etcd::etcd_client::{Compare, CompareOp, Txn, TxnOp};
                let mut kv = client.kv_client();
                let txn = Txn::new()
                    .when([Compare::create_revision(key, CompareOp::Equal, 0)])
                    .and_then([TxnOp::put(key, "", None)]);
                anyhow::ensure!(kv.txn(txn).await?.succeeded(), "floor: {key} existed");
                kv.delete(key, None).await?;
            }
            #[cfg(feature = "zookeeper")]
            Floor::ZooKeeper(client) => {
                use zookeeper_client::{Acls, CreateMode};
                let prefix = format!("/dlock-floor/job/_c_{key}-lock-");
                let (_, seq) = client
                    .create(
                        &prefix,
                        b"floor",
                        &CreateMode::EphemeralSequential.with_acls(Acls::anyone_all()),
                    )
                    .await?;
                client.delete(&format!("{prefix}{seq}"), None).await?;
            }
            Floor::Never(never) => match *never {},
        }
        Ok(())
    }

    /// One round trip that changes nothing (`SELECT 1`, `PING`, a get, an exists).
    #[allow(unreachable_code)]
    pub async fn round_trip(&self) -> Result<()> {
        match self {
            #[cfg(feature = "postgres")]
            Floor::Postgres(conn) => {
                let mut conn = conn.lock().await;
                let _: i32 = sqlx::query_scalar("SELECT 1").fetch_one(&mut *conn).await?;
            }
            #[cfg(feature = "shedlock")]
            Floor::ShedlockPostgres(conn) => {
                let mut conn = conn.lock().await;
                let _: i32 = sqlx::query_scalar("SELECT 1").fetch_one(&mut *conn).await?;
            }
            #[cfg(feature = "redis")]
            Floor::Redis(conns) => {
                let all = conns.iter().cloned().map(|mut c| async move {
                    redis::cmd("PING").query_async::<String>(&mut c).await
                });
                for r in futures_util::future::join_all(all).await {
                    r?;
                }
            }
            #[cfg(feature = "etcd")]
            Floor::Etcd(client) => {
                client.kv_client().get("dlock-floor-rtt", None).await?;
            }
            #[cfg(feature = "zookeeper")]
            Floor::ZooKeeper(client) => {
                client.check_stat("/").await?;
            }
            Floor::Never(never) => match *never {},
        }
        Ok(())
    }
}

fn unique(prefix: &str) -> String {
    format!(
        "{prefix}-{}-{:x}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos())
    )
}

/// One acquire + release of `name`, failing if the release says the lock was not ours.
pub async fn once(backend: &dyn Backend, name: &LockName, opts: &LockOptions) -> Result<()> {
    let g = backend.acquire(name, opts).await?;
    anyhow::ensure!(g.release().await?, "release said the lock was not ours");
    Ok(())
}

/// Uncontended acquire + release beside the floor, alternating one by one (who goes first
/// alternates too). Returns (dlock, floor).
pub async fn uncontended(
    backend: &dyn Backend,
    floor: &Floor,
    samples: usize,
) -> Result<(Samples, Samples)> {
    let name = LockName::new(unique("bench-uncontended"))?;
    let floor_key = unique("bench-floor");
    let opts = LockOptions::new();
    let mut nonce = 0u64;
    let warmup = (samples / 5).max(20);
    for _ in 0..warmup {
        nonce += 1;
        floor.lock_unlock(&floor_key, nonce).await?;
        once(backend, &name, &opts).await?;
    }
    let (mut ours, mut raw) = (Vec::with_capacity(samples), Vec::with_capacity(samples));
    for i in 0..samples {
        for side in [i % 2, 1 - i % 2] {
            let t = Instant::now();
            if side == 0 {
                once(backend, &name, &opts).await?;
                ours.push(t.elapsed());
            } else {
                nonce += 1;
                floor.lock_unlock(&floor_key, nonce).await?;
                raw.push(t.elapsed());
            }
        }
    }
    Ok((Samples::from(ours), Samples::from(raw)))
}

/// Time from a holder calling release to the next waiter holding the lock: one lock,
/// `waiters + 1` clients (each its own backend connection from `connect`), each releasing
/// as soon as it is granted, `handoffs` times in all.
pub async fn handoff<C, Fut>(connect: C, waiters: usize, handoffs: usize) -> Result<Samples>
where
    C: Fn() -> Fut,
    Fut: Future<Output = Result<Arc<dyn Backend>>>,
{
    let name = LockName::new(unique("bench-handoff"))?;
    let released_at: Arc<Mutex<Option<Instant>>> = Arc::default();
    let samples: Arc<Mutex<Vec<Duration>>> = Arc::default();
    let per_client = handoffs.div_ceil(waiters + 1).max(1);
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..=waiters {
        let backend = connect().await?;
        let (name, released_at, samples) = (name.clone(), released_at.clone(), samples.clone());
        tasks.spawn(async move {
            let opts = LockOptions::new().with_wait(Wait::For(Duration::from_secs(60)));
            for _ in 0..per_client {
                let g = backend.acquire(&name, &opts).await?;
                let granted = Instant::now();
                if let Some(at) = released_at.lock().unwrap_or_else(|p| p.into_inner()).take() {
                    samples
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .push(granted - at);
                }
                *released_at.lock().unwrap_or_else(|p| p.into_inner()) = Some(Instant::now());
                anyhow::ensure!(g.release().await?, "release said the lock was not ours");
            }
            anyhow::Ok(())
        });
    }
    let bound = Duration::from_secs(120);
    let all = async {
        while let Some(r) = tasks.join_next().await {
            r??;
        }
        anyhow::Ok(())
    };
    tokio::time::timeout(bound, all)
        .await
        .map_err(|_| anyhow!("the handoffs did not finish within {bound:?}"))??;
    let v = std::mem::take(&mut *samples.lock().unwrap_or_else(|p| p.into_inner()));
    Ok(Samples::from(v))
}

/// Acquire + release cycles per second with `tasks` tasks on distinct names, sharing one
/// backend (as one service would).
pub async fn throughput(backend: Arc<dyn Backend>, tasks: usize, per_task: usize) -> Result<f64> {
    let started = Instant::now();
    let mut set = tokio::task::JoinSet::new();
    let base = unique("bench-tp");
    for t in 0..tasks {
        let backend = Arc::clone(&backend);
        let name = LockName::new(format!("{base}-{t}"))?;
        set.spawn(async move {
            let opts = LockOptions::new();
            for _ in 0..per_task {
                once(&*backend, &name, &opts).await?;
            }
            anyhow::Ok(())
        });
    }
    while let Some(r) = set.join_next().await {
        r??;
    }
    Ok((tasks * per_task) as f64 / started.elapsed().as_secs_f64())
}

/// What holding many locks at once cost.
#[derive(Debug, Clone, Copy)]
pub struct ManyLocks {
    /// Locks held.
    pub locks: usize,
    /// Time to acquire them all (64 at a time).
    pub acquire: Duration,
    /// Growth of this process's resident memory while they were held, MiB.
    pub rss_mib: f64,
    /// Sockets this process opened for them (from a fresh backend).
    pub connections: usize,
}

/// Resident set size of this process in bytes (Linux `/proc/self/statm`).
pub fn rss_bytes() -> Option<u64> {
    let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
    let pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    // The page size is 4 KiB on every platform this runs on (x86-64, aarch64 Linux).
    Some(pages * 4096)
}

/// Open sockets of this process (Linux `/proc/self/fd`).
pub fn open_sockets() -> Option<usize> {
    let dir = std::fs::read_dir("/proc/self/fd").ok()?;
    Some(
        dir.filter_map(|e| e.ok())
            .filter(|e| {
                std::fs::read_link(e.path())
                    .map(|l| l.to_string_lossy().starts_with("socket:"))
                    .unwrap_or(false)
            })
            .count(),
    )
}

/// Acquires `n` distinct locks with a fresh backend from `connect`, holds them all, measures,
/// then releases them.
pub async fn hold_many<C, Fut>(connect: C, n: usize) -> Result<ManyLocks>
where
    C: FnOnce() -> Fut,
    Fut: Future<Output = Result<Arc<dyn Backend>>>,
{
    let sockets_before = open_sockets().unwrap_or(0);
    let rss_before = rss_bytes().unwrap_or(0);
    let backend = connect().await?;
    let base = unique("bench-many");
    let started = Instant::now();
    let mut guards = Vec::with_capacity(n);
    let opts = LockOptions::new();
    let mut set = tokio::task::JoinSet::new();
    let mut next = 0usize;
    // 64 acquisitions in flight at a time: a service taking its locks at start-up.
    while next < n || !set.is_empty() {
        while next < n && set.len() < 64 {
            let (backend, opts) = (Arc::clone(&backend), opts.clone());
            let name = LockName::new(format!("{base}-{next}"))?;
            set.spawn(async move { backend.acquire(&name, &opts).await });
            next += 1;
        }
        if let Some(r) = set.join_next().await {
            guards.push(r??);
        }
    }
    let acquire = started.elapsed();
    let rss = rss_bytes().unwrap_or(0).saturating_sub(rss_before);
    let connections = open_sockets().unwrap_or(0).saturating_sub(sockets_before);
    let held = guards
        .iter()
        .filter(|g| g.state() == dlock::LockState::Held)
        .count();
    if held != n {
        bail!("only {held} of {n} locks were still held after acquiring them all");
    }
    let mut set = tokio::task::JoinSet::new();
    for g in guards {
        set.spawn(async move { g.release().await });
    }
    while let Some(r) = set.join_next().await {
        r.context("release task")??;
    }
    Ok(ManyLocks {
        locks: n,
        acquire,
        rss_mib: rss as f64 / (1024.0 * 1024.0),
        connections,
    })
}

/// Runs [`hold_many`] in a child process (`dlock hold-many`), so that the memory it reports
/// is that of a process doing nothing else.
pub async fn hold_many_in_child(dlock_bin: &Path, url: &str, n: usize) -> Result<ManyLocks> {
    let out = tokio::process::Command::new(dlock_bin)
        .args(["hold-many", "--count", &n.to_string(), url])
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true)
        .output();
    let bound = Duration::from_secs(300);
    let out = tokio::time::timeout(bound, out)
        .await
        .map_err(|_| anyhow!("dlock hold-many did not finish within {bound:?}"))??;
    if !out.status.success() {
        bail!(
            "dlock hold-many failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    let v: serde_json::Value = serde_json::from_slice(&out.stdout)
        .with_context(|| format!("bad output: {}", String::from_utf8_lossy(&out.stdout)))?;
    let num = |k: &str| {
        v[k].as_f64()
            .ok_or_else(|| anyhow!("dlock hold-many printed no {k}: {v}"))
    };
    Ok(ManyLocks {
        locks: num("locks")? as usize,
        acquire: Duration::from_secs_f64(num("acquire_s")?),
        rss_mib: num("rss_mib")?,
        connections: num("connections")? as usize,
    })
}

/// The short benchmark set for one backend of the comparison (`url` from its fixture),
/// printing a line per measurement to stderr. `dlock_bin`: measure the many locks in a
/// child process of that binary (else in this one).
pub async fn run_backend(
    backend: &str,
    url: &str,
    plan: &BenchPlan,
    dlock_bin: Option<&Path>,
) -> Result<Vec<BenchEntry>> {
    let entry =
        |metric: &str, value: f64, unit: &str, floor: Option<f64>, notes: String| BenchEntry {
            backend: backend.to_string(),
            metric: metric.to_string(),
            value,
            unit: unit.to_string(),
            floor,
            distribution: None,
            floor_distribution: None,
            notes,
        };
    let mut out = Vec::new();
    let client = dlock::connect(url).await?;
    let floor = Floor::connect(backend, url).await?;
    if let Some(floor) = &floor {
        let (ours, raw) = uncontended(&*client, floor, plan.samples).await?;
        let notes = format!(
            "{} samples per side, alternating one by one; floor: {}",
            ours.len(),
            floor.describe()
        );
        let mut p50 = entry(
            "acquire_release_p50",
            micros(ours.p50()),
            "us",
            Some(micros(raw.p50())),
            notes.clone(),
        );
        p50.distribution = Some(ours.distribution_us());
        p50.floor_distribution = Some(raw.distribution_us());
        out.push(p50);
        out.push(entry(
            "acquire_release_p99",
            micros(ours.p99()),
            "us",
            Some(micros(raw.p99())),
            notes,
        ));
        crate::say!(
            "[bench] {backend}: acquire+release p50 {:.0} µs (floor {:.0} µs, {:.2}×), p99 {:.0} µs",
            micros(ours.p50()),
            micros(raw.p50()),
            ours.p50().as_secs_f64() / raw.p50().as_secs_f64().max(1e-9),
            micros(ours.p99())
        );
    }
    let rtt = match &floor {
        Some(f) => Some(Samples::collect(20, 100, || f.round_trip()).await?),
        None => None,
    };
    let url_owned = url.to_string();
    let h = handoff(
        || {
            let url = url_owned.clone();
            async move { Ok(dlock::connect(&url).await?) }
        },
        plan.waiters,
        plan.handoffs,
    )
    .await?;
    let notes = format!(
        "{} handoffs, {} waiters queued; floor: one round trip on the raw client",
        h.len(),
        plan.waiters
    );
    out.push(entry(
        "handoff_p50",
        micros(h.p50()),
        "us",
        rtt.as_ref().map(|r| micros(r.p50())),
        notes.clone(),
    ));
    out.push(entry(
        "handoff_p99",
        micros(h.p99()),
        "us",
        rtt.as_ref().map(|r| micros(r.p99())),
        notes,
    ));
    crate::say!(
        "[bench] {backend}: handoff with {} waiters p50 {:.0} µs, p99 {:.0} µs",
        plan.waiters,
        micros(h.p50()),
        micros(h.p99())
    );
    let tp = throughput(Arc::clone(&client), plan.tasks, plan.per_task).await?;
    out.push(entry(
        "throughput_64_tasks",
        tp,
        "ops/s",
        None,
        format!(
            "{} tasks on distinct names sharing one backend, {} acquire+release each",
            plan.tasks, plan.per_task
        ),
    ));
    crate::say!(
        "[bench] {backend}: {} tasks: {tp:.0} acquire+release/s",
        plan.tasks
    );
    let many = match dlock_bin {
        Some(bin) => hold_many_in_child(bin, url, plan.many).await?,
        None => hold_many(|| async { Ok(dlock::connect(url).await?) }, plan.many).await?,
    };
    let notes = format!(
        "{} locks on distinct names, 64 acquisitions in flight, held at once by one fresh \
         backend in {}",
        many.locks,
        if dlock_bin.is_some() {
            "a process of its own (`dlock hold-many`)"
        } else {
            "the benchmark process"
        }
    );
    out.push(entry(
        "hold_many_seconds",
        many.acquire.as_secs_f64(),
        "s",
        None,
        notes.clone(),
    ));
    out.push(entry(
        "hold_many_rss_mib",
        many.rss_mib,
        "MiB",
        None,
        notes.clone(),
    ));
    out.push(entry(
        "hold_many_connections",
        many.connections as f64,
        "connections",
        None,
        notes,
    ));
    crate::say!(
        "[bench] {backend}: {} locks held at once: acquired in {:.1} s, +{:.1} MiB resident, {} connections",
        many.locks,
        many.acquire.as_secs_f64(),
        many.rss_mib,
        many.connections
    );
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Pinning a "server" (a `sleep` child) apart moves this process to the other CPUs, and
    /// undoing it restores the mask it had (not a fixed "all CPUs": it once restored "CPU 0
    /// only", because the CPU count it read was already the pinned one). A server process that
    /// ended meanwhile neither fails the pinning nor keeps the undo from running (a PostgreSQL
    /// backend exiting did both, and left the rest of a compare run on one CPU).
    #[test]
    fn pinning_is_undone_to_the_mask_before() {
        let before = cpus_of(std::process::id()).expect("this process's CPUs");
        let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
        let mut server = std::process::Command::new("sleep")
            .arg("30")
            .spawn()
            .unwrap();
        // A pid that has already ended stands for a server process that exits meanwhile.
        let mut gone = std::process::Command::new("true").spawn().unwrap();
        let gone_pid = gone.id();
        gone.wait().unwrap();
        let p = pin_server_apart(&[server.id(), gone_pid]);
        if cpus < 2 {
            assert!(!p.pinned, "{}", p.description);
        } else {
            assert!(p.pinned, "{}", p.description);
            assert_ne!(cpus_of(std::process::id()).as_ref(), Some(&before));
        }
        assert!(p.undo());
        assert_eq!(cpus_of(std::process::id()), Some(before));
        let _ = server.kill();
        let _ = server.wait();
    }

    #[test]
    fn nearest_rank_percentiles() {
        let s = Samples::from((1..=100).map(Duration::from_micros).collect::<Vec<_>>());
        assert_eq!(s.p50(), Duration::from_micros(50));
        assert_eq!(s.p99(), Duration::from_micros(99));
        assert_eq!(s.percentile(100.0), Duration::from_micros(100));
        assert_eq!(Samples::from(vec![]).p50(), Duration::ZERO);
        assert_eq!(s.distribution_us().len(), DISTRIBUTION.len());
    }

    #[test]
    fn hosts_of_urls() {
        assert_eq!(
            url_hosts("redlock://a:1,b:2/x?y=1").unwrap(),
            vec!["a:1".to_string(), "b:2".to_string()]
        );
        assert_eq!(
            url_hosts("postgres://u:p@h:5/db").unwrap(),
            vec!["h:5".to_string()]
        );
        assert!(url_hosts("nourl").is_err());
        assert!(url_hosts("redis:///x").is_err());
    }
}

/// Unless `DLOCK_BENCH_PIN=0`, on a Linux machine with two or more CPUs: the server processes
/// `pids` (their threads, and their children — also the ones forked later, such as
/// PostgreSQL's backends, which inherit the postmaster's CPUs) on the last CPU, this process
/// on the others. That models a server on another machine: neither side's CPU time delays
/// the other, and the scheduler's placement no longer decides the result (on 2 cores it made
/// PostgreSQL's ratio jump between 0.96× and 1.40× from one round to the next). Uses
/// `sched_setaffinity` on every thread. Returns whether it pinned; says on stdout what it
/// did either way. Use [`pin_server_apart`] to be able to undo it.
pub fn pin_apart(pids: &[u32]) -> bool {
    let p = pin_server_apart(pids);
    println!("{}", p.description);
    p.pinned
}

/// What [`pin_server_apart`] did.
#[derive(Debug, Clone)]
pub struct Pinning {
    /// Whether the server and this process are on separate CPUs now.
    pub pinned: bool,
    /// One line saying what was done, or why not (starts with `pinning:`).
    pub description: String,
    /// The CPUs this process had before, when it moved itself (even if a server process
    /// could not be moved).
    previous: Option<Vec<usize>>,
}

impl Pinning {
    /// Gives this process (every thread) the CPUs it had before; processes it starts later
    /// inherit them. (The servers stay where they are.)
    pub fn undo(&self) -> bool {
        match &self.previous {
            Some(cpus) => set_cpus(std::process::id(), cpus),
            None => true,
        }
    }
}

/// [`pin_apart`] without printing: says what it did in the returned [`Pinning`].
pub fn pin_server_apart(pids: &[u32]) -> Pinning {
    let not = |description: String| Pinning {
        pinned: false,
        description,
        previous: None,
    };
    if std::env::var_os("DLOCK_BENCH_PIN").is_some_and(|v| v == "0") {
        return not("pinning: off (DLOCK_BENCH_PIN=0)".into());
    }
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    if cpus < 2 || pids.is_empty() {
        return not(format!(
            "pinning: skipped ({cpus} CPU(s), {} server process(es))",
            pids.len()
        ));
    }
    let (server_cpu, client_cpus) = (cpus - 1, (0..cpus - 1).collect::<Vec<_>>());
    let mut all = Vec::new();
    for &pid in pids {
        descendants(pid, &mut all);
    }
    let previous =
        cpus_of(std::process::id()).filter(|_| set_cpus(std::process::id(), &client_cpus));
    let mut ok = previous.is_some();
    for &pid in &all {
        // A server process that ended meanwhile (a PostgreSQL backend closing) is no failure.
        ok &=
            set_cpus(pid, &[server_cpu]) || !std::path::Path::new(&format!("/proc/{pid}")).exists();
    }
    Pinning {
        pinned: ok,
        previous,
        description: format!(
            "pinning: server processes {all:?} on CPU {server_cpu}, this process on CPUs 0-{}{}",
            cpus - 2,
            if ok { "" } else { " (some could not be moved)" }
        ),
    }
}

/// `pid` and every process below it.
fn descendants(pid: u32, out: &mut Vec<u32>) {
    out.push(pid);
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return;
    };
    for task in tasks.flatten() {
        let children = std::fs::read_to_string(task.path().join("children")).unwrap_or_default();
        for child in children.split_whitespace().filter_map(|c| c.parse().ok()) {
            descendants(child, out);
        }
    }
}

/// Moves every thread of process `pid` onto `cpus` (threads that end meanwhile are
/// skipped: a thread pool may let one go while we walk the list).
#[cfg(target_os = "linux")]
fn set_cpus(pid: u32, cpus: &[usize]) -> bool {
    // SAFETY: cpu_set_t is a plain bit array; all zeroes is the empty set.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    for &cpu in cpus {
        // SAFETY: CPU_SET only writes bit `cpu` of `set` (it panics beyond the set's size;
        // these CPU numbers come from available_parallelism, far below it).
        unsafe { libc::CPU_SET(cpu, &mut set) };
    }
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return false;
    };
    let (mut ok, mut moved) = (true, 0);
    for task in tasks.flatten() {
        let Some(tid) = task
            .file_name()
            .to_str()
            .and_then(|t| t.parse::<libc::pid_t>().ok())
        else {
            continue;
        };
        // SAFETY: `set` is a valid cpu_set_t of the size passed.
        let r =
            unsafe { libc::sched_setaffinity(tid, std::mem::size_of::<libc::cpu_set_t>(), &set) };
        if r == 0 {
            moved += 1;
        } else if std::io::Error::last_os_error().raw_os_error() != Some(libc::ESRCH) {
            ok = false;
        }
    }
    ok && moved > 0
}

/// The CPUs process `pid` (its main thread) may run on.
#[cfg(target_os = "linux")]
fn cpus_of(pid: u32) -> Option<Vec<usize>> {
    // SAFETY: as above; sched_getaffinity fills `set` of the size passed.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    let r = unsafe {
        libc::sched_getaffinity(
            pid as libc::pid_t,
            std::mem::size_of::<libc::cpu_set_t>(),
            &mut set,
        )
    };
    if r != 0 {
        return None;
    }
    // SAFETY: CPU_ISSET only reads bit `cpu` of `set`.
    let cpus: Vec<usize> = (0..libc::CPU_SETSIZE as usize)
        .filter(|&cpu| unsafe { libc::CPU_ISSET(cpu, &set) })
        .collect();
    (!cpus.is_empty()).then_some(cpus)
}

#[cfg(not(target_os = "linux"))]
fn set_cpus(_pid: u32, _cpus: &[usize]) -> bool {
    false
}

#[cfg(not(target_os = "linux"))]
fn cpus_of(_pid: u32) -> Option<Vec<usize>> {
    None
}
