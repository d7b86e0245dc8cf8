#![doc = include_str!("../README.md")]
#![deny(missing_docs)]

use std::collections::HashMap;
use std::future::Future;
use std::io::Write;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, BufReader};

/// A boxed, sendable future (what [`Peer`] and [`Held`] return).
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// How long a `throughput` command may outlast its own duration before its workers are
/// abandoned (a blocking acquire of a peer that cannot be cancelled).
pub const THROUGHPUT_GRACE: Duration = Duration::from_secs(10);

/// `CLOCK_MONOTONIC` in whole microseconds: the clock every process on one Linux machine
/// shares, so a harness's `T0`/`T1` and the driver's own readings compare directly.
pub fn mono_us() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec; CLOCK_MONOTONIC always exists on Linux.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    if rc != 0 {
        return 0;
    }
    ts.tv_sec as u64 * 1_000_000 + ts.tv_nsec as u64 / 1_000
}

/// Whether `name` is a protocol lock name: `[A-Za-z0-9_.:-]{1,64}`.
pub fn valid_name(name: &str) -> bool {
    (1..=64).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b':' | b'-'))
}

/// One protocol command (see `peers/README.md`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    /// `acquire NAME TTL_MS`: wait until granted.
    Acquire {
        /// The lock name.
        name: String,
        /// The lease asked for.
        ttl: Duration,
    },
    /// `try NAME TTL_MS`: one attempt.
    Try {
        /// The lock name.
        name: String,
        /// The lease asked for.
        ttl: Duration,
    },
    /// `release NAME`.
    Release {
        /// The lock name.
        name: String,
    },
    /// `hold NAME MS`: acquire, keep `MS`, release.
    Hold {
        /// The lock name.
        name: String,
        /// How long to keep it.
        hold: Duration,
    },
    /// `throughput TASKS same|distinct MS TTL_MS`.
    Throughput {
        /// Concurrent workers.
        tasks: u32,
        /// One shared name (`same`) or one name per worker (`distinct`).
        same: bool,
        /// How long the workers loop.
        duration: Duration,
        /// The lease each acquisition asks for.
        ttl: Duration,
    },
    /// `quit`.
    Quit,
}

impl Command {
    /// The lock name this command is about (`-` for those without one).
    pub fn name(&self) -> &str {
        match self {
            Command::Acquire { name, .. }
            | Command::Try { name, .. }
            | Command::Release { name }
            | Command::Hold { name, .. } => name,
            Command::Throughput { .. } | Command::Quit => "-",
        }
    }
}

/// Parses one command line; the error is the message of the `error` reply.
pub fn parse(line: &str) -> Result<Command, String> {
    let words: Vec<&str> = line.split_whitespace().collect();
    let name = |i: usize| -> Result<String, String> {
        let n = words.get(i).ok_or("missing NAME")?;
        if valid_name(n) {
            Ok((*n).to_string())
        } else {
            Err(format!("bad name {n:?}: names are [A-Za-z0-9_.:-]{{1,64}}"))
        }
    };
    let ms = |i: usize, what: &str| -> Result<Duration, String> {
        let w = words.get(i).ok_or_else(|| format!("missing {what}"))?;
        w.parse::<u64>()
            .ok()
            .filter(|&n| n > 0 && n <= 7 * 24 * 3_600_000)
            .map(Duration::from_millis)
            .ok_or_else(|| {
                format!("{what} {w:?} is not a whole number of milliseconds in 1..=1 week")
            })
    };
    let arity = |n: usize| -> Result<(), String> {
        if words.len() == n {
            Ok(())
        } else {
            Err(format!("{} takes {} argument(s)", words[0], n - 1))
        }
    };
    match words.first().copied() {
        None => Err("empty line".into()),
        Some("acquire") => arity(3).and_then(|_| {
            Ok(Command::Acquire {
                name: name(1)?,
                ttl: ms(2, "TTL_MS")?,
            })
        }),
        Some("try") => arity(3).and_then(|_| {
            Ok(Command::Try {
                name: name(1)?,
                ttl: ms(2, "TTL_MS")?,
            })
        }),
        Some("release") => arity(2).and_then(|_| Ok(Command::Release { name: name(1)? })),
        Some("hold") => arity(3).and_then(|_| {
            Ok(Command::Hold {
                name: name(1)?,
                hold: ms(2, "MS")?,
            })
        }),
        Some("throughput") => arity(5).and_then(|_| {
            let tasks = words[1]
                .parse::<u32>()
                .ok()
                .filter(|t| (1..=1024).contains(t))
                .ok_or_else(|| format!("TASKS {:?} is not in 1..=1024", words[1]))?;
            let same = match words[2] {
                "same" => true,
                "distinct" => false,
                other => return Err(format!("{other:?} is neither same nor distinct")),
            };
            Ok(Command::Throughput {
                tasks,
                same,
                duration: ms(3, "MS")?,
                ttl: ms(4, "TTL_MS")?,
            })
        }),
        Some("quit") => arity(1).map(|_| Command::Quit),
        Some(other) => Err(format!("unknown command {other:?}")),
    }
}

