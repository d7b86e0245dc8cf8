#![doc = include_str!("../README.md")]
#![deny(missing_docs)]

mod backends;
#[cfg(feature = "harness")]
mod harness;
mod hold;
pub mod opt;
#[cfg(feature = "harness")]
mod peer;
mod run;

// `CLOCK_MONOTONIC` in microseconds, the clock every process on the machine shares (never
// stepped or skewed), in the holders' events: the same one the peer harnesses use.
use dlock_peer_proto::mono_us;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use clap::Parser;
use dlock::{Backend, Error, ErrorKind, LockName, LockOptions, Renew, Wait};

use opt::{Cli, Command, LockArgs, WaitArg};

/// Success.
pub const EXIT_OK: i32 = 0;
/// Invalid arguments: bad duration, ttl of 0, bad name, malformed URL, unknown scheme.
pub const EXIT_USAGE: i32 = 64;
/// The backend could not be reached or failed.
pub const EXIT_UNAVAILABLE: i32 = 69;
/// An internal error.
pub const EXIT_SOFTWARE: i32 = 70;
/// The lock was busy when the wait ended.
pub const EXIT_BUSY: i32 = 75;
/// The lock was lost while held.
pub const EXIT_LOST: i32 = 76;
/// The server refused our credentials or our access to the lock (EX_NOPERM).
pub const EXIT_NOPERM: i32 = 77;

/// Parses the process arguments, runs the command and returns the exit code.
pub fn main() -> i32 {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            use clap::error::ErrorKind as K;
            let code = match e.kind() {
                K::DisplayHelp | K::DisplayVersion => EXIT_OK,
                _ => EXIT_USAGE,
            };
            let _ = e.print();
            return code;
        }
    };
    init_tracing(cli.verbose);
    // One thread: child processes are forked from the thread that lives as long as dlock, so
    // their parent-death signal fires only when dlock itself goes.
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("dlock: cannot start the async runtime: {e}");
            return EXIT_SOFTWARE;
        }
    };
    let code = rt.block_on(async move {
        match cli.command {
            Command::Run(args) => run::run(args).await,
            Command::Hold(args) => hold::hold(args).await,
            Command::Backends(args) => backends::backends(args),
            Command::Completions(args) => completions(args),
            #[cfg(feature = "harness")]
            Command::Harness(cmd) => harness::main(cmd).await,
        }
    });
    // A blocking read of stdin (dlock hold) may still sit in the runtime's thread pool; do not
    // wait for it.
    rt.shutdown_background();
    code
}

fn init_tracing(verbose: u8) {
    use tracing_subscriber::EnvFilter;
    let default = match verbose {
        0 => "warn",
        1 => "info",
        2 => "debug",
        _ => "trace",
    };
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false)
        .try_init();
}

/// The exit code for a lock error.
pub fn exit_code(e: &Error) -> i32 {
    match e.kind() {
        ErrorKind::InvalidName
        | ErrorKind::InvalidOptions
        | ErrorKind::InvalidUrl
        | ErrorKind::Unsupported => EXIT_USAGE,
        ErrorKind::Contended | ErrorKind::Timeout => EXIT_BUSY,
        ErrorKind::Lost => EXIT_LOST,
        ErrorKind::Connection | ErrorKind::Backend | ErrorKind::Tls => EXIT_UNAVAILABLE,
        ErrorKind::Auth => EXIT_NOPERM,
        _ => EXIT_SOFTWARE,
    }
}

/// Prints the one-line message for a failed acquisition (none for a busy lock when
/// `quiet_busy`) and returns its exit code.
fn report_acquire_error(name: &LockName, e: &Error, quiet_busy: bool) -> i32 {
    match e.kind() {
        ErrorKind::Contended | ErrorKind::Timeout if quiet_busy => {}
        ErrorKind::Contended => {
            eprintln!("dlock: lock {:?} is busy (held elsewhere)", name.as_str())
        }
        ErrorKind::Timeout => eprintln!(
            "dlock: lock {:?} is busy: still held elsewhere when the wait ended",
            name.as_str()
        ),
        ErrorKind::Connection | ErrorKind::Backend => {
            eprintln!("dlock: backend unavailable: {e}")
        }
        _ => eprintln!("dlock: {e}"),
    }
    exit_code(e)
}

