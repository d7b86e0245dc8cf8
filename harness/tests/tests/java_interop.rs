//! The seed's own JVM stack against dlock, on real servers, through the Java peer harness
//! (`peers/java`, built by `scripts/install-peers`, which `make test` runs first):
//!
//! - ShedLock's `lockAtLeastFor` set by one side is honoured by the other, both ways, on
//!   `JdbcTemplateLockProvider` ⟷ `shedlock+postgres://` and `RedisLockProvider` ⟷
//!   `shedlock+redis://`;
//! - the seed's purge job as Spring writes it (`@Scheduled` + `@SchedulerLock`, three JVM
//!   "pods") and three `dlock run --skip-ok` job runners fire on the same cron ticks against
//!   one `emp_details` table: exactly one purge per tick.
//!
//! (The plain exclusion tests, 1,000 contended grants per pair, are in `peers_interop.rs`.)

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use dlock_compare::peers::catalog::{Harnesses, PEERS, peer_url};
use dlock_compare::peers::proc::{Group, Launch, Reply};
use dlock_peer_proto::mono_us;

const WITHIN: Duration = Duration::from_secs(20);
/// The lockAtLeastFor window each side sets for the other.
const AT_LEAST_MS: u64 = 3000;
/// How far an observed window end may sit before the window's nominal end: both clocks are
/// this machine's (the server's time and `CLOCK_MONOTONIC`), so only rounding is allowed for.
const EARLY_MS: u64 = 20;
/// How far after it: a poll interval and a slow debug-build process start.
const LATE_MS: u64 = 2500;

fn harnesses() -> Harnesses {
    let mut h = Harnesses::locate(std::path::Path::new(env!("CARGO_BIN_EXE_dlock-under-test")));
    h.peers_dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../peers");
    h
}

fn java_peer(backend: &str, peer: &str, env: &[(&str, &str)]) -> Launch {
    let spec = PEERS
        .iter()
        .find(|p| p.backend == backend && p.peer == peer)
        .expect("a catalogued peer");
    let mut launch = harnesses()
        .launch(spec, 10_000)
        .unwrap_or_else(|why| panic!("{why} (`make test` runs scripts/install-peers first)"));
    launch
        .env
        .extend(env.iter().map(|(k, v)| (k.to_string(), v.to_string())));
    launch
}

async fn server(backend: &str) -> dlock_fixtures::Server {
    match backend {
        "postgres" | "shedlock-postgres" => dlock_fixtures::postgres().await,
        "redis" | "shedlock-redis" => dlock_fixtures::redis().await,
        other => panic!("no fixture for {other}"),
    }
    .unwrap_or_else(|e| panic!("{backend} server: {e:#}"))
}

/// dlock's ShedLock URL for the same server.
fn shedlock_url(server_url: &str) -> String {
    let (scheme, rest) = server_url.split_once("://").expect("a URL");
    format!("shedlock+{scheme}://{rest}")
}

