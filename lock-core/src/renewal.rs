//! The supervisor of one grant: renews its lease on schedule and turns the deadline into
//! `Lost` (see [`Guard`](crate::Guard)).
//!
//! # Renewals on a slow link
//!
//! A renewal confirmed by the server moves the client-side deadline to its *send* time plus
//! the ttl minus the drift allowance ([`lease_deadline`]): the server's expiry is at least
//! that late, whenever the request arrived. So a renewal keeps the guard `Held` only if it is
//! *answered* before the deadline of the renewal before it.
//!
//! Renewals used to go one at a time: every ttl/3 from the previous send, or when the previous
//! answer came back if that was later. With a round trip `r` above ttl/3 the next renewal left
//! only on the previous answer, and its own answer came `2r` after the send the deadline
//! counted from: past the deadline once `r` was about half the ttl, though the server renewed
//! the lease every time (Redis, 2 s lock: lost from 500 ms each way; lock-core's README,
//! *Measured*).
//!
//! Now a renewal is sent ttl/3 after the previous *send* whether or not that one was answered,
//! and earlier when one round trip (the last measured one) plus a quarter of it would not fit
//! between the next send and the deadline the previous renewal can set, so that each answer
//! arrives before the deadline it must beat. Several may be in flight (at most
//! [`MAX_IN_FLIGHT`], at least ttl / [`MIN_GAP_DIVISOR`] apart). Each answer counts from its
//! own send time: an answer that arrives out of order never moves the deadline back, and the
//! failure of a renewal older than the last confirmed one says nothing. A renewal unanswered
//! past the deadline it could have set is dropped.
//!
//! What this cannot help: the first renewal after the link turns slow is sent on the old
//! schedule (the round trip is learnt from its answer), so it must come back within
//! ttl − ttl/3 − drift of the previous send. A backend's own per-request limit may also be
//! shorter than what the schedule allows (etcd gives a keepalive ttl/3 before it reports
//! trouble).

use std::future::Future;
use std::pin::Pin;
use std::task::Poll;
use std::time::Duration;

use tokio::time::Instant;

use crate::error::Result;
use crate::guard::{LeaseMonitor, lease_deadline};
use crate::observe;
use crate::options::{LockOptions, Renew};
use crate::wait_plan::sleep_until_opt;
use crate::{Lease, LockState};

/// At most this many renewals of one grant are in flight at once.
pub(crate) const MAX_IN_FLIGHT: usize = 4;

/// Two renewals of one grant are sent at least ttl / this apart (ttl/12: 167 ms at 2 s).
pub(crate) const MIN_GAP_DIVISOR: u32 = 12;

/// What the supervisor does for one grant.
#[derive(Debug, Clone, Copy)]
pub(crate) struct SupervisorPlan {
    ttl: Duration,
    /// `None`: no renewal, just the deadline.
    renew_every: Option<Duration>,
    /// No renewal is *sent* after this instant.
    renew_until: Option<Instant>,
    /// The first renewal (one interval after the grant), unless past `renew_until`.
    first_renewal: Option<Instant>,
}

impl SupervisorPlan {
    pub(crate) fn from_options(opts: &LockOptions, acquired_at: Instant) -> Self {
        let (renew_every, renew_until) = match opts.renew() {
            Renew::Off => (None, None),
            Renew::Auto { max_hold } => (
                Some(opts.renew_interval().max(Duration::from_millis(1))),
                // The last renewal may extend the lease by one ttl, so stop sending one ttl
                // before the maximum hold.
                max_hold.map(|m| acquired_at + m.saturating_sub(opts.ttl())),
            ),
        };
        let first_renewal = renew_every
            .map(|every| acquired_at + every)
            .filter(|at| renew_until.is_none_or(|until| *at <= until));
        SupervisorPlan {
            ttl: opts.ttl(),
            renew_every,
            renew_until,
            first_renewal,
        }
    }

    /// The supervisor's first job: the first renewal, or the deadline if that comes first.
    pub(crate) fn first_event(&self, deadline: Instant) -> Instant {
        self.first_renewal.map_or(deadline, |r| r.min(deadline))
    }
}

