#![doc = include_str!("../README.md")]
#![deny(missing_docs)]

pub mod bench;
pub mod cli;
pub mod faults;
pub mod fixtures;
pub mod netns;
pub mod scenario;
pub mod suite;
