//! `dlock hold URL NAME`: the holder process of the failure scenarios.

use dlock::LockState;
use serde_json::json;
use tokio::io::AsyncReadExt;

use super::opt::HoldArgs;
use super::{
    EXIT_LOST, EXIT_OK, LockSession, acquire_announcing_wait, mono_us, next_state, now_ms,
};

/// One event per line. A reader that went away (closed pipe) is not an error worth a panic:
/// the holder keeps holding until told otherwise.
fn emit(event: serde_json::Value) {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{event}").and_then(|_| out.flush());
}

pub(super) async fn hold(args: HoldArgs) -> i32 {
    let mut session = match LockSession::open(&args.lock, None, !args.no_renew).await {
        Ok(s) => s,
        Err(code) => return code,
    };
    let code = hold_locked(&args, &mut session).await;
    session.close().await;
    code
}

/// Acquires, holds until told to stop, releases; the exit code.
async fn hold_locked(args: &HoldArgs, session: &mut LockSession) -> i32 {
    let LockSession {
        name,
        opts,
        sigterm,
        sigint,
        backend,
    } = session;
    let name = &*name;
    // `waiting`: the first try found the lock held elsewhere; the waiting request follows.
    let announce = || emit(json!({"event": "waiting", "t_ms": now_ms(), "t_mono_us": mono_us()}));
    let guard = match acquire_announcing_wait(
        &**backend,
        name,
        opts,
        sigterm,
        sigint,
        Some(Box::new(announce)),
        false,
    )
    .await
    {
        Ok(g) => g,
        Err(code) => return code,
    };
    emit(json!({
        "event": "acquired",
        "token": guard.token().map(|t| t.get()),
        "slot": guard.slot(),
        "t_ms": now_ms(), "t_mono_us": mono_us(),
    }));

    let stdin_closed = async {
        if args.no_stdin {
            return std::future::pending().await;
        }
        let mut stdin = tokio::io::stdin();
        let mut buf = [0u8; 1024];
        loop {
            match stdin.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    };
    tokio::pin!(stdin_closed);
    let hold_for = async {
        match args.hold_for {
            Some(d) => tokio::time::sleep(d).await,
            None => std::future::pending().await,
        }
    };
    tokio::pin!(hold_for);

    let mut watch = guard.watch();
    let mut last = guard.state();
    loop {
        tokio::select! {
            _ = &mut hold_for => break,
            _ = &mut stdin_closed => break,
            _ = sigterm.recv() => break,
            _ = sigint.recv() => break,
            state = next_state(&mut watch, last) => {
                if state != last {
                    last = state;
                    emit(json!({"event": "state", "state": state.as_str(), "t_ms": now_ms(), "t_mono_us": mono_us()}));
                    // A holder that lost its lock must stop acting on it: exit 76 (after
                    // the release, which reports `ours: false`).
                    if state == LockState::Lost && !args.stay_after_lost {
                        break;
                    }
                }
            }
        }
    }
    let ours = match guard.release().await {
        Ok(ours) => ours,
        Err(e) => {
            eprintln!("dlock: release failed: {e}");
            false
        }
    };
    emit(json!({"event": "released", "ours": ours, "t_ms": now_ms(), "t_mono_us": mono_us()}));
    // Lost is lost, whatever the release found afterwards (a lease that ran out may still be
    // in place when nobody else took it).
    if ours && last != LockState::Lost {
        EXIT_OK
    } else {
        EXIT_LOST
    }
}
