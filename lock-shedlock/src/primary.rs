//! The connection pool of a `shedlock+postgres://` backend, kept on the host that
//! qualifies. A URL may name several hosts (`h1,h2?target_session_attrs=read-write`); the
//! first that connects and qualifies is chosen at `connect`, and chosen again whenever the
//! pool finds that the host it uses has gone:
//!
//! - an idle connection that fails its ping before reuse (the server died or reset it),
//! - a new connection that lands on a server in recovery or read-only (under `read-write` or
//!   `primary`): it is closed before anything runs on it, so no lock is ever taken or read
//!   through a standby,
//! - a statement that fails because its connection broke, the pool could not open one, or the
//!   server refused a write as read-only.
//!
//! Each of these starts one background search (one at a time) that tries the hosts in the
//! URL's order until one qualifies, then points the pool's new connections at it
//! (`Pool::set_connect_options`; the pool's own connect loop re-reads them on every retry).
//! Connections opened before the switch are closed instead of reused. The steady state costs
//! what sqlx's own `test_before_acquire` costs: one ping per reuse, no role query.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use lock_core::hosts::{HostRefusal, NoUsableHost, TargetSessionAttrs};
use lock_core::{Error, ErrorKind, Operation, Result};
use sqlx::Connection;
use sqlx::Postgres;
use sqlx::pool::{PoolConnection, PoolConnectionMetadata};
use sqlx::postgres::{PgConnectOptions, PgConnection, PgPool, PgPoolOptions};
use tokio::time::Instant;

use crate::BACKEND_PG;
use crate::config::ShedPgConfig;

/// How long connecting (one connection, or a connection from the pool) may take, and asking
/// a new connection's server for its role.
pub(crate) const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// How long one search for a qualifying host goes on before it gives up (the next failure
/// starts another).
const SEARCH_FOR: Duration = Duration::from_secs(30);
/// The longest pause between two rounds of a search.
const SEARCH_PAUSE_MAX: Duration = Duration::from_millis(250);
/// How long [`PrimaryPool::conn`] waits for a connection before it suspects the host is gone.
const NOTICE_AFTER: Duration = Duration::from_secs(1);

/// The pool, and which of the URL's hosts its new connections go to.
pub(crate) struct PrimaryPool {
    pool: PgPool,
    hosts: Vec<PgConnectOptions>,
    target: TargetSessionAttrs,
    display_url: String,
    chosen: Mutex<Chosen>,
    /// A search is running.
    searching: AtomicBool,
}

/// The host new connections go to, and when the pool last moved to another one.
struct Chosen {
    host: usize,
    switched_at: Option<Instant>,
}

impl PrimaryPool {
    /// Chooses the first qualifying host of `cfg` (a direct connection, so a refused or
    /// unreachable server fails here at once, with its cause) and builds the pool on it.
    pub(crate) async fn connect(cfg: &ShedPgConfig) -> Result<Arc<PrimaryPool>> {
        let host = choose_host(&cfg.hosts, cfg.target).await.map_err(|e| {
            Error::new(
                ErrorKind::Connection,
                BACKEND_PG,
                Operation::Connect,
                format!("cannot connect to {}", cfg.display_url),
            )
            .with_source(e)
        })?;
        Ok(Arc::new_cyclic(|me: &Weak<PrimaryPool>| {
            // The hooks hold the pool's owner weakly: the pool must not keep itself alive.
            let (admit, reuse) = (me.clone(), me.clone());
            let pool = PgPoolOptions::new()
                .max_connections(cfg.pool_size)
                .acquire_timeout(CONNECT_TIMEOUT)
                // `before_acquire` pings instead, so that a dead connection is noticed.
                .test_before_acquire(false)
                .after_connect(move |conn, _| {
                    let me = admit.upgrade();
                    Box::pin(async move {
                        match me {
                            Some(me) => me.admit(conn).await,
                            None => Ok(()),
                        }
                    })
                })
                .before_acquire(move |conn, meta| {
                    let me = reuse.upgrade();
                    Box::pin(async move {
                        match me {
                            Some(me) => me.reuse(conn, meta).await,
                            None => Ok(true),
                        }
                    })
                })
                .connect_lazy_with(cfg.hosts[host].clone());
            PrimaryPool {
                pool,
                hosts: cfg.hosts.clone(),
                target: cfg.target,
                display_url: cfg.display_url.clone(),
                chosen: Mutex::new(Chosen {
                    host,
                    switched_at: None,
                }),
                searching: AtomicBool::new(false),
            }
        }))
    }

    /// The pool; statements that fail on it should be reported to [`PrimaryPool::failed`].
    pub(crate) fn pool(&self) -> &PgPool {
        &self.pool
    }

    /// A connection from the pool, for one statement. When none comes within
    /// [`NOTICE_AFTER`], the pool may be opening connections to a host that is gone — sqlx's
    /// ping on release closed the idle connections of a killed server without anyone seeing
    /// it, and the pool's own connect retries are silent — so a search starts, and the wait
    /// goes on up to the pool's acquire timeout. (A busy pool costs one needless search.)
    pub(crate) async fn conn(self: &Arc<Self>) -> sqlx::Result<PoolConnection<Postgres>> {
        let acquire = self.pool.acquire();
        tokio::pin!(acquire);
        match tokio::time::timeout(NOTICE_AFTER, &mut acquire).await {
            Ok(got) => got,
            Err(_) => {
                self.search();
                acquire.await
            }
        }
    }

