//! Holders: `dlock hold` child processes and their JSON event streams, or a peer library's
//! harness process whose replies are read as the same events (`holder/peer.rs`).

mod peer;

use std::path::Path;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, BufReader};
use tokio::process::{Child, ChildStdin, Command};
use tokio::sync::mpsc;

use dlock_fixtures::netns::Netns;

pub use peer::{PeerHold, peer_event};

/// How much of a holder's stderr is kept for error messages.
const STDERR_KEEP: usize = 4096;

/// Environment variable naming a directory where each holder's whole stderr is also
/// written, as `holder-<pid>.log`, for debugging (run with `RUST_LOG` set, which the holders
/// inherit).
pub const STDERR_DIR_ENV: &str = "DLOCK_COMPARE_HOLDER_STDERR";

/// What a holder printed.
#[derive(Debug, Clone, PartialEq)]
pub enum EventKind {
    /// `{"event":"waiting"}`: a first try found the lock held; the waiting request follows.
    Waiting,
    /// `{"event":"acquired","token":N|null}`.
    Acquired {
        /// The fencing token, if the backend has them.
        token: Option<u64>,
    },
    /// `{"event":"state","state":…}`: `held`, `unverifiable` or `lost`.
    State(String),
    /// `{"event":"released","ours":…}`.
    Released {
        /// Whether the lock was still ours when released.
        ours: bool,
    },
    /// A line that is not one of the above (kept verbatim).
    Other(String),
    /// Standard output ended (the process is exiting or gone).
    Ended,
}

/// One event with its timestamps.
#[derive(Debug, Clone, PartialEq)]
pub struct Event {
    /// What happened.
    pub kind: EventKind,
    /// The holder's `t_mono_us` (`CLOCK_MONOTONIC`, µs: see [`mono_us`]); for `Ended` and
    /// `Other`, the harness's own when it read the line.
    pub t_us: i64,
    /// How far the holder's own clock read ahead of the harness's (ms, negative = behind),
    /// from its uncorrected `t_ms` and the harness's clock when the line was read (so a few
    /// ms of pipe delay are included); `None` for `Ended` and `Other`.
    pub clock_ahead_ms: Option<i64>,
    /// When the harness read it.
    pub received: Instant,
}

/// Wall-clock milliseconds since the Unix epoch (only to read how far a holder's wall clock
/// is off; every instant the checker compares is [`mono_us`]).
pub fn wall_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// `CLOCK_MONOTONIC` in microseconds: the clock of every instant in a history. All processes
/// on the machine share it (network namespaces too: no time namespace is made) and nothing
/// steps it (NTP, libfaketime with `FAKETIME_DONT_FAKE_MONOTONIC=1`), so the holders'
/// `t_mono_us` and the harness's own marks compare directly, to the microsecond.
/// (The peer harnesses' clock, [`dlock_peer_proto::mono_us`], as a signed number.)
pub fn mono_us() -> i64 {
    dlock_peer_proto::mono_us() as i64
}

/// From `from_us` to `to_us` (both [`mono_us`]), in milliseconds with microsecond precision.
pub fn ms_between(from_us: i64, to_us: i64) -> f64 {
    (to_us - from_us) as f64 / 1000.0
}

fn parse_line(line: &str) -> EventKind {
    let Ok(v) = serde_json::from_str::<serde_json::Value>(line) else {
        return EventKind::Other(line.to_string());
    };
    match v["event"].as_str() {
        Some("waiting") => EventKind::Waiting,
        Some("acquired") => EventKind::Acquired {
            token: v["token"].as_u64(),
        },
        Some("state") => EventKind::State(v["state"].as_str().unwrap_or("").to_string()),
        Some("released") => EventKind::Released {
            ours: v["ours"].as_bool().unwrap_or(false),
        },
        _ => EventKind::Other(line.to_string()),
    }
}

/// `s` without ANSI escape sequences (`ESC [ … letter`).
fn strip_ansi(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c != '\u{1b}' {
            out.push(c);
            continue;
        }
        if chars.next() == Some('[') {
            // Parameters and intermediates up to the final byte (a letter).
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        }
    }
    out
}

