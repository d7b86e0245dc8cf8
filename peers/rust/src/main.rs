//! `dlock-peer-rust PEER URL`: a Rust lock library behind the line protocol of
//! `peers/README.md`, with its own defaults; only the ttl comes from the driver.
//!
//! - `sqlx-advisory`: sqlx's `PgAdvisoryLock` (key: sqlx's SHA-256 of the name), one
//!   connection per held lock, reused when idle; `pg_advisory_lock` / `pg_try_advisory_lock`,
//!   `pg_advisory_unlock`. No lease: the session is the lock.
//! - `rslock`: rslock's `LockManager` over one or several Redis servers (Redlock), its
//!   default retry policy; `acquire` is its `acquire` loop, `try` one `lock` call (which
//!   retries internally, rslock's default). No renewal, no fencing, no wake-up: a waiter polls.
//! - `etcd-v3lock`: etcd's own lock service (`Lock`/`Unlock` RPCs of `v3lockpb`), the lock
//!   held on a lease kept alive every ttl/3 as etcd's Go `concurrency.Session` does; one lease
//!   per concurrent holder (a lease locking one name twice is one acquisition), reused when
//!   idle. `try` is a `Lock` call with a 100 ms deadline (the service has no try).

use std::sync::{Arc, Mutex};
use std::time::Duration;

use dlock_peer_proto::{BoxFuture, Held, Peer};

mod etcd;

const USAGE: &str = "usage: dlock-peer-rust sqlx-advisory|rslock|etcd-v3lock URL";

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [peer, url] = args.as_slice() else {
        eprintln!("{USAGE}");
        std::process::exit(64);
    };
    // One thread, as `dlock peer` runs (dlock's CLI runtime): the same shape on both sides.
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => std::process::exit(dlock_peer_proto::unavailable(peer, &e.to_string())),
    };
    let code = rt.block_on(run(peer, url));
    std::process::exit(code);
}

async fn run(peer: &str, url: &str) -> i32 {
    let connected: Result<(Arc<dyn Peer>, &str), String> = match peer {
        "sqlx-advisory" => SqlxPeer::connect(url)
            .await
            .map(|p| (Arc::new(p) as Arc<dyn Peer>, "0.8.6")),
        "rslock" => RslockPeer::connect(url).map(|p| (Arc::new(p) as Arc<dyn Peer>, "0.10.0")),
        "etcd-v3lock" => etcd::EtcdPeer::connect(url)
            .await
            .map(|p| (Arc::new(p) as Arc<dyn Peer>, "etcd-client-0.21.1")),
        other => Err(format!("unknown peer {other:?}; {USAGE}")),
    };
    match connected {
        Ok((p, version)) => dlock_peer_proto::serve(p, peer, version).await,
        Err(e) => dlock_peer_proto::unavailable(peer, &e),
    }
}

/// sqlx's `PgAdvisoryLock`, one pooled connection per held lock.
struct SqlxPeer {
    url: String,
    idle: Arc<Mutex<Vec<sqlx::PgConnection>>>,
}

impl SqlxPeer {
    async fn connect(url: &str) -> Result<Self, String> {
        use sqlx::Connection;
        let first = sqlx::PgConnection::connect(url)
            .await
            .map_err(|e| e.to_string())?;
        Ok(SqlxPeer {
            url: url.to_string(),
            idle: Arc::new(Mutex::new(vec![first])),
        })
    }

    async fn conn(&self) -> Result<sqlx::PgConnection, String> {
        use sqlx::Connection;
        let idle = self.idle.lock().unwrap().pop();
        match idle {
            Some(c) => Ok(c),
            None => sqlx::PgConnection::connect(&self.url)
                .await
                .map_err(|e| e.to_string()),
        }
    }
}

struct SqlxHeld {
    lock: sqlx::postgres::PgAdvisoryLock,
    conn: sqlx::PgConnection,
    idle: Arc<Mutex<Vec<sqlx::PgConnection>>>,
}

impl Held for SqlxHeld {
    fn release(self: Box<Self>) -> BoxFuture<'static, Result<(), String>> {
        Box::pin(async move {
            let SqlxHeld { lock, conn, idle } = *self;
            // What `PgAdvisoryLockGuard::release_now` does: `pg_advisory_unlock` on the
            // connection that holds it.
            let (conn, released) = lock.force_release(conn).await.map_err(|e| e.to_string())?;
            idle.lock().unwrap().push(conn);
            if released {
                Ok(())
            } else {
                Err("pg_advisory_unlock answered false: not held".into())
            }
        })
    }
}

impl Peer for SqlxPeer {
    fn acquire<'a>(
        &'a self,
        name: &'a str,
        _ttl: Duration,
        wait: bool,
    ) -> BoxFuture<'a, Result<Option<Box<dyn Held>>, String>> {
        Box::pin(async move {
            let lock = sqlx::postgres::PgAdvisoryLock::new(name);
            let conn = self.conn().await?;
            // The guard borrows the lock; `leak` hands back the connection with the lock
            // still held, and the release above is the guard's own `release_now`.
            let conn = if wait {
                lock.acquire(conn).await.map_err(|e| e.to_string())?.leak()
            } else {
                match lock.try_acquire(conn).await.map_err(|e| e.to_string())? {
                    sqlx::Either::Left(guard) => guard.leak(),
                    sqlx::Either::Right(conn) => {
                        self.idle.lock().unwrap().push(conn);
                        return Ok(None);
                    }
                }
            };
            let idle = self.idle.clone();
            Ok(Some(
                Box::new(SqlxHeld { lock, conn, idle }) as Box<dyn Held>
            ))
        })
    }
}

/// rslock's `LockManager` with its defaults.
struct RslockPeer {
    manager: rslock::LockManager,
}

impl RslockPeer {
    /// `redis://h1:p1[,h2:p2…]`: one Redis per host (Redlock over all of them).
    fn connect(url: &str) -> Result<Self, String> {
        let rest = url
            .strip_prefix("redis://")
            .ok_or_else(|| format!("{url:?} is not redis://host:port[,host:port…]"))?;
        let uris: Vec<String> = rest
            .trim_end_matches('/')
            .split(',')
            .map(|h| format!("redis://{h}"))
            .collect();
        Ok(RslockPeer {
            manager: rslock::LockManager::new(uris),
        })
    }
}

struct RslockHeld {
    manager: rslock::LockManager,
    lock: rslock::Lock,
}

impl Held for RslockHeld {
    fn release(self: Box<Self>) -> BoxFuture<'static, Result<(), String>> {
        Box::pin(async move {
            self.manager.unlock(&self.lock).await;
            Ok(())
        })
    }
}

impl Peer for RslockPeer {
    fn acquire<'a>(
        &'a self,
        name: &'a str,
        ttl: Duration,
        wait: bool,
    ) -> BoxFuture<'a, Result<Option<Box<dyn Held>>, String>> {
        Box::pin(async move {
            let got = if wait {
                self.manager.acquire_no_guard(name.as_bytes(), ttl).await
            } else {
                self.manager.lock(name.as_bytes(), ttl).await
            };
            match got {
                Ok(lock) => Ok(Some(Box::new(RslockHeld {
                    manager: self.manager.clone(),
                    lock,
                }) as Box<dyn Held>)),
                Err(rslock::LockError::Unavailable) if !wait => Ok(None),
                Err(e) => Err(e.to_string()),
            }
        })
    }
}