/// A held lock of some peer library.
pub trait Held: Send {
    /// Gives it back with the library's own release call.
    fn release(self: Box<Self>) -> BoxFuture<'static, Result<(), String>>;
}

/// A lock client plugged into [`serve`]: one library with its defaults.
pub trait Peer: Send + Sync + 'static {
    /// Acquires `name` for `ttl` (where the library has a lease): with `wait`, the library's
    /// own blocking acquire; without, one attempt, `Ok(None)` when the lock is held elsewhere.
    /// Called concurrently by `throughput` workers.
    fn acquire<'a>(
        &'a self,
        name: &'a str,
        ttl: Duration,
        wait: bool,
    ) -> BoxFuture<'a, Result<Option<Box<dyn Held>>, String>>;

    /// Ends the client's business with the server before the process exits.
    fn close(&self) -> BoxFuture<'_, ()> {
        Box::pin(async {})
    }
}

/// Writes one reply line and flushes it (a reader that went away is not worth a panic).
pub fn reply(line: &str) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{line}").and_then(|_| out.flush());
}

/// Prints `unavailable PEER REASON` (newlines flattened) and returns the exit status 1.
pub fn unavailable(peer: &str, reason: &str) -> i32 {
    reply(&format!("unavailable {peer} {}", one_line(reason)));
    1
}

