//! dlock benchmarks: not implemented yet (issue #10). The criterion benches and the
//! contention driver will live here, built over the same URL factory as the CLI.
