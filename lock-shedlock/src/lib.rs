#![doc = include_str!("../README.md")]
#![deny(missing_docs)]

mod config;
mod owner;
mod pg;

use std::sync::Arc;

pub use config::{ShedPgConfig, TableLayout};
pub use owner::{hostname, owner};
pub use pg::ShedPgBackend;

/// URL schemes this crate serves.
pub const SCHEMES: &[&str] = &["shedlock+postgres", "shedlock+redis"];

/// Backend name of the PostgreSQL-table flavour.
pub const BACKEND_PG: &str = "shedlock-postgres";

/// Registers `shedlock+postgres://` (and, until it lands, marks `shedlock+redis://` as not
/// implemented yet).
pub fn register(registry: &mut lock_core::Registry) {
    registry.register("shedlock+postgres", ShedPgBackend::CAPABILITIES, |url| {
        Box::pin(async move {
            let backend: Arc<dyn lock_core::Backend> =
                Arc::new(ShedPgBackend::connect(&url).await?);
            Ok(backend)
        })
    });
    registry.register_unimplemented("shedlock+redis");
}
