//! Getting a fresh connection when the current one broke or went silent.
//!
//! etcd-client sends every request through one tonic channel, which keeps one HTTP/2
//! connection per endpoint and opens a new one, with no pause, only when the old one has
//! *failed* (an RST, a FIN, a refused connect). A connection that stays open but carries
//! nothing — one opened while the link was down and never answered, a half-open socket after
//! a reset — is not noticed before its HTTP/2 ping times out (10 s + 5 s here: etcd refuses
//! pings more often than every 5 s). Meanwhile every request on it waits, so a lease's
//! keepalives stop although the network is back, and the lease expires.
//!
//! [`reconnect`] replaces the channel's connections: every endpoint is removed and inserted
//! again, so the next request waits for a newly opened connection instead of being sent down
//! the silent one (a plain insert would replace the old connection only once the new one is
//! ready, and the balancer could still pick the old one). Requests already in flight finish
//! (or time out) on the old connection, which closes after them.
//!
//! While the link stays silent every fresh connection is silent too, and replacing it again
//! 25 ms, 50 ms, … later only adds connections: a blackholed holder under a 2 s lock opened
//! 7–8 of them per stalled keepalive and 10–13 before its guard was lost (6 runs). So a
//! replacement whose keepalive is still unanswered waits for twice as long as the one before
//! it ([`Reconnects`]; from the stall time, at most the renewal budget), across keepalives,
//! until a keepalive is answered. A connection that *fails* (refused, reset) is no reason to
//! wait: the retry after a failure keeps its short backoff.

use std::collections::hash_map::RandomState;
use std::hash::{BuildHasher, Hasher};
use std::time::Duration;

use tokio::time::Instant;

use crate::backend::Inner;

/// Two reconnections of one backend are at least this far apart: renewals of several
/// guards that stall together share one new connection.
const MIN_RECONNECT_GAP: Duration = Duration::from_millis(20);

/// The backend's replacements of its connections since a keepalive was last answered.
#[derive(Debug, Default)]
pub(crate) struct Reconnects {
    /// When the connections were last replaced.
    last: Option<Instant>,
    /// Replacements since a keepalive was last answered.
    unanswered: u32,
}

impl Reconnects {
    /// When a keepalive that is still unanswered may replace the connections, given that it
    /// counts as stalled after `stall` (from `now`): no earlier than `stall` from now, and
    /// after the last unanswered replacement by `stall` doubled once per unanswered
    /// replacement, at most `cap`.
    pub fn next_for_stall(&self, now: Instant, stall: Duration, cap: Duration) -> Instant {
        let earliest = now + stall;
        match self.last {
            Some(last) if self.unanswered > 0 => {
                let gap = stall
                    .saturating_mul(1 << self.unanswered.min(16))
                    .min(cap.max(stall));
                earliest.max(last + gap)
            }
            _ => earliest,
        }
    }

    /// A keepalive was answered: the link works, the spacing starts over.
    pub fn answered(&mut self) {
        self.unanswered = 0;
    }
}

pub(crate) fn lock_reconnects(inner: &Inner) -> std::sync::MutexGuard<'_, Reconnects> {
    inner.reconnects.lock().unwrap_or_else(|p| p.into_inner())
}

/// Replaces the connections of `inner`'s client with fresh ones (see the module docs),
/// unless another task did so within the last [`MIN_RECONNECT_GAP`]. Gives up at `until`.
pub(crate) async fn reconnect(inner: &Inner, until: Instant) {
    {
        let mut reconnects = lock_reconnects(inner);
        let now = Instant::now();
        if reconnects
            .last
            .is_some_and(|at| now < at + MIN_RECONNECT_GAP)
        {
            return;
        }
        reconnects.last = Some(now);
        reconnects.unanswered = reconnects.unanswered.saturating_add(1);
    }
    let client = &inner.client;
    let swap = async {
        for endpoint in &inner.config.endpoints {
            if let Err(e) = client.remove_endpoint(endpoint).await {
                tracing::debug!(endpoint, error = %e, "could not drop the connection");
            }
            if let Err(e) = client.add_endpoint(endpoint).await {
                tracing::debug!(endpoint, error = %e, "could not queue a new connection");
            }
        }
    };
    if tokio::time::timeout_at(until, swap).await.is_err() {
        tracing::debug!("reconnecting to etcd did not finish in time");
    } else {
        tracing::debug!(url = %inner.config.display, "reconnecting to etcd");
    }
}

/// Pauses between reconnection attempts: from `first`, doubling up to `cap`, each drawn at
/// random from its upper half so that many clients cut off together do not come back in step.
#[derive(Debug)]
pub(crate) struct Backoff {
    next: Duration,
    cap: Duration,
    random: u64,
}

impl Backoff {
    /// A backoff starting at `first` (at least 1 ms) and never above `cap` (at least `first`).
    pub fn new(first: Duration, cap: Duration) -> Backoff {
        let first = first.max(Duration::from_millis(1));
        Backoff {
            next: first,
            cap: cap.max(first),
            random: RandomState::new().build_hasher().finish() | 1,
        }
    }

    /// The pauses between retries of a failed request: about 50 ms, doubling up to 1 s.
    pub fn retries() -> Backoff {
        Backoff::new(Duration::from_millis(50), Duration::from_secs(1))
    }

    /// The next pause.
    pub fn pause(&mut self) -> Duration {
        let full = self.next;
        self.next = (self.next * 2).min(self.cap);
        // xorshift64: plenty for jitter, and no dependency.
        self.random ^= self.random << 13;
        self.random ^= self.random >> 7;
        self.random ^= self.random << 17;
        let fraction = (self.random >> 11) as f64 / (1u64 << 53) as f64;
        full / 2 + full.mul_f64(fraction / 2.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pauses_grow_with_jitter_up_to_the_cap() {
        let first = Duration::from_millis(25);
        let cap = Duration::from_millis(160);
        let mut b = Backoff::new(first, cap);
        let mut full = first;
        for _ in 0..10 {
            let p = b.pause();
            assert!(
                p >= full / 2 && p <= full,
                "{p:?} outside [{:?}, {full:?}]",
                full / 2
            );
            full = (full * 2).min(cap);
        }
    }

    #[test]
    fn unanswered_replacements_are_spaced_twice_as_far_each_time() {
        let t0 = Instant::now();
        let (stall, cap) = (Duration::from_millis(50), Duration::from_millis(667));
        let mut r = Reconnects::default();
        assert_eq!(r.next_for_stall(t0, stall, cap), t0 + stall);
        let mut expected = Vec::new();
        for _ in 0..6 {
            r.last = Some(t0);
            r.unanswered += 1;
            expected.push(r.next_for_stall(t0, stall, cap) - t0);
        }
        let ms = |m| Duration::from_millis(m);
        assert_eq!(
            expected,
            [ms(100), ms(200), ms(400), ms(667), ms(667), ms(667)]
        );
        r.answered();
        assert_eq!(r.next_for_stall(t0, stall, cap), t0 + stall);
    }

    #[test]
    fn degenerate_bounds_are_raised() {
        let mut b = Backoff::new(Duration::ZERO, Duration::ZERO);
        // First and cap raised to 1 ms: pauses are jittered halves to wholes of 1 ms, never 0.
        for _ in 0..3 {
            let p = b.pause();
            assert!(
                p >= Duration::from_micros(500) && p <= Duration::from_millis(1),
                "{p:?}"
            );
        }
    }
}
