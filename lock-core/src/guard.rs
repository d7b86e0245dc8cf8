//! Guards: what a caller holds while it holds a lock, and the renewal/deadline logic that
//! every backend shares.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use tokio::task::JoinHandle;
use tokio::time::Instant;
use tracing::Instrument;

use crate::backend::BoxFuture;
use crate::cleanups::Cleanups;
use crate::error::{Error, ErrorKind, Operation, Result};
use crate::name::LockName;
use crate::observe;
use crate::options::{LockMode, LockOptions, Renew};
use crate::renewal::{SupervisorPlan, supervise};
use crate::state_cell;
use crate::supervisors::{Supervisors, Ticket};

/// A fencing token: a number that strictly increases across successive grants of the same
/// lock name. Pass it to the resource you protect and have the resource reject writes that
/// carry a lower token than one it has already seen; that keeps a paused or partitioned
/// former holder from doing damage after its lock was handed on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct FencingToken(u64);

impl FencingToken {
    /// Wraps a raw token.
    pub const fn new(value: u64) -> Self {
        FencingToken(value)
    }

    /// The raw number.
    pub const fn get(self) -> u64 {
        self.0
    }
}

impl fmt::Display for FencingToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// Where a held lock stands, as far as this process can tell.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum LockState {
    /// Held: the last confirmation from the server is recent enough that nobody else can have
    /// been granted the lock.
    Held,
    /// Possibly lost: a renewal failed or the connection is down, but the lease deadline has
    /// not passed yet. Stop starting new work; finish or abort what is in flight.
    Unverifiable,
    /// Lost: the lease deadline passed, the session ended, or the server said the lock is no
    /// longer ours. Someone else may hold it now. Never turns back to `Held`.
    Lost,
    /// Released by its owner (explicitly or by dropping the guard). Only a [`StateWatch`] can
    /// observe this; a [`Guard`] is consumed by its release.
    Released,
}

impl LockState {
    /// Lowercase name (`held`, `unverifiable`, `lost`, `released`).
    pub fn as_str(self) -> &'static str {
        match self {
            LockState::Held => "held",
            LockState::Unverifiable => "unverifiable",
            LockState::Lost => "lost",
            LockState::Released => "released",
        }
    }
}

impl fmt::Display for LockState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A backend's handle on one granted lock: the minimum each backend implements. Everything
/// else (renewal schedule, deadlines, state, `at_least`, drop behaviour) is written once in
/// [`Guard`].
pub trait Lease: Send + Sync + 'static {
    /// Makes the lease expire `ttl` from now, if it is still ours. `Ok(true)`: extended;
    /// `Ok(false)`: the lock is no longer ours (expired, taken, session gone); `Err`: the
    /// server could not be asked (the guard turns `Unverifiable`). Session-based backends
    /// without a lease return an [`ErrorKind::Unsupported`] error.
    fn extend(&self, ttl: Duration) -> BoxFuture<'_, Result<bool>>;

    /// Releases the lock if it is still ours; `Ok(true)` when it was. Must never free a grant
    /// that belongs to someone else.
    fn release(&self) -> BoxFuture<'_, Result<bool>>;

    /// Releases the lock but keeps it taken for `keep` more (ShedLock's `lockAtLeastFor`).
    ///
    /// The default shortens the lease to `keep` and lets it expire, which suits every lease
    /// backend. Session-based backends and backends with server-side `at_least` override it.
    fn release_after(&self, keep: Duration) -> BoxFuture<'_, Result<bool>> {
        self.extend(keep)
    }

    /// The backend's supervisor timetable, if it keeps one: then the grant's supervisor task
    /// is started only when its first renewal or deadline comes due, and a grant released
    /// before that never costs a task (see [`Supervisors`]). `None` (the default): the
    /// supervisor task starts with the guard.
    fn supervisors(&self) -> Option<&Supervisors> {
        None
    }

    /// The backend's background-cleanup tracker, if it keeps one: a guard dropped without
    /// `release` then releases on a task that [`Backend::close`](crate::Backend::close) waits
    /// for, so a process that closes its backend before exiting leaves nothing held. `None`
    /// (the default): the release task is not tracked.
    fn cleanups(&self) -> Option<&Cleanups> {
        None
    }

    /// The slot of a permit (see [`Guard::slot`]); `None` (the default) for a lock.
    fn slot(&self) -> Option<u32> {
        None
    }
}

