#![doc = include_str!("../README.md")]
#![deny(missing_docs)]

/// URL schemes this backend will serve.
pub const SCHEMES: &[&str] = &["etcd"];
