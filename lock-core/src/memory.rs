//! The in-process reference backend, `memory://`.

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::Duration;

use tokio::sync::Notify;
use tokio::time::Instant;

use crate::backend::{Backend, BoxFuture, Capabilities};
use crate::error::{Error, Result};
use crate::guard::{FencingToken, Grant, Guard, Lease, LeaseMonitor, lease_deadline};
use crate::name::LockName;
use crate::options::{LockMode, LockOptions};
use crate::registry::ConnectUrl;
use crate::wait_plan::sleep_until_opt;

/// The URL scheme of the in-memory backend.
pub const SCHEME: &str = "memory";

const NAME: &str = "memory";

/// The reference model: every guarantee of the contract, in one process, on tokio's
/// monotonic clock (so tests can pause and advance time).
///
/// - Exclusive and shared modes, writer-preferring: while an exclusive request waits, new
///   shared requests wait behind it, so a stream of readers cannot starve a writer.
/// - Semaphores ([`LockOptions::with_permits`]): a permit is the lowest free slot below the
///   caller's limit; semaphores are a name space apart from locks.
/// - A fencing token per exclusive grant and per permit (shared grants have none) from one
///   counter that only grows (it survives [`MemoryBackend::simulate_restart`], like a
///   persisted counter), so the tokens of a name, and of each slot of a semaphore, increase.
/// - Every grant is a lease of `ttl` that expires unless extended; waiters sleep until a
///   release notifies them or until the earliest lease in their way expires — no polling.
/// - `at_least` is enforced by the "server": a release before it shortens the lease to the
///   remaining time instead of freeing the lock.
/// - Cancel-safe: the grant and the creation of the guard happen in one step with no await in
///   between, so a dropped `acquire` never leaves a lock behind.
///
/// `memory://` is one process-wide instance; `memory://NAME` names others, so two
/// [`connect`](crate::Registry::connect) calls with the same URL see the same locks, as two
/// clients of one server would.
#[derive(Clone)]
pub struct MemoryBackend {
    shared: Arc<Shared>,
}

impl fmt::Debug for MemoryBackend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MemoryBackend")
            .field("instance", &self.shared.instance)
            .finish()
    }
}

struct Shared {
    instance: String,
    table: Mutex<Table>,
}

/// A lock, or the semaphore of the same name (a name space apart).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct Key {
    name: LockName,
    semaphore: bool,
}

impl Key {
    fn of(name: &LockName, opts: &LockOptions) -> Key {
        Key {
            name: name.clone(),
            semaphore: opts.permits().is_some(),
        }
    }

    fn lock(name: &LockName) -> Key {
        Key {
            name: name.clone(),
            semaphore: false,
        }
    }
}

#[derive(Default)]
struct Table {
    /// The names held or waited for; an entry goes when neither is the case any more.
    entries: HashMap<Key, Entry>,
    next_holder: u64,
    /// The last fencing token handed out, for any name: one counter for the table, so that
    /// forgetting an idle name's entry never restarts its tokens.
    last_token: u64,
}

struct Entry {
    holders: Vec<Holder>,
    /// Woken on every release and every shortened lease. Waiters hold clones, which is how
    /// the table knows that someone is waiting.
    changed: Arc<Notify>,
    /// Exclusive requests waiting now: new shared requests wait behind them.
    writers_waiting: usize,
}

#[derive(Debug, Clone)]
struct Holder {
    id: u64,
    mode: LockMode,
    /// A permit's slot.
    slot: Option<u32>,
    expires: Instant,
    /// Released with `at_least` remaining: still blocks others until `expires`, but is no
    /// longer anyone's to extend or release.
    retired: bool,
}

impl Entry {
    fn new() -> Self {
        Entry {
            holders: Vec::new(),
            changed: Arc::new(Notify::new()),
            writers_waiting: 0,
        }
    }

    /// Nobody holds the name (expired grants do not count) and nobody waits for it (a
    /// counted waiting writer may be between two passes of its wait, holding no wake-up).
    fn idle(&mut self, now: Instant) -> bool {
        self.purge_expired(now);
        self.holders.is_empty()
            && self.writers_waiting == 0
            && Arc::strong_count(&self.changed) == 1
    }

    fn purge_expired(&mut self, now: Instant) -> bool {
        let before = self.holders.len();
        self.holders.retain(|h| h.expires > now);
        before != self.holders.len()
    }

    /// Whether a request may be granted now: `Some(slot)` (`None` inside for a lock), or
    /// `None` when it must wait. `waiting_writer`: the request is itself a counted waiting
    /// writer.
    fn admits(&self, opts: &LockOptions, waiting_writer: bool) -> Option<Option<u32>> {
        if let Some(limit) = opts.permits() {
            // The caller's limit: fewer than `limit` permits held means a free slot below it.
            return (self.holders.len() < limit as usize)
                .then(|| (0..limit).find(|s| self.holders.iter().all(|h| h.slot != Some(*s))))
                .flatten()
                .map(Some);
        }
        let ok = match opts.mode() {
            LockMode::Exclusive => self.holders.is_empty(),
            LockMode::Shared => {
                let writers = self.writers_waiting - usize::from(waiting_writer);
                writers == 0 && self.holders.iter().all(|h| h.mode == LockMode::Shared)
            }
        };
        ok.then_some(None)
    }

