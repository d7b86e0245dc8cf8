//! The one Redis connection of a `shedlock+redis://` backend: dialled here (TCP with Nagle
//! off, and for `shedlock+rediss://` TLS through lock-redis's connector: rustls with the ring
//! provider, the same trust rules and refusal messages as `rediss://`), handed to redis-rs
//! ready-made, and replaced after a connection-level failure. Also the typed errors of all of
//! it: TLS refusals are `Tls`, a refused password or an ACL that forbids ShedLock's keys or
//! commands `Auth`.

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use lock_core::{Error, ErrorKind, Operation, Result};
use lock_redis::tls::{Connector, Stream};
use redis::aio::MultiplexedConnection;
use redis::{AsyncConnectionConfig, RedisConnectionInfo, RedisError};
use tokio::net::TcpStream;
use tokio::task::JoinHandle;
use tokio::time::{Instant, timeout_at};

use crate::BACKEND_REDIS;

/// Where and how to connect.
pub(crate) struct Target {
    pub host: String,
    pub port: u16,
    /// User, password, database (sent by redis-rs as the connection opens).
    pub info: RedisConnectionInfo,
    /// TLS on every connection; the server's certificate must name `host`.
    pub tls: Option<Connector>,
    /// Connect budget and reply timeout.
    pub timeout: Duration,
    /// The URL's key prefix (`job-lock`), for the ACL pattern a `NOPERM` message names.
    pub prefix: String,
    /// `?fencing=on`: the acquire script also uses `HEXISTS`, `HINCRBY` and `TIME`.
    pub fencing: bool,
}

/// Aborts the connection's driver task when the last clone of the connection goes.
struct Driver(JoinHandle<()>);

impl Drop for Driver {
    fn drop(&mut self) {
        self.0.abort();
    }
}

#[derive(Clone)]
struct Conn {
    conn: MultiplexedConnection,
    driver: Arc<Driver>,
}

/// One multiplexed connection, replaced by a new one after a connection error.
pub(crate) struct Link {
    target: Target,
    conn: tokio::sync::Mutex<Option<Conn>>,
    /// Whether a connection was ever set up: a plain-text connection that the server drops
    /// before the first reply means "TLS-only port" only while this is false.
    connected_once: AtomicBool,
}

impl Link {
    pub fn new(target: Target) -> Link {
        Link {
            target,
            conn: tokio::sync::Mutex::new(None),
            connected_once: AtomicBool::new(false),
        }
    }

    /// The first connection, for `connect`: its failure as the error of `connect`.
    pub async fn open_first(&self, what: String) -> Result<()> {
        self.get()
            .await
            .map(drop)
            .map_err(|f| f.into_error(&self.target, Operation::Connect, what))
    }

    async fn get(&self) -> std::result::Result<MultiplexedConnection, Failure> {
        let mut slot = self.conn.lock().await;
        // The driver task ends when the socket closes, so a dead connection is known before
        // a request is sent on it.
        if let Some(c) = slot.as_ref().filter(|c| !c.driver.0.is_finished()) {
            return Ok(c.conn.clone());
        }
        let c = self.open().await?;
        *slot = Some(c.clone());
        Ok(c.conn)
    }

    /// Runs `f` on the connection; a connection-level failure drops it so the next call
    /// reconnects.
    pub async fn run<T, F, Fut>(&self, op: Operation, f: F) -> Result<T>
    where
        F: FnOnce(MultiplexedConnection) -> Fut,
        Fut: std::future::Future<Output = redis::RedisResult<T>>,
    {
        let conn = self
            .get()
            .await
            .map_err(|e| e.into_error(&self.target, op, "cannot connect".to_string()))?;
        match f(conn).await {
            Ok(v) => Ok(v),
            Err(e) => {
                let failure = Failure::Redis(e);
                if failure.kind() == ErrorKind::Connection {
                    *self.conn.lock().await = None;
                }
                Err(failure.into_error(&self.target, op, "Redis command failed".to_string()))
            }
        }
    }

    /// TCP, TLS when asked, then redis-rs's set-up (`AUTH`, `SELECT`), all within the
    /// timeout. Which step went silent decides what the error says.
    async fn open(&self) -> std::result::Result<Conn, Failure> {
        let t = &self.target;
        let deadline = Instant::now() + t.timeout;
        let timed_out = || Failure::Timeout { after: t.timeout };
        let tcp = match timeout_at(deadline, TcpStream::connect((t.host.as_str(), t.port))).await {
            Ok(tcp) => tcp.map_err(|e| Failure::Redis(e.into()))?,
            Err(_) => return Err(timed_out()),
        };
        // Every lock request is one small write that waits for its reply.
        tcp.set_nodelay(true)
            .map_err(|e| Failure::Redis(e.into()))?;
        let stream: Stream = match &t.tls {
            None => Box::new(tcp),
            Some(tls) => match timeout_at(deadline, tls.wrap(&t.host, tcp)).await {
                Ok(Ok(stream)) => stream,
                Ok(Err(e)) => {
                    return Err(Failure::Tls {
                        reason: lock_redis::tls::cause(&e)
                            .unwrap_or_else(|| format!("TLS handshake failed: {e}")),
                        source: Some(e.into()),
                    });
                }
                // A plain-text Redis reads the ClientHello as the start of a command and waits.
                Err(_) => {
                    return Err(Failure::Silent {
                        after: t.timeout,
                        tls: true,
                    });
                }
            },
        };
        let config = AsyncConnectionConfig::new()
            .set_connection_timeout(None)
            .set_response_timeout(Some(t.timeout));
        let set_up = MultiplexedConnection::new_with_config(&t.info, stream, config);
        let first = !self.connected_once.load(Ordering::Relaxed);
        match timeout_at(deadline, set_up).await {
            Ok(Ok((conn, driver))) => {
                self.connected_once.store(true, Ordering::Relaxed);
                tracing::debug!(redis = %format!("{}:{}", t.host, t.port), "connected");
                Ok(Conn {
                    conn,
                    driver: Arc::new(Driver(tokio::spawn(driver))),
                })
            }
            Ok(Err(e)) => Err(self.set_up_failed(e, first)),
            // Connected, then silence: Redis's TLS port waits for a handshake that a
            // plain-text client never starts.
            Err(_) if t.tls.is_none() && first => Err(Failure::Silent {
                after: t.timeout,
                tls: false,
            }),
            Err(_) => Err(timed_out()),
        }
    }

