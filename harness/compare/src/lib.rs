#![doc = include_str!("../README.md")]
#![deny(missing_docs)]

/// `eprintln!` through [`progress::log`]: above the progress bar when there is one.
macro_rules! say {
    ($($arg:tt)*) => { $crate::progress::log(format!($($arg)*)) };
}
pub(crate) use say;

pub mod bench;
pub mod peers;
pub mod progress;
pub mod scenario;
pub mod soak;
pub mod strategies;
