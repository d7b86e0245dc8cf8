# dlock: the two commands of the README's quick start live here.
#   make test     install the servers the tests start, then run every test
#   make lint     rustfmt, clippy and the file-size limit, as CI-clean as the code must be
CARGO ?= cargo

.PHONY: test lint fmt servers build bench compare

test:
	scripts/install-servers
	scripts/install-peers
	$(CARGO) test --workspace --all-features
	# the facade once more without features: schemes then name the feature they need
	$(CARGO) test -p dlock --no-default-features

# The size check first: it takes no time, and clippy takes minutes.
lint:
	scripts/check-file-sizes
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets --all-features -- -D warnings

fmt:
	$(CARGO) fmt --all

build:
	$(CARGO) build --workspace --all-features

# Start PostgreSQL, Redis, etcd and ZooKeeper on loopback until Ctrl-C and print the
# DLOCK_TEST_*_URL exports for them.
servers:
	scripts/install-servers
	$(CARGO) run -q -p dlock-cli --features harness --bin dlock -- servers up

# Criterion latency benches (each beside its backend's raw floor) and contention drivers.
bench:
	scripts/install-servers
	scripts/install-peers
	$(CARGO) bench -p benches
	# dlock beside the peer libraries (the same peers section as make compare, on its own)
	$(CARGO) build --release -p dlock-cli --features harness --bin dlock
	$${CARGO_TARGET_DIR:-target}/release/dlock compare --only peers --out report/bench-peers

# The failure-scenario comparison: starts its own servers, runs every backend x scenario cell
# and writes report/comparison.json and report/comparison.md.
compare:
	scripts/install-servers
	scripts/install-peers
	$(CARGO) build --release -p dlock-cli --features harness --bin dlock
	$${CARGO_TARGET_DIR:-target}/release/dlock compare
	scripts/update-readme report/choosing.md