/// Validates the name and builds the options; `Err` carries a usage message.
fn lock_request(
    args: &LockArgs,
    at_least: Option<Duration>,
    renew: bool,
) -> Result<(LockName, LockOptions), String> {
    let name =
        LockName::new(&args.name).map_err(|e| format!("invalid lock name: {}", e.message()))?;
    let wait = match args.wait {
        None => Wait::No,
        Some(WaitArg::For(d)) => Wait::For(d),
        Some(WaitArg::Forever) => Wait::Forever,
    };
    let mut opts = LockOptions::new()
        // Without --ttl: 30 s, or the --at-least window if longer (a lease may not end
        // before its at_least).
        .with_ttl(
            args.ttl
                .unwrap_or_else(|| DEFAULT_TTL.max(at_least.unwrap_or_default())),
        )
        .with_wait(wait)
        .with_renew(if renew {
            Renew::Auto { max_hold: None }
        } else {
            Renew::Off
        });
    if let Some(at_least) = at_least {
        opts = opts.with_at_least(at_least);
    }
    if args.shared {
        opts = opts.with_mode(dlock::LockMode::Shared);
    }
    if let Some(limit) = args.permits {
        opts = opts.with_permits(limit);
    }
    opts.validate()
        .map_err(|e| format!("invalid options: {}", e.message()))?;
    Ok((name, opts))
}

/// Connects, mapping errors to a message and an exit code.
async fn connect(url: &str) -> Result<Arc<dyn Backend>, i32> {
    dlock::connect(url).await.map_err(|e| {
        if exit_code(&e) == EXIT_USAGE {
            eprintln!("dlock: {e}");
        } else {
            eprintln!("dlock: backend unavailable: {e}");
        }
        exit_code(&e)
    })
}

/// SIGTERM and SIGINT handlers. Installed before acquiring, so a signal that arrives right
/// after the grant is handled (the lock released) rather than killing the process with the
/// lock held.
fn signals() -> Result<(tokio::signal::unix::Signal, tokio::signal::unix::Signal), i32> {
    use tokio::signal::unix::{SignalKind, signal};
    match (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) {
        (Ok(t), Ok(i)) => Ok((t, i)),
        _ => {
            eprintln!("dlock: cannot install signal handlers");
            Err(EXIT_SOFTWARE)
        }
    }
}

/// How long `dlock` waits at exit, beyond an `at_least` still running, for the backend to
/// withdraw what it made (contender nodes, leases) and close its sessions.
const CLOSE_GRACE: Duration = Duration::from_secs(10);

/// The lease when `--ttl` is not given.
const DEFAULT_TTL: Duration = Duration::from_secs(30);

/// Refuses an option this backend would not honour (exit 64, naming the missing capability),
/// so that no option is silently ignored. `renew`: the lease is renewed while held (`run`,
/// and `hold` without `--no-renew`).
fn refuse_unhonoured(backend: &dyn Backend, args: &LockArgs, renew: bool) -> Result<(), i32> {
    let caps = backend.capabilities();
    if args.ttl.is_some() && renew && !caps.lease {
        return Err(usage(&format!(
            "--ttl: {} has no lease (capability `lease`): its lock lives as long as dlock's \
             session, which ends with dlock, so there is nothing for a ttl to bound; leave \
             --ttl out (with `hold --no-renew` it bounds the hold)",
            backend.name()
        )));
    }
    Ok(())
}

/// What `run` and `hold` share: the validated request, the signal handlers (installed before
/// anything is acquired) and the backend, connected and checked for options it would not
/// honour. [`LockSession::close`] ends it on every exit path.
struct LockSession {
    name: LockName,
    opts: LockOptions,
    sigterm: tokio::signal::unix::Signal,
    sigint: tokio::signal::unix::Signal,
    backend: Arc<dyn Backend>,
}

impl LockSession {
    /// Validates, installs the signal handlers, connects and checks; `Err` is the exit code.
    async fn open(args: &LockArgs, at_least: Option<Duration>, renew: bool) -> Result<Self, i32> {
        let (name, opts) = lock_request(args, at_least, renew).map_err(|msg| usage(&msg))?;
        let (mut sigterm, mut sigint) = signals()?;
        let backend = connect_or_signal(&args.url, &mut sigterm, &mut sigint).await?;
        if let Err(code) = refuse_unhonoured(&*backend, args, renew) {
            close(&*backend, None).await;
            return Err(code);
        }
        Ok(LockSession {
            name,
            opts,
            sigterm,
            sigint,
            backend,
        })
    }

    /// Closes the backend (see [`close`]).
    async fn close(self) {
        close(&*self.backend, self.opts.at_least()).await;
    }
}

