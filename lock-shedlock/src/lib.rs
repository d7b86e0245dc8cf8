#![doc = include_str!("../README.md")]
#![deny(missing_docs)]

mod config;
#[cfg(test)]
mod golden;
mod owner;
mod pg;
mod primary;
mod redis;
mod redis_link;

use std::sync::Arc;

pub use config::{ShedPgConfig, TableLayout};
pub use owner::{hostname, owner};
pub use pg::ShedPgBackend;
pub use redis::ShedRedisBackend;

/// `shedlock+redis://[user:password@]host:port[/db]?…`: ShedLock's Redis keys, plain text.
pub const SCHEME_REDIS: &str = "shedlock+redis";

/// `shedlock+rediss://[user:password@]host:port[/db]?ca=…&cert=…&key=…`: the same over TLS
/// (the `tls` feature; without it connecting fails with `Unsupported`).
pub const SCHEME_REDISS: &str = "shedlock+rediss";

/// URL schemes this crate serves.
pub const SCHEMES: &[&str] = &["shedlock+postgres", SCHEME_REDIS, SCHEME_REDISS];

/// Backend name of the PostgreSQL-table flavour.
pub const BACKEND_PG: &str = "shedlock-postgres";

/// Backend name of the Redis flavour.
pub const BACKEND_REDIS: &str = "shedlock-redis";

/// Registers `shedlock+postgres://`, `shedlock+redis://` and `shedlock+rediss://`.
pub fn register(registry: &mut lock_core::Registry) {
    registry.register("shedlock+postgres", ShedPgBackend::CAPABILITIES, |url| {
        Box::pin(async move {
            let backend: Arc<dyn lock_core::Backend> =
                Arc::new(ShedPgBackend::connect(&url).await?);
            Ok(backend)
        })
    });
    for scheme in [SCHEME_REDIS, SCHEME_REDISS] {
        registry.register(scheme, ShedRedisBackend::CAPABILITIES, |url| {
            Box::pin(async move {
                let backend: Arc<dyn lock_core::Backend> =
                    Arc::new(ShedRedisBackend::connect(&url).await?);
                Ok(backend)
            })
        });
    }
}
