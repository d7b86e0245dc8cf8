//! Lazily started guard supervisors.
//!
//! A guard's supervisor (renewal and deadline, see [`Guard`](crate::Guard)) has nothing to do
//! until its first renewal or its deadline, which is a third of a lease or more away. Most
//! critical sections are shorter than that. Spawning a task per grant anyway costs more than
//! the rest of the client side together on a multi-thread runtime (the spawn and the abort
//! wake an idle worker): measured on PostgreSQL on a multi-thread runtime, the spawn alone
//! cost about 25 µs per acquire + release, against a floor of about 100 µs. Waking the timer
//! task for every grant would put a cross-task wake-up back into each one, which is why
//! registering a grant wakes it only when it must (below).
//!
//! [`Supervisors`] keeps the grants of one backend in a timetable instead, and one timer task
//! per backend spawns a grant's supervisor only when its first event comes due; a grant
//! released before then never gets a task. Registering a grant wakes the timer only when the
//! grant is due before everything else in the timetable, which in a steady stream of short
//! holds almost never happens.
//!
//! One timetable per backend, not per process: the supervisors must run on the runtime whose
//! I/O resources the backend's leases use, and a backend lives on one runtime. When that
//! runtime shuts down the timer task goes with it; the next grant starts a new one on the
//! runtime it is made on.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard, Weak};

use tokio::sync::Notify;
use tokio::time::Instant;

use crate::guard::LeaseMonitor;
use crate::renewal::{SupervisorPlan, supervise};
use crate::{Lease, LockState};

/// The supervisor timetable of one backend. Cheap to clone (clones share it). A backend keeps
/// one and returns it from [`Lease::supervisors`] for its grants.
#[derive(Clone, Default)]
pub struct Supervisors {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Supervisors {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let st = self.inner.lock();
        f.debug_struct("Supervisors")
            .field("waiting", &st.jobs.len())
            .field("timer_running", &st.timer_running)
            .finish()
    }
}

#[derive(Default)]
struct Inner {
    state: Mutex<State>,
    /// Wakes the timer task: shared with it, so it outlives `Inner` and can tell the task the
    /// timetable is gone.
    wake: Arc<Notify>,
    /// How many times the timer task has read the timetable.
    rounds: std::sync::atomic::AtomicU64,
}

impl Drop for Inner {
    fn drop(&mut self) {
        // The timer task holds only a weak reference: let it see that and end.
        self.wake.notify_one();
    }
}

#[derive(Default)]
struct State {
    /// Grants waiting for their first event, by (when, id).
    jobs: BTreeMap<(Instant, u64), Job>,
    next_id: u64,
    /// When the timer task will look next (`None`: it waits only for a wake-up).
    armed: Option<Instant>,
    timer_running: bool,
}

struct Job {
    lease: Weak<dyn Lease>,
    monitor: LeaseMonitor,
    plan: SupervisorPlan,
}

impl Job {
    fn start(self) {
        if self.lease.strong_count() == 0
            || matches!(self.monitor.state(), LockState::Lost | LockState::Released)
        {
            return;
        }
        tokio::spawn(supervise(self.lease, self.monitor, self.plan));
    }
}

/// A grant's place in the timetable, to take it out when the guard ends first.
#[derive(Debug)]
pub(crate) struct Ticket {
    table: Weak<Inner>,
    key: (Instant, u64),
}

impl Ticket {
    /// Takes the grant out of the timetable (if its supervisor has not started yet).
    pub(crate) fn cancel(self) {
        if let Some(inner) = self.table.upgrade() {
            inner.lock().jobs.remove(&self.key);
        }
    }
}

impl Supervisors {
    /// An empty timetable; the timer task starts with the first grant.
    pub fn new() -> Self {
        Self::default()
    }

    /// Schedules the supervisor of a grant to start at `at` (its first renewal or deadline).
    pub(crate) fn schedule(
        &self,
        at: Instant,
        lease: Weak<dyn Lease>,
        monitor: LeaseMonitor,
        plan: SupervisorPlan,
    ) -> Ticket {
        let (key, start_timer, wake) = {
            let mut st = self.inner.lock();
            st.next_id += 1;
            let key = (at, st.next_id);
            st.jobs.insert(
                key,
                Job {
                    lease,
                    monitor,
                    plan,
                },
            );
            let start_timer = !st.timer_running;
            st.timer_running = true;
            let wake = !start_timer && st.armed.is_none_or(|armed| at < armed);
            if wake || start_timer {
                st.armed = Some(at);
            }
            (key, start_timer, wake)
        };
        if start_timer {
            tokio::spawn(run_timer(
                Arc::downgrade(&self.inner),
                Arc::clone(&self.inner.wake),
            ));
        } else if wake {
            self.inner.wake.notify_one();
        }
        Ticket {
            table: Arc::downgrade(&self.inner),
            key,
        }
    }

    /// How many times the timer task has read the timetable since it was made: for tests
    /// and diagnostics (a steady stream of short holds should not add to it per grant).
    pub fn timer_rounds(&self) -> u64 {
        self.inner.rounds.load(std::sync::atomic::Ordering::Relaxed)
    }
}

impl Inner {
    /// Every update under this lock is a map operation or an assignment, so a poisoned lock
    /// still holds coherent data.
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Marks the timer as stopped when its task ends or is dropped (runtime shutdown), so the
/// next grant starts a new one.
struct TimerRunning(Weak<Inner>);

impl Drop for TimerRunning {
    fn drop(&mut self) {
        if let Some(inner) = self.0.upgrade() {
            let mut st = inner.lock();
            st.timer_running = false;
            st.armed = None;
        }
    }
}

async fn run_timer(table: Weak<Inner>, wake: Arc<Notify>) {
    let _running = TimerRunning(table.clone());
    loop {
        let Some(inner) = table.upgrade() else { return };
        inner
            .rounds
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let now = Instant::now();
        let (due, next) = {
            let mut st = inner.lock();
            let mut due = Vec::new();
            while let Some(entry) = st.jobs.first_entry() {
                if entry.key().0 > now {
                    break;
                }
                due.push(entry.remove());
            }
            // Keep the time a wake-up asked for even when its grant has gone since (released
            // early, as most are): while the timer sleeps until then, later grants need not
            // wake it. Dropping it instead made every grant of a steady stream of short holds
            // wake the timer (the table is empty again by the time the timer runs).
            let next = match (
                st.jobs.keys().next().map(|k| k.0),
                st.armed.filter(|at| *at > now),
            ) {
                (Some(job), Some(asked)) => Some(job.min(asked)),
                (job, asked) => job.or(asked),
            };
            st.armed = next;
            (due, next)
        };
        drop(inner);
        for job in due {
            job.start();
        }
        // A grant scheduled since the timetable was read left a permit: no wake-up is lost.
        match next {
            Some(at) => {
                tokio::select! {
                    _ = tokio::time::sleep_until(at) => {}
                    _ = wake.notified() => {}
                }
            }
            None => wake.notified().await,
        }
    }
}
