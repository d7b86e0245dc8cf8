//! The raw floors: a backend's minimal lock commands on a raw client of the same server.

#[cfg(feature = "zookeeper")]
use std::time::Duration;

use anyhow::{Result, anyhow, bail};

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
    /// `GET_LOCK(name, 0)` + `RELEASE_LOCK(name)`.
    #[cfg(feature = "mysql")]
    MariaDb(tokio::sync::Mutex<sqlx::MySqlConnection>),
    /// Never built: keeps the enum inhabited-looking in a build without any backend.
    #[doc(hidden)]
    Never(std::convert::Infallible),
}

#[cfg(feature = "redis")]
const FLOOR_TTL_MS: u64 = 30_000;

/// The two multi-holder modes the benchmark measures beside their floors.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// A shared (reader) grant.
    Shared,
    /// One permit of a semaphore (limit 1, free).
    Permit,
}

#[cfg(feature = "redis")]
const REDIS_READ: &str = "local v = redis.call('GET', KEYS[1]) if v and v ~= 'r' then return 0 end \
     redis.call('ZADD', KEYS[2], 1, ARGV[1]) redis.call('SET', KEYS[1], 'r', 'PX', ARGV[2]) return 1";
#[cfg(feature = "redis")]
const REDIS_UNREAD: &str = "redis.call('ZREM', KEYS[2], ARGV[1]) \
     if redis.call('ZCARD', KEYS[2]) == 0 then redis.call('DEL', KEYS[1]) end return 1";
#[cfg(feature = "redis")]
const REDIS_PERMIT: &str = "if redis.call('ZCARD', KEYS[2]) < 1 then \
     redis.call('ZADD', KEYS[2], 1, ARGV[1]) return 1 end return 0";
