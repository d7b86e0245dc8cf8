#![doc = include_str!("../README.md")]
#![deny(missing_docs)]

mod backend;
mod config;
mod contender;
mod error;
#[cfg(test)]
mod golden;
mod layout;
mod lease;
mod semaphore;
mod session;

use std::sync::Arc;

use lock_core::{Backend, Capabilities, Registry};

/// The URL scheme: `zk://[user:password@]host:port[,host:port…][/chroot][?options]`.
pub const SCHEME: &str = "zk";

/// Every URL scheme this crate serves.
pub const SCHEMES: &[&str] = &[SCHEME];

/// The backend's name in errors, metrics and reports.
pub const NAME: &str = "zookeeper";

/// What the ZooKeeper backend offers: fencing tokens (the owner node's creation zxid, which
/// the server persists, so they keep increasing across restarts), waiting by watch
/// notification, shared locks and semaphores in Curator's layouts, and nothing lease-like: the
/// lock lives as long as the client's session.
pub const CAPABILITIES: Capabilities = Capabilities {
    fencing: true,
    shared: true,
    semaphore: true,
    lease: false,
    renew: false,
    at_least: false,
    notify: true,
    persistent_tokens: true,
    min_ttl: None,
};

/// Registers `zk://` in `registry`.
pub fn register(registry: &mut Registry) {
    registry.register(SCHEME, CAPABILITIES, |url| {
        Box::pin(async move {
            let backend: Arc<dyn Backend> = Arc::new(backend::ZkBackend::connect(url).await?);
            Ok(backend)
        })
    });
}
