//! One harness process speaking the line protocol of `peers/README.md`, and its replies.

use std::path::PathBuf;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, ChildStdin, Command};
use tokio::sync::mpsc;

/// How much of a harness's stderr is kept for error messages.
const STDERR_KEEP: usize = 4096;

/// How long a harness may take to print its `ready` line (a JVM or a Python import included).
pub const READY_TIMEOUT: Duration = Duration::from_secs(60);

/// One reply line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reply {
    /// `acquired NAME T0 T1`.
    Acquired {
        /// The lock name.
        name: String,
        /// When the harness read the command (µs, `CLOCK_MONOTONIC`).
        t0: u64,
        /// When the library call returned.
        t1: u64,
    },
    /// `busy NAME T0 T1`.
    Busy {
        /// The lock name.
        name: String,
        /// Read.
        t0: u64,
        /// Answered.
        t1: u64,
    },
    /// `released NAME T0 T1`.
    Released {
        /// The lock name.
        name: String,
        /// Read.
        t0: u64,
        /// Released.
        t1: u64,
    },
    /// `throughput OPS T0 T1`.
    Throughput {
        /// Completed acquire + release pairs.
        ops: u64,
        /// Read.
        t0: u64,
        /// Finished.
        t1: u64,
    },
    /// `unsupported WHAT T0 T1`.
    Unsupported(String),
    /// `error NAME T0 T1 MESSAGE…`.
    Error {
        /// The lock name or `-`.
        name: String,
        /// The message.
        message: String,
    },
    /// `bye T0`.
    Bye,
}

fn num(w: Option<&&str>, line: &str) -> Result<u64> {
    w.and_then(|s| s.parse().ok())
        .ok_or_else(|| anyhow!("malformed reply {line:?}"))
}

/// Parses one reply line.
pub fn parse_reply(line: &str) -> Result<Reply> {
    let w: Vec<&str> = line.split_whitespace().collect();
    let name = || w.get(1).map(|s| s.to_string()).unwrap_or_default();
    Ok(match w.first().copied() {
        Some("acquired") => Reply::Acquired {
            name: name(),
            t0: num(w.get(2), line)?,
            t1: num(w.get(3), line)?,
        },
        Some("busy") => Reply::Busy {
            name: name(),
            t0: num(w.get(2), line)?,
            t1: num(w.get(3), line)?,
        },
        Some("released") => Reply::Released {
            name: name(),
            t0: num(w.get(2), line)?,
            t1: num(w.get(3), line)?,
        },
        Some("throughput") => Reply::Throughput {
            ops: num(w.get(1), line)?,
            t0: num(w.get(2), line)?,
            t1: num(w.get(3), line)?,
        },
        Some("unsupported") => Reply::Unsupported(name()),
        Some("error") => Reply::Error {
            name: name(),
            message: w.get(4..).map(|m| m.join(" ")).unwrap_or_default(),
        },
        Some("bye") => Reply::Bye,
        _ => bail!("unexpected reply {line:?}"),
    })
}

/// How to start one harness for one peer: program and arguments before `PEER URL`.
#[derive(Debug, Clone)]
pub struct Launch {
    /// The program.
    pub program: PathBuf,
    /// Arguments before `PEER URL` (`peer` for `dlock peer URL`, the script for Python).
    pub pre_args: Vec<String>,
    /// The peer name (`PEER`); `None` for `dlock peer URL`, which takes only the URL.
    pub peer_arg: Option<String>,
    /// Extra environment.
    pub env: Vec<(String, String)>,
}

/// A line from one of a group's harnesses: its index and what it said (`None`: stdout ended).
pub type Line = (usize, Option<String>);

/// A running harness process.
pub struct Harness {
    /// Its index in its group (the tag on its lines).
    pub index: usize,
    child: Child,
    stdin: ChildStdin,
    stderr: Arc<Mutex<Vec<u8>>>,
    /// The library version from its `ready` line.
    pub version: String,
}

