//! placeholder
pub mod fixtures;