/// `dlock run [args] URL NAME -- true`: its exit code.
fn dlock_run(url: &str, name: &str, args: &[&str]) -> i32 {
    let out = Command::new(env!("CARGO_BIN_EXE_dlock-under-test"))
        .arg("run")
        .args(args)
        .args([url, name, "--", "true"])
        .stdin(Stdio::null())
        .output()
        .expect("run dlock");
    let code = out.status.code().unwrap_or(-1);
    assert!(
        code == 0 || code == 75,
        "dlock run {args:?} exited {code}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    code
}

/// The checks of a lockAtLeastFor window kept by the other side: `who` was refused at least
/// once, was not granted before the window's earliest end (`after_ms` from the earliest start
/// of the window to the latest the grant can have been), nor long after its latest end
/// (`late_ms` from the latest start to the earliest the grant can have been).
fn window_kept(who: &str, busy: usize, after_ms: u64, late_ms: u64) {
    assert!(
        busy > 0,
        "{who} got the lock at once: the window was not kept"
    );
    assert!(
        after_ms + EARLY_MS >= AT_LEAST_MS,
        "{who} got the lock {after_ms} ms into the other side's {AT_LEAST_MS} ms window"
    );
    assert!(
        late_ms <= AT_LEAST_MS + LATE_MS,
        "{who} got the lock only {late_ms} ms after the other side's lock"
    );
}

/// dlock takes the lock with `--at-least 3s` and finishes at once: Java ShedLock's `lock()`
/// finds it taken until the window has passed, then gets it.
async fn dlock_window_holds_java_out(backend: &str, peer: &str) {
    let srv = server(backend).await;
    let mut g = Group::start(
        &java_peer(backend, peer, &[]),
        &peer_url(backend, srv.url()).unwrap(),
        1,
    )
    .await
    .expect("the Java harness");
    let name = format!("atleast-d-{}", mono_us());
    let started = mono_us();
    let at_least = format!("{}ms", AT_LEAST_MS);
    assert_eq!(
        dlock_run(&shedlock_url(srv.url()), &name, &["--at-least", &at_least]),
        0
    );
    let done = mono_us();
    assert!(
        done - started < AT_LEAST_MS * 1000,
        "dlock run itself took {} ms: the window cannot be checked",
        (done - started) / 1000
    );
    let try_line = format!("try {name} 10000");
    let mut busy = 0;
    let (asked, granted) = loop {
        match g.call(0, &try_line, WITHIN).await.unwrap() {
            Reply::Busy { .. } => busy += 1,
            Reply::Acquired { t0, t1, .. } => break (t0, t1),
            other => panic!("{other:?}"),
        }
        assert!(
            mono_us() - started < (AT_LEAST_MS + LATE_MS) * 1000,
            "Java never got the lock after dlock's window"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    // dlock's grant came between `started` and `done`, so its window ended between
    // `started + window` and `done + window`. Java's lock() was granted inside [asked,
    // granted]: early if `granted` is before the earliest end, late if `asked` is well after
    // the latest.
    let (after_ms, late_ms) = (
        (granted - started) / 1000,
        asked.saturating_sub(done) / 1000,
    );
    eprintln!(
        "{backend}: Java's lock() refused {busy} times, granted {after_ms} ms after dlock run began"
    );
    window_kept("Java", busy, after_ms, late_ms);
    g.quit_all(Duration::from_secs(5)).await;
}

/// Java ShedLock locks with `lockAtLeastFor` 3 s and unlocks at once: `dlock run` finds the
/// lock busy (exit 75) until the window has passed, then runs (exit 0).
async fn java_window_holds_dlock_out(backend: &str, peer: &str) {
    let srv = server(backend).await;
    let at_least = AT_LEAST_MS.to_string();
    // No warm-up: its short-lived locks would be shorter than the window, which ShedLock
    // refuses (lockAtLeastFor > lockAtMostFor).
    let env = [
        ("DLOCK_PEER_SHEDLOCK_AT_LEAST_MS", at_least.as_str()),
        ("DLOCK_PEER_JAVA_WARMUP", "0"),
    ];
    let mut g = Group::start(
        &java_peer(backend, peer, &env),
        &peer_url(backend, srv.url()).unwrap(),
        1,
    )
    .await
    .expect("the Java harness");
    let name = format!("atleast-j-{}", mono_us());
    let Reply::Acquired {
        t0: asked,
        t1: locked,
        ..
    } = g
        .call(0, &format!("acquire {name} 10000"), WITHIN)
        .await
        .unwrap()
    else {
        panic!("Java's acquire")
    };
    let r = g.call(0, &format!("release {name}"), WITHIN).await.unwrap();
    assert!(matches!(r, Reply::Released { .. }), "{r:?}");
    let url = shedlock_url(srv.url());
    let mut busy = 0;
    let (began, ended) = loop {
        let before = mono_us();
        if dlock_run(&url, &name, &[]) == 0 {
            break (before, mono_us());
        }
        busy += 1;
        assert!(
            mono_us() - asked < (AT_LEAST_MS + LATE_MS) * 1000,
            "dlock never got the lock after Java's window"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    // Java's lock() was granted inside [asked, locked], so its window ended between
    // `asked + window` and `locked + window`; dlock's grant came inside [began, ended]: early
    // if `ended` is before the earliest end, late if `began` is well after the latest.
    let (after_ms, late_ms) = ((ended - asked) / 1000, began.saturating_sub(locked) / 1000);
    eprintln!("{backend}: dlock run was busy {busy} times, ran {after_ms} ms after Java's lock");
    window_kept("dlock", busy, after_ms, late_ms);
    g.quit_all(Duration::from_secs(5)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lock_at_least_window_set_by_dlock_holds_java_shedlock_jdbc_out() {
    dlock_window_holds_java_out("shedlock-postgres", "shedlock-jdbc").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lock_at_least_window_set_by_java_shedlock_jdbc_holds_dlock_out() {
    java_window_holds_dlock_out("shedlock-postgres", "shedlock-jdbc").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lock_at_least_window_set_by_dlock_holds_java_shedlock_redis_out() {
    dlock_window_holds_java_out("shedlock-redis", "shedlock-redis").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lock_at_least_window_set_by_java_shedlock_redis_holds_dlock_out() {
    java_window_holds_dlock_out("shedlock-redis", "shedlock-redis").await;
}

/// The cron ticks of the purge test: every 3 s (Spring's six-field cron, seconds first).
const CRON: &str = "*/3 * * * * *";
const TICK_MS: u64 = 3000;
/// Ticks the dlock runners take part in.
const TICKS: u64 = 6;
/// The purge's lockAtLeastFor on both sides, and its lockAtMostFor on the Java side.
const PURGE_AT_LEAST_MS: u64 = 1500;
const PURGE_AT_MOST_MS: u64 = 2500;

fn wall_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("after 1970")
        .as_millis() as u64
}

/// `psql URL -c SQL`, failing the test on an error; returns stdout.
fn psql(url: &str, sql: &str) -> String {
    let out = Command::new("psql")
        .args([
            url,
            "-X",
            "-q",
            "-A",
            "-t",
            "-v",
            "ON_ERROR_STOP=1",
            "-c",
            sql,
        ])
        .stdin(Stdio::null())
        .output()
        .expect("psql (Debian's postgresql-client, which scripts/install-servers installs)");
    assert!(
        out.status.success(),
        "psql {sql}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The seed's purge: three Spring "pods" (JVM processes running `@Scheduled(cron)` +
/// `@SchedulerLock` on ShedLock's `JdbcTemplateLockProvider`) and three dlock job runners
/// (`dlock run --skip-ok --at-least … shedlock+postgres://… emp_details_purge -- psql …`)
/// fire on the same cron ticks against one `emp_details` table. Every tick is purged exactly
/// once, by one side or the other, and each side wins some: on odd ticks the dlock runners
/// fire 300 ms early, as a pod whose clock runs ahead would.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_seeds_purge_runs_once_per_tick_across_spring_pods_and_dlock_runners() {
    let srv = server("postgres").await;
    let pg = srv.url().to_string();
    let shed = shedlock_url(&pg);
    // The tables first, so that six processes do not race to create them: ShedLock's by
    // dlock (create_table=true), the job's two by the test, as PurgePod declares them.
    assert_eq!(dlock_run(&shed, "purge-test-setup", &[]), 0);
    psql(
        &pg,
        "CREATE TABLE emp_details (id bigserial PRIMARY KEY, name text NOT NULL, \
         last_updated timestamptz NOT NULL); \
         CREATE TABLE purge_runs (tick timestamptz NOT NULL, pod text NOT NULL, \
         at timestamptz NOT NULL DEFAULT clock_timestamp(), deleted bigint NOT NULL); \
         INSERT INTO emp_details (name, last_updated) SELECT 'old ' || i, now() - interval '40 days' \
         FROM generate_series(1, 500) i; \
         INSERT INTO emp_details (name, last_updated) SELECT 'live ' || i, now() \
         FROM generate_series(1, 50) i",
    );

    // The first tick the runners join: far enough ahead for the JVMs to start.
    let first = (wall_ms() + 5000).div_ceil(TICK_MS) * TICK_MS;
    let last = first + (TICKS - 1) * TICK_MS;
    let pod_ms = last + 2000 - wall_ms();
    let mut launch = java_peer("shedlock-postgres", "shedlock-jdbc", &[]);
    launch.env.push((
        "DLOCK_PEER_JAVA_MAIN".into(),
        "dev.dlock.peer.PurgePod".into(),
    ));
    let java_url = peer_url("postgres", &pg).unwrap();
    let pods: Vec<std::process::Child> = (1..=3)
        .map(|i| {
            Command::new(&launch.program)
                .args(&launch.pre_args)
                .args([
                    java_url.as_str(),
                    &format!("spring-{i}"),
                    CRON,
                    &PURGE_AT_MOST_MS.to_string(),
                    &PURGE_AT_LEAST_MS.to_string(),
                    &format!("ms={pod_ms}"),
                ])
                .envs(launch.env.iter().map(|(k, v)| (k, v)))
                .stdin(Stdio::null())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .expect("a Spring pod")
        })
        .collect();

    let at_least = format!("{PURGE_AT_LEAST_MS}ms");
    for k in 0..TICKS {
        let tick = first + k * TICK_MS;
        let fire = if k % 2 == 1 { tick - 300 } else { tick };
        let now = wall_ms();
        assert!(
            now < fire + 500,
            "the test fell behind its ticks (tick {k})"
        );
        // The runners' schedule (not synchronisation): cron fires at a wall-clock time.
        tokio::time::sleep(Duration::from_millis(fire.saturating_sub(now))).await;
        let job = |i: u64| {
            format!(
                "WITH d AS (DELETE FROM emp_details WHERE last_updated < now() - interval \
                 '30 days' RETURNING 1) INSERT INTO purge_runs (tick, pod, deleted) \
                 SELECT to_timestamp({}), 'dlock-{i}', count(*) FROM d",
                tick / 1000
            )
        };
        let runners: Vec<_> = (1..=3)
            .map(|i| {
                Command::new(env!("CARGO_BIN_EXE_dlock-under-test"))
                    .args(["run", "--skip-ok", "--at-least", &at_least, &shed])
                    .args(["emp_details_purge", "--", "psql", &pg, "-X", "-q"])
                    .args(["-v", "ON_ERROR_STOP=1", "-c", &job(i)])
                    .stdin(Stdio::null())
                    .stdout(Stdio::piped())
                    .stderr(Stdio::piped())
                    .spawn()
                    .expect("a dlock runner")
            })
            .collect();
        for r in runners {
            let out = r.wait_with_output().unwrap();
            assert!(
                out.status.success(),
                "a dlock runner at tick {k} exited {:?}: {}",
                out.status.code(),
                String::from_utf8_lossy(&out.stderr)
            );
        }
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    for pod in pods {
        let pid = pod.id();
        let out = tokio::task::spawn_blocking(move || pod.wait_with_output())
            .await
            .unwrap()
            .unwrap();
        assert!(Instant::now() < deadline, "pod {pid} took too long to end");
        assert!(
            out.status.success(),
            "Spring pod {pid} exited {:?}: {}",
            out.status.code(),
            String::from_utf8_lossy(&out.stderr)
        );
    }

    // Every tick anyone ran: exactly one purge. The runners' ticks: all there.
    let rows = psql(
        &pg,
        "SELECT extract(epoch FROM tick)::bigint, count(*), string_agg(pod, ',') \
         FROM purge_runs GROUP BY 1 ORDER BY 1",
    );
    let mut by_tick = std::collections::BTreeMap::new();
    for line in rows.lines().filter(|l| !l.is_empty()) {
        let f: Vec<&str> = line.split('|').collect();
        let (t, n): (u64, u64) = (f[0].parse().unwrap(), f[1].parse().unwrap());
        assert_eq!(n, 1, "tick {t} was purged {n} times, by {}", f[2]);
        assert_eq!(
            t * 1000 % TICK_MS,
            0,
            "a purge outside the cron's ticks: {t}"
        );
        by_tick.insert(t * 1000, f[2].to_string());
    }
    let ours: Vec<&String> = (0..TICKS)
        .map(|k| {
            by_tick
                .get(&(first + k * TICK_MS))
                .unwrap_or_else(|| panic!("tick {k} was never purged: {by_tick:?}"))
        })
        .collect();
    let spring = ours.iter().filter(|p| p.starts_with("spring-")).count();
    let dlock = ours.iter().filter(|p| p.starts_with("dlock-")).count();
    eprintln!(
        "{} ticks purged once each ({} with the runners: {spring} by Spring pods, {dlock} by \
         dlock runners): {by_tick:?}",
        by_tick.len(),
        TICKS
    );
    assert!(
        spring > 0 && dlock > 0,
        "one side won every tick: {spring} Spring, {dlock} dlock"
    );
    let left = psql(&pg, "SELECT count(*) FROM emp_details");
    assert_eq!(
        left.trim(),
        "50",
        "the purge deleted the old rows and only them"
    );
}
