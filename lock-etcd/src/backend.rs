//! The `etcd://` backend: connecting, capabilities, the ttl rules.

use std::fmt;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use etcd_client::{Client, ConnectOptions};
use lock_core::Cleanups;
use lock_core::{
    Backend, BoxFuture, Capabilities, ConnectUrl, Error, ErrorKind, Guard, LockName, LockOptions,
    Operation, Result, Supervisors,
};
use tokio::time::Instant;

use crate::NAME;
use crate::config::Config;
use crate::error::{call, from_connect, timed_out};
use crate::lease::{LeasePool, secs_ceil};

/// Locks in etcd, laid out like etcd's own `concurrency.Mutex` (see the crate docs).
///
/// Cloning is cheap: clones share the connection and the lease pool.
#[derive(Clone)]
pub struct EtcdBackend {
    pub(crate) inner: Arc<Inner>,
}

pub(crate) struct Inner {
    pub client: Client,
    pub config: Config,
    /// The smallest lease TTL this server grants, in seconds (probed at connect).
    pub min_ttl_secs: i64,
    pub pool: Mutex<LeasePool>,
    /// The round trip of the last answered keepalive (at first: of the probe's revoke), in
    /// microseconds; 0 when unknown.
    pub last_rtt_micros: AtomicU64,
    /// When the connections were last replaced, and how often since a keepalive was last
    /// answered (see [`crate::link::reconnect`]).
    pub reconnects: Mutex<crate::link::Reconnects>,
    /// Starts the guards' keepalive supervisors only when due.
    pub supervisors: Supervisors,
    /// Lease revokes and releases running in the background, which `close` waits for.
    pub cleanups: Cleanups,
}

impl fmt::Debug for EtcdBackend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EtcdBackend")
            .field("config", &self.inner.config)
            .field("min_ttl_secs", &self.inner.min_ttl_secs)
            .finish()
    }
}

impl EtcdBackend {
    /// What the backend offers. `min_ttl` here is etcd's default minimum (2 s, from the
    /// default 1 s election timeout); [`Backend::capabilities`] reports the minimum of the
    /// server actually connected to.
    pub const CAPABILITIES: Capabilities = Capabilities {
        fencing: true,
        shared: true,
        semaphore: true,
        lease: true,
        renew: true,
        at_least: true,
        notify: true,
        persistent_tokens: true,
        min_ttl: Some(Duration::from_secs(2)),
    };

    /// Connects to the etcd cluster named by `url` (`etcd://h:p[,h:p…][/prefix][?options]`).
    ///
    /// Connecting grants and revokes one probe lease: it proves the cluster answers and
    /// learns the smallest lease TTL the server grants.
    pub async fn connect(url: &str) -> Result<EtcdBackend> {
        let url = ConnectUrl::parse(url)?;
        Self::connect_url(&url).await
    }

    /// [`EtcdBackend::connect`] for an already parsed URL.
    pub async fn connect_url(url: &ConnectUrl) -> Result<EtcdBackend> {
        if url.scheme() != crate::SCHEME {
            return Err(Error::invalid_url(
                NAME,
                format!("expected an etcd:// URL, got {url}"),
            ));
        }
        let config = Config::parse(url)?;
        let mut options = ConnectOptions::new()
            .with_connect_timeout(config.connect_timeout)
            // HTTP/2 pings find a dead connection under a long watch; etcd refuses pings more
            // often than every 5 s, and pings on idle connections.
            .with_keep_alive(Duration::from_secs(10), Duration::from_secs(5))
            .with_keep_alive_while_idle(false)
            // A member cut off from the leader fails requests (and watches) at once instead of
            // serving them late.
            .with_require_leader(true);
        if let Some((user, password)) = &config.credentials {
            options = options.with_user(user.clone(), password.clone());
        }
        if let Some(files) = &config.tls {
            options = crate::tls::with_tls(options, files)?;
        }
        let tls = crate::tls::Spoke::of(config.tls.as_ref());
        let connecting = format!("connecting to {}", config.display);
        let client = match tokio::time::timeout(
            config.connect_timeout,
            Client::connect(&config.endpoints, Some(options)),
        )
        .await
        {
            Ok(Ok(client)) => client,
            Ok(Err(e)) => {
                let e = from_connect(&connecting, e, tls);
                return Err(plain_to_tls(e, &config).await);
            }
            Err(_) => {
                return Err(timed_out(
                    Operation::Connect,
                    &connecting,
                    config.connect_timeout,
                ));
            }
        };
        // The probe: the server raises a TTL below its minimum to the minimum.
        let mut leases = client.lease_client();
        let what = format!("{connecting} (granting a probe lease)");
        let probe = match tokio::time::timeout(config.connect_timeout, leases.grant(1, None)).await
        {
            Ok(Ok(probe)) => probe,
            Ok(Err(e)) => {
                let e = from_connect(&what, e, tls);
                return Err(plain_to_tls(e, &config).await);
            }
            Err(_) => return Err(timed_out(Operation::Connect, &what, config.connect_timeout)),
        };
        let min_ttl_secs = probe.ttl().max(1);
        // The revoke travels on the connection the grant opened: its round trip is the first
        // estimate of how long a keepalive takes (see `lease::keep_alive`).
        let revoking = Instant::now();
        let revoked = call(
            Operation::Connect,
            &what,
            config.request_timeout,
            leases.revoke(probe.id()),
        )
        .await;
        let first_rtt = match revoked {
            Ok(_) => u64::try_from(revoking.elapsed().as_micros()).unwrap_or(u64::MAX),
            Err(_) => 0,
        };
        tracing::debug!(url = %config.display, min_ttl_secs, "connected to etcd");
        Ok(EtcdBackend {
            inner: Arc::new(Inner {
                client,
                config,
                min_ttl_secs,
                pool: Mutex::new(LeasePool::default()),
                last_rtt_micros: AtomicU64::new(first_rtt),
                reconnects: Mutex::default(),
                supervisors: Supervisors::new(),
                cleanups: Cleanups::new(),
            }),
        })
    }