impl Harness {
    /// Starts it and waits for `ready`; its later lines go to `lines`, tagged with `index`.
    pub async fn start(
        launch: &Launch,
        url: &str,
        index: usize,
        lines: mpsc::UnboundedSender<Line>,
    ) -> Result<Harness> {
        let mut cmd = Command::new(&launch.program);
        cmd.args(&launch.pre_args);
        if let Some(p) = &launch.peer_arg {
            cmd.arg(p);
        }
        cmd.arg(url)
            .envs(launch.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        let mut child = cmd
            .spawn()
            .with_context(|| format!("starting {}", launch.program.display()))?;
        let stdin = child.stdin.take().expect("piped");
        let stdout = child.stdout.take().expect("piped");
        let mut err_pipe = child.stderr.take().expect("piped");
        let stderr = Arc::new(Mutex::new(Vec::new()));
        let keep = stderr.clone();
        tokio::spawn(async move {
            let mut buf = [0u8; 1024];
            while let Ok(n) = err_pipe.read(&mut buf).await {
                if n == 0 {
                    break;
                }
                let mut k = keep.lock().unwrap();
                k.extend_from_slice(&buf[..n]);
                let excess = k.len().saturating_sub(STDERR_KEEP);
                k.drain(..excess);
            }
        });
        let mut reader = BufReader::new(stdout).lines();
        let first = tokio::time::timeout(READY_TIMEOUT, reader.next_line()).await;
        let version = match first {
            Ok(Ok(Some(line))) if line.starts_with("ready ") => {
                line.split_whitespace().nth(2).unwrap_or("?").to_string()
            }
            Ok(Ok(Some(line))) if line.starts_with("unavailable ") => {
                bail!(
                    "{}",
                    line.split_whitespace()
                        .skip(2)
                        .collect::<Vec<_>>()
                        .join(" ")
                )
            }
            other => {
                let err = String::from_utf8_lossy(&stderr.lock().unwrap()).to_string();
                bail!("no ready line ({other:?}); stderr: {}", err.trim())
            }
        };
        tokio::spawn(async move {
            loop {
                match reader.next_line().await {
                    Ok(Some(line)) => {
                        if lines.send((index, Some(line))).is_err() {
                            return;
                        }
                    }
                    _ => {
                        let _ = lines.send((index, None));
                        return;
                    }
                }
            }
        });
        Ok(Harness {
            index,
            child,
            stdin,
            stderr,
            version,
        })
    }

    /// Sends one command line.
    pub async fn send(&mut self, line: &str) -> Result<()> {
        self.stdin
            .write_all(format!("{line}\n").as_bytes())
            .await
            .with_context(|| format!("writing {line:?}: {}", self.stderr_tail()))?;
        self.stdin.flush().await?;
        Ok(())
    }

    /// The last of what it wrote to stderr.
    pub fn stderr_tail(&self) -> String {
        String::from_utf8_lossy(&self.stderr.lock().unwrap())
            .trim()
            .to_string()
    }

    /// SIGKILL, and waits for the process to be gone.
    pub async fn kill(&mut self) {
        let _ = self.child.kill().await;
    }

    /// `quit`, then waits up to `within` for the exit; kills it after that. Whether it said
    /// `bye` is the caller's to read from the lines.
    pub async fn quit(mut self, within: Duration) -> Option<std::process::ExitStatus> {
        let _ = self.send("quit").await;
        match tokio::time::timeout(within, self.child.wait()).await {
            Ok(Ok(status)) => Some(status),
            _ => {
                let _ = self.child.kill().await;
                None
            }
        }
    }
}

/// Several harnesses of one peer whose replies arrive on one channel.
pub struct Group {
    /// The processes, by index.
    pub procs: Vec<Harness>,
    /// Killed on purpose: their lines (and end of output) are ignored.
    dead: Vec<bool>,
    rx: mpsc::UnboundedReceiver<Line>,
    tx: mpsc::UnboundedSender<Line>,
}

impl Group {
    /// Starts `n` harnesses (one after another: startup is not measured).
    pub async fn start(launch: &Launch, url: &str, n: usize) -> Result<Group> {
        let (tx, rx) = mpsc::unbounded_channel();
        let mut g = Group {
            procs: Vec::new(),
            dead: Vec::new(),
            rx,
            tx,
        };
        for _ in 0..n {
            g.add(launch, url).await?;
        }
        Ok(g)
    }