    /// The earliest expiry among the holders in the way of `mode`.
    fn next_expiry(&self) -> Option<Instant> {
        self.holders.iter().map(|h| h.expires).min()
    }

    fn live_holder(&mut self, id: u64, now: Instant) -> Option<&mut Holder> {
        self.holders
            .iter_mut()
            .find(|h| h.id == id && !h.retired && h.expires > now)
    }
}

fn instances() -> &'static Mutex<HashMap<String, MemoryBackend>> {
    static INSTANCES: OnceLock<Mutex<HashMap<String, MemoryBackend>>> = OnceLock::new();
    INSTANCES.get_or_init(Default::default)
}

impl Default for MemoryBackend {
    fn default() -> Self {
        Self::new()
    }
}

impl MemoryBackend {
    /// Everything: the reference model has every capability.
    pub const CAPABILITIES: Capabilities = Capabilities {
        fencing: true,
        shared: true,
        semaphore: true,
        lease: true,
        renew: true,
        at_least: true,
        notify: true,
        persistent_tokens: true,
        min_ttl: None,
    };

    /// A new private instance that shares nothing with any other.
    pub fn new() -> Self {
        Self::with_instance_name(String::new())
    }

    fn with_instance_name(instance: String) -> Self {
        MemoryBackend {
            shared: Arc::new(Shared {
                instance,
                table: Mutex::new(Table::default()),
            }),
        }
    }

    /// The process-wide instance called `instance` (`""` for `memory://`).
    pub fn named(instance: &str) -> Self {
        let mut map = lock_table(instances());
        map.entry(instance.to_string())
            .or_insert_with(|| Self::with_instance_name(instance.to_string()))
            .clone()
    }

    /// Connects from a URL: `memory://` or `memory://NAME`. No query options are accepted.
    pub fn from_url(url: &ConnectUrl) -> Result<Self> {
        let rest = url.rest();
        if rest.contains('?') || rest.contains('#') {
            return Err(Error::invalid_url(
                NAME,
                format!("memory:// takes no options, got {url}"),
            ));
        }
        let instance = rest.trim_end_matches('/');
        if instance.contains('/') {
            return Err(Error::invalid_url(
                NAME,
                format!("expected memory:// or memory://NAME, got {url}"),
            ));
        }
        Ok(Self::named(instance))
    }

    /// Forgets every current grant, as a server restart without persistence would, but keeps
    /// the fencing counters (as a server with a persisted counter would). Holders find out on
    /// their next renewal or release; waiters are woken.
    pub fn simulate_restart(&self) {
        let mut table = lock_table(&self.shared.table);
        for entry in table.entries.values_mut() {
            entry.holders.clear();
            entry.changed.notify_waiters();
        }
    }

    /// How many names the table keeps an entry for: the ones held or waited for right now
    /// (for tests and diagnostics; idle names are forgotten).
    pub fn tracked_names(&self) -> usize {
        lock_table(&self.shared.table).entries.len()
    }

    /// How many acquisitions are waiting for `name` right now (for tests and diagnostics).
    pub fn waiters(&self, name: &LockName) -> usize {
        let table = lock_table(&self.shared.table);
        table
            .entries
            .get(&Key::lock(name))
            .map_or(0, |e| Arc::strong_count(&e.changed) - 1)
    }

    /// How many grants of `name` are live right now (for tests and diagnostics).
    pub fn holders(&self, name: &LockName) -> usize {
        let now = Instant::now();
        let mut table = lock_table(&self.shared.table);
        match table.entries.get_mut(&Key::lock(name)) {
            Some(entry) => {
                entry.purge_expired(now);
                entry.holders.len()
            }
            None => 0,
        }
    }

