//! `dlock` as the tests run it: dlock-cli's library with the `harness` feature.

fn main() {
    std::process::exit(dlock_cli::main());
}
