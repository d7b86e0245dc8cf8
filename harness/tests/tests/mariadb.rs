//! lock-mysql against a real MariaDB from the fixtures: exclusion, the name mapping against
//! the server's own SQL, no re-entrance between two guards of one process, a blocking wait
//! that stalls only its own session, the `mariadb` command-line client as the other side of a
//! lock both ways, a killed session, fencing tokens, and a partitioned holder that learns
//! before the server frees its lock (`wait_timeout`), a server restart learned at once through
//! the session watch. The behaviour suite runs over
//! `mariadb://` too (`behavior.rs`).

mod common;

use std::io::{BufRead, BufReader, Write};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{unique, with_query};
use conformance::faults::{Fault, FaultProxy};
use dlock::{Backend, ErrorKind, LockName, LockOptions, LockState, Wait};
use dlock_fixtures as fixtures;
use lock_mysql::name::{MAPPING_SQL, TEST_VECTORS};

async fn connect(url: &str) -> Arc<dyn Backend> {
    dlock::connect(url)
        .await
        .unwrap_or_else(|e| panic!("connect {url}: {e}"))
}

fn port_of(server: &fixtures::Server) -> u16 {
    server.port().expect("a managed server has a port")
}

/// The `mariadb` client's command line for the fixture's server.
fn client(port: u16) -> Command {
    let mut c = Command::new("mariadb");
    c.args([
        "--protocol=TCP",
        "-h127.0.0.1",
        &format!("-P{port}"),
        "-uroot",
        "--default-character-set=utf8mb4",
        "-N",
        "-B",
        "dlock",
    ]);
    c
}