/// Connects, giving up on SIGINT (exit 130) or SIGTERM (exit 143).
async fn connect_or_signal(
    url: &str,
    sigterm: &mut tokio::signal::unix::Signal,
    sigint: &mut tokio::signal::unix::Signal,
) -> Result<Arc<dyn Backend>, i32> {
    tokio::select! {
        r = connect(url) => r,
        _ = sigint.recv() => {
            eprintln!("dlock: interrupted while connecting");
            Err(130)
        }
        _ = sigterm.recv() => {
            eprintln!("dlock: terminated while connecting");
            Err(143)
        }
    }
}

/// Ends the backend's business before the process exits, whatever the exit: a busy try's
/// contender record, a waiter given up on a signal, a guard's release held back by
/// `--at-least` (kept until it has passed), and the session itself (ZooKeeper: closeSession,
/// so its ephemeral nodes go now, not after the session timeout). Bounded by `at_least` plus
/// [`CLOSE_GRACE`].
async fn close(backend: &dyn Backend, at_least: Option<Duration>) {
    let limit = at_least.unwrap_or_default() + CLOSE_GRACE;
    if tokio::time::timeout(limit, backend.close()).await.is_err() {
        eprintln!(
            "dlock: warning: the backend did not finish closing within {limit:?}; what is left frees when its lease or session ends"
        );
    }
}

/// Acquires, giving up on SIGINT (exit 130) or SIGTERM (exit 143) while waiting: a dropped
/// acquisition leaves nothing behind (cancel safety).
async fn acquire_or_signal(
    backend: &dyn Backend,
    name: &LockName,
    opts: &LockOptions,
    sigterm: &mut tokio::signal::unix::Signal,
    sigint: &mut tokio::signal::unix::Signal,
    quiet_busy: bool,
) -> Result<dlock::Guard, i32> {
    acquire_announcing_wait(backend, name, opts, sigterm, sigint, None, quiet_busy).await
}

/// [`acquire_or_signal`] that, given `on_wait` and options that wait, first tries the lock
/// without waiting; if it is held elsewhere, `on_wait` runs and the waiting acquisition
/// follows (with what is left of a bounded wait). So `on_wait` means "found held, about to
/// wait": the waiting request is sent right after it.
async fn acquire_announcing_wait(
    backend: &dyn Backend,
    name: &LockName,
    opts: &LockOptions,
    sigterm: &mut tokio::signal::unix::Signal,
    sigint: &mut tokio::signal::unix::Signal,
    on_wait: Option<Box<dyn FnOnce() + Send>>,
    quiet_busy: bool,
) -> Result<dlock::Guard, i32> {
    let work = async {
        let waits = !matches!(opts.wait(), Wait::No | Wait::For(Duration::ZERO));
        let mut opts = opts.clone();
        if let Some(on_wait) = on_wait.filter(|_| waits) {
            let started = tokio::time::Instant::now();
            match backend
                .acquire(name, &opts.clone().with_wait(Wait::No))
                .await
            {
                Ok(guard) => return Ok(guard),
                Err(e) if e.kind() == ErrorKind::Contended => {}
                Err(e) => return Err(report_acquire_error(name, &e, quiet_busy)),
            }
            on_wait();
            if let Wait::For(d) = opts.wait() {
                // At least 1 ms: a zero wait would mean "do not wait" (Contended, not Timeout).
                let left = d.saturating_sub(started.elapsed());
                opts = opts.with_wait(Wait::For(left.max(Duration::from_millis(1))));
            }
        }
        backend
            .acquire(name, &opts)
            .await
            .map_err(|e| report_acquire_error(name, &e, quiet_busy))
    };
    tokio::select! {
        r = work => r,
        _ = sigint.recv() => {
            eprintln!("dlock: interrupted while acquiring {:?}", name.as_str());
            Err(130)
        }
        _ = sigterm.recv() => {
            eprintln!("dlock: terminated while acquiring {:?}", name.as_str());
            Err(143)
        }
    }
}

/// The next state after `last`: at once if the state already differs (a change that
/// happened before the caller started watching is not missed), else at the next change.
async fn next_state(watch: &mut dlock::StateWatch, last: dlock::LockState) -> dlock::LockState {
    let now = watch.state();
    if now != last {
        return now;
    }
    watch.changed().await
}

pub(crate) fn usage(msg: &str) -> i32 {
    eprintln!("dlock: {msg}");
    EXIT_USAGE
}

/// Wall-clock milliseconds since the Unix epoch (for events read by other processes).
fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Writes the completion script for `args.shell` to stdout.
fn completions(args: opt::CompletionsArgs) -> i32 {
    use clap::CommandFactory;
    let mut cmd = Cli::command();
    clap_complete::generate(args.shell, &mut cmd, "dlock", &mut std::io::stdout());
    EXIT_OK
}
