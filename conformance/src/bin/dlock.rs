//! The `dlock` command-line tool; see `dlock --help`.

fn main() {
    std::process::exit(conformance::cli::main());
}
