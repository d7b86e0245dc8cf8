#![doc = include_str!("../README.md")]
#![deny(missing_docs)]

mod backend;
mod cleanups;
mod election;
mod error;
mod finish;
mod guard;
mod helpers;
pub mod hosts;
mod idle_pool;
mod memory;
mod name;
pub mod observe;
mod options;
pub mod pg_tls;
mod random;
mod registry;
mod renewal;
#[cfg(feature = "cron")]
pub mod schedule;
mod state_cell;
mod supervisors;
mod wait_plan;

pub use backend::{Backend, BoxFuture, Capabilities};
pub use cleanups::Cleanups;
pub use election::{Election, Leadership};
pub use error::{Error, ErrorKind, Operation, Result};
pub use finish::Finish;
pub use guard::{
    FencingToken, Grant, Guard, Lease, LeaseMonitor, LockState, PendingLease, StateWatch,
    drift_allowance, lease_deadline, session_lock_terms,
};
pub use helpers::{BackendExt, Held, JobOutcome};
pub use idle_pool::{IdlePool, Reusable};
pub use memory::{MemoryBackend, SCHEME as MEMORY_SCHEME};
pub use name::{LockName, is_sql_identifier};
pub use options::{LockMode, LockOptions, Renew, Wait};
pub use random::{random_u64, unique_hex};
pub use registry::{ConnectFn, ConnectUrl, Registry, SchemeStatus, redact};
pub use supervisors::Supervisors;
pub use wait_plan::{WaitPlan, sleep_until_opt};

use std::sync::Arc;

/// Registers `memory://` in `registry`.
pub fn register_memory(registry: &mut Registry) {
    registry.register(MEMORY_SCHEME, MemoryBackend::CAPABILITIES, |url| {
        Box::pin(async move {
            let backend: Arc<dyn Backend> = Arc::new(MemoryBackend::from_url(&url)?);
            Ok(backend)
        })
    });
}
