#![doc = include_str!("../README.md")]
#![deny(missing_docs)]

use std::sync::Arc;

pub use lock_core::*;

/// Known URL schemes, each with the cargo feature of this crate that enables it.
pub const KNOWN_SCHEMES: &[(&str, &str)] = &[
    ("postgres", "postgres"),
    ("postgresql", "postgres"),
    ("redis", "redis"),
    ("rediss", "redis"),
    ("redlock", "redis"),
    ("etcd", "etcd"),
    ("zk", "zookeeper"),
    ("shedlock+postgres", "shedlock"),
    ("shedlock+redis", "shedlock"),
];

/// A registry with `memory://` and every backend this build's features enable; the schemes
/// of the other backends are known and fail with an error naming the feature to enable.
pub fn registry() -> Registry {
    let mut registry = Registry::new();
    register_memory(&mut registry);
    for (scheme, feature) in KNOWN_SCHEMES {
        if feature_enabled(feature) {
            registry.register(scheme, not_implemented);
        } else {
            registry.register_disabled(scheme, feature);
        }
    }
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

fn feature_enabled(feature: &str) -> bool {
    match feature {
        "postgres" => cfg!(feature = "postgres"),
        "redis" => cfg!(feature = "redis"),
        "etcd" => cfg!(feature = "etcd"),
        "zookeeper" => cfg!(feature = "zookeeper"),
        "shedlock" => cfg!(feature = "shedlock"),
        _ => false,
    }
}

/// Backends whose crate is still a placeholder: the feature is on but there is nothing to
/// connect to yet. Honest about it rather than pretending.
fn not_implemented(url: ConnectUrl) -> BoxFuture<'static, Result<Arc<dyn Backend>>> {
    Box::pin(async move {
        Err(Error::new(
            ErrorKind::Unsupported,
            "dlock",
            Operation::Connect,
            format!(
                "the {:?} backend is not implemented yet in this version of dlock (URL {url})",
                url.scheme()
            ),
        ))
    })
}