    /// Starts one more; its index.
    pub async fn add(&mut self, launch: &Launch, url: &str) -> Result<usize> {
        let i = self.procs.len();
        self.procs
            .push(Harness::start(launch, url, i, self.tx.clone()).await?);
        self.dead.push(false);
        Ok(i)
    }

    /// SIGKILLs process `i`; what it printed from now on is ignored.
    pub async fn kill(&mut self, i: usize) {
        self.dead[i] = true;
        self.procs[i].kill().await;
    }

    /// The library version the first process reported.
    pub fn version(&self) -> String {
        self.procs
            .first()
            .map(|p| p.version.clone())
            .unwrap_or_default()
    }

    /// The next reply from any of them, parsed, within `within`.
    pub async fn next(&mut self, within: Duration) -> Result<(usize, Reply)> {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let got = tokio::time::timeout_at(deadline, self.rx.recv()).await;
            if let Ok(Some((i, _))) = &got
                && self.dead[*i]
            {
                continue;
            }
            return self.reply_of(got, within);
        }
    }

    fn reply_of(
        &self,
        got: Result<Option<Line>, tokio::time::error::Elapsed>,
        within: Duration,
    ) -> Result<(usize, Reply)> {
        match got {
            Err(_) => bail!(
                "no reply within {within:?}; stderr: {}",
                self.procs
                    .iter()
                    .map(|p| format!("[{}] {}", p.index, p.stderr_tail()))
                    .collect::<Vec<_>>()
                    .join(" ")
            ),
            Ok(None) => bail!("every harness is gone"),
            Ok(Some((i, None))) => bail!(
                "harness {i} exited; stderr: {}",
                self.procs
                    .get(i)
                    .map(|p| p.stderr_tail())
                    .unwrap_or_default()
            ),
            Ok(Some((i, Some(line)))) => Ok((i, parse_reply(&line)?)),
        }
    }

    /// Sends `line` to process `i` and returns its reply (the group must have nothing else
    /// in flight).
    pub async fn call(&mut self, i: usize, line: &str, within: Duration) -> Result<Reply> {
        self.procs[i].send(line).await?;
        loop {
            let (from, reply) = self.next(within).await?;
            if from == i {
                return Ok(reply);
            }
        }
    }

    /// Quits every process at once: `quit` to each, then whatever has not exited within
    /// `within` is killed (a harness blocked in a waiting `acquire` reads its `quit` only
    /// after the grant; its server-side lock goes with its session or lease).
    pub async fn quit_all(self, within: Duration) {
        let mut live: Vec<Harness> = self
            .procs
            .into_iter()
            .zip(self.dead)
            .filter(|(_, dead)| !dead)
            .map(|(p, _)| p)
            .collect();
        for p in &mut live {
            let _ = p.send("quit").await;
        }
        let deadline = tokio::time::Instant::now() + within;
        for p in &mut live {
            if tokio::time::timeout_at(deadline, p.child.wait())
                .await
                .is_err()
            {
                let _ = p.child.kill().await;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replies_parse_and_malformed_ones_do_not() {
        assert_eq!(
            parse_reply("acquired job 10 20").unwrap(),
            Reply::Acquired {
                name: "job".into(),
                t0: 10,
                t1: 20
            }
        );
        assert_eq!(
            parse_reply("throughput 123 1 2").unwrap(),
            Reply::Throughput {
                ops: 123,
                t0: 1,
                t1: 2
            }
        );
        assert_eq!(
            parse_reply("error job 1 2 not held here").unwrap(),
            Reply::Error {
                name: "job".into(),
                message: "not held here".into()
            }
        );
        assert_eq!(parse_reply("bye 5").unwrap(), Reply::Bye);
        assert!(parse_reply("acquired job x 2").is_err());
        assert!(parse_reply("hello").is_err());
        assert!(parse_reply("").is_err());
    }
}
