//! One Redis endpoint: a multiplexed command connection that is replaced when it dies, and
//! the timeouts and error reporting around every request.

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use lock_core::{Error, ErrorKind, Operation};
use redis::aio::MultiplexedConnection;
use redis::{AsyncConnectionConfig, FromRedisValue, RedisError, ScriptInvocation};
use tokio::net::TcpStream;
use tokio::task::JoinHandle;

use crate::config::Endpoint;
use crate::notify::Notifier;

/// A TCP connection to `endpoint` with Nagle off (every lock request is one small write
/// that waits for its reply).
/// Through Sentinels: to the master they name now.
pub(crate) async fn tcp(endpoint: &Endpoint) -> std::io::Result<TcpStream> {
    let stream = match &endpoint.sentinels {
        Some(s) => {
            let (host, port) = s.master_addr(endpoint.timeout).await?;
            TcpStream::connect((host.as_str(), port)).await?
        }
        None => TcpStream::connect((endpoint.host.as_str(), endpoint.port)).await?,
    };
    stream.set_nodelay(true)?;
    Ok(stream)
}

/// A failed request to one endpoint.
#[derive(Debug)]
pub(crate) enum NodeError {
    /// The connection or the server said no.
    Redis { addr: String, source: RedisError },
    /// No reply in time.
    Timeout { addr: String, after: Duration },
}

impl fmt::Display for NodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            NodeError::Redis { addr, source } => write!(f, "{addr}: {source}"),
            NodeError::Timeout { addr, after } => write!(f, "{addr}: no reply within {after:?}"),
        }
    }
}

impl std::error::Error for NodeError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            NodeError::Redis { source, .. } => Some(source),
            NodeError::Timeout { .. } => None,
        }
    }
}

impl NodeError {
    /// The lock-domain kind: transport trouble is `Connection`, anything the server
    /// answered with (wrong type, no permission, read-only replica, …) is `Backend`.
    pub fn kind(&self) -> ErrorKind {
        match self {
            NodeError::Timeout { .. } => ErrorKind::Connection,
            NodeError::Redis { source, .. } => {
                if source.is_io_error()
                    || source.is_connection_refusal()
                    || source.is_connection_dropped()
                    || source.is_timeout()
                    || source.is_unrecoverable_error()
                {
                    ErrorKind::Connection
                } else {
                    ErrorKind::Backend
                }
            }
        }
    }

    /// The dlock error for this failure.
    pub fn into_error(self, backend: &'static str, op: Operation, what: String) -> Error {
        Error::new(self.kind(), backend, op, what).with_source(self)
    }
}

/// Aborts the connection's driver task when the last clone of the link goes.
struct Driver(JoinHandle<()>);

impl Drop for Driver {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// A live command connection. Cheap to clone; requests on clones share one socket, in order.
#[derive(Clone)]
pub(crate) struct Link {
    id: u64,
    conn: MultiplexedConnection,
    driver: Arc<Driver>,
}

impl Link {
    /// False once the socket closed (server restarted, connection reset): the driver task
    /// ends when the stream ends, so this is known before the next request is sent.
    fn alive(&self) -> bool {
        !self.driver.0.is_finished()
    }
}

/// One Redis server as seen by this process.
pub(crate) struct Node {
    pub endpoint: Endpoint,
    pub label: String,
    link: Mutex<Option<Link>>,
    connecting: tokio::sync::Mutex<()>,
    next_id: AtomicU64,
    pub notifier: Arc<Notifier>,
}

impl fmt::Debug for Node {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Node")
            .field("endpoint", &self.endpoint)
            .finish()
    }
}

impl Node {
    pub fn new(endpoint: Endpoint) -> Node {
        Node {
            label: endpoint.label(),
            notifier: Arc::new(Notifier::new(endpoint.clone())),
            endpoint,
            link: Mutex::new(None),
            connecting: tokio::sync::Mutex::new(()),
            next_id: AtomicU64::new(1),
        }
    }

    fn slot(&self) -> MutexGuard<'_, Option<Link>> {
        self.link.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn cached(&self) -> Option<Link> {
        self.slot().as_ref().filter(|l| l.alive()).cloned()
    }