    /// The raw etcd client this backend uses (for tools, tests and benchmarks).
    pub fn client(&self) -> &Client {
        &self.inner.client
    }

    /// The smallest lease TTL the connected server grants.
    pub fn min_ttl(&self) -> Duration {
        Duration::from_secs(self.inner.min_ttl_secs.unsigned_abs())
    }

    /// The key prefix of lock `name`: `PREFIX NAME /` (each contender adds its lease id in
    /// hex), exactly what `etcdctl lock PREFIX NAME` uses.
    pub fn key_prefix(&self, name: &LockName) -> Vec<u8> {
        crate::layout::lock_prefix(&self.inner.config.prefix, name.as_str())
    }

    /// The lease TTL (whole seconds) for `ttl`: rounded up, and never below the server's
    /// minimum, which is an error rather than a silent round-up.
    pub(crate) fn lease_secs(&self, ttl: Duration) -> Result<i64> {
        let secs = secs_ceil(ttl);
        let min = self.inner.min_ttl_secs;
        if secs < min {
            return Err(Error::new(
                ErrorKind::InvalidOptions,
                NAME,
                Operation::Validate,
                format!(
                    "ttl {ttl:?} is below this etcd server's minimum lease TTL of {min} s \
                     (etcd raises shorter leases to about 1.5 × its election timeout); use a \
                     ttl of at least {min} s"
                ),
            ));
        }
        Ok(secs)
    }
}

/// A plain connection that failed: when the server turns out to speak TLS, a `Tls` error
/// that says so instead of a bare connection error.
async fn plain_to_tls(e: Error, config: &Config) -> Error {
    if config.tls.is_some() || e.kind() != ErrorKind::Connection {
        return e;
    }
    let Some(endpoint) = config.endpoints.first() else {
        return e;
    };
    let within = config.connect_timeout.min(Duration::from_secs(1));
    if !crate::tls::answers_as_tls_server(endpoint, within).await {
        return e;
    }
    Error::new(
        ErrorKind::Tls,
        NAME,
        Operation::Connect,
        format!(
            "connecting to {}: the server requires TLS (it answered plain text as a TLS \
             server): add ca=FILE (and cert=, key= if it wants a client certificate)",
            config.display
        ),
    )
    .with_source(e)
}

impl Backend for EtcdBackend {
    fn name(&self) -> &'static str {
        NAME
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities {
            min_ttl: Some(self.min_ttl()),
            ..Self::CAPABILITIES
        }
    }

    fn acquire<'a>(
        &'a self,
        name: &'a LockName,
        opts: &'a LockOptions,
    ) -> BoxFuture<'a, Result<Guard>> {
        lock_core::observe::instrument_acquire(
            NAME,
            name,
            opts,
            crate::acquire::acquire(self, name, opts),
        )
    }

    /// Waits for the lease revokes and releases running in the background, then revokes the
    /// idle leases kept for reuse, so that nothing this client granted outlives it.
    fn close(&self) -> BoxFuture<'_, ()> {
        Box::pin(async move {
            self.inner.cleanups.finished().await;
            let idle = crate::lease::lock_pool(&self.inner).drain();
            // A handful at most (the pool is small), one round trip each.
            for lease in idle {
                crate::lease::revoke(&self.inner, lease.id).await;
            }
        })
    }
}