fn one_line(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

fn error_line(name: &str, t0: u64, msg: &str) -> String {
    format!("error {name} {t0} {} {}", mono_us(), one_line(msg))
}

/// Answers the commands on stdin until `quit` or end of input, after printing
/// `ready PEER VERSION T`; returns the process's exit status.
pub async fn serve(peer: Arc<dyn Peer>, peer_name: &str, version: &str) -> i32 {
    reply(&format!(
        "ready {peer_name} {} {}",
        one_line(version).replace(' ', "_"),
        mono_us()
    ));
    let mut held: HashMap<String, Box<dyn Held>> = HashMap::new();
    let mut lines = BufReader::new(tokio::io::stdin()).lines();
    loop {
        let line = match lines.next_line().await {
            Ok(Some(line)) => line,
            Ok(None) | Err(_) => break,
        };
        let t0 = mono_us();
        if line.trim().is_empty() {
            continue;
        }
        let cmd = match parse(&line) {
            Ok(cmd) => cmd,
            Err(msg) => {
                reply(&error_line("-", t0, &msg));
                continue;
            }
        };
        if cmd == Command::Quit {
            release_all(&mut held).await;
            peer.close().await;
            reply(&format!("bye {t0}"));
            return 0;
        }
        run_one(&peer, &mut held, cmd, t0).await;
    }
    release_all(&mut held).await;
    peer.close().await;
    0
}

async fn release_all(held: &mut HashMap<String, Box<dyn Held>>) {
    for (_, h) in held.drain() {
        let _ = h.release().await;
    }
}

async fn run_one(
    peer: &Arc<dyn Peer>,
    held: &mut HashMap<String, Box<dyn Held>>,
    cmd: Command,
    t0: u64,
) {
    let name = cmd.name().to_string();
    match cmd {
        Command::Acquire { ttl, .. } | Command::Try { ttl, .. } => {
            if held.contains_key(&name) {
                return reply(&error_line(&name, t0, "already held by this process"));
            }
            let wait = matches!(cmd, Command::Acquire { .. });
            match peer.acquire(&name, ttl, wait).await {
                Ok(Some(h)) => {
                    let t1 = mono_us();
                    held.insert(name.clone(), h);
                    reply(&format!("acquired {name} {t0} {t1}"));
                }
                Ok(None) => reply(&format!("busy {name} {t0} {}", mono_us())),
                Err(e) => reply(&error_line(&name, t0, &e)),
            }
        }
        Command::Release { .. } => match held.remove(&name) {
            None => reply(&error_line(&name, t0, "not held")),
            Some(h) => match h.release().await {
                Ok(()) => reply(&format!("released {name} {t0} {}", mono_us())),
                Err(e) => reply(&error_line(&name, t0, &e)),
            },
        },
        Command::Hold { hold, .. } => {
            if held.contains_key(&name) {
                return reply(&error_line(&name, t0, "already held by this process"));
            }
            let h = match peer
                .acquire(&name, hold + Duration::from_secs(1), true)
                .await
            {
                Ok(Some(h)) => h,
                Ok(None) => {
                    return reply(&error_line(&name, t0, "a waiting acquire came back empty"));
                }
                Err(e) => return reply(&error_line(&name, t0, &e)),
            };
            reply(&format!("acquired {name} {t0} {}", mono_us()));
            tokio::time::sleep(hold).await;
            let r0 = mono_us();
            match h.release().await {
                Ok(()) => reply(&format!("released {name} {r0} {}", mono_us())),
                Err(e) => reply(&error_line(&name, r0, &e)),
            }
        }
        Command::Throughput {
            tasks,
            same,
            duration,
            ttl,
        } => match throughput(peer, tasks, same, duration, ttl, t0).await {
            Ok(ops) => reply(&format!("throughput {ops} {t0} {}", mono_us())),
            Err(e) => reply(&error_line("-", t0, &e)),
        },
        Command::Quit => unreachable!("handled by serve"),
    }
}

/// `TASKS` workers looping acquire + release until `duration` has passed; the number of
/// pairs completed inside it.
async fn throughput(
    peer: &Arc<dyn Peer>,
    tasks: u32,
    same: bool,
    duration: Duration,
    ttl: Duration,
    t0: u64,
) -> Result<u64, String> {
    let ops = Arc::new(AtomicU64::new(0));
    let first_error = Arc::new(std::sync::Mutex::new(None::<String>));
    let deadline = tokio::time::Instant::now() + duration;
    let mut set = tokio::task::JoinSet::new();
    for i in 0..tasks {
        let name = if same {
            format!("tp-{t0}")
        } else {
            format!("tp-{t0}-{i}")
        };
        let (peer, ops, first_error) = (peer.clone(), ops.clone(), first_error.clone());
        set.spawn(async move {
            while tokio::time::Instant::now() < deadline {
                let got = tokio::time::timeout_at(deadline, peer.acquire(&name, ttl, true)).await;
                let h = match got {
                    Err(_) => break,
                    Ok(Ok(Some(h))) => h,
                    Ok(Ok(None)) => continue,
                    Ok(Err(e)) => {
                        first_error.lock().unwrap().get_or_insert(e);
                        break;
                    }
                };
                let released = h.release().await;
                if let Err(e) = released {
                    first_error.lock().unwrap().get_or_insert(e);
                    break;
                }
                if tokio::time::Instant::now() <= deadline {
                    ops.fetch_add(1, Ordering::Relaxed);
                }
            }
        });
    }
    let all_done = async { while set.join_next().await.is_some() {} };
    let _ = tokio::time::timeout_at(deadline + THROUGHPUT_GRACE, all_done).await;
    let n = ops.load(Ordering::Relaxed);
    match first_error.lock().unwrap().take() {
        Some(e) if n == 0 => Err(e),
        _ => Ok(n),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_every_command_and_rejects_bad_input() {
        assert_eq!(
            parse("acquire job-1 2000"),
            Ok(Command::Acquire {
                name: "job-1".into(),
                ttl: Duration::from_millis(2000)
            })
        );
        assert_eq!(
            parse("throughput 64 same 2000 2000"),
            Ok(Command::Throughput {
                tasks: 64,
                same: true,
                duration: Duration::from_secs(2),
                ttl: Duration::from_secs(2)
            })
        );
        assert_eq!(parse("quit"), Ok(Command::Quit));
        assert_eq!(
            parse("release a.b:c"),
            Ok(Command::Release {
                name: "a.b:c".into()
            })
        );
        for bad in [
            "",
            "acquire",
            "acquire x",
            "acquire x 0",
            "acquire x -5",
            "acquire x 2s",
            "acquire bad/name 100",
            "release x y",
            "throughput 0 same 10 10",
            "throughput 4 some 10 10",
            "frobnicate x",
        ] {
            assert!(parse(bad).is_err(), "{bad:?} was accepted");
        }
        assert!(!valid_name(&"x".repeat(65)));
        assert!(valid_name(&"x".repeat(64)));
    }

    #[test]
    fn the_clock_moves_forward_in_microseconds() {
        let a = mono_us();
        std::thread::sleep(Duration::from_millis(2));
        let b = mono_us();
        assert!(a > 0 && b >= a + 2_000 && b < a + 2_000_000, "{a} {b}");
    }
}