#[cfg(feature = "redis")]
const REDIS_UNPERMIT: &str = "return redis.call('ZREM', KEYS[2], ARGV[1])";

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
#[cfg(any(feature = "postgres", feature = "shedlock", feature = "mysql"))]
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
            #[cfg(feature = "mysql")]
            "mariadb" => {
                use sqlx::Connection;
                // sqlx's MySQL driver takes mysql:// URLs (dlock takes both).
                let raw = without_query(url).replacen("mariadb://", "mysql://", 1);
                let conn = sqlx::MySqlConnection::connect(&raw).await?;
                Some(Floor::MariaDb(tokio::sync::Mutex::new(conn)))
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
            #[cfg(feature = "mysql")]
            Floor::MariaDb(_) => "GET_LOCK(name, 0) + RELEASE_LOCK(name) on a raw sqlx connection",
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
            #[cfg(feature = "mysql")]
            Floor::MariaDb(conn) => {
                let mut conn = conn.lock().await;
                let got: Option<i64> = sqlx::query_scalar("SELECT GET_LOCK(?, 0)")
                    .bind(key)
                    .fetch_one(&mut *conn)
                    .await?;
                anyhow::ensure!(got == Some(1), "floor: {key} was taken");
                let released: Option<i64> = sqlx::query_scalar("SELECT RELEASE_LOCK(?)")
                    .bind(key)
                    .fetch_one(&mut *conn)
                    .await?;
                anyhow::ensure!(released == Some(1), "floor: release said not ours");
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

    /// What the shared and the permit floors do, for the notes (`None`: no such floor).
    pub fn describe_mode(&self, mode: Mode) -> Option<&'static str> {
        match (self, mode) {
            #[cfg(feature = "postgres")]
            (Floor::Postgres(_), Mode::Shared) => Some(
                "pg_try_advisory_lock_shared + pg_advisory_unlock_shared on a raw sqlx connection",
            ),
            #[cfg(feature = "postgres")]
            (Floor::Postgres(_), Mode::Permit) => Some(
                "pg_try_advisory_lock(hashtextextended(name, 1)) + unlock (slot 0, free): one try",
            ),
            #[cfg(feature = "redis")]
            (Floor::Redis(c), Mode::Shared) if c.len() == 1 => Some(
                "a reader script (GET, ZADD, SET PX) + a release script (ZREM, ZCARD, DEL), raw \
                 redis-rs; no expiry purge, no waiting-writer check",
            ),
            #[cfg(feature = "redis")]
            (Floor::Redis(c), Mode::Permit) if c.len() == 1 => Some(
                "a permit script (ZCARD, ZADD) + ZREM, raw redis-rs; no slots, expiry or tokens",
            ),
            #[cfg(feature = "etcd")]
            (Floor::Etcd(_), Mode::Shared) => Some(
                "one txn: put-if-absent of a reader key NAME/read/<n> + a range read of the \
                 writer keys; then a delete (raw etcd-client, no lease)",
            ),
            #[cfg(feature = "etcd")]
            (Floor::Etcd(_), Mode::Permit) => Some(
                "txn put-if-absent of slot 0 (known free: no listing) + delete (raw \
                 etcd-client, no lease)",
            ),
            #[cfg(feature = "zookeeper")]
            (Floor::ZooKeeper(_), Mode::Shared) => {
                Some("create EPHEMERAL_SEQUENTIAL _c_<key>-__READ__ + delete (raw client)")
            }
            #[cfg(feature = "zookeeper")]
            (Floor::ZooKeeper(_), Mode::Permit) => Some(
                "create a lease EPHEMERAL_SEQUENTIAL + getChildren (the count) + delete (raw \
                 client); no internal mutex, no slot node: less than Curator's \
                 InterProcessSemaphoreV2, whose layout dlock keeps",
            ),
            _ => None,
        }
    }

    /// Takes and frees `key` once in `mode`; `Ok(false)` when there is no such floor.
    #[allow(unreachable_code)]
    pub async fn mode_lock_unlock(&self, mode: Mode, key: &str, nonce: u64) -> Result<bool> {
        let _ = (mode, key, nonce);
        match (self, mode) {
            #[cfg(feature = "postgres")]
            (Floor::Postgres(conn), _) => {
                let (take, give) = match mode {
                    Mode::Shared => (
                        "SELECT pg_try_advisory_lock_shared(hashtextextended($1, 0))",
                        "SELECT pg_advisory_unlock_shared(hashtextextended($1, 0))",
                    ),
                    Mode::Permit => (
                        "SELECT pg_try_advisory_lock(hashtextextended($1, 1))",
                        "SELECT pg_advisory_unlock(hashtextextended($1, 1))",
                    ),
                };
                let mut conn = conn.lock().await;
                let ok: bool = sqlx::query_scalar(take)
                    .bind(key)
                    .fetch_one(&mut *conn)
                    .await?;
                anyhow::ensure!(ok, "floor: {key} was taken");
                let _: bool = sqlx::query_scalar(give)
                    .bind(key)
                    .fetch_one(&mut *conn)
                    .await?;
                Ok(true)
            }
            #[cfg(feature = "redis")]
            (Floor::Redis(conns), _) if conns.len() == 1 => {
                let mut c = conns[0].clone();
                let token = format!("floor-{nonce:016x}");
                let (take, give) = match mode {
                    Mode::Shared => (REDIS_READ, REDIS_UNREAD),
                    Mode::Permit => (REDIS_PERMIT, REDIS_UNPERMIT),
                };
                let sub = format!("{key}:set");
                let n: i64 = redis::Script::new(take)
                    .key(key)
                    .key(&sub)
                    .arg(&token)
                    .arg(FLOOR_TTL_MS)
                    .invoke_async(&mut c)
                    .await?;
                anyhow::ensure!(n == 1, "floor: {key} was taken");
                let _: i64 = redis::Script::new(give)
                    .key(key)
                    .key(&sub)
                    .arg(&token)
                    .invoke_async(&mut c)
                    .await?;
                Ok(true)
            }
            #[cfg(feature = "etcd")]
            (Floor::Etcd(client), _) => {
                use dlock::etcd::etcd_client::{Compare, CompareOp, GetOptions, Txn, TxnOp};
                let mut kv = client.kv_client();
                let k = match mode {
                    Mode::Shared => format!("{key}/read/{nonce:020}"),
                    Mode::Permit => format!("{key}\0sem/0"),
                };
                let mut txn =
                    Txn::new().when([Compare::create_revision(k.as_str(), CompareOp::Equal, 0)]);
                txn = match mode {
                    Mode::Shared => txn.and_then([
                        TxnOp::put(k.as_str(), "", None),
                        TxnOp::get(
                            format!("{key}/write/"),
                            Some(GetOptions::new().with_prefix().with_keys_only()),
                        ),
                    ]),
                    Mode::Permit => txn.and_then([TxnOp::put(k.as_str(), "", None)]),
                };
                anyhow::ensure!(kv.txn(txn).await?.succeeded(), "floor: {k} existed");
                kv.delete(k, None).await?;
                Ok(true)
            }
            #[cfg(feature = "zookeeper")]
            (Floor::ZooKeeper(client), _) => {
                use zookeeper_client::{Acls, CreateMode};
                let prefix = match mode {
                    Mode::Shared => format!("/dlock-floor/job/_c_{key}-__READ__"),
                    Mode::Permit => format!("/dlock-floor/job/_c_{key}-lease-"),
                };
                let mode_ = CreateMode::EphemeralSequential.with_acls(Acls::anyone_all());
                let (_, seq) = client.create(&prefix, b"floor", &mode_).await?;
                if mode == Mode::Permit {
                    client.list_children("/dlock-floor/job").await?;
                }
                client.delete(&format!("{prefix}{seq}"), None).await?;
                Ok(true)
            }
            _ => Ok(false),
        }
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
            #[cfg(feature = "mysql")]
            Floor::MariaDb(conn) => {
                let mut conn = conn.lock().await;
                let _: i64 = sqlx::query_scalar("SELECT 1").fetch_one(&mut *conn).await?;
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

#[cfg(test)]
mod tests {
    use super::*;

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