#[derive(Debug, Clone)]
struct Status {
    state: LockState,
    valid_until: Option<Instant>,
    /// When `state` last changed (the moment the process learned it).
    since: Instant,
}

/// The state channel of one grant. The backend creates it before (or while) acquiring, keeps
/// clones in whatever task watches its session, and reports what it learns; the [`Guard`]
/// and every [`StateWatch`] read from it.
///
/// Transitions are one-way where they must be: nothing leaves `Lost` or `Released`.
#[derive(Clone)]
pub struct LeaseMonitor {
    tx: state_cell::Sender<Status>,
    pub(crate) backend: &'static str,
    /// For log lines only (shown as `backend:name`); kept as the name, not formatted, so a
    /// grant costs no string building.
    name: LockName,
}

impl LeaseMonitor {
    /// `backend:name`, for log lines.
    fn label(&self) -> impl fmt::Display + '_ {
        struct Label<'a>(&'static str, &'a LockName);
        impl fmt::Display for Label<'_> {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}:{}", self.0, self.1)
            }
        }
        Label(self.backend, &self.name)
    }
}

impl fmt::Debug for LeaseMonitor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (state, valid_until) = self.tx.get(|s| (s.state, s.valid_until));
        f.debug_struct("LeaseMonitor")
            .field("lock", &format_args!("{}", self.label()))
            .field("state", &state)
            .field("valid_until", &valid_until)
            .finish()
    }
}

impl LeaseMonitor {
    /// A monitor in state `Held`. `valid_until` is the client-side lease deadline (see
    /// [`lease_deadline`]); `None` for session locks that have no lease.
    pub fn new(name: &LockName, backend: &'static str, valid_until: Option<Instant>) -> Self {
        let tx = state_cell::Sender::new(Status {
            state: LockState::Held,
            valid_until,
            since: Instant::now(),
        });
        LeaseMonitor {
            tx,
            backend,
            name: name.clone(),
        }
    }

    /// The current state.
    pub fn state(&self) -> LockState {
        self.tx.get(|s| s.state)
    }

    /// The current client-side deadline.
    pub fn valid_until(&self) -> Option<Instant> {
        self.tx.get(|s| s.valid_until)
    }

    /// The lock is certainly not ours any more. Sticky.
    pub fn report_lost(&self, reason: &str) {
        let changed = self.tx.modify(|s| match s.state {
            LockState::Held | LockState::Unverifiable => {
                s.state = LockState::Lost;
                s.since = Instant::now();
                true
            }
            LockState::Lost | LockState::Released => false,
        });
        if changed {
            tracing::warn!(lock = %self.label(), reason, "lock lost");
            observe::lost(self.backend);
        }
    }

    /// The lock may be lost (a renewal failed, the connection dropped). Only moves `Held`.
    pub fn report_unverifiable(&self, reason: &str) {
        let changed = self.tx.modify(|s| {
            if s.state == LockState::Held {
                s.state = LockState::Unverifiable;
                s.since = Instant::now();
                true
            } else {
                false
            }
        });
        if changed {
            tracing::warn!(lock = %self.label(), reason, "lock unverifiable");
        }
    }

    /// The server confirmed the lock until `valid_until`: back to `Held` from `Unverifiable`.
    /// Ignored once `Lost` or `Released`.
    pub fn report_confirmed(&self, valid_until: Option<Instant>) {
        let changed = self.tx.modify(|s| match s.state {
            LockState::Held | LockState::Unverifiable => {
                let was = s.state;
                s.state = LockState::Held;
                s.valid_until = valid_until;
                if was != LockState::Held {
                    s.since = Instant::now();
                }
                was != LockState::Held
            }
            LockState::Lost | LockState::Released => false,
        });
        if changed {
            tracing::info!(lock = %self.label(), "lock confirmed again");
        }
    }

