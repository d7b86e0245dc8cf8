#![doc = include_str!("../README.md")]
#![deny(missing_docs)]

mod backend;
mod config;
mod connect;
#[cfg(test)]
mod golden;
mod key;
mod session;

use std::sync::Arc;

pub use backend::PgBackend;
pub use config::{Fencing, PgConfig};
pub use key::{KeyScheme, sqlx_key};

/// URL schemes this backend serves.
pub const SCHEMES: &[&str] = &["postgres", "postgresql"];

/// The backend's name in errors, metrics and reports.
pub const BACKEND: &str = "postgres";

/// Registers `postgres://` and `postgresql://`.
pub fn register(registry: &mut lock_core::Registry) {
    for scheme in SCHEMES {
        registry.register(scheme, PgBackend::CAPABILITIES, |url| {
            Box::pin(async move {
                let backend: Arc<dyn lock_core::Backend> =
                    Arc::new(PgBackend::connect(&url).await?);
                Ok(backend)
            })
        });
    }
}
