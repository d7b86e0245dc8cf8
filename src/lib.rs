#![doc = include_str!("../README.md")]
#![deny(missing_docs)]

use std::sync::Arc;

pub use lock_core::*;

/// The etcd backend crate (`EtcdBackend` with its raw client, the key layout), for
/// etcd-specific code such as benchmarks against the raw floor.
#[cfg(feature = "etcd")]
pub use lock_etcd as etcd;

/// Known URL schemes, each with the cargo feature of this crate that enables it.
pub const KNOWN_SCHEMES: &[(&str, &str)] = &[
    ("postgres", "postgres"),
    ("postgresql", "postgres"),
    ("redis", "redis"),
    ("rediss", "redis"),
    ("redlock", "redis"),
    ("redis+sentinel", "redis"),
    ("etcd", "etcd"),
    ("zk", "zookeeper"),
    ("shedlock+postgres", "shedlock"),
    ("shedlock+redis", "shedlock"),
    ("shedlock+rediss", "shedlock"),
    ("mysql", "mysql"),
    ("mariadb", "mysql"),
];

/// A registry with `memory://` and every backend this build's features enable; the schemes
/// of the other backends are known and fail with an error naming the feature to enable.
pub fn registry() -> Registry {
    let mut registry = Registry::new();
    register_memory(&mut registry);
    for (scheme, feature) in KNOWN_SCHEMES {
        if !feature_enabled(feature) {
            registry.register_disabled(scheme, feature);
        }
    }
    #[cfg(feature = "postgres")]
    lock_postgres::register(&mut registry);
    #[cfg(feature = "redis")]
    lock_redis::register(&mut registry);
    #[cfg(feature = "etcd")]
    lock_etcd::register(&mut registry);
    #[cfg(feature = "zookeeper")]
    lock_zookeeper::register(&mut registry);
    #[cfg(feature = "shedlock")]
    lock_shedlock::register(&mut registry);
    #[cfg(feature = "mysql")]
    lock_mysql::register(&mut registry);
    registry
}

/// Connects to the lock service named by `url` (see the crate docs for the schemes).
///
/// ```
/// # #[tokio::main(flavor = "current_thread")] async fn main() -> dlock::Result<()> {
/// use dlock::{LockName, LockOptions};
/// let backend = dlock::connect("memory://").await?;
/// let guard = backend.acquire(&LockName::new("nightly-purge")?, &LockOptions::new()).await?;
/// assert!(guard.token().is_some());
/// guard.release().await?;
/// # Ok(()) }
/// ```
pub async fn connect(url: &str) -> Result<Arc<dyn Backend>> {
    registry().connect(url).await
}

/// The backend features compiled into this build.
const ENABLED_FEATURES: &[&str] = &[
    #[cfg(feature = "postgres")]
    "postgres",
    #[cfg(feature = "redis")]
    "redis",
    #[cfg(feature = "etcd")]
    "etcd",
    #[cfg(feature = "zookeeper")]
    "zookeeper",
    #[cfg(feature = "shedlock")]
    "shedlock",
    #[cfg(feature = "mysql")]
    "mysql",
];

fn feature_enabled(feature: &str) -> bool {
    ENABLED_FEATURES.contains(&feature)
}
