//! Command-line options (clap derive).

use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};

/// Distributed locks over PostgreSQL, Redis, etcd, ZooKeeper and ShedLock tables.
///
/// Exit codes: 0 success (or CMD's own code for `run`), 64 bad arguments, 69 backend
/// unreachable, 75 lock busy, 76 lock lost, 70 internal error.
#[derive(Debug, Parser)]
#[command(name = "dlock", version, about, max_term_width = 100, after_help = EXAMPLES)]
pub struct Cli {
    /// Log verbosity on stderr: -v info, -vv debug, -vvv trace (RUST_LOG overrides).
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    pub verbose: u8,

    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run CMD while holding the lock NAME (like flock(1), `etcdctl lock`, `consul lock`).
    ///
    /// CMD gets DLOCK_LOCK_NAME and, when the backend has one, DLOCK_FENCING_TOKEN in its
    /// environment. dlock exits with CMD's exit code; 75 when the lock is busy; 76 when the
    /// lock was lost while CMD ran (CMD got SIGTERM, then SIGKILL after --grace).
    #[command(after_help = EXAMPLES_RUN)]
    Run(RunArgs),
    /// Acquire NAME and hold it, printing one JSON event per line on stdout.
    ///
    /// Events: {"event":"waiting","t_ms":…} (with --wait: the lock was found held elsewhere
    /// and the waiting request follows), {"event":"acquired","token":N|null,"slot":N|null,"t_ms":…}
    /// (slot: the permit's, with --permits),
    /// {"event":"state","state":"held"|"unverifiable"|"lost","t_ms":…},
    /// {"event":"released","ours":true|false,"t_ms":…}. t_ms is wall-clock milliseconds since the
    /// Unix epoch; every event also carries t_mono_us, CLOCK_MONOTONIC in microseconds (one
    /// clock for every process on the machine, never stepped: order events by it). Holds until --for elapses, stdin closes (unless --no-stdin: in the
    /// background, `dlock hold … &`, stdin is /dev/null and closes at once), the lock is lost
    /// (after its `state` event; --stay-after-lost keeps it running), or SIGTERM/SIGINT, then
    /// releases. Exit 75 when busy, 76 when the lock was lost.
    /// The events are a stable format (see dlock-cli's README).
    #[command(after_help = EXAMPLES_HOLD)]
    Hold(HoldArgs),
    /// List the URL schemes this build knows, with their capabilities.
    ///
    /// A scheme whose backend is not compiled in is listed with the cargo feature that
    /// enables it. --json prints one JSON document, a stable format (see dlock-cli's README).
    #[command(after_help = EXAMPLES_BACKENDS)]
    Backends(BackendsArgs),
    /// Print a shell completion script for dlock on stdout.
    #[command(after_help = EXAMPLES_COMPLETIONS)]
    Completions(CompletionsArgs),
    /// The harness's commands (`conformance`, `compare`, `servers`), with the `harness`
    /// feature.
    #[cfg(feature = "harness")]
    #[command(flatten)]
    Harness(HarnessCommand),
}

/// The commands that need the test harness (server fixtures, fault tools, the comparison).
#[cfg(feature = "harness")]
#[derive(Debug, Subcommand)]
pub enum HarnessCommand {
    /// Run the behaviour suite against the lock service at URL (your own servers).
    ///
    /// Every test works in a fresh random namespace of lock names, so it never touches other
    /// locks. Prints one line per test and a libtest-style summary; exits 1 on any failure.
    #[command(after_help = EXAMPLES_CONFORMANCE)]
    Conformance(ConformanceArgs),
    /// Start local test servers (PostgreSQL, Redis, etcd, ZooKeeper) until Ctrl-C.
    #[command(subcommand, after_help = EXAMPLES_SERVERS)]
    Servers(ServersCommand),
    /// Run the failure scenarios against every backend and write the comparison report.
    ///
    /// Starts its own servers on loopback, runs each backend × scenario cell --repeat times
    /// with `dlock hold` holder processes, and writes comparison.json, comparison.md and
    /// index.html (inline SVG chart) into --out; prints the main table at the end.
    Compare(CompareArgs),
    /// Benchmark helper of `dlock compare`: acquire COUNT distinct locks at URL, hold them all
    /// at once, print one JSON line with the time, this process's resident-memory growth and
    /// its sockets, then release them. Its own process, so that the memory is its own.
    #[command(hide = true)]
    HoldMany(HoldManyArgs),
    /// The comparison's peer harness for dlock itself: answers the line protocol of
    /// `peers/README.md` on stdin/stdout with the backend at URL (dlock's defaults), the same
    /// protocol the peer libraries' harnesses answer.
    #[command(hide = true)]
    Peer(PeerArgs),
}