    /// The current connection, or a new one if there is none or it died.
    pub async fn link(&self) -> Result<Link, NodeError> {
        if let Some(link) = self.cached() {
            return Ok(link);
        }
        // One connection attempt at a time; the others reuse its result.
        let _connecting = self.connecting.lock().await;
        if let Some(link) = self.cached() {
            return Ok(link);
        }
        let after = self.endpoint.timeout;
        let connect = async {
            let stream = tcp(&self.endpoint).await.map_err(RedisError::from)?;
            let config = AsyncConnectionConfig::new()
                .set_connection_timeout(None)
                .set_response_timeout(None);
            let (mut conn, driver) =
                MultiplexedConnection::new_with_config(&self.endpoint.info, stream, config).await?;
            let driver = tokio::spawn(driver);
            if self.endpoint.sentinels.is_some() {
                // The Sentinels may still name a master that was just demoted.
                let role = redis::cmd("ROLE")
                    .query_async::<redis::Value>(&mut conn)
                    .await;
                let refused = match role {
                    Ok(r) if crate::sentinel::is_master(&r) => None,
                    Ok(_) => Some(RedisError::from(std::io::Error::new(
                        std::io::ErrorKind::ConnectionRefused,
                        "the server the Sentinels named is not a master (yet)",
                    ))),
                    Err(e) => Some(e),
                };
                if let Some(e) = refused {
                    driver.abort();
                    return Err(e);
                }
            }
            if let Err(e) = crate::scripts::load_all()
                .query_async::<()>(&mut conn)
                .await
            {
                driver.abort();
                return Err(e);
            }
            Ok((conn, driver))
        };
        let (conn, driver) = match tokio::time::timeout(after, connect).await {
            Ok(Ok(pair)) => pair,
            Ok(Err(source)) => {
                return Err(NodeError::Redis {
                    addr: self.label.clone(),
                    source,
                });
            }
            Err(_) => {
                return Err(NodeError::Timeout {
                    addr: self.label.clone(),
                    after,
                });
            }
        };
        let link = Link {
            id: self.next_id.fetch_add(1, Ordering::Relaxed),
            conn,
            driver: Arc::new(Driver(driver)),
        };
        tracing::debug!(redis = %self.label, "connected");
        *self.slot() = Some(link.clone());
        Ok(link)
    }

    /// Forgets `link` if it is still the current one, so the next request reconnects.
    fn invalidate(&self, link: &Link) {
        let mut slot = self.slot();
        if slot.as_ref().is_some_and(|l| l.id == link.id) {
            *slot = None;
        }
    }

    /// Runs a script on `link` (EVALSHA, loading the script on NOSCRIPT) with a timeout.
    /// A transport failure or a timeout retires the connection.
    pub async fn eval_on<T: FromRedisValue>(
        &self,
        link: &Link,
        invocation: &ScriptInvocation<'_>,
        timeout: Duration,
    ) -> Result<T, NodeError> {
        let mut conn = link.conn.clone();
        match tokio::time::timeout(timeout, invocation.invoke_async(&mut conn)).await {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(source)) => {
                let err = NodeError::Redis {
                    addr: self.label.clone(),
                    source,
                };
                if err.kind() == ErrorKind::Connection {
                    self.invalidate(link);
                }
                Err(err)
            }
            Err(_) => {
                // The server may be paused or the path blackholed; a new connection gives the
                // next request a fresh chance instead of queueing behind this one.
                self.invalidate(link);
                Err(NodeError::Timeout {
                    addr: self.label.clone(),
                    after: timeout,
                })
            }
        }
    }

    /// [`Node::eval_on`] on the current connection.
    pub async fn eval<T: FromRedisValue>(
        &self,
        invocation: &ScriptInvocation<'_>,
        timeout: Duration,
    ) -> Result<T, NodeError> {
        let started = tokio::time::Instant::now();
        // The live connection without a timer when there is one (the usual case); only a
        // reconnection needs the time limit.
        let link = match self.cached() {
            Some(link) => link,
            None => match tokio::time::timeout(timeout, self.link()).await {
                Ok(link) => link?,
                Err(_) => {
                    return Err(NodeError::Timeout {
                        addr: self.label.clone(),
                        after: timeout,
                    });
                }
            },
        };
        let left = timeout.saturating_sub(started.elapsed());
        self.eval_on(&link, invocation, left.max(Duration::from_millis(1)))
            .await
    }
}
