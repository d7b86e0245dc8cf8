//! Mutants: deliberately broken backends the behaviour suite must reject. Each must fail the
//! named behaviour; the unbroken twin of the toy backend must pass everything (so a failure
//! is the bug's doing, not the toy's).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use conformance::suite::{self, Connector, Outcome};
use dlock::{
    Backend, BoxFuture, Capabilities, Error, ErrorKind, FencingToken, Grant, Guard, Lease,
    LeaseMonitor, LockName, LockOptions, Operation, Wait, lease_deadline,
};
use tokio::sync::Notify;
use tokio::time::Instant;

/// What is wrong with a toy backend.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Bug {
    None,
    /// Every grant gets token 1.
    RepeatingTokens,
    /// Release removes whoever holds the name (no ownership check).
    ReleaseWithoutOwnerCheck,
    /// Waiters are never woken by a release; they sleep out their whole wait.
    WaiterMissesHandoff,
    /// The guard has no deadline and renewal always "succeeds": it never reports `Lost`.
    NeverLost,
}

#[derive(Debug, Default)]
struct Table {
    holders: HashMap<LockName, (u64, Instant)>,
    tokens: HashMap<LockName, u64>,
    next: u64,
}

/// A small in-memory lock service (exclusive only), with an optional bug.
#[derive(Debug)]
struct Toy {
    bug: Bug,
    table: Arc<Mutex<Table>>,
    released: Arc<Notify>,
}

struct ToyLease {
    bug: Bug,
    table: Arc<Mutex<Table>>,
    released: Arc<Notify>,
    name: LockName,
    id: u64,
}

impl Lease for ToyLease {
    fn extend(&self, ttl: Duration) -> BoxFuture<'_, dlock::Result<bool>> {
        let mut t = self.table.lock().unwrap();
        let now = Instant::now();
        let ours = match t.holders.get_mut(&self.name) {
            Some((id, exp)) if *id == self.id && *exp > now => {
                *exp = now + ttl;
                true
            }
            _ => self.bug == Bug::NeverLost,
        };
        Box::pin(std::future::ready(Ok(ours)))
    }

    fn release(&self) -> BoxFuture<'_, dlock::Result<bool>> {
        let mut t = self.table.lock().unwrap();
        let now = Instant::now();
        let ours = match t.holders.get(&self.name) {
            Some((id, exp)) => {
                (*id == self.id && *exp > now) || self.bug == Bug::ReleaseWithoutOwnerCheck
            }
            None => false,
        };
        if ours {
            t.holders.remove(&self.name);
            if self.bug != Bug::WaiterMissesHandoff {
                self.released.notify_waiters();
            }
        }
        Box::pin(std::future::ready(Ok(ours)))
    }
}