    async fn acquire_inner(&self, name: &LockName, opts: &LockOptions) -> Result<Guard> {
        opts.check_for(NAME, &Self::CAPABILITIES)?;
        let plan = crate::WaitPlan::new(opts);
        let (requested_at, deadline) = (plan.requested_at, plan.deadline);
        let key = Key::of(name, opts);
        // Counted among the entry's waiting writers from its first wait until it is granted
        // or dropped.
        let mut writer = WaitingWriter {
            shared: Arc::clone(&self.shared),
            key: key.clone(),
            counted: false,
        };
        loop {
            let (mut notified, next_expiry) = {
                let now = Instant::now();
                let mut table = lock_table(&self.shared.table);
                let table = &mut *table;
                table.next_holder += 1;
                let id = table.next_holder;
                let entry = table.entries.entry(key.clone()).or_insert_with(Entry::new);
                if entry.purge_expired(now) {
                    entry.changed.notify_waiters();
                }
                if let Some(slot) = entry.admits(opts, writer.counted) {
                    if writer.counted {
                        entry.writers_waiting = entry.writers_waiting.saturating_sub(1);
                        writer.counted = false;
                    }
                    // Readers do not write: shared grants have no token.
                    let token = if opts.mode() == LockMode::Shared {
                        None
                    } else {
                        table.last_token += 1;
                        Some(FencingToken::new(table.last_token))
                    };
                    entry.holders.push(Holder {
                        id,
                        mode: opts.mode(),
                        slot,
                        expires: now + opts.ttl(),
                        retired: false,
                    });
                    // Nothing below awaits: the grant and the guard are one step.
                    let lease = Arc::new(MemoryLease {
                        shared: Arc::clone(&self.shared),
                        key: key.clone(),
                        id,
                        slot,
                    });
                    let monitor =
                        LeaseMonitor::new(name, NAME, Some(lease_deadline(now, opts.ttl())));
                    return Ok(Guard::new(
                        Grant {
                            name: name.clone(),
                            backend: NAME,
                            token,
                            lease,
                            monitor,
                            requested_at,
                        },
                        opts,
                    ));
                }
                // A writer whose wait is over (a try, or a deadline passed) is not waiting.
                if opts.mode() == LockMode::Exclusive
                    && opts.permits().is_none()
                    && !writer.counted
                    && !plan.expired(now)
                {
                    entry.writers_waiting += 1;
                    writer.counted = true;
                }
                // Register for the wake-up before letting go of the table, so a release
                // between here and the await is not missed.
                let mut notified = Box::pin(Arc::clone(&entry.changed).notified_owned());
                notified.as_mut().enable();
                (notified, entry.next_expiry())
            };
            if plan.expired(Instant::now()) {
                return Err(plan.busy_error(NAME, name, ""));
            }
            tokio::select! {
                _ = &mut notified => {}
                _ = sleep_until_opt(next_expiry) => {}
                _ = sleep_until_opt(deadline) => {}
            }
        }
    }
}

impl Backend for MemoryBackend {
    fn name(&self) -> &'static str {
        NAME
    }

    fn capabilities(&self) -> Capabilities {
        Self::CAPABILITIES
    }

    fn acquire<'a>(
        &'a self,
        name: &'a LockName,
        opts: &'a LockOptions,
    ) -> BoxFuture<'a, Result<Guard>> {
        crate::observe::instrument_acquire(NAME, name, opts, self.acquire_inner(name, opts))
    }
}

/// An exclusive request counted among its entry's waiting writers: uncounted when dropped
/// (granted requests uncount themselves under the table's lock first).
struct WaitingWriter {
    shared: Arc<Shared>,
    key: Key,
    counted: bool,
}

impl Drop for WaitingWriter {
    fn drop(&mut self) {
        if !self.counted {
            return;
        }
        let now = Instant::now();
        let mut table = lock_table(&self.shared.table);
        if let Some(entry) = table.entries.get_mut(&self.key) {
            entry.writers_waiting = entry.writers_waiting.saturating_sub(1);
            // Readers held back by this writer may go now.
            entry.changed.notify_waiters();
            if entry.idle(now) {
                table.entries.remove(&self.key);
            }
        }
    }
}

struct MemoryLease {
    shared: Arc<Shared>,
    key: Key,
    id: u64,
    slot: Option<u32>,
}

impl MemoryLease {
    /// Runs `f` on the name's entry (`None` when the table has forgotten the name, so
    /// nothing of ours is in it), then forgets the entry if it has become idle.
    fn with_entry<T>(&self, f: impl FnOnce(&mut Entry, Instant) -> T) -> Option<T> {
        let now = Instant::now();
        let mut table = lock_table(&self.shared.table);
        let entry = table.entries.get_mut(&self.key)?;
        let out = f(entry, now);
        if entry.idle(now) {
            table.entries.remove(&self.key);
        }
        Some(out)
    }
}

impl Lease for MemoryLease {
    fn extend(&self, ttl: Duration) -> BoxFuture<'_, Result<bool>> {
        let ours = self.with_entry(|entry, now| match entry.live_holder(self.id, now) {
            Some(h) => {
                h.expires = now + ttl;
                true
            }
            None => false,
        });
        Box::pin(std::future::ready(Ok(ours == Some(true))))
    }

    fn release(&self) -> BoxFuture<'_, Result<bool>> {
        let ours = self.with_entry(|entry, now| {
            if entry.live_holder(self.id, now).is_none() {
                return false;
            }
            entry.holders.retain(|h| h.id != self.id);
            entry.changed.notify_waiters();
            true
        });
        Box::pin(std::future::ready(Ok(ours == Some(true))))
    }

    fn release_after(&self, keep: Duration) -> BoxFuture<'_, Result<bool>> {
        let ours = self.with_entry(|entry, now| match entry.live_holder(self.id, now) {
            Some(h) => {
                h.expires = now + keep;
                h.retired = true;
                entry.changed.notify_waiters();
                true
            }
            None => false,
        });
        Box::pin(std::future::ready(Ok(ours == Some(true))))
    }

    fn slot(&self) -> Option<u32> {
        self.slot
    }
}

/// A poisoned table means a panic happened while it was locked; the data is still coherent
/// (every update is a single assignment), so carry on rather than propagate the panic.
fn lock_table<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}
