//! Peer holders: a peer library's harness process (`peers/README.md`'s line protocol) in the
//! place of `dlock hold`, its replies read as the same [`Event`]s, so that the workloads and
//! the nemeses act on it unchanged.
//!
//! The subject sends `acquire NAME TTL_MS`; a contender `try NAME TTL_MS`, and once that finds
//! the lock held (`busy`: `waiting`, as `dlock hold` prints it) `acquire NAME TTL_MS`. The
//! first command goes once the holder is told to ([`Holder::go`]), so that a harness that
//! starts slowly (a JVM) can be started and be ready before the lock is taken: a lease that
//! runs while the contender's harness starts would otherwise run out first.
//!
//! | reply | event | at |
//! |---|---|---|
//! | `acquired NAME T0 T1` | `Acquired { token: None }` (no peer hands out a token here) | `T1` |
//! | `busy NAME T0 T1` | `Waiting` | `T1` |
//! | `released NAME T0 T1` | `Released { ours: true }` | `T1` |
//! | `bye T0` | `Released { ours: true }` (the end of stdin is `quit`: held locks released) | `T0` |
//! | `ready …`, `error …`, anything else | `Other(line)` | when read |
//! | end of output | `Ended` | when read |
//!
//! No reply reports a loss, so a peer holder has no `state` events: the scenarios record that
//! it was never told. An `error` (its acquire failed: the server went away) makes it quit and
//! end, as `dlock hold` exits on an error, so a scenario replaces a waiter that gave up.

use tokio::io::AsyncWriteExt;

use super::*;
use crate::peers::catalog::peer_url;
use crate::peers::proc::Launch;

/// How a peer holder is started.
#[derive(Debug, Clone)]
pub struct PeerHold {
    /// Its harness: program, arguments before `PEER URL`, environment.
    pub launch: Launch,
    /// The comparison's backend, for turning the holder's dlock URL (the target's, or one
    /// through a nemesis's proxies or namespace) into the peer's URL form
    /// ([`peer_url`]).
    pub backend: String,
}

/// What the command writer is told.
enum Cmd {
    /// Send the first command.
    Go,
    /// The try found the lock held: send the waiting `acquire`.
    Busy,
    /// End stdin (the harness quits).
    Close,
}

/// The holder's end of its command writer.
pub(super) struct Control {
    tx: mpsc::UnboundedSender<Cmd>,
    went: bool,
}

impl Control {
    /// Sends the first command, the first time only.
    pub(super) fn go(&mut self) {
        if !self.went {
            self.went = true;
            let _ = self.tx.send(Cmd::Go);
        }
    }

    /// Ends the harness's stdin.
    pub(super) fn close(&self) {
        let _ = self.tx.send(Cmd::Close);
    }
}

/// One reply line of a peer harness as a holder event, and the instant (`CLOCK_MONOTONIC`
/// µs) it carries, if it carries one (see the module's table).
pub fn peer_event(line: &str) -> (EventKind, Option<i64>) {
    let w: Vec<&str> = line.split_whitespace().collect();
    let t = |i: usize| w.get(i).and_then(|s| s.parse::<i64>().ok());
    let timed = w.len() == 4 && t(2).is_some();
    match w.first().copied() {
        Some("acquired") if timed => (EventKind::Acquired { token: None }, t(3)),
        Some("busy") if timed => (EventKind::Waiting, t(3)),
        Some("released") if timed => (EventKind::Released { ours: true }, t(3)),
        Some("bye") if w.len() == 2 && t(1).is_some() => (EventKind::Released { ours: true }, t(1)),
        _ => (EventKind::Other(line.to_string()), None),
    }
}

/// The lines a holder of `spec` sends: the first, and the one after a `busy` (a contender
/// tries first, then waits; the subject acquires).
fn commands(spec: &HoldSpec) -> (String, Option<String>) {
    let (name, ttl_ms) = (&spec.name, spec.ttl.as_millis());
    let acquire = format!("acquire {name} {ttl_ms}");
    if spec.wait_forever {
        (format!("try {name} {ttl_ms}"), Some(acquire))
    } else {
        (acquire, None)
    }
}