    fn report_released(&self) {
        self.tx.modify(|s| {
            if s.state == LockState::Released {
                false
            } else {
                s.state = LockState::Released;
                s.since = Instant::now();
                true
            }
        });
    }

    /// A watch on this grant's state.
    pub fn subscribe(&self) -> StateWatch {
        StateWatch {
            rx: self.tx.subscribe(),
        }
    }
}

/// A cloneable, `'static` view of a guard's state, for code that cannot borrow the guard
/// (another task, a child-process supervisor).
#[derive(Clone)]
pub struct StateWatch {
    rx: state_cell::Receiver<Status>,
}

impl fmt::Debug for StateWatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StateWatch")
            .field("state", &self.state())
            .finish()
    }
}

impl StateWatch {
    /// The current state.
    pub fn state(&self) -> LockState {
        self.rx.get(|s| s.state)
    }

    /// The current client-side deadline.
    pub fn valid_until(&self) -> Option<Instant> {
        self.rx.get(|s| s.valid_until)
    }

    /// When the current state began: the moment this process learned it (for measuring
    /// "the holder knew before the next grant" without the delay of whoever watches).
    pub fn state_since(&self) -> Instant {
        self.rx.get(|s| s.since)
    }

    /// Completes when the state is anything but `Held` (at once if it already is), with
    /// that state.
    pub async fn not_held(&mut self) -> LockState {
        self.until(|s| s != LockState::Held).await
    }

    /// Completes when the state is `Lost` or `Released`.
    pub async fn lost_or_released(&mut self) -> LockState {
        self.until(|s| matches!(s, LockState::Lost | LockState::Released))
            .await
    }

    /// Completes at the next change of state (or of the deadline), with the new state.
    pub async fn changed(&mut self) -> LockState {
        // Every sender gone: the guard and its supervisor have ended.
        self.rx
            .changed(|s| s.state)
            .await
            .unwrap_or(LockState::Released)
    }

    async fn until(&mut self, pred: impl Fn(LockState) -> bool) -> LockState {
        self.rx
            .wait_for(|s, _| pred(s.state), |s| s.state)
            .await
            // Every sender is gone: the guard and its supervisor have ended.
            .unwrap_or(LockState::Released)
    }
}

/// The client-side lease deadline for a lease of `ttl` whose request was *sent* at
/// `sent_at`: `sent_at + ttl - drift`, where drift is 1 % of the ttl plus 2 ms (the Redlock
/// allowance), but never more than half the ttl. Measuring from the send time and subtracting
/// the drift means the holder's deadline passes before the server's expiry does, so the
/// holder learns of the loss before anyone else can be granted the lock.
pub fn lease_deadline(sent_at: Instant, ttl: Duration) -> Instant {
    sent_at + (ttl - drift_allowance(ttl))
}

/// The terms of a guard on a session lock — a lock that lasts as long as a server session,
/// with no lease (PostgreSQL advisory locks, MariaDB user locks) — from the caller's `opts`
/// and the backend's `session_deadline`: the client-side deadline after each session check
/// (never longer than the hold the caller allows without renewal: an `at_most` below
/// `session_deadline` is honoured too), and the options the guard runs with. The session
/// check is the guard's "renewal", every deadline / 3; the caller's ttl bounds the hold
/// through `max_hold` only when it asked for no renewal (ShedLock's `at_most`).
pub fn session_lock_terms(
    opts: &LockOptions,
    session_deadline: Duration,
) -> (Duration, LockOptions) {
    let (deadline, max_hold) = match opts.renew() {
        Renew::Off => (session_deadline.min(opts.ttl()), Some(opts.ttl())),
        Renew::Auto { max_hold } => (session_deadline, max_hold),
    };
    let guard_opts = opts
        .clone()
        .with_ttl(deadline)
        .with_renew(Renew::Auto { max_hold });
    (deadline, guard_opts)
}

/// The margin [`lease_deadline`] keeps before the server's expiry: the Redlock allowance
/// (1 % of the ttl + 2 ms), but at least 5 % of the ttl up to 250 ms — a busy holder's timers
/// fire late by milliseconds, and the holder must still learn first — and never more than
/// half the ttl.
pub fn drift_allowance(ttl: Duration) -> Duration {
    let redlock = ttl / 100 + Duration::from_millis(2);
    let scheduling = (ttl / 20).min(Duration::from_millis(250));
    redlock.max(scheduling).min(ttl / 2)
}

