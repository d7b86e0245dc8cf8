//! The `dlock` command-line tool; see `dlock --help`.

fn main() {
    std::process::exit(dlock_cli::main());
}