/// Starts `PROGRAM [pre_args] PEER PEER_URL` for `spec` (inside `netns` when given), its
/// first command held until [`Holder::go`].
pub(super) fn spawn(spec: &HoldSpec, peer: &PeerHold, netns: Option<&Netns>) -> Result<Holder> {
    let url = peer_url(&peer.backend, &spec.url).ok_or_else(|| {
        anyhow!(
            "no {} peer URL for {}",
            peer.backend,
            dlock::redact(&spec.url)
        )
    })?;
    let launch = &peer.launch;
    let mut cmd = Command::new(&launch.program);
    cmd.args(&launch.pre_args);
    if let Some(p) = &launch.peer_arg {
        cmd.arg(p);
    }
    cmd.arg(&url).envs(launch.env.iter().map(|(k, v)| (k, v)));
    configure(&mut cmd, spec, netns);
    let mut child = cmd
        .spawn()
        .with_context(|| format!("cannot start {}", launch.program.display()))?;
    let pid = child
        .id()
        .ok_or_else(|| anyhow!("peer holder exited at once"))?;
    let stdin = child.stdin.take().ok_or_else(|| anyhow!("no stdin"))?;
    let stdout = child.stdout.take().ok_or_else(|| anyhow!("no stdout"))?;
    let stderr = capture_stderr(&mut child, pid)?;
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(write_commands(stdin, commands(spec), rx));
    let (events_tx, events) = mpsc::unbounded_channel();
    tokio::spawn(read_replies(stdout, events_tx, tx.clone()));
    Ok(Holder {
        child,
        stdin: None,
        events,
        stderr,
        pid,
        clock_ahead_ms: None,
        peer: Some(Control { tx, went: false }),
    })
}

/// Writes the first line on `Go`, the second on `Busy` (each once); ends stdin on `Close` or
/// once every sender is gone.
async fn write_commands(
    mut stdin: ChildStdin,
    (first, after_busy): (String, Option<String>),
    mut rx: mpsc::UnboundedReceiver<Cmd>,
) {
    let (mut first, mut after_busy) = (Some(first), after_busy);
    loop {
        let line = match rx.recv().await {
            Some(Cmd::Go) => first.take(),
            Some(Cmd::Busy) => after_busy.take(),
            Some(Cmd::Close) | None => return,
        };
        let Some(line) = line else { continue };
        let sent = stdin.write_all(format!("{line}\n").as_bytes()).await;
        if sent.is_err() || stdin.flush().await.is_err() {
            // The harness is gone; its end of output says so.
            return;
        }
    }
}

/// Reads the replies into events; on an `error` the holder quits and its events end.
async fn read_replies(
    stdout: tokio::process::ChildStdout,
    events: mpsc::UnboundedSender<Event>,
    control: mpsc::UnboundedSender<Cmd>,
) {
    let mut lines = BufReader::new(stdout).lines();
    while let Ok(Some(line)) = lines.next_line().await {
        let (kind, t_us) = peer_event(&line);
        let failed = matches!(&kind, EventKind::Other(l) if l.starts_with("error "));
        if kind == EventKind::Waiting {
            // A contender's try found the lock held: now it waits.
            let _ = control.send(Cmd::Busy);
        }
        let _ = events.send(Event {
            kind,
            t_us: t_us.unwrap_or_else(mono_us),
            clock_ahead_ms: None,
            received: Instant::now(),
        });
        if failed {
            // Its acquire (or try) failed, typically because the server went away: it gives
            // up, as `dlock hold` exits on an error, and the scenario sees it end.
            let _ = control.send(Cmd::Close);
            break;
        }
    }
    let _ = events.send(ended());
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replies_become_holder_events_at_their_own_instants() {
        assert_eq!(
            peer_event("acquired cmp-1 100 250"),
            (EventKind::Acquired { token: None }, Some(250))
        );
        assert_eq!(
            peer_event("busy cmp-1 300 320"),
            (EventKind::Waiting, Some(320))
        );
        assert_eq!(
            peer_event("released cmp-1 400 410"),
            (EventKind::Released { ours: true }, Some(410))
        );
        // A clean release through the end of stdin (quit) is timed when it was read.
        assert_eq!(
            peer_event("bye 500"),
            (EventKind::Released { ours: true }, Some(500))
        );
        for other in [
            "ready redisson 3.27.2 77",
            "error cmp-1 1 2 connection refused",
            "unavailable redisson cannot connect",
            "acquired cmp-1 x 2",
            "acquired cmp-1 1",
            "busy cmp-1 1 2 3",
            "bye",
            "bye soon",
            "",
        ] {
            assert_eq!(
                peer_event(other),
                (EventKind::Other(other.to_string()), None),
                "{other:?}"
            );
        }
    }

    /// A stand-in harness on the protocol: its `ready` line carries the URL it was given (as
    /// its version), `try` is busy, `acquire` granted, a `fail` name errors; the end of stdin
    /// answers `bye`. Fixed instants, so the events' times are the replies'.
    const FAKE_HARNESS: &str = r#"echo "ready $1 $2 1"
while read -r cmd name ttl; do
  case "$name" in fail) echo "error $name 1 2 the server went away"; continue;; esac
  case "$cmd" in
    try) echo "busy $name 10 11";;
    acquire) echo "acquired $name 20 21";;
    *) echo "error - 1 2 unknown command";;
  esac
