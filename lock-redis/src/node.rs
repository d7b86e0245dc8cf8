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
use crate::tls::Stream;

/// A connection to `endpoint` with Nagle off (every lock request is one small write that
/// waits for its reply), through TLS when the URL asked for it.
/// Through Sentinels: to the master they name now.
pub(crate) async fn dial(endpoint: &Endpoint) -> Result<Stream, NodeError> {
    let addr = || endpoint.label();
    let io = |source: std::io::Error| NodeError::Redis {
        addr: addr(),
        source: RedisError::from(source),
    };
    // One deadline for the TCP connection and the TLS handshake, so that a handshake nobody
    // answers is reported as such, not as a bare timeout that happened to fire first.
    let deadline = tokio::time::Instant::now() + endpoint.timeout;
    let timed_out = || NodeError::Timeout {
        addr: addr(),
        after: endpoint.timeout,
    };
    let connect = async {
        match &endpoint.sentinels {
            Some(s) => {
                let (host, port) = s.master_addr(endpoint.timeout).await.map_err(io)?;
                let stream = TcpStream::connect((host.as_str(), port))
                    .await
                    .map_err(io)?;
                Ok::<_, NodeError>((host, stream))
            }
            None => {
                let stream = TcpStream::connect((endpoint.host.as_str(), endpoint.port))
                    .await
                    .map_err(io)?;
                Ok((endpoint.host.clone(), stream))
            }
        }
    };
    let (host, stream) = tokio::time::timeout_at(deadline, connect)
        .await
        .map_err(|_| timed_out())??;
    stream.set_nodelay(true).map_err(io)?;
    match &endpoint.tls {
        None => Ok(Box::new(stream)),
        Some(tls) => match tokio::time::timeout_at(deadline, tls.wrap(&host, stream)).await {
            Ok(Ok(stream)) => Ok(stream),
            Ok(Err(e)) => Err(NodeError::Tls {
                addr: addr(),
                reason: crate::tls::cause(&e)
                    .unwrap_or_else(|| format!("TLS handshake failed: {e}")),
                source: Some(RedisError::from(e)),
            }),
            // A plain-text Redis reads the ClientHello as the start of a command and waits.
            Err(_) => Err(NodeError::Silent {
                addr: addr(),
                after: endpoint.timeout,
                tls: true,
            }),
        },
    }
}

/// A failed request to one endpoint.
#[derive(Debug)]
pub(crate) enum NodeError {
    /// The connection or the server said no.
    Redis { addr: String, source: RedisError },
    /// No reply in time.
    Timeout { addr: String, after: Duration },
    /// Connected, but the first command of a plain-text connection, or the TLS handshake,
    /// got no reply.
    Silent {
        addr: String,
        after: Duration,
        tls: bool,
    },
    /// The TLS layer refused (certificate, handshake), or a plain-text connection met a
    /// server that seems to want TLS. `reason` says which.
    Tls {
        addr: String,
        reason: String,
        source: Option<RedisError>,
    },
}

impl fmt::Display for NodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            NodeError::Redis { addr, source } => match crate::tls::cause(source) {
                Some(tls) => write!(f, "{addr}: {tls} ({source})"),
                None if is_auth(source) => write!(f, "{addr}: {}", auth_message(source)),
                None => write!(f, "{addr}: {source}"),
            },
            NodeError::Tls { addr, reason, .. } => write!(f, "{addr}: {reason}"),
            NodeError::Silent {
                addr,
                after,
                tls: false,
            } => write!(
                f,
                "{addr}: connected, but no reply to the first command within {after:?}: the port \
                 may accept only TLS (use rediss://), or the server is stalled"
            ),
            NodeError::Silent {
                addr,
                after,
                tls: true,
            } => write!(
                f,
                "{addr}: connected, but no answer to the TLS handshake within {after:?}: the \
                 server does not speak TLS on this port (use redis://), or it is stalled"
            ),
            NodeError::Timeout { addr, after } => write!(f, "{addr}: no reply within {after:?}"),
        }
    }
}