/// Runs `sql` with the `mariadb` client and returns its output, trimmed.
fn sql(port: u16, sql: &str) -> String {
    let out = client(port)
        .args(["-e", sql])
        .output()
        .expect("the mariadb client (apt-get install mariadb-client; scripts/install-servers)");
    assert!(
        out.status.success(),
        "mariadb -e {sql:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// A `mariadb` client session kept open: statements in, one answer line each.
struct CliSession {
    child: Child,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
}

impl CliSession {
    fn open(port: u16) -> CliSession {
        let mut child = client(port)
            .arg("--unbuffered")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("the mariadb client (apt-get install mariadb-client)");
        let stdin = child.stdin.take().unwrap();
        let stdout = BufReader::new(child.stdout.take().unwrap());
        CliSession {
            child,
            stdin,
            stdout,
        }
    }

    /// Sends one statement that answers one line, and returns the line.
    fn ask(&mut self, statement: &str) -> String {
        writeln!(self.stdin, "{statement};").unwrap();
        self.stdin.flush().unwrap();
        let mut line = String::new();
        self.stdout.read_line(&mut line).unwrap();
        line.trim().to_string()
    }
}

impl Drop for CliSession {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The mapping's test vectors agree with the server's own SQL expression of it.
#[tokio::test]
async fn name_mapping_agrees_with_the_server_sql() {
    let db = fixtures::mariadb().await.unwrap();
    let port = port_of(&db);
    let (long, plain64) = ("x".repeat(65), "y".repeat(64));
    let mut names: Vec<&str> = TEST_VECTORS.iter().map(|(n, _)| *n).collect();
    names.extend([long.as_str(), plain64.as_str(), "it's", "Ünïcödé 🔒"]);
    for name in names {
        let expr = MAPPING_SQL.replace('?', "@n");
        let quoted = name.replace('\'', "''");
        let got = sql(port, &format!("SET @n = '{quoted}'; SELECT {expr}"));
        assert_eq!(got, lock_mysql::name::mapped(name), "{name:?}");
    }
    for (name, server) in TEST_VECTORS {
        assert_eq!(lock_mysql::name::mapped(name), *server);
    }
}

/// Two clients exclude each other; release hands the lock to a waiter at once.
#[tokio::test]
async fn two_clients_exclude_each_other_and_hand_over() {
    let db = fixtures::mariadb().await.unwrap();
    let (a, b) = (connect(db.url()).await, connect(db.url()).await);
    let n = unique("excl");
    let g = a.acquire(&n, &LockOptions::new()).await.unwrap();
    let err = b.acquire(&n, &LockOptions::new()).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Contended, "{err}");
    let (b2, n2) = (b.clone(), n.clone());
    let waiter = tokio::spawn(async move {
        let g = b2
            .acquire(&n2, &LockOptions::new().with_wait(Wait::Forever))
            .await
            .unwrap();
        (Instant::now(), g)
    });
    wait_for_user_lock_waits(port_of(&db), 1).await;
    let released = Instant::now();
    assert!(g.release().await.unwrap());
    let (granted, g2) = waiter.await.unwrap();
    assert!(
        granted - released < Duration::from_secs(1),
        "handoff took {:?}",
        granted - released
    );
    assert_eq!(g2.state(), LockState::Held);
    assert!(g2.release().await.unwrap());
}

/// Waits until `n` sessions wait in `GET_LOCK` (the processlist's state `User lock`).
async fn wait_for_user_lock_waits(port: u16, n: usize) {
    let started = Instant::now();
    loop {
        let count: usize = sql(
            port,
            "SELECT COUNT(*) FROM information_schema.processlist WHERE state = 'User lock'",
        )
        .parse()
        .unwrap();
        if count >= n {
            return;
        }
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "{count} of {n} waiters after 10 s"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// `GET_LOCK` is re-entrant per session; two guards of one process must still exclude each
/// other, without waiting and with it.
#[tokio::test]
async fn two_guards_of_one_process_do_not_overlap() {
    let db = fixtures::mariadb().await.unwrap();
    let a = connect(db.url()).await;
    let n = unique("reentrant");
    let g = a.acquire(&n, &LockOptions::new()).await.unwrap();
    let err = a.acquire(&n, &LockOptions::new()).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Contended, "{err}");
    assert!(
        err.to_string().contains("another guard of this process"),
        "{err}"
    );
    // A bounded wait from the same process times out: it waits on a session of its own.
    let t0 = Instant::now();
    let err = a
        .acquire(
            &n,
            &LockOptions::new().with_wait(Wait::For(Duration::from_millis(300))),
        )
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Timeout, "{err}");
    assert!(
        t0.elapsed() >= Duration::from_millis(250),
        "{:?}",
        t0.elapsed()
    );
    // One release frees it for everyone: the refused attempts left no second grant.
    assert!(g.release().await.unwrap());
    let port = port_of(&db);
    let server = lock_mysql::name::mapped(n.as_str());
    assert_eq!(sql(port, &format!("SELECT IS_FREE_LOCK('{server}')")), "1");
}

/// A waiting acquisition stalls only its own session: other locks of the same backend are
/// taken and released meanwhile.
#[tokio::test]
async fn a_blocking_wait_does_not_stall_other_locks() {
    let db = fixtures::mariadb().await.unwrap();
    let (a, b) = (connect(db.url()).await, connect(db.url()).await);
    let held = unique("held");
    let g = a.acquire(&held, &LockOptions::new()).await.unwrap();
    let (b2, h2) = (b.clone(), held.clone());
    let waiter = tokio::spawn(async move {
        b2.acquire(&h2, &LockOptions::new().with_wait(Wait::Forever))
            .await
    });
    wait_for_user_lock_waits(port_of(&db), 1).await;
    for i in 0..20 {
        let other = LockName::new(format!("{}-{i}", held.as_str())).unwrap();
        let t0 = Instant::now();
        let g = b.acquire(&other, &LockOptions::new()).await.unwrap();
        assert!(g.release().await.unwrap());
        assert!(t0.elapsed() < Duration::from_secs(2), "{:?}", t0.elapsed());
    }
    assert!(g.release().await.unwrap());
    let g2 = waiter.await.unwrap().unwrap();
    assert!(g2.release().await.unwrap());
}

/// The `mariadb` client and dlock exclude each other both ways, on a plain name and on a
/// name that the mapping hashes (the client writes the mapping's SQL).
#[tokio::test]
async fn the_sql_client_and_dlock_exclude_each_other() {
    let db = fixtures::mariadb().await.unwrap();
    let port = port_of(&db);
    let d = connect(db.url()).await;
    let mut cli = CliSession::open(port);
    for name in ["emp_details_purge", "Nightly Purge"] {
        let n = LockName::new(name).unwrap();
        let quoted = name.replace('\'', "''");
        let mapped = MAPPING_SQL.replace('?', &format!("'{quoted}'"));
        // The client holds it: dlock is refused, and says which session holds it.
        assert_eq!(cli.ask(&format!("SELECT GET_LOCK({mapped}, 0)")), "1");
        let cli_id = cli.ask("SELECT CONNECTION_ID()");
        let err = d.acquire(&n, &LockOptions::new()).await.unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Contended, "{name}: {err}");
        assert!(
            err.to_string()
                .contains(&format!("CONNECTION_ID() {cli_id}")),
            "{err}"
        );
        // The client releases: dlock gets it, and the client is refused.
        assert_eq!(cli.ask(&format!("SELECT RELEASE_LOCK({mapped})")), "1");
        let g = d.acquire(&n, &LockOptions::new()).await.unwrap();
        assert_eq!(cli.ask(&format!("SELECT GET_LOCK({mapped}, 0)")), "0");
        // A waiting client gets it when dlock releases.
        assert!(g.release().await.unwrap());
        assert_eq!(cli.ask(&format!("SELECT GET_LOCK({mapped}, 5)")), "1");
        assert_eq!(cli.ask(&format!("SELECT RELEASE_LOCK({mapped})")), "1");
    }
    // With names=raw the name goes as it is (MariaDB compares names byte for byte).
    let raw = connect(&with_query(db.url(), "names=raw")).await;
    assert_eq!(cli.ask("SELECT GET_LOCK('Nightly Purge', 0)"), "1");
    let n = LockName::new("Nightly Purge").unwrap();
    assert_eq!(
        raw.acquire(&n, &LockOptions::new())
            .await
            .unwrap_err()
            .kind(),
        ErrorKind::Contended
    );
    let long = LockName::new("y".repeat(65)).unwrap();
    assert_eq!(
        raw.acquire(&long, &LockOptions::new())
            .await
            .unwrap_err()
            .kind(),
        ErrorKind::InvalidName
    );
}

/// A session the server kills turns its guard `Lost`, and its release says the lock was not
/// ours.
#[tokio::test]
async fn a_killed_session_loses_its_lock() {
    let db = fixtures::mariadb().await.unwrap();
    let port = port_of(&db);
    let d = connect(&with_query(db.url(), "session_deadline=1s")).await;
    let n = unique("killed");
    let g = d.acquire(&n, &LockOptions::new()).await.unwrap();
    let server = lock_mysql::name::mapped(n.as_str());
    let holder = sql(port, &format!("SELECT IS_USED_LOCK('{server}')"));
    sql(port, &format!("KILL {holder}"));
    let mut watch = g.watch();
    let state = tokio::time::timeout(Duration::from_secs(5), watch.not_held())
        .await
        .expect("the guard learns within 5 s");
    assert_eq!(state, LockState::Lost);
    assert!(!g.release().await.unwrap());
    // The backend goes on with a new session.
    let g = d.acquire(&n, &LockOptions::new()).await.unwrap();
    assert!(g.release().await.unwrap());
}

/// `?fencing=table`: tokens increase across grants and clients.
#[tokio::test]
async fn fencing_tokens_increase() {
    let db = fixtures::mariadb().await.unwrap();
    let url = with_query(db.url(), "fencing=table");
    let (a, b) = (connect(&url).await, connect(&url).await);
    assert!(a.capabilities().fencing);
    let n = unique("fenced");
    let mut last = 0;
    for i in 0..6 {
        let client = if i % 2 == 0 { &a } else { &b };
        let g = client.acquire(&n, &LockOptions::new()).await.unwrap();
        let t = g.token().expect("a token").get();
        assert!(t > last, "token {t} after {last}");
        last = t;
        assert!(g.release().await.unwrap());
    }
}

/// A holder cut off from the server (a blackholed proxy) stops trusting its lock before the
/// server frees it: the guard leaves `Held` within `session_deadline` of its last check, the
/// server ends the quiet session after `wait_timeout` and only then grants the lock to
/// another client.
#[tokio::test]
async fn a_partitioned_holder_learns_before_the_server_frees_the_lock() {
    let db = fixtures::mariadb().await.unwrap();
    let proxy = FaultProxy::start(db.addr().unwrap()).await.unwrap();
    let via_proxy = format!(
        "mariadb://root@{}/dlock?session_deadline=1s&wait_timeout=3s&check_timeout=500ms",
        proxy.addr()
    );
    let holder = connect(&via_proxy).await;
    let other = connect(db.url()).await;
    let n = unique("partition");
    let g = holder.acquire(&n, &LockOptions::new()).await.unwrap();
    proxy.set(Fault::Blackhole);
    let cut = Instant::now();
    let mut watch = g.watch();
    let state = tokio::time::timeout(Duration::from_secs(5), watch.not_held())
        .await
        .expect("the guard leaves Held");
    let learned = cut.elapsed();
    assert_ne!(state, LockState::Held);
    let g2 = other
        .acquire(
            &n,
            &LockOptions::new().with_wait(Wait::For(Duration::from_secs(15))),
        )
        .await
        .expect("the server frees the lock after wait_timeout");
    let freed = cut.elapsed();
    eprintln!("partition: the holder learned after {learned:?}, the server freed after {freed:?}");
    assert!(
        learned < freed,
        "the holder learned after {learned:?}, but the server freed the lock after {freed:?}"
    );
    assert!(freed < Duration::from_secs(12), "{freed:?}");
    assert!(g2.release().await.unwrap());
    drop(g);
}

/// `at_least` longer than `wait_timeout`: the released lock stays taken until `at_least` has
/// passed (the background release keeps its quiet session alive), then is free.
#[tokio::test]
async fn at_least_outlasts_wait_timeout() {
    let db = fixtures::mariadb().await.unwrap();
    let url = with_query(db.url(), "session_deadline=1s&wait_timeout=2s");
    let (a, b) = (connect(&url).await, connect(db.url()).await);
    let n = unique("at-least");
    let at_least = Duration::from_secs(5);
    let t0 = Instant::now();
    let g = a
        .acquire(&n, &LockOptions::new().with_at_least(at_least))
        .await
        .unwrap();
    assert!(g.release().await.unwrap());
    // Past wait_timeout (2 s) twice over, still taken.
    tokio::time::sleep(Duration::from_millis(4_200)).await;
    assert!(
        t0.elapsed() < at_least,
        "too slow to test inside the window"
    );
    let err = b.acquire(&n, &LockOptions::new()).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Contended, "{err}");
    // Free once at_least has passed.
    let g = b
        .acquire(
            &n,
            &LockOptions::new().with_wait(Wait::For(Duration::from_secs(5))),
        )
        .await
        .unwrap();
    let freed = t0.elapsed();
    assert!(freed >= at_least, "freed after {freed:?}");
    assert!(
        freed < at_least + Duration::from_secs(2),
        "freed after {freed:?}"
    );
    assert!(g.release().await.unwrap());
}

