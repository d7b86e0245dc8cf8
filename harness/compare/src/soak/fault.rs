//! Applying one planned fault to a backend's running soak.

use std::time::Duration;

use anyhow::{Result, bail};

use super::log::AppliedFault;
use super::plan::{FaultKind, PlannedFault};
use super::slot::Shared;
use crate::scenario::RESET_FOR;
use crate::scenario::holder::mono_us;
use crate::scenario::target::Target;
use dlock_fixtures::faults::Fault;

/// The kinds that apply to `target` when its holders connect through proxies or not.
pub fn applicable(target: &Target, proxied: bool) -> Vec<FaultKind> {
    let mut kinds = vec![FaultKind::HolderKilled, FaultKind::HolderPaused];
    if proxied {
        kinds.push(FaultKind::ConnectionReset);
    }
    if target.is_managed() {
        kinds.push(FaultKind::ServerRestart);
    }
    kinds
}

/// The slot `pick` designates: among the slots whose holder is inside the lock (modulo
/// their number), else among the slots that have a process. Returns it and whether it is
/// inside.
fn victim(sh: &Shared, pick: u64) -> Option<(usize, bool)> {
    let (mut inside, mut running) = (Vec::new(), Vec::new());
    for i in 0..sh.slots.len() {
        let st = sh.slot(i);
        if st.pid.is_some() && !st.paused {
            running.push(i);
            if st.inside {
                inside.push(i);
            }
        }
    }
    let of = |v: &[usize]| v[(pick % v.len() as u64) as usize];
    if !inside.is_empty() {
        Some((of(&inside), true))
    } else if !running.is_empty() {
        Some((of(&running), false))
    } else {
        None
    }
}

fn signal(pid: u32, sig: libc::c_int) {
    // SAFETY: kill(2) on a holder process of ours; the caller holds its slot's lock, and a
    // slot clears its pid under that lock before reaping the process, so the pid is live.
    unsafe {
        libc::kill(pid as libc::pid_t, sig);
    }
}

/// Applies fault `n` of the plan; returns what was done.
pub async fn apply(
    sh: &Shared,
    target: &Target,
    n: usize,
    f: &PlannedFault,
) -> Result<AppliedFault> {
    let start_us = mono_us();
    let hit = if f.kind == FaultKind::ServerRestart {
        None
    } else {
        victim(sh, f.pick)
    };
    match (f.kind, hit) {
        (FaultKind::ServerRestart, _) => restart(target).await?,
        (_, None) => {}
        (FaultKind::HolderKilled, Some((v, _))) => {
            let st = sh.slot(v);
            if let (Some(pid), Some(inc)) = (st.pid, st.inc) {
                let t = mono_us();
                signal(pid, libc::SIGKILL);
                if st.inside {
                    sh.log().exit(inc, t, "killed");
                }
            }
        }
        (FaultKind::HolderPaused, Some((v, _))) => pause(sh, v, f.length_ms).await,
        (FaultKind::ConnectionReset, Some((v, _))) => {
            for p in &sh.proxies[v] {
                p.set(Fault::Reset);
            }
            tokio::time::sleep(RESET_FOR).await;
            for p in &sh.proxies[v] {
                p.set(Fault::Pass);
            }
        }
    }
    let end_us = mono_us();
    let log = sh.log();
    Ok(AppliedFault {
        n,
        kind: f.kind,
        pick: f.pick,
        victim_slot: hit.map(|(v, _)| v),
        victim_inside: hit.is_some_and(|(_, inside)| inside),
        start_ms: log.ms(start_us),
        end_ms: log.ms(end_us),
        start_us,
    })
}

/// SIGSTOP of slot `v`'s holder for `length_ms`, then SIGCONT; a holder that was inside
/// writes with its old token at the moment it wakes (the slot does, on the notification).
async fn pause(sh: &Shared, v: usize, length_ms: u64) {
    let stopped = {
        let mut st = sh.slot(v);
        let Some(pid) = st.pid else { return };
        signal(pid, libc::SIGSTOP);
        st.paused = true;
        (pid, st.inside.then_some(st.inc).flatten())
    };
    tokio::time::sleep(Duration::from_millis(length_ms)).await;
    let mut st = sh.slot(v);
    if st.pid == Some(stopped.0) {
        signal(stopped.0, libc::SIGCONT);
        let t = mono_us();
        st.paused = false;
        if let Some(inc) = stopped.1 {
            st.resumed = Some((inc, t));
        }
        sh.resumed[v].notify_one();
    }
}

/// The servers killed (SIGKILL) and started again on the same port and data.
async fn restart(target: &Target) -> Result<()> {
    match (&target.server, &target.cluster) {
        (Some(s), _) if s.is_managed() => {
            s.kill().await?;
            s.start().await
        }
        (_, Some(c)) if c.is_managed() => {
            c.kill().await?;
            let all: Vec<usize> = (0..c.len()).collect();
            c.restart_members(&all).await
        }
        _ => bail!("no managed server to restart"),
    }
}
