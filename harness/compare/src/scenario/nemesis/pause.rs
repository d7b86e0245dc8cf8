//! `holder_paused`: SIGSTOP until the waiter's grant (or the bound), SIGCONT, then the
//! holder writes at once with its old token — what a process that was frozen (GC pause, VM
//! migration) does when it wakes inside its critical section.

use std::time::Duration;

use anyhow::{Result, bail};

use super::{Nemesis, Void, never_told, until_grant};
use crate::scenario::holder::{mono_us, ms_between};
use crate::scenario::workload::{BoxFuture, Trial};

/// How long a subject that was not stopped when it was resumed gets to finish exiting.
const DYING: Duration = Duration::from_secs(5);

/// SIGSTOP / SIGCONT of the subject.
#[derive(Debug, Clone, Copy, Default)]
pub struct Pause {
    /// When the subject was resumed (`CLOCK_MONOTONIC` µs).
    resumed: i64,
    /// Whether the subject was still stopped when it was resumed (`false`: it was dying).
    was_stopped: bool,
}

impl Nemesis for Pause {
    fn name(&self) -> &'static str {
        "holder_paused"
    }

    fn cost(&self, ttl: Duration) -> Duration {
        // The lease runs out; PostgreSQL waits for the whole bound (not freed).
        ttl.mul_f64(1.3)
    }

    fn describe(&self) -> String {
        "SIGSTOP until the waiter's grant (or the bound), SIGCONT, then the holder writes with its old token".into()
    }

    fn start<'a>(&'a mut self, t: &'a mut Trial<'_>) -> BoxFuture<'a, Result<i64>> {
        Box::pin(async move {
            let t0 = mono_us();
            t.subject.pause()?;
            Ok(t0)
        })
    }

    fn stop<'a>(&'a mut self, t: &'a mut Trial<'_>) -> BoxFuture<'a, Result<()>> {
        Box::pin(async move {
            self.resumed = mono_us();
            // Read before SIGCONT: a live paused process is stopped; one that is being killed
            // is not (it was woken to die), though it may not be reapable yet — its sockets
            // close, the server frees its lock and the waiter is granted before it is.
            self.was_stopped = t.subject.is_stopped();
            t.subject.resume()
        })
    }

    fn run<'a>(&'a mut self, t: &'a mut Trial<'_>) -> BoxFuture<'a, Result<()>> {
        Box::pin(async move {
            let pause_bound = t.ctx.fault_bound();
            let bound = t.ctx.grant_bound();
            let (t0, grant) = until_grant(self, t, pause_bound).await?;
            // A stopped process dies only of SIGKILL, which this nemesis never sends. One that
            // died anyway (another process on the machine killed it) ended its sessions, and
            // the server rightly gave the lock on: that measures nothing about the backend.
            // Seen once in a compare run (the dead holder was then recorded as a live one
            // that "reported no loss", and as an overlap).
            let died = if self.was_stopped {
                None
            } else {
                // Not stopped when resumed: dying, or (a grant within moments of the SIGSTOP)
                // not stopped yet. A dying process is gone in moments; a live one is waited
                // for this long, for nothing.
                t.subject.exit_within(DYING).await
            };
            if let Some(status) = died {
                return Err(Void(format!(
                    "the paused holder (pid {}) died during the pause ({status}), of a signal \
                     this scenario does not send; its sessions ended with it, so the lock was \
                     free",
                    t.subject.pid()
                ))
                .into());
            }
            let t_resume = self.resumed;
            // The holder wakes up inside its critical section and writes at once.
            let outcome = t.history.resource.write(0, t.token, t_resume);
            let Some((t_grant, _)) = grant else {
                // It never ran while paused, so it could not have reported anything.
                t.history.not_freed(None);
                // Why nobody else got it: the backend's rule, in its words.
                let why = match t.ctx.backend {
                    "mariadb" => {
                        "the server ends a quiet session, and frees its lock, only after \
                         wait_timeout (10 s by default), longer than this bound"
                    }
                    _ => "no lease expires",
                };
                t.history.note(format!(
                    "not freed within {} s of the pause: the lock stays with the paused holder \
                     ({why})",
                    pause_bound.as_secs()
                ));
                // Still its lock: the write is legitimate. Hand over cleanly.
                t.history.resource.exit(0, mono_us());
                t.subject.release();
                if t.await_grant(bound).await?.is_none() {
                    bail!("the waiter got no grant after the paused holder released");
                }
                return Ok(());
            };
            t.history.handover(t0, t_grant);
            t.history.stale(outcome);
            // Does the woken holder learn, and when?
            match t.subject.state("lost", bound).await {
                Some(ev) => {
                    t.history.resource.exit(0, ev.t_us);
                    t.history.lost_us = Some(ev.t_us);
                    t.history.extra.learn_after_resume_ms = Some(ms_between(t_resume, ev.t_us));
                }
                None => {
                    t.history.resource.exit(0, mono_us());
                    match t.subject.exit_status() {
                        Some(status) => t.history.note(format!(
                            "the resumed holder exited ({status}) without reporting a loss"
                        )),
                        None => never_told(
                            t,
                            format!("the resumed holder reported no loss within {bound:?}"),
                        ),
                    }
                }
            }
            Ok(())
        })
    }
}