/// A grant the server may have made that is not in a [`Guard`] yet: the window between
/// sending an acquisition and building the guard. If it is dropped armed — the `acquire`
/// future was cancelled at an await point, or an error path returned early — it releases in
/// the background. That is safe only because every [`Lease::release`] is ownership-checked:
/// if the server never granted the lock, the release changes nothing.
///
/// Backends whose grant and guard cannot be built without an await in between use it like
/// this: `let pending = PendingLease::new(lease.clone());` before sending, then
/// `pending.disarm()` when the server said no, or `pending.into_lease()` to put it in the
/// [`Grant`].
pub struct PendingLease {
    lease: Option<Arc<dyn Lease>>,
}

impl PendingLease {
    /// Arms the release-on-drop for `lease`.
    pub fn new(lease: Arc<dyn Lease>) -> Self {
        PendingLease { lease: Some(lease) }
    }

    /// The lease, for the [`Grant`]: no release on drop any more.
    pub fn into_lease(mut self) -> Arc<dyn Lease> {
        self.lease.take().expect("armed until taken")
    }

    /// Nothing was granted: no release needed.
    pub fn disarm(mut self) {
        self.lease = None;
    }
}

impl Drop for PendingLease {
    fn drop(&mut self) {
        let Some(lease) = self.lease.take() else {
            return;
        };
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            rt.spawn(async move {
                match lease.release().await {
                    Ok(true) => tracing::debug!("released a grant whose acquire was abandoned"),
                    Ok(false) => {}
                    Err(e) => tracing::warn!(error = %e, "could not release an abandoned grant; it frees when its lease expires"),
                }
            });
        }
    }
}

/// What a backend hands to [`Guard::new`] once the server granted the lock.
pub struct Grant {
    /// The lock name as the caller gave it.
    pub name: LockName,
    /// The backend's name (see [`Backend::name`](crate::Backend::name)).
    pub backend: &'static str,
    /// The fencing token, when the backend has one.
    pub token: Option<FencingToken>,
    /// The backend's handle on the grant.
    pub lease: Arc<dyn Lease>,
    /// The state channel (carries the initial deadline).
    pub monitor: LeaseMonitor,
    /// When the caller started asking (for the wait-time metric).
    pub requested_at: Instant,
}

/// A held lock.
///
/// - [`token`](Guard::token): the fencing token, if the backend has one.
/// - [`state`](Guard::state), [`not_held`](Guard::not_held), [`watch`](Guard::watch): where
///   the lock stands, and a future that completes the moment it may be lost.
/// - [`valid_until`](Guard::valid_until): the client-side lease deadline on the monotonic
///   clock (`None` for session locks without a lease).
/// - [`extend`](Guard::extend), [`release`](Guard::release).
///
/// While the guard lives, a background task renews the lease every ttl/3 (unless the
/// options say [`Renew::Off`](crate::Renew::Off), and never past `max_hold`), marks the guard `Unverifiable` when a
/// renewal fails and `Lost` when the deadline passes unconfirmed. It never re-acquires a lost
/// lock.
///
/// **Drop**: dropping a guard that was not released stops the renewal at once and starts a
/// best-effort release on the current tokio runtime in the background; it never blocks and
/// never panics. If there is no runtime (or the process exits first), the lock is freed by the
/// server when the lease expires or the session ends. Call [`release`](Guard::release) to know
/// the outcome.
pub struct Guard {
    name: LockName,
    backend: &'static str,
    token: Option<FencingToken>,
    mode: LockMode,
    /// `(limit, slot)` of a permit.
    permit: Option<(u32, u32)>,
    at_least: Option<Duration>,
    acquired_at: Instant,
    monitor: LeaseMonitor,
    lease: Option<Arc<dyn Lease>>,
    supervisor: Option<JoinHandle<()>>,
    /// The grant's place in its backend's [`Supervisors`] timetable, until its supervisor
    /// starts.
    lazy: Option<Ticket>,
}

