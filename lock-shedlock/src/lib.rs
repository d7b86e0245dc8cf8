#![doc = include_str!("../README.md")]
#![deny(missing_docs)]

mod config;
#[cfg(test)]
mod golden;
mod owner;
mod pg;
mod primary;
mod redis;

use std::sync::Arc;

pub use config::{ShedPgConfig, TableLayout};
pub use owner::{hostname, owner};
pub use pg::ShedPgBackend;
pub use redis::ShedRedisBackend;

/// URL schemes this crate serves.
pub const SCHEMES: &[&str] = &["shedlock+postgres", "shedlock+redis"];

/// Backend name of the PostgreSQL-table flavour.
pub const BACKEND_PG: &str = "shedlock-postgres";

/// Backend name of the Redis flavour.
pub const BACKEND_REDIS: &str = "shedlock-redis";

/// Registers `shedlock+postgres://` and `shedlock+redis://`.
pub fn register(registry: &mut lock_core::Registry) {
    registry.register("shedlock+postgres", ShedPgBackend::CAPABILITIES, |url| {
        Box::pin(async move {
            let backend: Arc<dyn lock_core::Backend> =
                Arc::new(ShedPgBackend::connect(&url).await?);
            Ok(backend)
        })
    });
    registry.register("shedlock+redis", ShedRedisBackend::CAPABILITIES, |url| {
        Box::pin(async move {
            let backend: Arc<dyn lock_core::Backend> =
                Arc::new(ShedRedisBackend::connect(&url).await?);
            Ok(backend)
        })
    });
}
