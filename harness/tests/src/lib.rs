#![doc = include_str!("../README.md")]
#![deny(missing_docs)]
// The tests live in `tests/`, the CLI under test in `src/bin/`; this library is empty.