/// One renewal on its way: when it was sent, and its answer.
struct InFlight {
    sent: Instant,
    answer: Pin<Box<dyn Future<Output = Option<Result<bool>>> + Send>>,
}

/// The renewals of one grant: what is in flight, what was measured.
#[derive(Default)]
struct Renewals {
    in_flight: Vec<InFlight>,
    /// The send time of the newest renewal.
    last_sent: Option<Instant>,
    /// The send time of the newest confirmed renewal (the deadline counts from it).
    confirmed_sent: Option<Instant>,
    /// The round trip of the last answered renewal.
    rtt: Option<Duration>,
}

impl Renewals {
    /// Sends a renewal of `ttl` (it gives up, answering `None`, at the deadline it could set).
    fn send(&mut self, lease: std::sync::Arc<dyn Lease>, ttl: Duration) {
        let sent = Instant::now();
        let useless_after = lease_deadline(sent, ttl);
        let answer = Box::pin(async move {
            tokio::time::timeout_at(useless_after, lease.extend(ttl))
                .await
                .ok()
        });
        self.last_sent = Some(sent);
        self.in_flight.push(InFlight { sent, answer });
    }

    /// The next answer (or give-up) of a renewal in flight; pending forever when none is.
    async fn next_answer(&mut self) -> (Instant, Option<Result<bool>>) {
        std::future::poll_fn(|cx| {
            for i in 0..self.in_flight.len() {
                if let Poll::Ready(answer) = self.in_flight[i].answer.as_mut().poll(cx) {
                    let InFlight { sent, .. } = self.in_flight.swap_remove(i);
                    return Poll::Ready((sent, answer));
                }
            }
            Poll::Pending
        })
        .await
    }

    /// When the next renewal goes: at `scheduled` (`every` after the last send), or earlier
    /// when the last round trip, and a quarter of it, would not fit between that and the
    /// deadline the last renewal sent can set (its send + ttl − drift): each renewal is then
    /// answered before the deadline of the one before it, whenever that one's answer comes.
    /// Never closer than ttl / [`MIN_GAP_DIVISOR`] to the last send; `None` while
    /// [`MAX_IN_FLIGHT`] are out.
    fn next_send(&self, scheduled: Instant, ttl: Duration) -> Option<Instant> {
        if self.in_flight.len() >= MAX_IN_FLIGHT {
            return None;
        }
        let (Some(last), Some(rtt)) = (self.last_sent, self.rtt) else {
            return Some(scheduled);
        };
        let needed = rtt + rtt / 4;
        let in_time = lease_deadline(last, ttl)
            .checked_sub(needed)
            .unwrap_or(last);
        Some(scheduled.min(in_time).max(last + ttl / MIN_GAP_DIVISOR))
    }
}