/// The session watch: a server restart turns a guard `Lost` at once, not at its next periodic
/// check (`session_deadline=60s`: one every 20 s); a backend with `session_watch=off` still
/// believes it holds its lock after the restart. The watch is one `User sleep` connection.
#[tokio::test]
async fn a_server_restart_is_learned_through_the_session_watch() {
    let db = fixtures::managed_mariadb().await.unwrap();
    let port = port_of(&db);
    let watched = connect(&with_query(db.url(), "session_deadline=60s")).await;
    let unwatched = connect(&with_query(
        db.url(),
        "session_deadline=60s&session_watch=off",
    ))
    .await;
    let (a, b) = (unique("watched"), unique("unwatched"));
    let ga = watched.acquire(&a, &LockOptions::new()).await.unwrap();
    let gb = unwatched.acquire(&b, &LockOptions::new()).await.unwrap();
    let sleeping = "SELECT COUNT(*) FROM information_schema.processlist WHERE state = 'User sleep'";
    common::eventually(
        "the session watch to run",
        Duration::from_secs(10),
        || async { Ok(sql(port, sleeping) == "1") },
    )
    .await
    .unwrap();
    let restarted = Instant::now();
    db.restart().await.unwrap();
    let mut watch = ga.watch();
    let state = tokio::time::timeout(Duration::from_secs(10), watch.not_held())
        .await
        .expect("the watched guard learns within 10 s of the restart");
    assert_eq!(state, LockState::Lost);
    assert!(
        restarted.elapsed() < Duration::from_secs(15),
        "took {:?}",
        restarted.elapsed()
    );
    // Its periodic check is 20 s after the acquisition: nothing told it yet.
    assert_eq!(gb.state(), LockState::Held);
    assert!(!gb.release().await.unwrap_or(false));
}