/// `dlock peer` arguments.
#[cfg(feature = "harness")]
#[derive(Debug, Args)]
pub struct PeerArgs {
    /// Lock service URL.
    pub url: String,

    /// Every lock this harness takes is shared (a reader).
    #[arg(long, conflicts_with = "permits")]
    pub shared: bool,

    /// Every lock this harness takes is one of N permits of the semaphore NAME.
    #[arg(long, value_name = "N")]
    pub permits: Option<u32>,
}

/// `dlock hold-many` arguments.
#[cfg(feature = "harness")]
#[derive(Debug, Args)]
pub struct HoldManyArgs {
    /// How many locks.
    #[arg(long, default_value_t = 10_000)]
    pub count: usize,

    /// Lock service URL.
    pub url: String,
}

/// `dlock compare` arguments.
#[cfg(feature = "harness")]
#[derive(Debug, Args)]
pub struct CompareArgs {
    /// Smoke run: one repetition per cell (unless --repeat is given).
    #[arg(long)]
    pub quick: bool,

    /// Repetitions per measured cell (default 3; 1 with --quick).
    #[arg(long)]
    pub repeat: Option<usize>,

    /// Comma-separated backends (default: all): postgres, redis, redlock, etcd, zookeeper,
    /// shedlock-postgres, shedlock-redis, mariadb.
    #[arg(long, value_delimiter = ',')]
    pub backends: Vec<String>,

    /// Comma-separated scenarios (default: all).
    #[arg(long, value_delimiter = ',')]
    pub scenarios: Vec<String>,

    /// Lease / session timeout / at_most given to the holders (etcd's minimum is 2s).
    #[arg(long, default_value = "2s", value_parser = parse_duration)]
    pub ttl: Duration,

    /// Output directory.
    #[arg(long, default_value = "report")]
    pub out: std::path::PathBuf,

    /// Skip the benchmarks (latency beside the raw floor, handoff, throughput, many locks)
    /// and the peers that run after each backend's scenarios.
    #[arg(long)]
    pub no_bench: bool,

    /// Leave the peer libraries' holders out of the scenarios: no peer rows in the failure
    /// tables (by default the seed's libraries, ShedLock, Redisson, redsync, etcd's Go Mutex
    /// and Curator, go through holder_killed, holder_paused, holder_partitioned,
    /// connection_reset and server_restart after dlock's holders; one per backend with
    /// --quick).
    #[arg(long)]
    pub no_peer_holders: bool,

    /// Comma-separated sections to run (default: all): `scenarios` (the failure matrix),
    /// `bench` (the short benchmarks), `peers` (dlock beside the peer libraries), `strategies`
    /// (the seed's purge under each strategy, PostgreSQL). The cells of a section left out are reported
    /// `not_measured`.
    #[arg(long, value_delimiter = ',', value_enum)]
    pub only: Vec<CompareSection>,

    /// Soak instead of the matrix: 16 holders per backend on one lock under random faults
    /// for this long in all (split evenly across --backends, run one after another); writes
    /// soak.json and soak.md into --out. Exit 1 on a fencing violation.
    #[arg(long, value_parser = parse_duration)]
    pub soak: Option<Duration>,

    /// The soak's seed (printed by every soak run): replays its fault schedule and hold
    /// times. Default: a fresh one.
    #[arg(long, requires = "soak")]
    pub seed: Option<u64>,
}

