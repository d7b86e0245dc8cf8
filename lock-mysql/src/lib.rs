#![doc = include_str!("../README.md")]
#![deny(missing_docs)]

mod backend;
mod config;
pub mod name;
mod session;
mod watch;

use std::sync::Arc;

pub use backend::MySqlBackend;
pub use config::{Fencing, MySqlConfig};
pub use name::NameScheme;

/// URL schemes this backend serves.
pub const SCHEMES: &[&str] = &["mysql", "mariadb"];

/// The backend's name in errors, metrics and reports.
pub const BACKEND: &str = "mysql";

/// Registers `mysql://` and `mariadb://`.
pub fn register(registry: &mut lock_core::Registry) {
    for scheme in SCHEMES {
        registry.register(scheme, MySqlBackend::CAPABILITIES, |url| {
            Box::pin(async move {
                let backend: Arc<dyn lock_core::Backend> =
                    Arc::new(MySqlBackend::connect(&url).await?);
                Ok(backend)
            })
        });
    }
}
