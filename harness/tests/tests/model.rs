//! Property tests: random operation sequences from up to four clients, replayed on a real
//! backend and on the `memory://` reference model ([`dlock::MemoryBackend`]); what the callers
//! observe must be the same on both sides.
//!
//! One case is one lock name (fresh per case), one `Vec<Op>` and fresh client connections.
//! Operations run one after the other and each one waits until its effect has settled, so
//! what it observes does not depend on timing:
//!
//! | op | what the client does | observed |
//! |---|---|---|
//! | `Try(c)` | `acquire`, `Wait::No`, default (renewed 30 s) lease | granted (+ fencing order) or the error kind (`Contended`) |
//! | `Wait(c)` | `acquire`, `Wait::For(150 ms)` | granted or the error kind (`Timeout`) |
//! | `Release(c)` | `release().await` of its guard | `Ok(ours)` or the error kind |
//! | `Extend(c)` | `extend(30 s)` of its guard (lease + renew backends only) | `Ok` or the error kind (`Lost`) |
//! | `Drop(c)` | drops its guard (a reader while other readers hold: released in the foreground, since a reader probe would not wait for it); if it was `Held`, a probe client waits (≤ 10 s) until it can take the lock the same way (exclusive, shared or a permit) | the state it had, whether the probe got the lock |
//! | `TryShared(c)` | `acquire` shared (a reader), `Wait::No` (backends with `shared`) | granted (no token expected) or the error kind |
//! | `TryPermit(c)` | `acquire` one of [`PERMITS`] permits of the semaphore of the same name, `Wait::No` (backends with `semaphore`) | the slot and its token's order (per slot) or the error kind |
//! | `Expire(c)` | `acquire` with a short ttl (1 s, or the backend's minimum) and no renewal, waits for `watch().lost_or_released()`, then until a probe client can take the lock (lease backends only) | granted or the error kind, the state the guard ended in (`Lost`), whether the probe got it |
//!
//! After every op the state of each client's guard (`Held` / `Lost` / …, or none) is part of
//! the observation; a guard replaced by a newer grant of the same client is dropped (it can
//! only be `Lost` then: a held lock refuses its own client). Every grant (probe grants too) is
//! compared with the grant before it: its fencing token must be higher, on backends with the
//! `fencing` capability. At the end every guard left is released and a probe must get the lock
//! (within 10 s: a dropped guard's release runs in the background, and on the model's
//! current-thread runtime only once something waits).
//!
//! A client that holds the lock cannot take it again (not re-entrant). `Drop` and `Expire`
//! wait on guard state and on a waiting `acquire` (notification), never on a fixed sleep; the
//! only time that passes on purpose is the short lease running out in `Expire`.
//!
//! The model and the backend under test run the same sequence at the same time (they share
//! nothing), so a case costs what the slower side costs.
//!
//! Cases per backend: 8 (`PROPTEST_CASES` overrides), shrinking bounded to 50 steps and 120 s
//! (`PROPTEST_MAX_SHRINK_ITERS`, `PROPTEST_MAX_SHRINK_TIME` in ms). A failure prints the
//! minimal sequence (see [`Shrinker`]) with both traces side by side.

mod common;

use std::cell::{Cell, RefCell};
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::Arc;
use std::time::{Duration, Instant};

use dlock::{
    Backend, ErrorKind, FencingToken, Guard, LockMode, LockName, LockOptions, LockState,
    MemoryBackend, Renew, Wait,
};
use dlock_fixtures as fixtures;
use proptest::prelude::*;
use proptest::test_runner::{Config as ProptestConfig, TestCaseError, TestError, TestRunner};

/// Clients per case (`c` in the ops is `0..CLIENTS`).
const CLIENTS: usize = 4;
/// The semaphore limit of `TryPermit`.
const PERMITS: u32 = 2;
/// Longest op sequence.
const MAX_OPS: usize = 16;
/// Cases per backend unless `PROPTEST_CASES` says otherwise.
const DEFAULT_CASES: u32 = 8;
/// The lease of ordinary grants (renewed), and what `Extend` extends by.
const LONG_TTL: Duration = Duration::from_secs(30);
/// The bounded wait of `Wait`.
const SHORT_WAIT: Duration = Duration::from_millis(150);
/// How long a probe waits for a dropped guard's lock to be free.
const FREE_WITHIN: Duration = Duration::from_secs(10);
/// No single op may take longer than this (a hung backend is an observation, not a hang).
const OP_LIMIT: Duration = Duration::from_secs(60);