/// A section of `dlock compare` (`--only`).
#[cfg(feature = "harness")]
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum CompareSection {
    /// The failure scenarios (backend × scenario cells).
    Scenarios,
    /// The short benchmarks after each backend's scenarios.
    Bench,
    /// dlock beside the peer libraries (`peers/`), after each backend's benchmarks.
    Peers,
    /// The seed's strategies on PostgreSQL (the purge on three workers under no lock, an
    /// advisory lock, ShedLock, SKIP LOCKED and optimistic batches), after every backend.
    Strategies,
}

/// `dlock conformance` arguments.
#[cfg(feature = "harness")]
#[derive(Debug, Args)]
pub struct ConformanceArgs {
    /// Only tests whose name contains this (e.g. `exclusion`, `behavior::test_at_least`).
    #[arg(long)]
    pub filter: Option<String>,

    /// Lock service URL.
    pub url: String,
}

/// `dlock servers …`
#[cfg(feature = "harness")]
#[derive(Debug, Subcommand)]
pub enum ServersCommand {
    /// Start the servers on free loopback ports, print `export DLOCK_TEST_<BACKEND>_URL=…`
    /// lines once all are ready, and stop them all on Ctrl-C / SIGTERM.
    #[command(after_help = EXAMPLES_SERVERS)]
    Up {
        /// Start a 3-node etcd cluster, a 3-node ZooKeeper ensemble and 3 Redis instances
        /// (for Redlock) instead of single nodes.
        #[arg(long)]
        cluster: bool,
    },
}

/// The lock everyone talks about: URL and NAME, plus the lease.
#[derive(Debug, Args)]
pub struct LockArgs {
    /// Lease length (default 30s, or --at-least if longer): how long the lock outlives a
    /// holder that stops renewing.
    /// postgres and zk have no lease (the lock lives as long as dlock's session, which ends
    /// with dlock) and refuse it, except `hold --no-renew`, where it bounds the hold.
    #[arg(long, value_parser = parse_duration)]
    pub ttl: Option<Duration>,

    /// How long to wait for a busy lock: a duration, or `forever`. Default: do not wait.
    #[arg(long, value_parser = parse_wait)]
    pub wait: Option<WaitArg>,

    /// Take the lock shared (a reader): any number of shared holders at once, none beside an
    /// exclusive one; a waiting exclusive holder is not starved by new readers. Only where
    /// `dlock backends` lists `shared` (elsewhere: exit 64, and nothing is taken).
    #[arg(long, conflicts_with = "permits")]
    pub shared: bool,

    /// Take one of N permits of the semaphore NAME instead of the lock NAME (a name space of
    /// its own): at most N holders at once. Everyone sharing the semaphore must give the
    /// same N (the limit is the caller's). CMD sees the permit's slot in DLOCK_PERMIT_SLOT.
    /// Only where `dlock backends` lists `semaphore` (elsewhere: exit 64).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..=1024))]
    pub permits: Option<u32>,

    /// Lock service URL, e.g. memory://, postgres://user@host/db, redis://host:6379.
    pub url: String,

    /// Lock name.
    pub name: String,
}

/// `dlock run` arguments.
#[derive(Debug, Args)]
pub struct RunArgs {
    /// The lock.
    #[command(flatten)]
    pub lock: LockArgs,

    /// Keep the lock taken until at least this long after acquiring it, even if CMD ends
    /// sooner (ShedLock's lockAtLeastFor). Must not exceed --ttl (the default ttl grows to it). Where the server keeps it
    /// (redis, redlock, etcd, shedlock+*: `dlock backends` says at_least) dlock exits when CMD
    /// does; on postgres and zk, whose locks go with their session, dlock itself stays (holding
    /// the lock, CMD finished) until the window has passed.
    #[arg(long, value_parser = parse_duration)]
    pub at_least: Option<Duration>,