impl fmt::Debug for Guard {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Guard")
            .field("name", &self.name)
            .field("backend", &self.backend)
            .field("token", &self.token)
            .field("mode", &self.mode)
            .field("permit", &self.permit)
            .field("state", &self.state())
            .finish()
    }
}

impl Guard {
    /// Wraps a grant and starts its supervisor (renewal and deadline). Must be called inside a
    /// tokio runtime, which is where every `acquire` runs.
    pub fn new(grant: Grant, opts: &LockOptions) -> Guard {
        let acquired_at = Instant::now();
        observe::acquired(grant.backend, acquired_at - grant.requested_at);
        tracing::debug!(
            lock = %grant.name,
            backend = grant.backend,
            token = grant.token.map(|t| t.get()),
            mode = %opts.mode(),
            "acquired"
        );
        let (mut supervisor, mut lazy) = (None, None);
        if let Some(deadline) = grant.monitor.valid_until() {
            let plan = SupervisorPlan::from_options(opts, acquired_at);
            match grant.lease.supervisors() {
                Some(table) => {
                    lazy = Some(table.schedule(
                        plan.first_event(deadline),
                        Arc::downgrade(&grant.lease),
                        grant.monitor.clone(),
                        plan,
                    ));
                }
                None => {
                    supervisor = Some(tokio::spawn(supervise(
                        Arc::downgrade(&grant.lease),
                        grant.monitor.clone(),
                        plan,
                    )));
                }
            }
        }
        Guard {
            name: grant.name,
            backend: grant.backend,
            token: grant.token,
            mode: opts.mode(),
            permit: opts
                .permits()
                .map(|limit| (limit, grant.lease.slot().unwrap_or(0))),
            at_least: opts.at_least(),
            acquired_at,
            monitor: grant.monitor,
            lease: Some(grant.lease),
            supervisor,
            lazy,
        }
    }

    /// The lock name.
    pub fn name(&self) -> &LockName {
        &self.name
    }

