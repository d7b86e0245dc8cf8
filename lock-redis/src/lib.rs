#![doc = include_str!("../README.md")]
#![deny(missing_docs)]

mod backend;
mod config;
#[cfg(test)]
mod golden;
mod multi;
mod multi_scripts;
mod node;
mod notify;
mod redlock;
mod scripts;
mod sentinel;
pub mod tls;
mod wait;

use std::sync::Arc;

use lock_core::{Backend, Capabilities, Registry};

pub use config::InvalidUrl;

/// `redis://[user[:password]@]host[:port][/db][?prefix=…&timeout=…]`: one Redis server.
pub const REDIS_SCHEME: &str = "redis";
/// `rediss://[user[:password]@]host[:port][/db][?ca=…&cert=…&key=…]`: one Redis server over
/// TLS (the `tls` feature; without it connecting fails with `Unsupported`).
pub const REDISS_SCHEME: &str = "rediss";
/// `redlock://[user[:password]@]h1[:p1],h2[:p2],…[/db][?…]`: Redlock over independent servers.
pub const REDLOCK_SCHEME: &str = "redlock";
/// `redis+sentinel://[user[:password]@]s1[:p1],s2[:p2],…/master[/db][?…]`: one Redis master,
/// found through its Sentinels on every (re)connection, so the client follows a failover.
pub const SENTINEL_SCHEME: &str = "redis+sentinel";
/// Every scheme this crate registers.
pub const SCHEMES: &[&str] = &[REDIS_SCHEME, REDISS_SCHEME, REDLOCK_SCHEME, SENTINEL_SCHEME];

/// What `redis://` offers: fencing tokens, leases with renewal, waiting by pub/sub.
pub const REDIS_CAPABILITIES: Capabilities = backend::CAPABILITIES;
/// What `redlock://` offers: leases with renewal and waiting by pub/sub, but **no fencing
/// token** (independent instances share no counter that could order grants safely).
pub const REDLOCK_CAPABILITIES: Capabilities = redlock::CAPABILITIES;

/// Registers `redis://`, `rediss://` (`Unsupported` without the `tls` feature),
/// `redlock://` and `redis+sentinel://`.
pub fn register(registry: &mut Registry) {
    registry.register(REDIS_SCHEME, REDIS_CAPABILITIES, |url| {
        Box::pin(async move {
            let config = config::Config::from_url(&url, backend::NAME)?;
            let backend: Arc<dyn Backend> = Arc::new(backend::RedisBackend::connect(config).await?);
            Ok(backend)
        })
    });
    registry.register(REDISS_SCHEME, REDIS_CAPABILITIES, |url| {
        Box::pin(async move {
            let config = config::Config::from_url(&url, backend::NAME)?;
            let backend: Arc<dyn Backend> = Arc::new(backend::RedisBackend::connect(config).await?);
            Ok(backend)
        })
    });
    registry.register(SENTINEL_SCHEME, REDIS_CAPABILITIES, |url| {
        Box::pin(async move {
            let config = config::Config::from_url(&url, backend::NAME)?;
            let backend: Arc<dyn Backend> = Arc::new(backend::RedisBackend::connect(config).await?);
            Ok(backend)
        })
    });
    registry.register(REDLOCK_SCHEME, REDLOCK_CAPABILITIES, |url| {
        Box::pin(async move {
            let config = config::Config::from_url(&url, redlock::NAME)?;
            let backend: Arc<dyn Backend> =
                Arc::new(redlock::RedlockBackend::connect(config).await?);
            Ok(backend)
        })
    });
}