    /// Exit with CODE instead of 75 when the lock is busy (flock's -E), e.g. a code CMD
    /// never uses, so a busy lock and CMD's own failures are told apart.
    #[arg(long, value_name = "CODE", value_parser = clap::value_parser!(u8))]
    pub busy_exit: Option<u8>,

    /// A busy lock is a normal skip: exit 0 and print nothing. For cron, which mails any
    /// output and reports any non-zero exit: the hosts that skip stay quiet.
    #[arg(long, conflicts_with = "busy_exit")]
    pub skip_ok: bool,

    /// What to do to CMD when the lock is lost while it runs.
    #[arg(long, value_enum, default_value_t = OnLost::Term)]
    pub on_lost: OnLost,

    /// With --on-lost term: how long CMD has between SIGTERM and SIGKILL.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    pub grace: Duration,

    /// The command and its arguments (after `--`).
    #[arg(last = true, required = true, num_args = 1..)]
    pub command: Vec<String>,
}

/// `dlock hold` arguments.
#[derive(Debug, Args)]
pub struct HoldArgs {
    /// The lock.
    #[command(flatten)]
    pub lock: LockArgs,

    /// Release after holding this long.
    #[arg(long = "for", value_parser = parse_duration)]
    pub hold_for: Option<Duration>,

    /// Do not release when stdin closes. Needed in the background (`dlock hold … &` in a
    /// script gets /dev/null as stdin, which is closed at once: without this flag the lock
    /// would be released right after it is acquired).
    #[arg(long)]
    pub no_stdin: bool,

    /// Do not renew the lease: hold for at most one ttl.
    #[arg(long)]
    pub no_renew: bool,

    /// Keep running after the lock is lost (printing later state events) until told to stop,
    /// instead of exiting 76 at once. For observers that decide themselves when a holder that
    /// lost its lock stops, such as the comparison's holders.
    #[arg(long)]
    pub stay_after_lost: bool,
}

/// `dlock backends` arguments.
#[derive(Debug, Args)]
pub struct BackendsArgs {
    /// Print one JSON document instead of the table (a stable format).
    #[arg(long)]
    pub json: bool,
}

/// `dlock completions` arguments.
#[derive(Debug, Args)]
pub struct CompletionsArgs {
    /// The shell to complete for.
    #[arg(value_enum)]
    pub shell: clap_complete::Shell,
}

/// `--on-lost` policies.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum OnLost {
    /// SIGTERM, then SIGKILL after --grace.
    Term,
    /// SIGKILL at once.
    Kill,
    /// Let CMD run on (a warning is logged); exit with CMD's code.
    Ignore,
}

/// `--wait` values.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WaitArg {
    /// Up to this long.
    For(Duration),
    /// Until granted.
    Forever,
}

// The examples under each command's help. Plain text: clap prints them as they are.

const EXAMPLES: &str = "\
Examples:
  # Run the nightly purge on one machine at a time; the others exit 75 at once.
  dlock run postgres://app@db/prod nightly-purge -- ./purge.sh

  # Hold a lock for 10 seconds and watch its events.
  dlock hold --for 10s memory:// demo

  # Which backends this build has, as JSON.
  dlock backends --json

  # Tab completion for bash.
  dlock completions bash > ~/.local/share/bash-completion/completions/dlock";

const EXAMPLES_RUN: &str = "\
Examples:
  # One replica at a time runs the purge; the others exit 75 (busy) at once.
  dlock run postgres://app@db/prod nightly-purge -- ./purge.sh

  # Wait up to 5 minutes for the lock; keep it taken for at least 1 minute.
  dlock run --wait 5m --at-least 1m redis://cache:6379 report -- make report

  # In a crontab on every pod: one purges, the others skip silently (exit 0); the lock
  # stays taken 5 minutes from the grant, so a pod with a slow clock does not purge again.
  0 2 * * * dlock run --skip-ok --at-least 5m postgres://app@db/prod purge -- ./purge.sh

  # CMD sees the lock's fencing token; SIGKILL at once if the lock is lost.
  dlock run --on-lost kill zk://zk1:2181/app job -- sh -c 'echo \"token $DLOCK_FENCING_TOKEN\"'";