done
echo "bye 30"
"#;

    fn fake_spec(name: &str) -> (std::path::PathBuf, HoldSpec) {
        let dir =
            std::env::temp_dir().join(format!("dlock-peer-holder-{}-{name}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let script = dir.join("harness.sh");
        std::fs::write(&script, FAKE_HARNESS).unwrap();
        let spec = HoldSpec {
            // A dlock URL, as a nemesis's proxy gives it: the harness gets the peer's form.
            url: "redis://127.0.0.1:41234/?fencing=on".into(),
            name: name.into(),
            ttl: Duration::from_millis(2000),
            wait_forever: true,
            skew: None,
            peer: Some(PeerHold {
                launch: Launch {
                    program: "/bin/sh".into(),
                    pre_args: vec![script.to_string_lossy().into_owned()],
                    peer_arg: Some("fake".into()),
                    env: Vec::new(),
                },
                backend: "redis".into(),
            }),
            mode: Default::default(),
        };
        (dir, spec)
    }

    #[tokio::test]
    async fn a_peer_contender_tries_waits_is_granted_and_quits_on_release() {
        let within = Duration::from_secs(30);
        let (dir, spec) = fake_spec("job");
        let mut h = Holder::spawn(std::path::Path::new("unused"), &spec).unwrap();
        assert!(h.is_peer() && !h.reports_loss());
        assert_eq!(h.ready(within).await.unwrap(), "redis://127.0.0.1:41234");
        let waiting = h.waiting_or_acquired(within).await.unwrap().unwrap();
        assert_eq!((waiting.kind, waiting.t_us), (EventKind::Waiting, 11));
        let granted = h.acquired(within).await.unwrap().unwrap();
        assert_eq!(
            (granted.kind, granted.t_us),
            (EventKind::Acquired { token: None }, 21)
        );
        // No state events to wait for.
        assert!(h.state("lost", within).await.is_none());
        let released = h.release_and_finish(within).await.unwrap();
        assert_eq!(
            (released.kind, released.t_us),
            (EventKind::Released { ours: true }, 30)
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[tokio::test]
    async fn a_peer_whose_acquire_fails_ends() {
        let within = Duration::from_secs(30);
        let (dir, mut spec) = fake_spec("fail");
        spec.wait_forever = false;
        let mut h = Holder::spawn(std::path::Path::new("unused"), &spec).unwrap();
        let err = h.acquired(within).await.unwrap_err().to_string();
        assert!(err.contains("the server went away"), "{err}");
        let ended = h.next_event(within).await.unwrap();
        assert_eq!(ended.kind, EventKind::Ended);
        h.finish().await;
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_contender_tries_before_it_waits() {
        let mut spec = HoldSpec {
            url: "redis://127.0.0.1:1".into(),
            name: "job".into(),
            ttl: Duration::from_millis(2000),
            wait_forever: false,
            skew: None,
            peer: None,
            mode: Default::default(),
        };
        assert_eq!(commands(&spec), ("acquire job 2000".to_string(), None));
        spec.wait_forever = true;
        assert_eq!(
            commands(&spec),
            (
                "try job 2000".to_string(),
                Some("acquire job 2000".to_string())
            )
        );
    }
}