/// How a holder is started.
#[derive(Debug, Clone)]
pub struct HoldSpec {
    /// Lock service URL.
    pub url: String,
    /// Lock name.
    pub name: String,
    /// `--ttl`, given where the backend has a lease.
    pub ttl: Duration,
    /// `--wait forever` when true; otherwise `--wait` of 30 s.
    pub wait_forever: bool,
    /// Run the holder with its wall clock shifted (libfaketime), or `None`.
    pub skew: Option<ClockSkew>,
    /// A peer library's harness instead of `dlock hold` (`None`: `dlock hold`).
    pub peer: Option<PeerHold>,
    /// What `dlock hold` takes: the lock, a shared grant (`--shared`) or a permit
    /// (`--permits N`).
    pub mode: HoldMode,
}

/// What a `dlock hold` holder takes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum HoldMode {
    /// The lock itself.
    #[default]
    Exclusive,
    /// A shared grant of the lock (a reader).
    Shared,
    /// One of `n` permits of the semaphore of the same name.
    Permit(u32),
}

/// A wall-clock shift for a holder process, by libfaketime (`LD_PRELOAD`).
///
/// Only the wall clock (`CLOCK_REALTIME`) is shifted: `FAKETIME_DONT_FAKE_MONOTONIC=1` keeps
/// `CLOCK_MONOTONIC` true, which is what happens on a host whose clock was set wrong or
/// stepped by NTP. Lease deadlines run on the monotonic clock, so they must not care.
#[derive(Debug, Clone)]
pub struct ClockSkew {
    /// The libfaketime shared object (see [`find_libfaketime`]).
    pub lib: std::path::PathBuf,
    /// The shift, ms (positive = the holder's clock is ahead).
    pub offset_ms: i64,
}

/// Where libfaketime's shared object is: `DLOCK_LIBFAKETIME` if set, else the usual
/// install locations (the multi-threaded variant first: holders are multi-threaded).
pub fn find_libfaketime() -> Option<std::path::PathBuf> {
    if let Some(p) = std::env::var_os("DLOCK_LIBFAKETIME").filter(|p| !p.is_empty()) {
        let p = std::path::PathBuf::from(p);
        return p.is_file().then_some(p);
    }
    let dirs = [
        "/usr/lib/x86_64-linux-gnu/faketime",
        "/usr/lib/aarch64-linux-gnu/faketime",
        "/usr/lib64/faketime",
        "/usr/lib/faketime",
        "/usr/local/lib/faketime",
        "/opt/homebrew/lib/faketime",
    ];
    let names = ["libfaketimeMT.so.1", "libfaketime.so.1"];
    dirs.iter()
        .flat_map(|d| names.iter().map(move |n| Path::new(d).join(n)))
        .find(|p| p.is_file())
}

/// A running `dlock hold` process, or a peer harness ([`HoldSpec::peer`]).
pub struct Holder {
    child: Child,
    stdin: Option<ChildStdin>,
    events: mpsc::UnboundedReceiver<Event>,
    stderr: Arc<Mutex<String>>,
    pid: u32,
    clock_ahead_ms: Option<i64>,
    /// A peer harness's command writer.
    peer: Option<peer::Control>,
}

/// Whether the backend at `url` has a lease for `--ttl` to set, from the capabilities its
/// scheme registers (PostgreSQL and ZooKeeper locks live as long as their session, and
/// `dlock hold` refuses a `--ttl` it could not honour). An unknown scheme gets `--ttl`, and
/// `dlock hold` then says what is wrong with the URL.
fn has_lease(url: &str) -> bool {
    let scheme = url.split_once("://").map_or("", |(s, _)| s);
    dlock::registry()
        .schemes()
        .into_iter()
        .find(|(s, _)| *s == scheme)
        .is_none_or(|(_, status)| match status {
            dlock::SchemeStatus::Available(caps) => caps.lease,
            dlock::SchemeStatus::NeedsFeature(_) => true,
        })
}