mod model_ops;

use model_ops::{Op, ops};

/// What one grant says about fencing, relative to the grant before it on the same side.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fence {
    /// Not compared: the backend under test has no fencing tokens.
    Unchecked,
    /// Higher than the previous grant's token (or the first grant).
    Up,
    /// Not higher than the previous grant's.
    NotUp { prev: u64, got: u64 },
    /// The backend claims fencing but gave no token.
    Missing,
    /// A shared grant came with a token (readers get none).
    Unexpected(u64),
}

/// A probe client's attempt to take the lock (and give it back).
#[derive(Debug, Clone, PartialEq, Eq)]
enum Probe {
    /// Granted; `released` is what its own release said.
    Free {
        fence: Fence,
        released: Result<bool, ErrorKind>,
    },
    /// Not granted within the wait.
    Held(ErrorKind),
}

/// What a caller observes from one op.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Obs {
    /// The op needs a guard and the client has none.
    NoGuard,
    Acquired(Fence),
    /// A permit: its slot, and its token's order among that slot's grants.
    Permit {
        slot: Option<u32>,
        fence: Fence,
    },
    Refused(ErrorKind),
    Released(Result<bool, ErrorKind>),
    Extended(Result<(), ErrorKind>),
    Dropped {
        was: LockState,
        freed: Option<Probe>,
    },
    Expired {
        fence: Fence,
        /// `None`: still `Held` after ten ttls.
        state: Option<LockState>,
        freed: Probe,
    },
    /// The op did not finish within [`OP_LIMIT`]; the case stops here.
    Stuck,
}

/// One line of a trace: the op, what it observed, and every client's guard state after it.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Step {
    obs: Obs,
    guards: [Option<LockState>; CLIENTS],
}

/// The end of a case: each remaining guard's release, then a try by the probe.
#[derive(Debug, Clone, PartialEq, Eq)]
struct End {
    releases: [Option<Result<bool, ErrorKind>>; CLIENTS],
    free: Probe,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Trace {
    steps: Vec<Step>,
    end: Option<End>,
}

/// One side of a case (the model or the backend under test).
struct Side {
    name: LockName,
    clients: Vec<Arc<dyn Backend>>,
    probe: Arc<dyn Backend>,
    guards: Vec<Option<Guard>>,
    /// Compare fencing order (the backend under test has fencing).
    fencing: bool,
    short_ttl: Duration,
    last_token: Option<FencingToken>,
    /// The last token of each permit slot.
    slot_tokens: BTreeMap<u32, FencingToken>,
}

fn kind<T>(r: dlock::Result<T>) -> Result<T, ErrorKind> {
    r.map_err(|e| e.kind())
}

impl Side {
    fn new(
        name: LockName,
        clients: Vec<Arc<dyn Backend>>,
        probe: Arc<dyn Backend>,
        fencing: bool,
        short_ttl: Duration,
    ) -> Side {
        let guards = clients.iter().map(|_| None).collect();
        Side {
            name,
            clients,
            probe,
            guards,
            fencing,
            short_ttl,
            last_token: None,
            slot_tokens: BTreeMap::new(),
        }
    }

    async fn run(mut self, ops: &[Op]) -> Trace {
        let mut steps = Vec::with_capacity(ops.len());
        for &op in ops {
            let obs = tokio::time::timeout(OP_LIMIT, self.step(op))
                .await
                .unwrap_or(Obs::Stuck);
            let stuck = obs == Obs::Stuck;
            steps.push(Step {
                obs,
                guards: self.guard_states(),
            });
            if stuck {
                return Trace { steps, end: None };
            }
        }
        let end = tokio::time::timeout(OP_LIMIT, self.end()).await.ok();
        Trace { steps, end }
    }

    fn guard_states(&self) -> [Option<LockState>; CLIENTS] {
        let mut states = [None; CLIENTS];
        for (s, g) in states.iter_mut().zip(&self.guards) {
            *s = g.as_ref().map(Guard::state);
        }
        states
    }