const EXAMPLES_HOLD: &str = "\
Examples:
  # Hold for 30 seconds, one JSON event per line.
  dlock hold --for 30s postgres://app@db/prod deploy

  # Hold until killed, in the background (stdin closing does not release).
  dlock hold --no-stdin redis://cache:6379 maintenance &

  # Wait as long as it takes; print only the events' names.
  dlock hold --wait forever memory:// demo | jq -r .event";

const EXAMPLES_BACKENDS: &str = "\
Examples:
  dlock backends

  # The schemes this build can connect to.
  dlock backends --json | jq -r '.schemes[] | select(.status == \"available\") | .scheme'";

const EXAMPLES_COMPLETIONS: &str = "\
Examples:
  dlock completions bash > ~/.local/share/bash-completion/completions/dlock
  dlock completions zsh > \"${fpath[1]}/_dlock\"
  dlock completions fish > ~/.config/fish/completions/dlock.fish";

#[cfg(feature = "harness")]
const EXAMPLES_CONFORMANCE: &str = "\
Examples:
  # The whole suite against your own Redis.
  dlock conformance redis://127.0.0.1:6379

  # Only the exclusion tests, against a test database.
  dlock conformance --filter exclusion postgres://app@db/test";

#[cfg(feature = "harness")]
const EXAMPLES_SERVERS: &str = "\
Examples:
  # Single servers; prints export DLOCK_TEST_<BACKEND>_URL=... lines, stops on Ctrl-C.
  dlock servers up

  # A 3-node etcd cluster, a 3-node ZooKeeper ensemble and 3 Redis instances for Redlock.
  dlock servers up --cluster";

/// Parses humantime durations (`250ms`, `5s`, `2m`); a bare `0` means zero.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    if s.trim() == "0" {
        return Ok(Duration::ZERO);
    }
    humantime::parse_duration(s.trim())
        .map_err(|e| format!("{s:?} is not a duration ({e}); use e.g. 250ms, 5s, 2m"))
}

fn parse_wait(s: &str) -> Result<WaitArg, String> {
    match s.trim() {
        "forever" | "inf" | "infinite" => Ok(WaitArg::Forever),
        other => parse_duration(other).map(WaitArg::For),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    /// Every command a user runs shows examples under its help.
    #[test]
    fn every_command_has_examples() {
        let mut cli = Cli::command();
        cli.build();
        let mut missing = Vec::new();
        if !cli.render_help().to_string().contains("Examples:") {
            missing.push("dlock".to_string());
        }
        for sub in cli.get_subcommands_mut().filter(|s| !s.is_hide_set()) {
            let name = sub.get_name().to_string();
            if name == "help" || name == "compare" {
                // clap's own `help`; `compare` documents its options in the comparison's README.
                continue;
            }
            if !sub.render_help().to_string().contains("Examples:") {
                missing.push(name);
            }
        }
        assert!(missing.is_empty(), "no examples in the help of {missing:?}");
    }

    /// The completion scripts name the binary and its subcommands.
    #[test]
    fn completions_cover_the_subcommands() {
        for shell in [
            clap_complete::Shell::Bash,
            clap_complete::Shell::Zsh,
            clap_complete::Shell::Fish,
        ] {
            let mut out = Vec::new();
            clap_complete::generate(shell, &mut Cli::command(), "dlock", &mut out);
            let script = String::from_utf8(out).unwrap();
            for word in ["dlock", "run", "hold", "backends", "completions", "json"] {
                assert!(script.contains(word), "{shell}: no {word:?}");
            }
        }
    }

    #[test]
    fn durations_parse_in_humantime_style() {
        assert_eq!(parse_duration("250ms").unwrap(), Duration::from_millis(250));
        assert_eq!(parse_duration("2m").unwrap(), Duration::from_secs(120));
        assert_eq!(parse_duration("0s").unwrap(), Duration::ZERO);
        assert!(parse_duration("5 parsecs").is_err());
        assert_eq!(parse_wait("forever").unwrap(), WaitArg::Forever);
    }
}
