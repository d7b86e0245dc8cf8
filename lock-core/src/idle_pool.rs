//! Sessions kept after their lock was released, for the next acquisitions that wait.

use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use tokio::time::Instant;

/// A server session an [`IdlePool`] can keep: cloning shares it, and the connection closes
/// when the last clone goes.
pub trait Reusable: Clone + Send + Sync + 'static {
    /// Whether the session is still usable (its connection has not failed).
    fn is_alive(&self) -> bool;
    /// Alive, holding no lock, watched by no guard and running nothing: fit to be kept.
    fn is_idle(&self) -> bool;
}

/// Dedicated sessions of released waiting acquisitions, kept for the next waits (at most
/// `cap`, each for `keep_for`, the most recently kept used first): a waiting acquisition then
/// opens no connection, and a release does not close one right when the server hands the
/// lock to the next waiter (on a server with few CPUs that exit delays the handoff).
pub struct IdlePool<S: Reusable> {
    cap: usize,
    keep_for: Duration,
    slots: Mutex<Slots<S>>,
}

struct Slots<S> {
    /// Kept sessions with the time each was kept, the most recently kept last.
    kept: Vec<(S, Instant)>,
    /// Whether the task that closes expired sessions is running (one per pool, while the
    /// pool is not empty).
    reaper: bool,
}

impl<S: Reusable> std::fmt::Debug for IdlePool<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IdlePool")
            .field("cap", &self.cap)
            .field("keep_for", &self.keep_for)
            .field("kept", &lock(&self.slots).kept.len())
            .finish()
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // Every update under this lock is a vector operation: a poisoned lock holds coherent data.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl<S: Reusable> IdlePool<S> {
    /// A pool keeping up to `cap` sessions (0: none) for `keep_for` each.
    pub fn new(cap: usize, keep_for: Duration) -> Self {
        IdlePool {
            cap,
            keep_for,
            slots: Mutex::new(Slots {
                kept: Vec::new(),
                reaper: false,
            }),
        }
    }

    /// The most recently kept session that is still alive (it leaves the pool).
    pub fn take(&self) -> Option<S> {
        let mut slots = lock(&self.slots);
        while let Some((s, _)) = slots.kept.pop() {
            if s.is_alive() {
                return Some(s);
            }
        }
        None
    }

    /// How many sessions are kept now.
    pub fn len(&self) -> usize {
        lock(&self.slots).kept.len()
    }

    /// Whether no session is kept.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Keeps `session` for `keep_for` if it is idle and there is room; otherwise it closes
    /// when its last clone goes. Outside a tokio runtime nothing is kept.
    pub fn keep(self: &Arc<Self>, session: &S) {
        let Ok(rt) = tokio::runtime::Handle::try_current() else {
            return;
        };
        if self.cap == 0 || !session.is_idle() {
            return;
        }
        let start_reaper = {
            // A session in use is never in the pool (`take` removes it), so it cannot be
            // kept twice.
            let mut slots = lock(&self.slots);
            if slots.kept.len() >= self.cap {
                return;
            }
            slots.kept.push((session.clone(), Instant::now()));
            !std::mem::replace(&mut slots.reaper, true)
        };
        if start_reaper {
            rt.spawn(reap(Arc::downgrade(self)));
        }
    }
}

/// Closes kept sessions once they have waited `keep_for`; ends when the pool is empty (the
/// next `keep` starts it again) or gone.
async fn reap<S: Reusable>(pool: Weak<IdlePool<S>>) {
    loop {
        let next = {
            let Some(pool) = pool.upgrade() else { return };
            let now = Instant::now();
            let keep_for = pool.keep_for;
            let mut slots = lock(&pool.slots);
            slots.kept.retain(|(_, at)| *at + keep_for > now);
            // Kept in time order (`take` removes from the end): the first expires first.
            match slots.kept.first().map(|(_, at)| *at + keep_for) {
                Some(next) => next,
                None => {
                    slots.reaper = false;
                    return;
                }
            }
        };
        tokio::time::sleep_until(next).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicBool, Ordering};

    #[derive(Clone)]
    struct Fake {
        alive: Arc<AtomicBool>,
        idle: bool,
    }

    impl Reusable for Fake {
        fn is_alive(&self) -> bool {
            self.alive.load(Ordering::Relaxed)
        }
        fn is_idle(&self) -> bool {
            self.idle && self.is_alive()
        }
    }

    fn fake(idle: bool) -> Fake {
        Fake {
            alive: Arc::new(AtomicBool::new(true)),
            idle,
        }
    }

    #[tokio::test(start_paused = true)]
    async fn keeps_idle_sessions_up_to_the_cap_for_a_while() {
        let pool = Arc::new(IdlePool::new(2, Duration::from_secs(30)));
        pool.keep(&fake(false));
        assert!(pool.is_empty(), "a busy session is not kept");
        let (a, b, c) = (fake(true), fake(true), fake(true));
        pool.keep(&a);
        pool.keep(&b);
        pool.keep(&c);
        assert_eq!(pool.len(), 2, "the cap");
        // The most recently kept first; a dead one is skipped.
        b.alive.store(false, Ordering::Relaxed);
        let got = pool.take().expect("a is alive");
        assert!(Arc::ptr_eq(&got.alive, &a.alive));
        assert!(pool.take().is_none());
        pool.keep(&a);
        tokio::time::sleep(Duration::from_secs(31)).await;
        assert!(pool.is_empty(), "expired");
    }

    #[test]
    fn outside_a_runtime_nothing_is_kept() {
        let pool = Arc::new(IdlePool::new(2, Duration::from_secs(30)));
        pool.keep(&fake(true));
        assert!(pool.is_empty());
    }
}