    fn fence(&mut self, token: Option<FencingToken>) -> Fence {
        if !self.fencing {
            return Fence::Unchecked;
        }
        let Some(got) = token else {
            return Fence::Missing;
        };
        let prev = self.last_token.replace(got);
        match prev {
            Some(prev) if got <= prev => Fence::NotUp {
                prev: prev.get(),
                got: got.get(),
            },
            _ => Fence::Up,
        }
    }

    /// The fencing observation of `g`, by its kind: an exclusive grant against the last
    /// exclusive one, a shared grant must have none, a permit against its slot's last.
    fn fence_of(&mut self, g: &Guard) -> (Fence, Option<u32>) {
        if g.permits().is_some() {
            let slot = g.slot();
            if !self.fencing {
                return (Fence::Unchecked, slot);
            }
            let (Some(got), Some(n)) = (g.token(), slot) else {
                return (Fence::Missing, slot);
            };
            let fence = match self.slot_tokens.insert(n, got) {
                Some(prev) if got <= prev => Fence::NotUp {
                    prev: prev.get(),
                    got: got.get(),
                },
                _ => Fence::Up,
            };
            return (fence, slot);
        }
        if g.mode() == LockMode::Shared {
            return (
                g.token()
                    .map_or(Fence::Unchecked, |t| Fence::Unexpected(t.get())),
                None,
            );
        }
        (self.fence(g.token()), None)
    }

    async fn step(&mut self, op: Op) -> Obs {
        match op {
            Op::Try(c) => self.acquire(c, LockOptions::new().with_ttl(LONG_TTL)).await,
            Op::TryShared(c) => self.acquire(c, shared_opts()).await,
            Op::TryPermit(c) => self.acquire(c, permit_opts()).await,
            Op::Wait(c) => {
                let opts = LockOptions::new()
                    .with_ttl(LONG_TTL)
                    .with_wait(Wait::For(SHORT_WAIT));
                self.acquire(c, opts).await
            }
            Op::Release(c) => match self.guards[c].take() {
                None => Obs::NoGuard,
                Some(g) => Obs::Released(kind(g.release().await)),
            },
            Op::Extend(c) => match &self.guards[c] {
                None => Obs::NoGuard,
                Some(g) => Obs::Extended(kind(g.extend(LONG_TTL).await)),
            },
            Op::Drop(c) => match self.guards[c].take() {
                None => Obs::NoGuard,
                Some(g) => {
                    let was = g.state();
                    let mut same = request_of(&g);
                    // A reader's lock is free once a writer can take it, unless other readers
                    // still hold it (then another reader shows it is not stuck).
                    let readers_left = self.guards.iter().flatten().any(|o| {
                        o.mode() == LockMode::Shared
                            && o.permits().is_none()
                            && o.state() == LockState::Held
                    });
                    let reader = g.mode() == LockMode::Shared && g.permits().is_none();
                    if reader && !readers_left {
                        same = LockOptions::new().with_ttl(LONG_TTL);
                    }
                    // A permit is free once a request whose limit counts only the other held
                    // permits gets one (the limit is the caller's).
                    if g.permits().is_some() {
                        let others = self
                            .guards
                            .iter()
                            .flatten()
                            .filter(|o| o.permits().is_some() && o.state() == LockState::Held)
                            .count();
                        let limit = u32::try_from(others).unwrap_or(PERMITS) + 1;
                        same = LockOptions::new().with_ttl(LONG_TTL).with_permits(limit);
                    }
                    if reader && readers_left {
                        // The probe below would be a reader too and would not wait for this
                        // reader's background release, which could then race a later
                        // operation (CI saw the model refuse an exclusive try after every
                        // guard was gone): release it in the foreground instead. The last
                        // reader's drop, waited for by a writer's probe, still covers the
                        // background release.
                        let _ = g.release().await;
                    } else {
                        drop(g);
                        // The release runs in the background; on the model's current-thread
                        // runtime only once this task yields.
                        tokio::task::yield_now().await;
                    }
                    // A dropped guard releases in the background; a held lock must then become
                    // free (a lost one was someone else's business already).
                    let freed = if was == LockState::Held {
                        Some(
                            self.probe_with(same.with_wait(Wait::For(FREE_WITHIN)))
                                .await,
                        )
                    } else {
                        None
                    };
                    Obs::Dropped { was, freed }
                }
            },
            Op::Expire(c) => {
                let ttl = self.short_ttl;
                let opts = LockOptions::new().with_ttl(ttl).with_renew(Renew::Off);
                let g = match self.clients[c].acquire(&self.name, &opts).await {
                    Ok(g) => g,
                    Err(e) => return Obs::Refused(e.kind()),
                };
                let fence = self.fence(g.token());
                let mut watch = g.watch();
                self.guards[c] = Some(g);
                let state = tokio::time::timeout(ttl * 10, watch.lost_or_released())
                    .await
                    .ok();
                // The holder's deadline passes a little before the server's expiry: wait
                // (by a waiting acquire) until someone else can actually take it.
                let freed = self.probe(Wait::For(ttl * 10)).await;
                Obs::Expired {
                    fence,
                    state,
                    freed,
                }
            }
        }
    }