#[cfg(test)]
mod lease_tests {
    #[test]
    fn session_backends_get_no_ttl() {
        assert!(!super::has_lease("postgres://u@h/db"));
        assert!(!super::has_lease("zk://h:2181"));
        assert!(super::has_lease("redis://h:6379"));
        assert!(super::has_lease("shedlock+postgres://u@h/db"));
        assert!(super::has_lease("etcd://h:2379"));
    }
}

/// What every holder process gets: the namespace, the piped stdio, the clock shift, death
/// with the harness.
fn configure(cmd: &mut Command, spec: &HoldSpec, netns: Option<&Netns>) {
    if let Some(ns) = netns {
        ns.enter_on_spawn(cmd);
    }
    cmd.stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    if let Some(skew) = &spec.skew {
        // libfaketime: "+N"/"-N" is an offset in seconds from the real time.
        let secs = skew.offset_ms / 1000;
        cmd.env("LD_PRELOAD", &skew.lib)
            .env("FAKETIME", format!("{secs:+}"))
            .env("FAKETIME_DONT_FAKE_MONOTONIC", "1");
    }
    // SAFETY: prctl is async-signal-safe and touches only the child's own state: a holder
    // never outlives the harness.
    unsafe {
        cmd.pre_exec(|| {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

/// Keeps the first [`STDERR_KEEP`] bytes of the child's stderr (and all of it in
/// [`STDERR_DIR_ENV`]'s directory when set).
fn capture_stderr(child: &mut Child, pid: u32) -> Result<Arc<Mutex<String>>> {
    let mut stderr_pipe = child.stderr.take().ok_or_else(|| anyhow!("no stderr"))?;
    let stderr = Arc::new(Mutex::new(String::new()));
    let keep = stderr.clone();
    let mut copy = std::env::var_os(STDERR_DIR_ENV)
        .filter(|d| !d.is_empty())
        .and_then(|d| {
            let path = Path::new(&d).join(format!("holder-{pid}.log"));
            std::fs::File::create(path).ok()
        });
    tokio::spawn(async move {
        let mut buf = [0u8; 1024];
        while let Ok(n) = stderr_pipe.read(&mut buf).await {
            if n == 0 {
                break;
            }
            if let Some(f) = copy.as_mut() {
                use std::io::Write;
                let _ = f.write_all(&buf[..n]);
            }
            let mut s = keep.lock().unwrap_or_else(|e| e.into_inner());
            if s.len() < STDERR_KEEP {
                s.push_str(&String::from_utf8_lossy(&buf[..n]));
            }
        }
    });
    Ok(stderr)
}

/// The `Ended` event, read now.
fn ended() -> Event {
    Event {
        kind: EventKind::Ended,
        t_us: mono_us(),
        clock_ahead_ms: None,
        received: Instant::now(),
    }
}

impl Holder {
    /// Starts `dlock hold [--ttl T] --wait W URL NAME` (`--ttl` where the backend has a lease) from the `dlock` binary at `bin`. The
    /// holder dies with the process that started it (parent-death signal).
    pub fn spawn(bin: &Path, spec: &HoldSpec) -> Result<Holder> {
        Holder::spawn_in(bin, spec, None)
    }

    /// [`Holder::spawn`], inside the network namespace `netns` when given (the URL must then
    /// name an address reachable from there, see [`Netns::expose`]). A spec with a
    /// [`PeerHold`] starts that peer library's harness instead of `dlock hold` (`bin` unused).
    pub fn spawn_in(bin: &Path, spec: &HoldSpec, netns: Option<&Netns>) -> Result<Holder> {
        if let Some(peer) = &spec.peer {
            return peer::spawn(spec, peer, netns);
        }
        let mut cmd = Command::new(bin);
        // The scenario decides when a holder that lost its lock stops (it records the loss
        // itself), so the holder stays after `lost` instead of exiting.
        cmd.arg("hold").arg("--stay-after-lost");
        if has_lease(&spec.url) {
            cmd.arg("--ttl").arg(format!("{}ms", spec.ttl.as_millis()));
        }
        match spec.mode {
            HoldMode::Exclusive => {}
            HoldMode::Shared => {
                cmd.arg("--shared");
            }
            HoldMode::Permit(n) => {
                cmd.arg("--permits").arg(n.to_string());
            }
        }
        cmd.arg("--wait")
            .arg(if spec.wait_forever { "forever" } else { "30s" })
            .arg(&spec.url)
            .arg(&spec.name);
        configure(&mut cmd, spec, netns);
        let mut child = cmd
            .spawn()
            .with_context(|| format!("cannot start {} hold", bin.display()))?;
        let pid = child.id().ok_or_else(|| anyhow!("holder exited at once"))?;
        let stdin = child.stdin.take();
        let stdout = child.stdout.take().ok_or_else(|| anyhow!("no stdout"))?;
        let stderr = capture_stderr(&mut child, pid)?;
        let (tx, events) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            let mut lines = BufReader::new(stdout).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                let kind = parse_line(&line);
                let (now_us, now_ms) = (mono_us(), wall_ms());
                let v = match kind {
                    EventKind::Other(_) => None,
                    _ => serde_json::from_str::<serde_json::Value>(&line).ok(),
                };
                let field = |f: &str| v.as_ref().and_then(|v| v[f].as_i64());
                let _ = tx.send(Event {
                    kind,
                    t_us: field("t_mono_us").unwrap_or(now_us),
                    // The libfaketime shift is what the holder was given; what is left is the
                    // pipe delay (and any real error of the shift).
                    clock_ahead_ms: field("t_ms").map(|t| t - now_ms),
                    received: Instant::now(),
                });
            }
            let _ = tx.send(ended());
        });
        Ok(Holder {
            child,
            stdin,
            events,
            stderr,
            pid,
            clock_ahead_ms: None,
            peer: None,
        })
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// What the holder wrote on stderr so far (the first few KB), without terminal colour
    /// codes (its log lines may carry them).
    pub fn stderr(&self) -> String {
        let raw = self
            .stderr
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        strip_ansi(raw.trim())
    }

    /// How far the holder's clock read ahead of the harness's (ms, negative = behind), from
    /// the first of its events the harness has consumed; `None` before that.
    pub fn clock_ahead_ms(&self) -> Option<i64> {
        self.clock_ahead_ms
    }

    fn seen(&mut self, ev: Event) -> Event {
        if self.clock_ahead_ms.is_none() {
            self.clock_ahead_ms = ev.clock_ahead_ms;
        }
        ev
    }

    /// The next event, or `None` if none arrives within `within`.
    pub async fn next_event(&mut self, within: Duration) -> Option<Event> {
        match tokio::time::timeout(within, self.events.recv()).await {
            Ok(Some(ev)) => Some(self.seen(ev)),
            // The reader task ended after sending `Ended`: keep answering `Ended`.
            Ok(None) => Some(ended()),
            Err(_) => None,
        }
    }

    /// An event that is already there, without waiting.
    pub fn try_event(&mut self) -> Option<Event> {
        let ev = self.events.try_recv().ok()?;
        Some(self.seen(ev))
    }

    /// Waits up to `within` for the `acquired` event; returns it (token in its kind). Errors
    /// if the holder ends first or prints anything else first (other than `state` and
    /// `waiting` events).
    /// A peer holder is told to send its commands first ([`Holder::go`]).
    pub async fn acquired(&mut self, within: Duration) -> Result<Option<Event>> {
        self.first_of(
            within,
            |k| matches!(k, EventKind::Acquired { .. }),
            |k| matches!(k, EventKind::State(_) | EventKind::Waiting),
            "acquiring",
        )
        .await
    }

    /// Waits up to `within` for the first event of a holder started with a wait: `waiting`
    /// (the lock was held; its waiting request follows) or `acquired` (it was free). Errors if
    /// the holder ends first; `None` if nothing came within `within`. A peer holder is told to
    /// send its commands first ([`Holder::go`]).
    pub async fn waiting_or_acquired(&mut self, within: Duration) -> Result<Option<Event>> {
        self.first_of(
            within,
            |k| matches!(k, EventKind::Waiting | EventKind::Acquired { .. }),
            |_| false,
            "waiting",
        )
        .await
    }

    /// The first event `want` accepts within `within` (`None`: none came), skipping those
    /// `skip` names and a peer's `ready` line; the end of output or any other event is an
    /// error (`before`: what the holder ended before doing). Tells a peer holder to go first.
    async fn first_of(
        &mut self,
        within: Duration,
        want: impl Fn(&EventKind) -> bool,
        skip: impl Fn(&EventKind) -> bool,
        before: &str,
    ) -> Result<Option<Event>> {
        self.go();
        let deadline = tokio::time::Instant::now() + within;
        // Bounded: each turn consumes one event or ends at the deadline.
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            let Some(ev) = self.next_event(left).await else {
                return Ok(None);
            };
            return match ev.kind {
                ref k if want(k) => Ok(Some(ev)),
                ref k if skip(k) || self.is_ready_line(k) => continue,
                EventKind::Ended => Err(anyhow!(
                    "holder {} ended before {before}: {}",
                    self.pid,
                    self.stderr()
                )),
                other => Err(anyhow!("holder {}: unexpected {other:?}", self.pid)),
            };
        }
    }

    /// Waits up to `within` for a `state` event equal to `state` (other events are skipped;
    /// the end of output stops the wait). A peer holder has no state events (the peers'
    /// protocol reports no loss): `None` at once.
    pub async fn state(&mut self, state: &str, within: Duration) -> Option<Event> {
        if !self.reports_loss() {
            return None;
        }
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            let ev = self.next_event(left).await?;
            match &ev.kind {
                EventKind::State(s) if s == state => return Some(ev),
                EventKind::Ended => return None,
                _ => continue,
            }
        }
    }

    /// Closes stdin: the holder releases the lock and exits (a peer harness reads the end of
    /// its input as `quit`, releases and answers `bye`).
    pub fn release(&mut self) {
        self.stdin.take();
        if let Some(p) = &self.peer {
            p.close();
        }
    }

    /// A peer holder sends its commands (`acquire`, or `try` then `acquire`) now, once; nothing
    /// for `dlock hold`, which starts on its own. [`Holder::acquired`] and
    /// [`Holder::waiting_or_acquired`] call it.
    pub fn go(&mut self) {
        if let Some(p) = &mut self.peer {
            p.go();
        }
    }

    /// Whether this is a peer library's harness rather than `dlock hold`.
    pub fn is_peer(&self) -> bool {
        self.peer.is_some()
    }

    /// Whether the holder can report that it lost the lock (`dlock hold`'s `state` events);
    /// a peer harness cannot: the protocol has no such reply, and most libraries no such
    /// signal.
    pub fn reports_loss(&self) -> bool {
        self.peer.is_none()
    }

    fn is_ready_line(&self, kind: &EventKind) -> bool {
        self.is_peer() && matches!(kind, EventKind::Other(l) if l.starts_with("ready "))
    }

    /// A peer holder: waits up to `within` for its harness's `ready PEER VERSION T` line and
    /// returns the version; an `unavailable` line, the end of output or no line in time is an
    /// error saying why. `dlock hold` has no such line: an empty version at once.
    pub async fn ready(&mut self, within: Duration) -> Result<String> {
        if !self.is_peer() {
            return Ok(String::new());
        }
        let deadline = tokio::time::Instant::now() + within;
        // Bounded: each turn consumes one event or ends at the deadline.
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            let Some(ev) = self.next_event(left).await else {
                bail!(
                    "peer holder {} printed no ready line within {within:?}: {}",
                    self.pid,
                    self.stderr()
                );
            };
            match ev.kind {
                EventKind::Other(l) if l.starts_with("ready ") => {
                    return Ok(l.split_whitespace().nth(2).unwrap_or("?").to_string());
                }
                EventKind::Other(l) if l.starts_with("unavailable ") => {
                    let why: Vec<&str> = l.split_whitespace().skip(2).collect();
                    bail!("peer holder {} unavailable: {}", self.pid, why.join(" "));
                }
                EventKind::Ended => bail!(
                    "peer holder {} ended before its ready line: {}",
                    self.pid,
                    self.stderr()
                ),
                _ => continue,
            }
        }
    }

    fn signal(&self, sig: libc::c_int) -> Result<()> {
        // `None` once the child has been reaped ([`Holder::exit_status`]): its pid may then
        // belong to another process, which must not get this signal.
        let pid = self
            .child
            .id()
            .ok_or_else(|| anyhow!("holder {} has already exited", self.pid))?;
        // SAFETY: kill(2) on our own child's pid, which is not reaped yet.
        if unsafe { libc::kill(pid as libc::pid_t, sig) } != 0 {
            return Err(std::io::Error::last_os_error().into());
        }
        Ok(())
    }

    /// How the process ended, if it has (without waiting; reaps it, so no signal is sent to
    /// its pid afterwards).
    pub fn exit_status(&mut self) -> Option<std::process::ExitStatus> {
        self.child.try_wait().ok().flatten()
    }

    /// Waits up to `within` for the process to exit; how it ended, if it did (reaps it).
    pub async fn exit_within(&mut self, within: Duration) -> Option<std::process::ExitStatus> {
        tokio::time::timeout(within, self.child.wait())
            .await
            .ok()?
            .ok()
    }

    /// Whether the process is stopped (SIGSTOP) right now: state `T` in `/proc/<pid>/stat`.
    /// `false` when it is not, or when that cannot be read (no `/proc`, already reaped).
    pub fn is_stopped(&self) -> bool {
        let Some(pid) = self.child.id() else {
            return false;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            return false;
        };
        // The state follows the command name, which is in parentheses.
        stat.rfind(')')
            .and_then(|i| stat.get(i + 2..i + 3))
            .is_some_and(|state| state == "T")
    }

    /// SIGKILL.
    pub fn kill(&self) -> Result<()> {
        self.signal(libc::SIGKILL)
    }

    /// SIGSTOP (the holder freezes: no renewals, no reads).
    pub fn pause(&self) -> Result<()> {
        self.signal(libc::SIGSTOP)
    }

    /// SIGCONT.
    pub fn resume(&self) -> Result<()> {
        self.signal(libc::SIGCONT)
    }

    /// Kills the process (if still running) and reaps it.
    pub async fn finish(mut self) {
        let _ = self.signal(libc::SIGCONT);
        let _ = self.child.start_kill();
        let _ = tokio::time::timeout(Duration::from_secs(5), self.child.wait()).await;
    }

    /// Closes stdin and waits up to `within` for the holder to exit by itself; kills it
    /// otherwise. Returns the `released` event if it printed one.
    pub async fn release_and_finish(mut self, within: Duration) -> Option<Event> {
        self.release();
        let deadline = tokio::time::Instant::now() + within;
        let mut released = None;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            match self.next_event(left).await {
                Some(ev) if matches!(ev.kind, EventKind::Released { .. }) => released = Some(ev),
                Some(Event {
                    kind: EventKind::Ended,
                    ..
                })
                | None => break,
                Some(_) => {}
            }
        }
        self.finish().await;
        released
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_parse() {
        assert_eq!(
            parse_line(r#"{"event":"acquired","token":7,"t_ms":1}"#),
            EventKind::Acquired { token: Some(7) }
        );
        assert_eq!(
            parse_line(r#"{"event":"acquired","token":null,"t_ms":1}"#),
            EventKind::Acquired { token: None }
        );
        assert_eq!(
            parse_line(r#"{"event":"waiting","t_ms":1}"#),
            EventKind::Waiting
        );
        assert_eq!(
            parse_line(r#"{"event":"state","state":"lost","t_ms":1}"#),
            EventKind::State("lost".into())
        );
        assert_eq!(
            parse_line(r#"{"event":"released","ours":false,"t_ms":1}"#),
            EventKind::Released { ours: false }
        );
        assert!(matches!(parse_line("garbage"), EventKind::Other(_)));
    }

    #[test]
    fn colour_codes_are_stripped() {
        assert_eq!(
            strip_ansi("\u{1b}[2m2026\u{1b}[0m \u{1b}[33m WARN\u{1b}[0m lost"),
            "2026  WARN lost"
        );
        assert_eq!(strip_ansi("plain"), "plain");
    }
}
