//! One holder slot: a `dlock hold --wait forever --stay-after-lost` process that waits for
//! the lock, holds it a random short time, writes, releases and exits; then the next one.
//! A slot has at most one process at a time, so a backend's soak has at most
//! [`HOLDERS`](super::HOLDERS) waiting or holding.

use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use tokio::sync::Notify;
use tokio::time::Instant;

use super::log::{Inc, Log, WriteWhy};
use super::rng::SplitMix64;
use crate::scenario::holder::{EventKind, HoldSpec, Holder, mono_us};
use dlock_fixtures::faults::FaultProxy;

/// How long a holder holds the lock, ms (drawn per grant from the slot's generator).
pub const HOLD_MS: (u64, u64) = (20, 200);

/// The first wait before starting a slot's next holder after one ended without a grant (the
/// server was down or its connection reset); doubled on each further such end, up to
/// [`RESPAWN_MAX`]. A rate limit, so that 16 slots do not start processes in a loop while
/// a server restarts.
pub const RESPAWN_MIN: Duration = Duration::from_millis(100);

/// See [`RESPAWN_MIN`].
pub const RESPAWN_MAX: Duration = Duration::from_secs(2);

/// How long a releasing holder gets to exit before it is killed.
const RELEASE_WITHIN: Duration = Duration::from_secs(10);

/// What the fault loop sees of a slot.
#[derive(Debug, Default)]
pub struct SlotState {
    /// The running holder process (`None` between processes: it is never signalled once
    /// reaped).
    pub pid: Option<u32>,
    /// Its number.
    pub inc: Option<Inc>,
    /// Whether it holds the lock (granted, not yet released, lost or killed).
    pub inside: bool,
    /// Whether it is stopped (SIGSTOP).
    pub paused: bool,
    /// Set on SIGCONT of a holder that was inside when stopped: it writes at once, then.
    pub resumed: Option<(Inc, i64)>,
}

/// What the slots and the fault loop of one backend share.
pub struct Shared {
    /// The history.
    pub log: Mutex<Log>,
    /// Per slot: its state.
    pub slots: Vec<Mutex<SlotState>>,
    /// Per slot: woken on SIGCONT.
    pub resumed: Vec<Notify>,
    /// Per slot: the fault proxies its holders connect through (empty: direct).
    pub proxies: Vec<Vec<FaultProxy>>,
    /// Per slot: the URL its holders are given.
    pub urls: Vec<String>,
    /// The one lock every holder wants.
    pub name: String,
    /// `--ttl` (where the backend has a lease).
    pub ttl: Duration,
    /// The `dlock` binary.
    pub bin: PathBuf,
    /// The seed (each slot derives its own generator from it).
    pub seed: u64,
    /// The end of the soak: no new holder after it.
    pub deadline: Instant,
    next_inc: AtomicUsize,
}

impl Shared {
    /// Shared state for `urls.len()` slots.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        log: Log,
        proxies: Vec<Vec<FaultProxy>>,
        urls: Vec<String>,
        name: String,
        ttl: Duration,
        bin: PathBuf,
        seed: u64,
        deadline: Instant,
    ) -> Shared {
        Shared {
            log: Mutex::new(log),
            slots: urls.iter().map(|_| Mutex::default()).collect(),
            resumed: urls.iter().map(|_| Notify::new()).collect(),
            proxies,
            urls,
            name,
            ttl,
            bin,
            seed,
            deadline,
            next_inc: AtomicUsize::new(0),
        }
    }

    /// The log, locked (after a slot's lock when both are taken).
    pub fn log(&self) -> MutexGuard<'_, Log> {
        self.log.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Slot `i`'s state, locked.
    pub fn slot(&self, i: usize) -> MutexGuard<'_, SlotState> {
        self.slots[i].lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// How a holder's wait for the lock ended.
enum Wait {
    Granted(Option<u64>),
    Ended,
    Deadline,
}

