//! `dlock run URL NAME -- CMD…`

use std::os::unix::process::ExitStatusExt;
use std::process::{ExitStatus, Stdio};

use dlock::LockState;
use tokio::process::Command;
use tokio::time::Instant;

use super::opt::{OnLost, RunArgs};
use super::{
    EXIT_BUSY, EXIT_LOST, EXIT_OK, EXIT_SOFTWARE, LockSession, acquire_or_signal, next_state,
};

pub(super) async fn run(args: RunArgs) -> i32 {
    let mut session = match LockSession::open(&args.lock, args.at_least, true).await {
        Ok(s) => s,
        Err(code) => return code,
    };
    let code = run_locked(&args, &mut session).await;
    session.close().await;
    code
}

/// Acquires, runs the command under the lock and releases; the exit code.
async fn run_locked(args: &RunArgs, session: &mut LockSession) -> i32 {
    let LockSession {
        name,
        opts,
        sigterm,
        sigint,
        backend,
    } = session;
    let name = &*name;
    let guard = match acquire_or_signal(&**backend, name, opts, sigterm, sigint, args.skip_ok).await
    {
        Ok(g) => g,
        Err(EXIT_BUSY) if args.skip_ok => return EXIT_OK,
        Err(EXIT_BUSY) if args.busy_exit.is_some() => {
            return args.busy_exit.map_or(EXIT_BUSY, i32::from);
        }
        Err(code) => return code,
    };

    let mut cmd = Command::new(&args.command[0]);
    cmd.args(&args.command[1..])
        .env("DLOCK_LOCK_NAME", name.as_str())
        .stdin(Stdio::inherit());
    match guard.token() {
        Some(t) => cmd.env("DLOCK_FENCING_TOKEN", t.to_string()),
        None => cmd.env_remove("DLOCK_FENCING_TOKEN"),
    };
    match guard.slot() {
        Some(s) => cmd.env("DLOCK_PERMIT_SLOT", s.to_string()),
        None => cmd.env_remove("DLOCK_PERMIT_SLOT"),
    };
    #[cfg(target_os = "linux")]
    // SAFETY: prctl is async-signal-safe and touches only the child's own state. If dlock
    // dies (even by SIGKILL), the command is killed too instead of running on without the lock.
    unsafe {
        cmd.pre_exec(|| {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let mut child = match cmd.spawn() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("dlock: cannot run {:?}: {e}", args.command[0]);
            let _ = guard.release().await;
            return if e.kind() == std::io::ErrorKind::NotFound {
                127
            } else {
                126
            };
        }
    };
    let pid = child.id();

    let mut watch = guard.watch();
    let mut last = LockState::Held;
    let mut lost_at: Option<Instant> = None;
    let mut killed = false;
    let status: std::io::Result<ExitStatus> = loop {
        tokio::select! {
            status = child.wait() => break status,
            state = next_state(&mut watch, last), if lost_at.is_none() => {
                last = state;
                match state {
                LockState::Lost => {
                    match args.on_lost {
                        OnLost::Ignore => {
                            eprintln!("dlock: lock {:?} was lost; --on-lost ignore: the command keeps running", name.as_str());
                            lost_at = Some(Instant::now());
                            killed = true;
                        }
                        OnLost::Term => {
                            eprintln!("dlock: lock {:?} was lost; sending SIGTERM to the command", name.as_str());
                            send(pid, libc::SIGTERM);
                            lost_at = Some(Instant::now());
                        }
                        OnLost::Kill => {
                            eprintln!("dlock: lock {:?} was lost; killing the command", name.as_str());
                            send(pid, libc::SIGKILL);
                            lost_at = Some(Instant::now());
                            killed = true;
                        }
                    }
                }
                LockState::Unverifiable => {
                    eprintln!("dlock: warning: lock {:?} may be lost (renewal failed); the command keeps running until it is known", name.as_str());
                }
                _ => {}
            }},
            _ = tokio::time::sleep_until(lost_at.unwrap_or_else(Instant::now) + args.grace), if lost_at.is_some() && !killed => {
                eprintln!("dlock: the command did not exit within {:?} of SIGTERM; sending SIGKILL", args.grace);
                send(pid, libc::SIGKILL);
                killed = true;
            }
            _ = sigterm.recv() => send(pid, libc::SIGTERM),
            _ = sigint.recv() => send(pid, libc::SIGINT),
        }
    };

    let code = match status {
        Ok(s) => s.code().unwrap_or_else(|| 128 + s.signal().unwrap_or(0)),
        Err(e) => {
            eprintln!("dlock: waiting for the command failed: {e}");
            EXIT_SOFTWARE
        }
    };
    let was_lost = lost_at.is_some();
    match guard.release().await {
        Ok(true) => {}
        Ok(false) => {
            if !was_lost {
                eprintln!(
                    "dlock: lock {:?} was no longer held when the command ended; its work may have overlapped another holder",
                    name.as_str()
                );
                if args.on_lost != OnLost::Ignore {
                    return EXIT_LOST;
                }
            }
        }
        Err(e) => eprintln!(
            "dlock: warning: release failed (the lock frees itself when its lease or session ends): {e}"
        ),
    }
    if was_lost && args.on_lost != OnLost::Ignore {
        EXIT_LOST
    } else {
        code
    }
}

fn send(pid: Option<u32>, sig: libc::c_int) {
    if let Some(pid) = pid {
        // SAFETY: kill(2) on our own child's pid; it cannot have been reaped and reused while
        // we have not awaited its exit.
        unsafe {
            libc::kill(pid as libc::pid_t, sig);
        }
    }
}