    async fn acquire(&mut self, c: usize, opts: LockOptions) -> Obs {
        match self.clients[c].acquire(&self.name, &opts).await {
            Ok(g) => {
                let (fence, slot) = self.fence_of(&g);
                let permit = g.permits().is_some();
                // The previous guard of this client, if any, is dropped (released in the
                // background; a client's guards are one at a time here).
                if let Some(old) = self.guards[c].replace(g) {
                    let _ = old.release().await;
                }
                if permit {
                    Obs::Permit { slot, fence }
                } else {
                    Obs::Acquired(fence)
                }
            }
            Err(e) => Obs::Refused(e.kind()),
        }
    }

    async fn probe(&mut self, wait: Wait) -> Probe {
        self.probe_with(LockOptions::new().with_ttl(LONG_TTL).with_wait(wait))
            .await
    }

    async fn probe_with(&mut self, opts: LockOptions) -> Probe {
        match self.probe.acquire(&self.name, &opts).await {
            Ok(g) => {
                let (fence, _) = self.fence_of(&g);
                let released = kind(g.release().await);
                Probe::Free { fence, released }
            }
            Err(e) => Probe::Held(e.kind()),
        }
    }

    async fn end(&mut self) -> End {
        let mut releases = [const { None }; CLIENTS];
        for (r, g) in releases.iter_mut().zip(self.guards.iter_mut()) {
            if let Some(g) = g.take() {
                *r = Some(kind(g.release().await));
            }
        }
        // Dropped guards release in the background: wait (notified) until it is free.
        let free = self.probe(Wait::For(FREE_WITHIN)).await;
        End { releases, free }
    }
}

fn shared_opts() -> LockOptions {
    LockOptions::new()
        .with_ttl(LONG_TTL)
        .with_mode(LockMode::Shared)
}

fn permit_opts() -> LockOptions {
    LockOptions::new().with_ttl(LONG_TTL).with_permits(PERMITS)
}

/// A request like the one that granted `g` (exclusive, shared or a permit), without a wait.
fn request_of(g: &Guard) -> LockOptions {
    if g.permits().is_some() {
        permit_opts()
    } else if g.mode() == LockMode::Shared {
        shared_opts()
    } else {
        LockOptions::new().with_ttl(LONG_TTL)
    }
}

/// The side-by-side trace, with the first difference marked.
fn report(label: &str, ops: &[Op], model: &Trace, real: &Trace) -> String {
    let mut out = format!("model and {label} disagree on {ops:?}\n");
    let n = model.steps.len().max(real.steps.len());
    let mut marked = false;
    for i in 0..n {
        let (m, r) = (model.steps.get(i), real.steps.get(i));
        let mark = if m != r && !marked {
            marked = true;
            "   <-- first difference"
        } else {
            ""
        };
        let op = ops.get(i).map_or_else(String::new, |op| format!("{op:?}"));
        let _ = writeln!(out, "{i:>3} {op}{mark}");
        let _ = writeln!(out, "      model: {}", step_line(m));
        let _ = writeln!(out, "      {label}: {}", step_line(r));
    }
    let mark = if model.end != real.end && !marked {
        "   <-- first difference"
    } else {
        ""
    };
    let _ = writeln!(out, "end{mark}");
    let _ = writeln!(out, "      model: {:?}", model.end);
    let _ = writeln!(out, "      {label}: {:?}", real.end);
    out
}

fn step_line(s: Option<&Step>) -> String {
    match s {
        None => "-".into(),
        Some(s) => {
            let guards: Vec<&str> = s
                .guards
                .iter()
                .map(|g| g.map_or("-", LockState::as_str))
                .collect();
            format!("{:?}  guards [{}]", s.obs, guards.join(" "))
        }
    }
}

/// A short label for the kind of observation (for the summary of what a run exercised).
fn tally(obs: &Obs) -> String {
    match obs {
        Obs::Acquired(_) => "acquired".into(),
        Obs::Permit { slot, .. } => format!("permit:{slot:?}"),
        Obs::Refused(k) => format!("refused:{k:?}"),
        Obs::Released(Ok(ours)) => format!("released:{ours}"),
        Obs::Extended(Ok(())) => "extended".into(),
        Obs::Released(Err(k)) | Obs::Extended(Err(k)) => format!("error:{k:?}"),
        Obs::Dropped { was, .. } => format!("dropped:{was}"),
        Obs::Expired { .. } => "expired".into(),
        Obs::NoGuard => "no-guard".into(),
        Obs::Stuck => "stuck".into(),
    }
}

fn config() -> ProptestConfig {
    // The defaults read every PROPTEST_* variable; only fill in what none of them set.
    let mut config = ProptestConfig::default();
    if std::env::var_os("PROPTEST_CASES").is_none() {
        config.cases = DEFAULT_CASES;
    }
    if std::env::var_os("PROPTEST_MAX_SHRINK_ITERS").is_none() {
        config.max_shrink_iters = 50;
    }
    if std::env::var_os("PROPTEST_MAX_SHRINK_TIME").is_none() {
        config.max_shrink_time = 120_000;
    }
    // Minimal sequences are printed; nothing is written next to the sources.
    config.failure_persistence = None;
    config
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime")
}

async fn connect(url: &str) -> Arc<dyn Backend> {
    dlock::connect(url)
        .await
        .unwrap_or_else(|e| panic!("connect {}: {e}", dlock::redact(url)))
}

/// Runs the property for the backend at `url` (`label` names it in messages): random op
/// sequences give the same observations there and on the model.
fn check(rt: &tokio::runtime::Runtime, label: &str, url: &str) {
    let caps = rt.block_on(connect(url)).capabilities();
    let short_ttl = caps
        .min_ttl
        .unwrap_or(Duration::ZERO)
        .max(Duration::from_secs(1));
    let started = Instant::now();
    let (runs, steps) = (Cell::new(0u32), Cell::new(0usize));
    let seen = RefCell::new(BTreeMap::<String, usize>::new());
    let mut runner = TestRunner::new(config());
    let result = runner.run(&ops(&caps), |ops| {
        runs.set(runs.get() + 1);
        steps.set(steps.get() + ops.len());
        let clients = ops.iter().map(|op| op.client()).max().unwrap_or(0) + 1;
        let (model, real) = rt.block_on(async {
            let name = common::unique("model");
            let memory: Arc<dyn Backend> = Arc::new(MemoryBackend::new());
            let model = Side::new(
                name.clone(),
                vec![memory.clone(); clients],
                memory,
                caps.fencing,
                short_ttl,
            );
            let mut real_clients = Vec::with_capacity(clients);
            for _ in 0..clients {
                real_clients.push(connect(url).await);
            }
            let real = Side::new(
                name,
                real_clients,
                connect(url).await,
                caps.fencing,
                short_ttl,
            );
            // Independent of each other: run both sides at once (the short leases overlap).
            tokio::join!(model.run(&ops), real.run(&ops))
        });
        for step in &real.steps {
            *seen.borrow_mut().entry(tally(&step.obs)).or_default() += 1;
        }
        if model == real {
            Ok(())
        } else {
            Err(TestCaseError::fail(report(label, &ops, &model, &real)))
        }
    });
    let seen: Vec<String> = seen
        .into_inner()
        .into_iter()
        .map(|(k, n)| format!("{k} {n}"))
        .collect();
    eprintln!(
        "{label}: {} runs, {} ops (shrink steps included) in {:.1?} [{caps}]\n  observed: {}",
        runs.get(),
        steps.get(),
        started.elapsed(),
        seen.join(", ")
    );
    match result {
        Ok(()) => {}
        Err(TestError::Fail(why, ops)) => {
            panic!("{label}: minimal failing sequence {ops:?}\n{why}")
        }
        Err(TestError::Abort(why)) => panic!("{label}: aborted: {why}"),
    }
}

/// The shrinker ends at the minimal sequence: for a property that fails whenever a client
/// releases after its own `Expire`, that is `[Expire(0), Release(0)]`, whatever the
/// generated sequence was.
#[test]
fn shrinks_to_a_minimal_sequence() {
    let stale_release = |ops: &[Op]| {
        ops.iter()
            .enumerate()
            .any(|(i, op)| matches!(op, Op::Expire(c) if ops[i + 1..].contains(&Op::Release(*c))))
    };
    let mut runner = TestRunner::new(ProptestConfig {
        cases: 1000,
        max_shrink_iters: 10_000,
        failure_persistence: None,
        ..ProptestConfig::default()
    });
    let result = runner.run(&ops(&MemoryBackend::CAPABILITIES), |ops| {
        prop_assert!(!stale_release(&ops));
        Ok(())
    });
    match result {
        Err(TestError::Fail(_, minimal)) => {
            assert_eq!(minimal, vec![Op::Expire(0), Op::Release(0)]);
        }
        other => panic!("1000 random sequences without a stale release: {other:?}"),
    }
}

/// The harness itself is deterministic: the model agrees with another model instance
/// reached through the URL registry.
#[test]
fn model_agrees_with_itself() {
    let rt = runtime();
    let url = format!("memory://{}", common::unique("model-self"));
    check(&rt, "memory", &url);
}

/// PostgreSQL session locks, with and without the fencing table, and the ShedLock table on
/// the same server.
#[test]
fn postgres_matches_model() {
    let rt = runtime();
    let pg = rt
        .block_on(fixtures::postgres())
        .expect("PostgreSQL fixture");
    check(&rt, "postgres", pg.url());
    check(
        &rt,
        "postgres_fencing",
        &format!("{}?fencing=table", pg.url()),
    );
    check(&rt, "shedlock_postgres", &format!("shedlock+{}", pg.url()));
}

/// Redis (`SET NX PX`) and the ShedLock Redis layout on the same server.
#[test]
fn redis_matches_model() {
    let rt = runtime();
    let redis = rt.block_on(fixtures::redis()).expect("Redis fixture");
    check(&rt, "redis", redis.url());
    check(&rt, "shedlock_redis", &format!("shedlock+{}", redis.url()));
}

/// Redlock over three Redis instances (no fencing tokens).
#[test]
fn redlock_matches_model() {
    let rt = runtime();
    let redlock = rt.block_on(fixtures::redlock(3)).expect("Redlock fixture");
    check(&rt, "redlock", redlock.url());
}

/// etcd leases (min ttl 2 s).
#[test]
fn etcd_matches_model() {
    let rt = runtime();
    let etcd = rt.block_on(fixtures::etcd()).expect("etcd fixture");
    check(&rt, "etcd", etcd.url());
}

/// ZooKeeper ephemeral sequential znodes (session locks: no expire or extend ops).
#[test]
fn zookeeper_matches_model() {
    let rt = runtime();
    let zk = rt
        .block_on(fixtures::zookeeper())
        .expect("ZooKeeper fixture");
    check(&rt, "zookeeper", zk.url());
}

/// MariaDB `GET_LOCK` (session locks: no expire or extend ops), with and without the fencing
/// table.
#[test]
fn mariadb_matches_model() {
    let rt = runtime();
    let db = rt.block_on(fixtures::mariadb()).expect("MariaDB fixture");
    check(&rt, "mariadb", db.url());
    check(
        &rt,
        "mariadb_fencing",
        &format!("{}?fencing=table", db.url()),
    );
}