/// Slot `slot`'s holders, one after another, until the deadline.
pub async fn run(sh: std::sync::Arc<Shared>, slot: usize) {
    let mut rng = SplitMix64::derive(sh.seed, 1_000 + slot as u64);
    let mut backoff = RESPAWN_MIN;
    while Instant::now() < sh.deadline {
        let inc = sh.next_inc.fetch_add(1, Ordering::Relaxed);
        let spec = HoldSpec {
            url: sh.urls[slot].clone(),
            name: sh.name.clone(),
            ttl: sh.ttl,
            wait_forever: true,
            skew: None,
            peer: None,
            mode: Default::default(),
        };
        let mut h = match Holder::spawn(&sh.bin, &spec) {
            Ok(h) => h,
            Err(e) => {
                crate::say!("[soak] slot {slot}: {e:#}");
                tokio::time::sleep(RESPAWN_MAX).await;
                continue;
            }
        };
        sh.log().holders_started += 1;
        *sh.slot(slot) = SlotState {
            pid: Some(h.pid()),
            inc: Some(inc),
            ..SlotState::default()
        };
        match wait(&sh, slot, inc, &mut h).await {
            Wait::Granted(token) => {
                backoff = RESPAWN_MIN;
                let hold_ms = rng.range(HOLD_MS.0, HOLD_MS.1);
                let released = hold(&sh, slot, inc, token, &mut h, hold_ms).await;
                sh.slot(slot).pid = None;
                if released {
                    h.release_and_finish(RELEASE_WITHIN).await;
                } else {
                    h.finish().await;
                }
            }
            Wait::Ended => {
                sh.slot(slot).pid = None;
                sh.log().ended_before_grant += 1;
                h.finish().await;
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(RESPAWN_MAX);
            }
            Wait::Deadline => {
                sh.slot(slot).pid = None;
                h.finish().await;
            }
        }
    }
    *sh.slot(slot) = SlotState::default();
}

/// Waits for the grant; records it (the holder enters and writes).
async fn wait(sh: &Shared, slot: usize, inc: Inc, h: &mut Holder) -> Wait {
    loop {
        let ev = tokio::select! {
            ev = h.next_event(Duration::from_secs(3600)) => ev,
            _ = tokio::time::sleep_until(sh.deadline) => return Wait::Deadline,
        };
        let Some(ev) = ev else { continue };
        match ev.kind {
            EventKind::Acquired { token } => {
                let mut st = sh.slot(slot);
                st.inside = true;
                sh.log().grant(inc, slot, token, ev.t_us);
                return Wait::Granted(token);
            }
            EventKind::Ended => {
                sh.log().ended(inc, ev.t_us);
                return Wait::Ended;
            }
            _ => {}
        }
    }
}

/// Holds for `hold_ms` (longer if paused meanwhile), writing on waking from a pause and at
/// the end unless it reported `lost`; records when it leaves. Returns whether the holder is
/// still running (to be released) rather than gone.
async fn hold(
    sh: &Shared,
    slot: usize,
    inc: Inc,
    token: Option<u64>,
    h: &mut Holder,
    hold_ms: u64,
) -> bool {
    let end = Instant::now() + Duration::from_millis(hold_ms);
    let mut lost = false;
    // Bounded: each turn is the end of the hold, a resume or one event of the holder.
    loop {
        let paused = sh.slot(slot).paused;
        tokio::select! {
            _ = tokio::time::sleep_until(end), if !paused && !lost => {
                if finish_hold(sh, slot, inc, token, h, &mut lost) {
                    return true;
                }
            }
            _ = sh.resumed[slot].notified() => {
                let resumed = sh.slot(slot).resumed.take();
                if let Some((who, t)) = resumed.filter(|(who, _)| *who == inc) {
                    if !lost {
                        sh.log().write(who, token, t, WriteWhy::Resumed);
                    }
                }
            }
            ev = h.next_event(Duration::from_secs(3600)) => match ev.map(|e| (e.kind, e.t_us)) {
                Some((EventKind::State(s), t)) if s == "lost" => {
                    lost = true;
                    sh.slot(slot).inside = false;
                    sh.log().lost(inc, t);
                }
                Some((EventKind::Ended, t)) => {
                    let mut st = sh.slot(slot);
                    st.inside = false;
                    let mut log = sh.log();
                    log.ended(inc, t);
                    log.exit(inc, t, "process ended");
                    return false;
                }
                _ => {}
            },
        }
        // A holder that learned it lost the lock stops working at once (unless it is
        // stopped: then it releases after waking).
        if lost && !sh.slot(slot).paused {
            return true;
        }
    }
}

/// The end of a hold, unless the holder was stopped meanwhile (then `false`: it ends after
/// waking). The holder writes (unless it reported `lost`, possibly not read yet) and leaves.
fn finish_hold(
    sh: &Shared,
    slot: usize,
    inc: Inc,
    token: Option<u64>,
    h: &mut Holder,
    lost: &mut bool,
) -> bool {
    let mut st = sh.slot(slot);
    if st.paused {
        return false;
    }
    st.inside = false;
    let mut log = sh.log();
    while let Some(ev) = h.try_event() {
        if matches!(&ev.kind, EventKind::State(s) if s == "lost") && !*lost {
            *lost = true;
            log.lost(inc, ev.t_us);
        }
    }
    let now = mono_us();
    if !*lost {
        log.write(inc, token, now, WriteWhy::Work);
    }
    log.exit(inc, now, "released");
    true
}