impl std::error::Error for NodeError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            NodeError::Redis { source, .. } => Some(source),
            NodeError::Tls { source, .. } => source.as_ref().map(|s| s as _),
            NodeError::Timeout { .. } | NodeError::Silent { .. } => None,
        }
    }
}

/// A refused `AUTH` (wrong user or password), no `AUTH` where one is needed, or a command or
/// key the user's ACL does not allow.
fn is_auth(e: &RedisError) -> bool {
    e.kind() == redis::ErrorKind::AuthenticationFailed
        || matches!(e.code(), Some("NOPERM" | "NOAUTH" | "WRONGPASS"))
}

/// Says which of the three it was; never repeats the password (redis-rs does not put it in
/// its errors either).
fn auth_message(e: &RedisError) -> String {
    match e.code() {
        Some("NOPERM") => format!(
            "permission denied by the server's ACL ({}): the user must be allowed dlock's keys \
             (the key prefix and everything under it, e.g. `~dlock:*` and `~dlock:`), \
             EVALSHA and SCRIPT LOAD, and for waiters SUBSCRIBE on the same names (`&dlock:*`)",
            e.detail().unwrap_or("NOPERM")
        ),
        Some("NOAUTH") => "authentication required: the server wants a password \
                           (redis://user:password@host)"
            .to_string(),
        _ => "authentication failed: the server refused the user name or password \
              (WRONGPASS)"
            .to_string(),
    }
}

impl NodeError {
    /// The lock-domain kind: transport trouble is `Connection`, TLS refusals `Tls`, a refused
    /// password or an ACL that forbids dlock's keys or commands `Auth`, anything else the
    /// server answered with (wrong type, read-only replica, …) `Backend`.
    pub fn kind(&self) -> ErrorKind {
        match self {
            NodeError::Timeout { .. } | NodeError::Silent { .. } => ErrorKind::Connection,
            NodeError::Tls { .. } => ErrorKind::Tls,
            NodeError::Redis { source, .. } => {
                if is_auth(source) {
                    ErrorKind::Auth
                } else if crate::tls::cause(source).is_some() {
                    ErrorKind::Tls
                } else if source.is_io_error()
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
        let started = tokio::time::Instant::now();
        let timed_out = || NodeError::Timeout {
            addr: self.label.clone(),
            after,
        };
        // dial keeps the deadline itself (connection, then TLS handshake).
        let stream = dial(&self.endpoint).await?;
        let left = after.saturating_sub(started.elapsed());
        let (conn, driver) = match tokio::time::timeout(left, self.set_up(stream)).await {
            Ok(Ok(pair)) => pair,
            Ok(Err(source)) => return Err(self.setup_failed(source)),
            // Connected, then silence: Redis's TLS port waits for a handshake that a
            // plain-text client never starts.
            Err(_) if self.endpoint.tls.is_none() && self.next_id.load(Ordering::Relaxed) == 1 => {
                return Err(NodeError::Silent {
                    addr: self.label.clone(),
                    after,
                    tls: false,
                });
            }
            Err(_) => return Err(timed_out()),
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

    /// A server that closes a plain-text connection before answering its first command,
    /// when this endpoint never had a connection, most likely wants TLS (Redis with only a
    /// `tls-port` drops a client that does not start a handshake). Later, after a connection
    /// worked, the same is a plain connection failure (a server restarting).
    fn setup_failed(&self, source: RedisError) -> NodeError {
        let never_connected = self.next_id.load(Ordering::Relaxed) == 1;
        let closed = source.is_connection_dropped()
            || source.is_io_error() && !source.is_connection_refusal() && !source.is_timeout();
        if self.endpoint.tls.is_none() && never_connected && closed {
            return NodeError::Tls {
                addr: self.label.clone(),
                reason: "the server closed the plain-text connection before answering the first \
                         command: it may accept only TLS on this port (use rediss://)"
                    .to_string(),
                source: Some(source),
            };
        }
        NodeError::Redis {
            addr: self.label.clone(),
            source,
        }
    }

    /// redis-rs's connection over `stream` (AUTH, SELECT), the role check through Sentinels,
    /// and the scripts loaded.
    async fn set_up(
        &self,
        stream: Stream,
    ) -> Result<(MultiplexedConnection, JoinHandle<()>), RedisError> {
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