impl Backend for Toy {
    fn name(&self) -> &'static str {
        "toy"
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities {
            fencing: true,
            lease: true,
            renew: true,
            notify: true,
            ..Capabilities::default()
        }
    }

    fn acquire<'a>(
        &'a self,
        name: &'a LockName,
        opts: &'a LockOptions,
    ) -> BoxFuture<'a, dlock::Result<Guard>> {
        Box::pin(async move {
            opts.validate()?;
            if opts.mode() != dlock::LockMode::Exclusive {
                return Err(Error::new(
                    ErrorKind::Unsupported,
                    "toy",
                    Operation::Acquire,
                    "exclusive only",
                ));
            }
            let requested = Instant::now();
            let deadline = match opts.wait() {
                Wait::No => Some(requested),
                Wait::For(d) => Some(requested + d),
                Wait::Forever => None,
            };
            loop {
                let notified = self.released.notified();
                tokio::pin!(notified);
                notified.as_mut().enable();
                let expiry = {
                    let mut t = self.table.lock().unwrap();
                    let now = Instant::now();
                    match t.holders.get(name) {
                        Some((_, exp)) if *exp > now => Some(*exp),
                        _ => {
                            t.next += 1;
                            let id = t.next;
                            t.holders.insert(name.clone(), (id, now + opts.ttl()));
                            let token = t.tokens.entry(name.clone()).or_insert(0);
                            *token += 1;
                            let token = if self.bug == Bug::RepeatingTokens {
                                1
                            } else {
                                *token
                            };
                            drop(t);
                            let valid_until = (self.bug != Bug::NeverLost)
                                .then(|| lease_deadline(now, opts.ttl()));
                            let lease = Arc::new(ToyLease {
                                bug: self.bug,
                                table: self.table.clone(),
                                released: self.released.clone(),
                                name: name.clone(),
                                id,
                            });
                            return Ok(Guard::new(
                                Grant {
                                    name: name.clone(),
                                    backend: "toy",
                                    token: Some(FencingToken::new(token)),
                                    lease,
                                    monitor: LeaseMonitor::new(name, "toy", valid_until),
                                    requested_at: requested,
                                },
                                opts,
                            ));
                        }
                    }
                };
                let now = Instant::now();
                match deadline {
                    Some(d) if d <= now => {
                        let kind = if opts.wait() == Wait::No {
                            ErrorKind::Contended
                        } else {
                            ErrorKind::Timeout
                        };
                        return Err(Error::new(kind, "toy", Operation::Acquire, "held"));
                    }
                    _ => {}
                }
                let until = match (deadline, expiry) {
                    (Some(d), Some(e)) => d.min(e),
                    (Some(d), None) => d,
                    (None, Some(e)) => e,
                    (None, None) => now + Duration::from_secs(3600),
                };
                if self.bug == Bug::WaiterMissesHandoff {
                    tokio::time::sleep_until(deadline.unwrap_or(until)).await;
                } else {
                    tokio::select! {
                        _ = &mut notified => {}
                        _ = tokio::time::sleep_until(until) => {}
                    }
                }
            }
        })
    }
}

fn toy(bug: Bug) -> Connector {
    let table = Arc::new(Mutex::new(Table::default()));
    let released = Arc::new(Notify::new());
    Arc::new(move || {
        let b: Arc<dyn Backend> = Arc::new(Toy {
            bug,
            table: table.clone(),
            released: released.clone(),
        });
        Box::pin(async move { Ok(b) })
    })
}

/// Runs the whole suite; returns the names of the failed behaviours.
async fn failures(url: &str, connect: Connector) -> Vec<&'static str> {
    let mut failed = Vec::new();
    for b in suite::all() {
        if let Outcome::Failed(why) = suite::run_with(&b, url, connect.clone()).await {
            eprintln!("{}: {why}", b.name);
            failed.push(b.name);
        }
    }
    failed
}

/// The mutant must fail behaviour `by` (only that one is run: the full suite on every mutant
/// would take minutes, and the unbroken twin shows the others pass).
async fn assert_caught(url: &str, connect: Connector, by: &str) {
    let b = suite::all()
        .into_iter()
        .find(|b| b.name == by)
        .unwrap_or_else(|| panic!("no behaviour {by}"));
    match suite::run_with(&b, url, connect).await {
        Outcome::Failed(why) => eprintln!("{by} caught the mutant: {why}"),
        other => panic!("expected {by} to fail on the mutant, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_unbroken_toy_passes_the_suite() {
    let failed = failures("", toy(Bug::None)).await;
    assert!(failed.is_empty(), "{failed:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn repeating_tokens_are_caught() {
    assert_caught(
        "",
        toy(Bug::RepeatingTokens),
        "behavior::test_fencing_tokens_increase",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn release_without_owner_check_is_caught() {
    assert_caught(
        "",
        toy(Bug::ReleaseWithoutOwnerCheck),
        "behavior::test_stale_release_is_refused",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn waiter_missing_the_handoff_is_caught() {
    assert_caught(
        "",
        toy(Bug::WaiterMissesHandoff),
        "behavior::test_waiter_wakes_on_release",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn guard_that_never_reports_lost_is_caught() {
    assert_caught(
        "",
        toy(Bug::NeverLost),
        "behavior::test_lease_expires_without_renewal",
    )
    .await;
}