    /// A server that closes a plain-text connection before answering its first command, when
    /// no connection ever worked, most likely wants TLS (Redis with only a `tls-port` drops a
    /// client that does not start a handshake). Later, the same is a connection failure.
    fn set_up_failed(&self, e: RedisError, first: bool) -> Failure {
        let closed = e.is_connection_dropped()
            || e.is_io_error() && !e.is_connection_refusal() && !e.is_timeout();
        if self.target.tls.is_none() && first && closed {
            return Failure::Tls {
                reason: "the server closed the plain-text connection before answering the first \
                         command: it may accept only TLS on this port (use shedlock+rediss://)"
                    .to_string(),
                source: Some(e),
            };
        }
        Failure::Redis(e)
    }
}

/// A failed connection or request.
#[derive(Debug)]
enum Failure {
    /// The connection or the server said no.
    Redis(RedisError),
    /// No reply in time.
    Timeout { after: Duration },
    /// Connected, but the TLS handshake (`tls`) or the first command of a plain-text
    /// connection got no reply.
    Silent { after: Duration, tls: bool },
    /// The TLS layer refused, or a plain-text connection met a server that seems to want
    /// TLS; `reason` says which.
    Tls {
        reason: String,
        source: Option<RedisError>,
    },
}

impl Failure {
    fn kind(&self) -> ErrorKind {
        match self {
            Failure::Timeout { .. } | Failure::Silent { .. } => ErrorKind::Connection,
            Failure::Tls { .. } => ErrorKind::Tls,
            Failure::Redis(e) if is_auth(e) => ErrorKind::Auth,
            Failure::Redis(e) if lock_redis::tls::cause(e).is_some() => ErrorKind::Tls,
            Failure::Redis(e)
                if e.is_io_error()
                    || e.is_timeout()
                    || e.is_connection_dropped()
                    || e.is_connection_refusal() =>
            {
                ErrorKind::Connection
            }
            Failure::Redis(_) => ErrorKind::Backend,
        }
    }

    fn into_error(self, target: &Target, op: Operation, what: String) -> Error {
        let kind = self.kind();
        let why = Described {
            failure: self,
            addr: format!("{}:{}", target.host, target.port),
            acl: acl_needs(target),
        };
        Error::new(kind, BACKEND_REDIS, op, what).with_source(why)
    }
}

/// What the user's ACL must allow: ShedLock's keys and the commands this backend sends
/// (directly, and inside its scripts, where Redis checks them too).
fn acl_needs(t: &Target) -> String {
    let fenced = if t.fencing {
        ", and with fencing=on HEXISTS, HINCRBY and TIME"
    } else {
        ""
    };
    format!(
        "the user must be allowed ShedLock's keys `~{}:*` and the commands SET, PTTL, EVALSHA \
         and SCRIPT LOAD, and inside the scripts GET, PEXPIRE and DEL{fenced}",
        t.prefix
    )
}

/// A failure with the server's address and, for `NOPERM`, what the ACL must allow.
#[derive(Debug)]
struct Described {
    failure: Failure,
    addr: String,
    acl: String,
}

impl fmt::Display for Described {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let addr = &self.addr;
        match &self.failure {
            Failure::Redis(e) => match lock_redis::tls::cause(e) {
                Some(tls) => write!(f, "{addr}: {tls} ({e})"),
                None if is_auth(e) => write!(f, "{addr}: {}", auth_message(e, &self.acl)),
                None => write!(f, "{addr}: {e}"),
            },
            Failure::Tls { reason, .. } => write!(f, "{addr}: {reason}"),
            Failure::Silent { after, tls: false } => write!(
                f,
                "{addr}: connected, but no reply to the first command within {after:?}: the port \
                 may accept only TLS (use shedlock+rediss://), or the server is stalled"
            ),
            Failure::Silent { after, tls: true } => write!(
                f,
                "{addr}: connected, but no answer to the TLS handshake within {after:?}: the \
                 server does not speak TLS on this port (use shedlock+redis://), or it is stalled"
            ),
            Failure::Timeout { after } => write!(f, "{addr}: no reply within {after:?}"),
        }
    }
}

impl std::error::Error for Described {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match &self.failure {
            Failure::Redis(e) => Some(e),
            Failure::Tls { source, .. } => source.as_ref().map(|s| s as _),
            Failure::Timeout { .. } | Failure::Silent { .. } => None,
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
fn auth_message(e: &RedisError, acl: &str) -> String {
    match e.code() {
        Some("NOPERM") => format!(
            "permission denied by the server's ACL (NOPERM {}): {acl}",
            e.detail().unwrap_or("")
        ),
        Some("NOAUTH") => "authentication required: the server wants a password \
                           (shedlock+redis://user:password@host)"
            .to_string(),
        _ => "authentication failed: the server refused the user name or password \
              (WRONGPASS)"
            .to_string(),
    }
}