/// Renews the lease on schedule (the first renewal at `plan.first_renewal`) and turns the
/// deadline into `Lost`. Ends when the state is `Lost` or `Released`, or the guard is gone.
pub(crate) async fn supervise(
    lease: std::sync::Weak<dyn Lease>,
    monitor: LeaseMonitor,
    plan: SupervisorPlan,
) {
    let mut watch = monitor.subscribe();
    let mut scheduled = plan.first_renewal;
    let mut renewals = Renewals::default();
    let every = plan.renew_every.unwrap_or(plan.ttl);
    loop {
        let state = monitor.state();
        if matches!(state, LockState::Lost | LockState::Released) {
            return;
        }
        let Some(deadline) = monitor.valid_until() else {
            return;
        };
        if let (Some(at), Some(until)) = (scheduled, plan.renew_until) {
            if at > until {
                scheduled = None;
            }
        }
        let next_send = scheduled.and_then(|at| renewals.next_send(at, plan.ttl));
        tokio::select! {
            _ = tokio::time::sleep_until(deadline) => {
                // A backend task may have moved the deadline without a state change (a
                // confirmation while already `Held` does not wake watchers).
                if monitor.valid_until().is_some_and(|d| d > Instant::now()) {
                    continue;
                }
                let reason = if renewals.in_flight.is_empty() {
                    "the lease deadline passed without a confirmed renewal"
                } else {
                    "the lease deadline passed while a renewal was in flight"
                };
                monitor.report_lost(reason);
                return;
            }
            _ = sleep_until_opt(next_send) => {
                let Some(lease) = lease.upgrade() else { return };
                renewals.send(lease, plan.ttl);
                scheduled = renewals.last_sent.map(|sent| sent + every);
            }
            (sent, answer) = renewals.next_answer() => {
                let newest = renewals.confirmed_sent.is_none_or(|c| sent > c);
                match answer {
                    Some(Ok(true)) => {
                        observe::renewed(monitor.backend);
                        renewals.rtt = Some(sent.elapsed());
                        if newest {
                            renewals.confirmed_sent = Some(sent);
                            monitor.report_confirmed(Some(lease_deadline(sent, plan.ttl)));
                        }
                    }
                    Some(Ok(false)) => {
                        monitor.report_lost("renewal: the lock is no longer ours");
                        return;
                    }
                    Some(Err(e)) if newest => {
                        tracing::warn!(error = %e, "renewal failed");
                        monitor.report_unverifiable("a renewal failed");
                        if renewals.in_flight.is_empty() {
                            // Retry sooner than the regular schedule; the deadline stands.
                            let retry = Instant::now() + (every / 3).max(Duration::from_millis(5));
                            scheduled = Some(scheduled.map_or(retry, |at| at.min(retry)));
                        }
                    }
                    // A failure older than a confirmation says nothing; a renewal that gave
                    // up at its own deadline could no longer have helped.
                    Some(Err(_)) | None => {}
                }
            }
            _ = watch.changed() => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    fn in_flight(sent: Instant) -> InFlight {
        InFlight {
            sent,
            answer: Box::pin(std::future::pending()),
        }
    }

    #[tokio::test]
    async fn a_fast_link_keeps_the_regular_schedule() {
        let t0 = Instant::now();
        let ttl = ms(2000);
        let scheduled = t0 + ms(667);
        let mut r = Renewals::default();
        // Nothing measured yet: the schedule.
        assert_eq!(r.next_send(scheduled, ttl), Some(scheduled));
        r.last_sent = Some(t0);
        r.rtt = Some(ms(5));
        assert_eq!(r.next_send(scheduled, ttl), Some(scheduled));
        // The last renewal's deadline (1900 ms: the drift allowance is 100 ms) less 1.25 ×
        // 900 ms is 775 ms: later than the schedule.
        r.rtt = Some(ms(900));
        assert_eq!(r.next_send(scheduled, ttl), Some(scheduled));
    }

    #[tokio::test]
    async fn a_slow_link_sends_early_enough_for_one_round_trip() {
        let t0 = Instant::now();
        let ttl = ms(2000);
        let mut r = Renewals {
            last_sent: Some(t0),
            rtt: Some(ms(1200)),
            ..Renewals::default()
        };
        r.in_flight.push(in_flight(t0));
        // The last renewal can set a deadline at 1900 ms; the next must leave 1.25 round
        // trips before it.
        assert_eq!(lease_deadline(t0, ttl), t0 + ms(1900));
        assert_eq!(r.next_send(t0 + ms(667), ttl), Some(t0 + ms(400)));
        // But never closer than ttl/12 to the last send.
        r.rtt = Some(ms(1900));
        assert_eq!(
            r.next_send(t0 + ms(667), ttl),
            Some(t0 + ttl / MIN_GAP_DIVISOR)
        );
    }

    #[tokio::test]
    async fn no_more_than_the_cap_are_in_flight() {
        let t0 = Instant::now();
        let mut r = Renewals::default();
        for _ in 0..MAX_IN_FLIGHT {
            r.in_flight.push(in_flight(t0));
        }
        assert_eq!(r.next_send(t0, ms(2000)), None);
    }
}