    /// The backend's name.
    pub fn backend(&self) -> &'static str {
        self.backend
    }

    /// The fencing token of this grant, if the backend has one.
    pub fn token(&self) -> Option<FencingToken> {
        self.token
    }

    /// The mode the lock was granted in.
    pub fn mode(&self) -> LockMode {
        self.mode
    }

    /// For a permit of a semaphore: its limit, as asked for (`None`: a lock).
    pub fn permits(&self) -> Option<u32> {
        self.permit.map(|(limit, _)| limit)
    }

    /// For a permit: its slot, `0..limit` (`None`: a lock). Two permits held at once have
    /// different slots; a permit's [`token`](Self::token) fences its slot.
    pub fn slot(&self) -> Option<u32> {
        self.permit.map(|(_, slot)| slot)
    }

    /// When the grant arrived, on the monotonic clock.
    pub fn acquired_at(&self) -> Instant {
        self.acquired_at
    }

    /// The current state.
    pub fn state(&self) -> LockState {
        self.monitor.state()
    }

    /// The client-side lease deadline (`None` for session locks without a lease).
    pub fn valid_until(&self) -> Option<Instant> {
        self.monitor.valid_until()
    }

    /// A `'static` view of the state for other tasks.
    pub fn watch(&self) -> StateWatch {
        self.monitor.subscribe()
    }

    /// Completes when the state leaves `Held` (at once if it already has), with the new state.
    pub async fn not_held(&self) -> LockState {
        self.watch().not_held().await
    }

    /// Extends the lease so that it expires `by` from now. `Err` with
    /// [`ErrorKind::Lost`] when the lock is no longer ours, [`ErrorKind::Unsupported`] for
    /// backends without a lease.
    pub async fn extend(&self, by: Duration) -> Result<()> {
        if by.is_zero() {
            return Err(
                Error::invalid_options("extend duration must be greater than zero")
                    .in_backend(self.backend)
                    .in_operation(Operation::Extend),
            );
        }
        if self.state() == LockState::Lost {
            return Err(self.lost_error("the lock was already lost"));
        }
        let lease = self.lease.as_ref().expect("lease present until release");
        let sent = Instant::now();
        match lease.extend(by).await {
            Ok(true) => {
                observe::renewed(self.backend);
                self.monitor
                    .report_confirmed(Some(lease_deadline(sent, by)));
                Ok(())
            }
            Ok(false) => {
                self.monitor
                    .report_lost("extend: the lock is no longer ours");
                Err(self.lost_error("the lock is no longer ours"))
            }
            Err(e) => {
                if e.kind() != ErrorKind::Unsupported {
                    self.monitor
                        .report_unverifiable("extend failed; see the error");
                }
                Err(e.in_operation(Operation::Extend))
            }
        }
    }

    /// Releases the lock. `Ok(true)`: it was still ours and is now free (or, with
    /// `at_least`, will be free once `at_least` has passed since the acquisition);
    /// `Ok(false)`: it was no longer ours (expired and possibly taken by someone else) and
    /// nothing was changed; `Err`: the server could not be asked (the lease will expire or
    /// the session end on its own).
    pub async fn release(mut self) -> Result<bool> {
        let lease = self.lease.take().expect("lease present until release");
        self.stop_supervisor();
        let keep = self.at_least_remaining();
        let release = async {
            match keep {
                Some(keep) => lease.release_after(keep).await,
                None => lease.release().await,
            }
        };
        let result = if observe::spans_wanted() {
            let span = tracing::debug_span!(
                "release",
                lock = %self.name,
                backend = self.backend,
                token = self.token.map(|t| t.get())
            );
            release.instrument(span).await
        } else {
            release.await
        };
        self.monitor.report_released();
        observe::released(self.backend, self.acquired_at.elapsed());
        match &result {
            Ok(true) => tracing::debug!(lock = %self.name, backend = self.backend, "released"),
            Ok(false) => {
                tracing::warn!(lock = %self.name, backend = self.backend, "release: the lock was no longer ours")
            }
            Err(e) => {
                tracing::warn!(lock = %self.name, backend = self.backend, error = %e, "release failed")
            }
        }
        result.map_err(|e| e.in_operation(Operation::Release))
    }

    /// Forgets the guard without releasing: the renewal stops and the lock stays taken until
    /// its lease expires or its session ends. For handing a lock over to process exit.
    pub fn leak(mut self) {
        self.stop_supervisor();
        self.lease = None;
    }

    fn at_least_remaining(&self) -> Option<Duration> {
        let at_least = self.at_least?;
        let held = self.acquired_at.elapsed();
        at_least.checked_sub(held).filter(|d| !d.is_zero())
    }

    fn stop_supervisor(&mut self) {
        if let Some(ticket) = self.lazy.take() {
            ticket.cancel();
        }
        if let Some(handle) = self.supervisor.take() {
            handle.abort();
        }
    }

    fn lost_error(&self, message: &str) -> Error {
        Error::new(
            ErrorKind::Lost,
            self.backend,
            Operation::Extend,
            format!("lock {:?}: {message}", self.name.as_str()),
        )
    }
}

impl Drop for Guard {
    fn drop(&mut self) {
        self.stop_supervisor();
        let Some(lease) = self.lease.take() else {
            return;
        };
        self.monitor.report_released();
        observe::released(self.backend, self.acquired_at.elapsed());
        let keep = self.at_least_remaining();
        let name = self.name.clone();
        let backend = self.backend;
        let cleanups = lease.cleanups().cloned().unwrap_or_default();
        let release = async move {
            let r = match keep {
                Some(keep) => lease.release_after(keep).await,
                None => lease.release().await,
            };
            match r {
                Ok(ours) => tracing::debug!(lock = %name, backend, ours, "released on drop"),
                Err(e) => {
                    tracing::warn!(lock = %name, backend, error = %e, "release on drop failed; the lock frees when its lease expires or its session ends")
                }
            }
        };
        if !cleanups.spawn(release) {
            tracing::warn!(
                lock = %self.name,
                backend = self.backend,
                "guard dropped outside a tokio runtime: not released; it frees when its lease expires or its session ends"
            );
        }
    }
}