    /// Notes a failed statement: a broken or unobtainable connection, or a server that
    /// refused a write as read-only, sends new connections through the host selection again.
    pub(crate) fn failed(self: &Arc<Self>, e: &sqlx::Error) {
        let host_gone = match e {
            sqlx::Error::Io(_)
            | sqlx::Error::Tls(_)
            | sqlx::Error::Protocol(_)
            | sqlx::Error::PoolTimedOut
            | sqlx::Error::WorkerCrashed => true,
            // read_only_sql_transaction, admin/crash shutdown, cannot_connect_now, and the
            // connection_exception class.
            sqlx::Error::Database(d) => d.code().is_some_and(|c| {
                matches!(&*c, "25006" | "57P01" | "57P02" | "57P03") || c.starts_with("08")
            }),
            _ => false,
        };
        if host_gone {
            self.search();
        }
    }

    /// `after_connect`: a new connection is used only if its server qualifies.
    async fn admit(self: Arc<Self>, conn: &mut PgConnection) -> sqlx::Result<()> {
        let Some(check) = self.target.check_sql() else {
            return Ok(());
        };
        let writable = tokio::time::timeout(
            CONNECT_TIMEOUT,
            sqlx::query_scalar::<_, bool>(check).fetch_one(&mut *conn),
        )
        .await
        .map_err(|_| sqlx::Error::PoolTimedOut)??;
        if writable {
            return Ok(());
        }
        self.search();
        // The pool closes the connection and tries again (after the search, elsewhere).
        Err(sqlx::Error::Protocol(format!(
            "{}: a new connection's server does not take writes (a standby, or read-only): \
             closed unused, looking for the host that does",
            self.display_url
        )))
    }

    /// `before_acquire`: an idle connection is reused if it was opened on the host chosen now
    /// and still answers a ping.
    async fn reuse(
        self: Arc<Self>,
        conn: &mut PgConnection,
        meta: PoolConnectionMetadata,
    ) -> sqlx::Result<bool> {
        let switched_at = self.chosen.lock().expect("not poisoned").switched_at;
        if switched_at.is_some_and(|at| meta.age > at.elapsed()) {
            return Ok(false);
        }
        conn.ping().await.inspect_err(|_| self.search())?;
        Ok(true)
    }

    /// Starts a search for a qualifying host unless one is running (or there is no other
    /// host to find).
    fn search(self: &Arc<Self>) {
        if self.hosts.len() < 2 || self.searching.swap(true, Ordering::AcqRel) {
            return;
        }
        let me = Arc::downgrade(self);
        tokio::spawn(async move {
            let started = Instant::now();
            let mut pause = Duration::from_millis(10);
            loop {
                let Some(this) = me.upgrade() else { return };
                match choose_host(&this.hosts, this.target).await {
                    Ok(host) => return this.settle_on(host),
                    Err(e) if started.elapsed() >= SEARCH_FOR => {
                        tracing::warn!(url = %this.display_url, error = %e, "no host qualifies; new connections stay where they were");
                        this.searching.store(false, Ordering::Release);
                        return;
                    }
                    Err(_) => {}
                }
                drop(this);
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(SEARCH_PAUSE_MAX);
            }
        });
    }

    /// Points new connections at `host`; connections opened before are closed, not reused.
    fn settle_on(&self, host: usize) {
        let mut chosen = self.chosen.lock().expect("not poisoned");
        if chosen.host != host {
            self.pool.set_connect_options(self.hosts[host].clone());
            tracing::info!(url = %self.display_url, from = %label(&self.hosts[chosen.host]), to = %label(&self.hosts[host]), "new connections go to another host");
            *chosen = Chosen {
                host,
                switched_at: Some(Instant::now()),
            };
        }
        self.searching.store(false, Ordering::Release);
    }
}

/// `host:port` of `o`, for messages.
fn label(o: &PgConnectOptions) -> String {
    format!("{}:{}", o.get_host(), o.get_port())
}

/// The index of the first of `hosts` that connects and qualifies under `target` (see
/// `lock_core::hosts`): the primary, when the URL names a primary and its replicas.
async fn choose_host(
    hosts: &[PgConnectOptions],
    target: TargetSessionAttrs,
) -> std::result::Result<usize, NoUsableHost> {
    let mut refused = Vec::new();
    let mut cause = None;
    for (i, host) in hosts.iter().enumerate() {
        let mut probe =
            match tokio::time::timeout(CONNECT_TIMEOUT, PgConnection::connect_with(host)).await {
                Ok(Ok(p)) => p,
                Ok(Err(e)) => {
                    refused.push((label(host), HostRefusal::Unreachable(e.to_string())));
                    cause = Some(e);
                    continue;
                }
                Err(_) => {
                    refused.push((
                        label(host),
                        HostRefusal::Unreachable(format!("no answer within {CONNECT_TIMEOUT:?}")),
                    ));
                    continue;
                }
            };
        let role = match target.check_sql() {
            None => Ok(Ok(true)),
            Some(q) => {
                tokio::time::timeout(
                    CONNECT_TIMEOUT,
                    sqlx::query_scalar::<_, bool>(q).fetch_one(&mut probe),
                )
                .await
            }
        };
        let _ = tokio::time::timeout(CONNECT_TIMEOUT, probe.close()).await;
        refused.push((
            label(host),
            match role {
                Ok(Ok(true)) => return Ok(i),
                Ok(Ok(false)) => HostRefusal::NotWritable,
                Ok(Err(e)) => {
                    let why = HostRefusal::RoleUnknown(e.to_string());
                    cause = Some(e);
                    why
                }
                Err(_) => HostRefusal::RoleUnknown(format!("no answer within {CONNECT_TIMEOUT:?}")),
            },
        ));
    }
    Err(NoUsableHost {
        hosts: refused,
        cause: cause.map(|e| Arc::new(e) as Arc<dyn std::error::Error + Send + Sync>),
    })
}
