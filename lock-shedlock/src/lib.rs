#![doc = include_str!("../README.md")]
#![deny(missing_docs)]

/// URL schemes this backend will serve.
pub const SCHEMES: &[&str] = &["shedlock+postgres", "shedlock+redis"];

/// Registers this crate's schemes; while the backend is not implemented, connecting to them
/// fails with an `Unsupported` error that says so.
pub fn register(registry: &mut lock_core::Registry) {
    for scheme in SCHEMES {
        registry.register_unimplemented(scheme);
    }
}
