#![doc = include_str!("../README.md")]
#![deny(missing_docs)]

mod acquire;
mod backend;
mod config;
mod error;
#[cfg(test)]
mod golden;
mod layout;
mod lease;
mod link;
mod semaphore;
mod tls;
mod wait;

use std::sync::Arc;

pub use backend::EtcdBackend;
/// The etcd client this backend is built on (re-exported for raw access through
/// [`EtcdBackend::client`]).
pub use etcd_client;

/// The URL scheme: `etcd://h:p[,h:p…][/prefix][?options]`.
pub const SCHEME: &str = "etcd";

/// URL schemes this backend serves.
pub const SCHEMES: &[&str] = &[SCHEME];

/// The backend's name in errors, metrics and reports.
pub(crate) const NAME: &str = "etcd";

/// Registers `etcd://` in `registry`.
pub fn register(registry: &mut lock_core::Registry) {
    registry.register(SCHEME, EtcdBackend::CAPABILITIES, |url| {
        Box::pin(async move {
            let backend: Arc<dyn lock_core::Backend> =
                Arc::new(EtcdBackend::connect_url(&url).await?);
            Ok(backend)
        })
    });
}
