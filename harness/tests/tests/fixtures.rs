//! Tests of the server fixtures: real servers, real probes, real faults.
//!
//! Data is written and read back with the servers' own tools (`psql`, `redis-cli`,
//! `etcdctl`) or, for ZooKeeper (whose CLI takes seconds to start), the raw protocol.
//! Some tests re-run this test binary as a child process (see `child_process_entry`) to check
//! what happens when a test process aborts, panics, or runs with a different environment.

mod common;

use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use dlock_fixtures::{
    self as fixtures, self, EtcdOptions, RedisOptions, ServerKind, ZooKeeperOptions, port_open,
    process_alive, zookeeper::ZkSession,
};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::Command;

/// Set in the environment of a child test process to the role it plays.
const CHILD_ENV: &str = "DLOCK_FIXTURES_TEST_CHILD";

/// Runs a command; its trimmed stdout on success, an error with stderr otherwise.
async fn run(program: impl AsRef<std::ffi::OsStr>, args: &[&str]) -> Result<String> {
    let program = program.as_ref().to_owned();
    let out = Command::new(&program)
        .args(args)
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .output()
        .await
        .with_context(|| format!("running {program:?}"))?;
    let stdout = String::from_utf8_lossy(&out.stdout).trim().to_string();
    if !out.status.success() {
        bail!(
            "{program:?} {args:?} failed ({}): {}{}",
            out.status,
            stdout,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(stdout)
}

fn psql_path() -> PathBuf {
    fixtures::postgres::find_bindir()
        .map(|d| d.join("psql"))
        .ok()
        .filter(|p| p.exists())
        .unwrap_or_else(|| PathBuf::from("psql"))
}

async fn psql(port: u16, sql: &str) -> Result<String> {
    let port = port.to_string();
    run(
        psql_path(),
        &[
            "-X",
            "-h",
            "127.0.0.1",
            "-p",
            &port,
            "-U",
            "postgres",
            "-d",
            "postgres",
            "-v",
            "ON_ERROR_STOP=1",
            "-A",
            "-t",
            "-q",
            "-c",
            sql,
        ],
    )
    .await
}

async fn redis_cli(port: u16, args: &[&str]) -> Result<String> {
    let port = port.to_string();
    let mut all = vec!["-h", "127.0.0.1", "-p", &port];
    all.extend_from_slice(args);
    run("redis-cli", &all).await
}

async fn etcdctl(port: u16, timeout: &str, args: &[&str]) -> Result<String> {
    let endpoint = format!("--endpoints=127.0.0.1:{port}");
    let timeout = format!("--command-timeout={timeout}");
    let mut all = vec![endpoint.as_str(), "--dial-timeout=2s", timeout.as_str()];
    all.extend_from_slice(args);
    run("etcdctl", &all).await
}

fn addr(port: u16) -> std::net::SocketAddr {
    std::net::SocketAddr::from(([127, 0, 0, 1], port))
}

/// The process is dead, the port closed and (unless `dir` is None) the directory gone.
async fn assert_gone(pid: u32, port: u16, dir: Option<&Path>) -> Result<()> {
    common::eventually(
        &format!("pid {pid} to die"),
        Duration::from_secs(15),
        || async move { Ok(!process_alive(pid)) },
    )
    .await?;
    common::eventually(
        &format!("port {port} to close"),
        Duration::from_secs(15),
        || async move { Ok(!port_open(port)) },
    )
    .await?;
    if let Some(dir) = dir {
        ensure!(!dir.exists(), "{} still exists", dir.display());
    }
    Ok(())
}

fn uid_of(pid: u32) -> Option<u32> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("Uid:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

// ---------------------------------------------------------------------------------------------
// PostgreSQL

#[tokio::test]
async fn postgres_serves_restarts_and_keeps_data() -> Result<()> {
    common::init_tracing("dlock_fixtures=info,dlock_compare=info");
    let pg = fixtures::managed_postgres().await?;
    let port = pg.port().unwrap();
    assert_eq!(
        pg.url(),
        format!("postgres://postgres@127.0.0.1:{port}/postgres")
    );
    let pid = pg.pid().unwrap();
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } == 0 {
        assert_ne!(uid_of(pid), Some(0), "PostgreSQL must not run as root");
    }
    assert_eq!(psql(port, "SELECT 1").await?, "1");
    psql(
        port,
        "CREATE TABLE t (v text); INSERT INTO t VALUES ('before restart')",
    )
    .await?;

    pg.restart().await?;
    assert_eq!(pg.port(), Some(port));
    assert_ne!(pg.pid(), Some(pid));
    assert_eq!(psql(port, "SELECT v FROM t").await?, "before restart");

    psql(port, "INSERT INTO t VALUES ('before kill')").await?;
    let pid = pg.pid().unwrap();
    pg.kill().await?;
    assert!(!process_alive(pid));
    assert!(!port_open(port));
    assert!(psql(port, "SELECT 1").await.is_err());
    pg.start().await?;
    assert_eq!(
        psql(port, "SELECT v FROM t ORDER BY v").await?,
        "before kill\nbefore restart"
    );

    let (pid, dir) = (pg.pid().unwrap(), pg.dir().unwrap().to_path_buf());
    assert!(dir.starts_with(fixtures::fixtures_root()));
    drop(pg);
    assert_gone(pid, port, Some(&dir)).await
}

// ---------------------------------------------------------------------------------------------
// Redis

#[tokio::test]
async fn redis_restarts_on_same_port_and_forgets_without_persistence() -> Result<()> {
    common::init_tracing("dlock_fixtures=info,dlock_compare=info");
    let r = fixtures::managed_redis(RedisOptions::default()).await?;
    let port = r.port().unwrap();
    assert_eq!(r.url(), format!("redis://127.0.0.1:{port}"));
    assert_eq!(redis_cli(port, &["SET", "k", "v"]).await?, "OK");
    assert_eq!(redis_cli(port, &["GET", "k"]).await?, "v");
    assert_eq!(
        redis_cli(port, &["CONFIG", "GET", "appendonly"]).await?,
        "appendonly\nno"
    );

    r.restart().await?;
    assert_eq!(r.port(), Some(port));
    assert_eq!(redis_cli(port, &["GET", "k"]).await?, "");

    let pid = r.pid().unwrap();
    r.stop().await?;
    assert!(!r.is_running().await);
    assert_eq!(r.pid(), None);
    assert_gone(pid, port, None).await?;
    ensure!(r.dir().unwrap().exists(), "stop must keep the directory");
    r.start().await?;
    assert_eq!(redis_cli(port, &["PING"]).await?, "PONG");
    Ok(())
}

#[tokio::test]
async fn redis_with_persistence_keeps_data_across_kill_and_restart() -> Result<()> {
    common::init_tracing("dlock_fixtures=info,dlock_compare=info");
    // Shared and driven from another task, as fault-injecting tests will do.
    let r = std::sync::Arc::new(fixtures::managed_redis(RedisOptions { persistent: true }).await?);
    let port = r.port().unwrap();
    assert_eq!(redis_cli(port, &["SET", "k", "v1"]).await?, "OK");
    r.kill().await?;
    assert!(!port_open(port));
    r.start().await?;
    assert_eq!(redis_cli(port, &["GET", "k"]).await?, "v1");
    assert_eq!(redis_cli(port, &["SET", "k", "v2"]).await?, "OK");
    let shared = r.clone();
    tokio::spawn(async move { shared.restart().await }).await??;
    assert_eq!(r.port(), Some(port));
    assert_eq!(redis_cli(port, &["GET", "k"]).await?, "v2");
    Ok(())
}

#[tokio::test]
async fn redis_pause_and_resume() -> Result<()> {
    common::init_tracing("dlock_fixtures=info,dlock_compare=info");
    let r = fixtures::managed_redis(RedisOptions::default()).await?;
    let a = r.addr().unwrap();
    fixtures::redis::ping(a).await?;
    r.pause().await?;
    let paused = tokio::time::timeout(Duration::from_millis(500), fixtures::redis::ping(a)).await;
    assert!(paused.is_err(), "a paused Redis answered: {paused:?}");
    r.resume().await?;
    tokio::time::timeout(Duration::from_secs(5), fixtures::redis::ping(a)).await??;
    // A paused server can still be killed; Drop must not hang on it either.
    r.pause().await?;
    let (pid, port, dir) = (
        r.pid().unwrap(),
        r.port().unwrap(),
        r.dir().unwrap().to_path_buf(),
    );
    drop(r);
    assert_gone(pid, port, Some(&dir)).await
}

#[tokio::test]
async fn redlock_instances_are_independent() -> Result<()> {
    common::init_tracing("dlock_fixtures=info,dlock_compare=info");
    let c = fixtures::redis_instances(3, RedisOptions::default()).await?;
    let ports = c.ports();
    assert_eq!(ports.len(), 3);
    assert_eq!(
        c.url(),
        format!(
            "redlock://127.0.0.1:{},127.0.0.1:{},127.0.0.1:{}",
            ports[0], ports[1], ports[2]
        )
    );
    assert_eq!(
        c.members()[1].url(),
        format!("redis://127.0.0.1:{}", ports[1])
    );
    redis_cli(ports[0], &["SET", "only-here", "1"]).await?;
    for &p in &ports[1..] {
        assert_eq!(redis_cli(p, &["GET", "only-here"]).await?, "");
    }
    c.kill_member(1).await?;
    assert!(!port_open(ports[1]));
    assert_eq!(redis_cli(ports[0], &["GET", "only-here"]).await?, "1");
    assert_eq!(redis_cli(ports[2], &["PING"]).await?, "PONG");
    c.restart_member(1).await?;
    assert_eq!(redis_cli(ports[1], &["PING"]).await?, "PONG");
    assert!(c.kill_member(3).await.is_err());

    let pids: Vec<u32> = c.pids().into_iter().map(Option::unwrap).collect();
    let dir = c.dir().unwrap().to_path_buf();
    drop(c);
    for (pid, port) in pids.into_iter().zip(ports) {
        assert_gone(pid, port, None).await?;
    }
    ensure!(!dir.exists(), "{} still exists", dir.display());
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// etcd

#[tokio::test]
async fn etcd_serves_restarts_and_keeps_data() -> Result<()> {
    common::init_tracing("dlock_fixtures=info,dlock_compare=info");
    let e = fixtures::managed_etcd(EtcdOptions::default()).await?;
    let port = e.port().unwrap();
    assert_eq!(e.url(), format!("etcd://127.0.0.1:{port}"));
    assert_eq!(etcdctl(port, "5s", &["put", "k", "v1"]).await?, "OK");
    e.restart().await?;
    assert_eq!(e.port(), Some(port));
    assert_eq!(
        etcdctl(port, "5s", &["get", "k", "--print-value-only"]).await?,
        "v1"
    );
    assert_eq!(etcdctl(port, "5s", &["put", "k", "v2"]).await?, "OK");
    e.kill().await?;
    assert!(!port_open(port));
    e.start().await?;
    assert_eq!(
        etcdctl(port, "5s", &["get", "k", "--print-value-only"]).await?,
        "v2"
    );
    Ok(())
}

#[tokio::test]
async fn etcd_cluster_writes_with_one_member_down_not_two() -> Result<()> {
    common::init_tracing("dlock_fixtures=info,dlock_compare=info");
    let c = fixtures::etcd_cluster(3, EtcdOptions::default()).await?;
    let p: [u16; 3] = c.ports().try_into().unwrap();
    assert_eq!(
        c.url(),
        format!(
            "etcd://127.0.0.1:{},127.0.0.1:{},127.0.0.1:{}",
            p[0], p[1], p[2]
        )
    );
    let members = etcdctl(p[0], "5s", &["member", "list"]).await?;
    assert_eq!(members.lines().count(), 3, "{members}");
    etcdctl(p[0], "5s", &["put", "k", "all up"]).await?;
    // Exactly one member says it leads, and Cluster::leader() names it.
    let mut leading = Vec::new();
    for (i, &port) in p.iter().enumerate() {
        if fixtures::etcd::is_leader(addr(port)).await? {
            leading.push(i);
        }
    }
    assert_eq!(leading.len(), 1, "{leading:?}");
    assert_eq!(c.leader().await?, Some(leading[0]));

    c.kill_member(0).await?;
    common::eventually(
        "a write through member 2 with member 0 down",
        Duration::from_secs(30),
        || async move { Ok(etcdctl(p[2], "3s", &["put", "k", "one down"]).await? == "OK") },
    )
    .await?;
    assert_eq!(
        etcdctl(p[1], "5s", &["get", "k", "--print-value-only"]).await?,
        "one down"
    );

    c.kill_member(1).await?;
    let refused = etcdctl(p[2], "3s", &["put", "k", "two down"]).await;
    assert!(
        refused.is_err(),
        "a write succeeded without quorum: {refused:?}"
    );

    c.restart_members(&[0, 1]).await?;
    common::eventually(
        "a write through member 0 after restart",
        Duration::from_secs(30),
        || async move { Ok(etcdctl(p[0], "3s", &["put", "k", "all back"]).await? == "OK") },
    )
    .await?;
    assert_eq!(
        etcdctl(p[2], "5s", &["get", "k", "--print-value-only"]).await?,
        "all back"
    );
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// ZooKeeper

async fn zk_create(port: u16, path: &str, data: &[u8]) -> Result<()> {
    let mut s = ZkSession::connect(addr(port), Duration::from_secs(10)).await?;
    s.create(path, data).await?;
    s.close().await
}

async fn zk_get(port: u16, path: &str) -> Result<Option<Vec<u8>>> {
    let mut s = ZkSession::connect(addr(port), Duration::from_secs(10)).await?;
    let data = s.get_data(path).await?;
    s.close().await?;
    Ok(data)
}

#[tokio::test]
async fn zookeeper_serves_restarts_and_keeps_data() -> Result<()> {
    common::init_tracing("dlock_fixtures=info,dlock_compare=info");
    let z = fixtures::managed_zookeeper(ZooKeeperOptions::default()).await?;
    let port = z.port().unwrap();
    assert_eq!(z.url(), format!("zk://127.0.0.1:{port}"));
    let s = ZkSession::connect(addr(port), Duration::from_secs(30)).await?;
    assert_eq!(
        s.timeout(),
        Duration::from_secs(30),
        "maxSessionTimeout too low"
    );
    s.close().await?;
    zk_create(port, "/before-restart", b"1").await?;
    assert!(zk_create(port, "/before-restart", b"1").await.is_err());

    z.restart().await?;
    assert_eq!(z.port(), Some(port));
    assert_eq!(zk_get(port, "/before-restart").await?, Some(b"1".to_vec()));
    zk_create(port, "/before-kill", b"2").await?;
    z.kill().await?;
    assert!(!port_open(port));
    z.start().await?;
    assert_eq!(zk_get(port, "/before-kill").await?, Some(b"2".to_vec()));
    assert_eq!(zk_get(port, "/never-created").await?, None);
    Ok(())
}

#[tokio::test]
async fn zookeeper_ensemble_writes_with_one_member_down_not_two() -> Result<()> {
    common::init_tracing("dlock_fixtures=info,dlock_compare=info");
    let c = fixtures::zookeeper_ensemble(3, ZooKeeperOptions::default()).await?;
    let p: [u16; 3] = c.ports().try_into().unwrap();
    assert_eq!(
        c.url(),
        format!(
            "zk://127.0.0.1:{},127.0.0.1:{},127.0.0.1:{}",
            p[0], p[1], p[2]
        )
    );
    let modes: Vec<String> = {
        let mut modes = Vec::new();
        for &port in &p {
            let srvr = fixtures::zookeeper::four_letter_word(addr(port), "srvr").await?;
            modes.extend(
                srvr.lines()
                    .filter(|l| l.starts_with("Mode:"))
                    .map(String::from),
            );
        }
        modes
    };
    assert_eq!(
        modes.iter().filter(|m| m.contains("leader")).count(),
        1,
        "{modes:?}"
    );
    assert_eq!(
        modes.iter().filter(|m| m.contains("follower")).count(),
        2,
        "{modes:?}"
    );
    let leader = modes.iter().position(|m| m.contains("leader"));
    assert_eq!(c.leader().await?, leader, "{modes:?}");
    zk_create(p[0], "/all-up", b"").await?;

    c.kill_member(0).await?;
    common::eventually(
        "a create through member 2 with member 0 down",
        Duration::from_secs(30),
        || {
            async move {
                match zk_create(p[2], "/one-down", b"x").await {
                    Ok(()) => Ok(true),
                    // An earlier attempt may have succeeded without us seeing the reply.
                    Err(e) if format!("{e:#}").contains("NODEEXISTS") => Ok(true),
                    Err(e) => Err(e),
                }
            }
        },
    )
    .await?;
    assert_eq!(zk_get(p[1], "/one-down").await?, Some(b"x".to_vec()));

    c.kill_member(1).await?;
    common::eventually(
        "member 2 to stop serving",
        Duration::from_secs(30),
        || async move {
            let srvr = fixtures::zookeeper::four_letter_word(addr(p[2]), "srvr").await?;
            Ok(srvr.contains("not currently serving"))
        },
    )
    .await?;
    let refused =
        tokio::time::timeout(Duration::from_secs(5), zk_create(p[2], "/two-down", b"")).await;
    assert!(
        matches!(refused, Err(_) | Ok(Err(_))),
        "a create succeeded without quorum"
    );

    c.restart_members(&[0, 1]).await?;
    zk_create(p[0], "/all-back", b"").await?;
    for path in ["/all-up", "/one-down", "/all-back"] {
        assert!(zk_get(p[2], path).await?.is_some(), "{path} lost");
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Child processes: abort, panic, environment, missing binaries, `servers up`.

fn child(mode: &str) -> Command {
    let mut cmd = Command::new(std::env::current_exe().expect("current_exe"));
    cmd.args([
        "--exact",
        "child_process_entry",
        "--ignored",
        "--nocapture",
        "--test-threads=1",
    ])
    .env(CHILD_ENV, mode)
    .stdin(Stdio::null())
    .kill_on_drop(true);
    cmd
}

/// Lines `CHILD <kind> <pid> <port> <dir>` printed by a child.
struct Reported {
    pid: u32,
    port: u16,
    dir: PathBuf,
}

fn reported(stdout: &str) -> Vec<Reported> {
    stdout
        .lines()
        .filter_map(|l| l.strip_prefix("CHILD server "))
        .map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            Reported {
                pid: f[1].parse().unwrap(),
                port: f[2].parse().unwrap(),
                dir: PathBuf::from(f[3]),
            }
        })
        .collect()
}

fn report(s: &fixtures::Server) {
    let mut out = std::io::stdout().lock();
    writeln!(
        out,
        "CHILD server {} {} {} {}",
        s.kind(),
        s.pid().unwrap(),
        s.port().unwrap(),
        s.dir().unwrap().display()
    )
    .unwrap();
    out.flush().unwrap();
}

/// Not a test: the body of the child processes the tests below start.
#[tokio::test]
#[ignore = "helper: runs only as a child process of other tests"]
async fn child_process_entry() -> Result<()> {
    common::init_tracing("dlock_fixtures=info,dlock_compare=info");
    let Ok(mode) = std::env::var(CHILD_ENV) else {
        return Ok(());
    };
    match mode.as_str() {
        "abort" => {
            let (pg, redis, etcd, zk) = tokio::join!(
                fixtures::managed_postgres(),
                fixtures::managed_redis(RedisOptions { persistent: true }),
                fixtures::managed_etcd(EtcdOptions::default()),
                fixtures::managed_zookeeper(ZooKeeperOptions::default()),
            );
            for s in [pg?, redis?, etcd?, zk?] {
                report(&s);
                std::mem::forget(s);
            }
            std::process::abort();
        }
        "panic" => {
            // The panicking task's servers must be gone while this process still lives (so
            // neither the parent-death signal nor the sweep can have done it).
            let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
            let seen2 = seen.clone();
            let task = tokio::spawn(async move {
                let (pg, redis) = tokio::join!(
                    fixtures::managed_postgres(),
                    fixtures::managed_redis(RedisOptions::default())
                );
                let (pg, redis) = (pg.unwrap(), redis.unwrap());
                for s in [&pg, &redis] {
                    report(s);
                    let dir = s.dir().unwrap().to_path_buf();
                    seen2
                        .lock()
                        .unwrap()
                        .push((s.pid().unwrap(), s.port().unwrap(), dir));
                }
                panic!("deliberate panic with servers running");
            });
            let err = task.await.expect_err("the task panicked");
            ensure!(err.is_panic(), "{err}");
            let seen = seen.lock().unwrap().clone();
            ensure!(seen.len() == 2, "servers did not start");
            for (pid, port, dir) in seen {
                assert_gone(pid, port, Some(&dir)).await?;
            }
            println!("CHILD clean");
        }
        "env" => {
            let external = std::env::var("DLOCK_TEST_REDIS_URL")?;
            let r = fixtures::redis().await?;
            ensure!(!r.is_managed() && r.url() == external && r.pid().is_none());
            r.wait_ready().await?;
            let err = r.kill().await.expect_err("killing an external server");
            ensure!(format!("{err}").contains("external"), "{err}");
            let pg = fixtures::postgres().await?;
            ensure!(!pg.is_managed() && pg.url() == "postgres://someone@127.0.0.1:1/db");
            let managed = fixtures::managed_redis(RedisOptions::default()).await?;
            ensure!(managed.is_managed() && managed.url() != external);
            println!("CHILD ok");
        }
        "missing" => {
            let redis = fixtures::redis()
                .await
                .expect_err("redis-server is not in PATH");
            let etcd = fixtures::etcd().await.expect_err("etcd is not in PATH");
            let zk = fixtures::zookeeper()
                .await
                .expect_err("java is not in PATH");
            let pg = fixtures::postgres().await.expect_err("initdb is not there");
            for (err, binary, var) in [
                (redis, "`redis-server`", "DLOCK_TEST_REDIS_URL"),
                (etcd, "`etcd`", "DLOCK_TEST_ETCD_URL"),
                (zk, "`java`", "DLOCK_TEST_ZOOKEEPER_URL"),
                (pg, "`initdb`", "DLOCK_TEST_POSTGRES_URL"),
            ] {
                let msg = format!("{err:#}");
                println!("CHILD error {msg}");
                for needle in [binary, "scripts/install-servers", "apt-get install", var] {
                    ensure!(msg.contains(needle), "{needle:?} missing from: {msg}");
                }
            }
            println!("CHILD ok");
        }
        "up" => fixtures::servers_up(false).await?,
        "up-cluster" => fixtures::servers_up(true).await?,
        other => bail!("unknown child mode {other}"),
    }
    Ok(())
}

#[tokio::test]
async fn aborted_test_process_leaves_no_server_or_directory() -> Result<()> {
    common::init_tracing("dlock_fixtures=info,dlock_compare=info");
    let out = child("abort")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .output()
        .await?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    let servers = reported(&stdout);
    ensure!(
        servers.len() == 4,
        "child did not start 4 servers ({}): {stdout}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    {
        use std::os::unix::process::ExitStatusExt;
        assert_eq!(out.status.signal(), Some(libc::SIGABRT), "{}", out.status);
    }
    // The parent-death signal took the servers down with the child ...
    for s in &servers {
        assert_gone(s.pid, s.port, None).await?;
    }
    // ... and the sweep removes what it left on disk.
    fixtures::sweep_stale();
    for s in &servers {
        ensure!(!s.dir.exists(), "{} survived the sweep", s.dir.display());
    }
    Ok(())
}

#[tokio::test]
async fn panicking_test_leaves_no_server_or_directory() -> Result<()> {
    common::init_tracing("dlock_fixtures=info,dlock_compare=info");
    let out = child("panic")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .output()
        .await?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    let servers = reported(&stdout);
    ensure!(
        out.status.success() && stdout.contains("CHILD clean") && servers.len() == 2,
        "child failed ({}): {stdout}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    ensure!(
        String::from_utf8_lossy(&out.stderr).contains("deliberate panic"),
        "the child did not panic as planned"
    );
    for s in &servers {
        assert_gone(s.pid, s.port, Some(&s.dir)).await?;
    }
    Ok(())
}

#[tokio::test]
async fn env_urls_give_external_handles_and_managed_constructors_ignore_them() -> Result<()> {
    common::init_tracing("dlock_fixtures=info,dlock_compare=info");
    let r = fixtures::managed_redis(RedisOptions::default()).await?;
    let out = child("env")
        .env("DLOCK_TEST_REDIS_URL", r.url())
        .env(
            "DLOCK_TEST_POSTGRES_URL",
            "postgres://someone@127.0.0.1:1/db",
        )
        .output()
        .await?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    ensure!(
        out.status.success() && stdout.contains("CHILD ok"),
        "child failed ({}): {stdout}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    // The external server was not touched.
    fixtures::redis::ping(r.addr().unwrap()).await
}

#[tokio::test]
async fn missing_binaries_are_errors_that_say_how_to_install() -> Result<()> {
    common::init_tracing("dlock_fixtures=info,dlock_compare=info");
    let out = child("missing")
        .env("PATH", "/nonexistent-dlock-test-path")
        .env_remove("JAVA_HOME")
        .env(
            fixtures::postgres::BINDIR_ENV,
            "/nonexistent-dlock-test-path",
        )
        .env_remove("DLOCK_TEST_POSTGRES_URL")
        .env_remove("DLOCK_TEST_REDIS_URL")
        .env_remove("DLOCK_TEST_ETCD_URL")
        .env_remove("DLOCK_TEST_ZOOKEEPER_URL")
        .output()
        .await?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    ensure!(
        out.status.success() && stdout.contains("CHILD ok"),
        "child failed ({}): {stdout}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(())
}

/// Runs `dlock servers up` (as `servers_up`) in a child, reads its exports, checks every
/// server answers, sends `stop_signal`, checks everything is gone.
async fn servers_up_in_child(
    mode: &str,
    expected: &[&str],
    stop_signal: libc::c_int,
) -> Result<(Duration, HashMap<String, String>)> {
    let started = Instant::now();
    let mut proc_ = child(mode)
        .env_remove("DLOCK_TEST_POSTGRES_URL")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    let pid = proc_.id().unwrap();
    let mut stderr = proc_.stderr.take().unwrap();
    let stderr_text = tokio::spawn(async move {
        use tokio::io::AsyncReadExt;
        let mut text = String::new();
        let _ = stderr.read_to_string(&mut text).await;
        text
    });
    let mut lines = BufReader::new(proc_.stdout.take().unwrap()).lines();
    let mut exports: HashMap<String, String> = HashMap::new();
    let read = async {
        while exports.len() < expected.len() {
            let Some(line) = lines.next_line().await? else {
                bail!("child exited before printing all exports: {exports:?}");
            };
            if let Some(kv) = line.strip_prefix("export ") {
                let (k, v) = kv.split_once('=').context("export without =")?;
                exports.insert(k.to_string(), v.to_string());
            }
        }
        Ok(())
    };
    if let Err(e) = tokio::time::timeout(Duration::from_secs(90), read).await? {
        let _ = proc_.start_kill();
        let err = stderr_text.await.unwrap_or_default();
        bail!("{e:#}\nchild stderr:\n{err}");
    }
    let took = started.elapsed();
    let mut ports = Vec::new();
    for var in expected {
        let url = exports
            .get(*var)
            .with_context(|| format!("{var} not exported"))?;
        let kind = match *var {
            "DLOCK_TEST_POSTGRES_URL" => ServerKind::Postgres,
            "DLOCK_TEST_ETCD_URL" => ServerKind::Etcd,
            "DLOCK_TEST_ZOOKEEPER_URL" => ServerKind::ZooKeeper,
            _ => ServerKind::Redis,
        };
        let hosts = url.split_once("://").unwrap().1;
        let hosts = hosts.rsplit_once('@').map_or(hosts, |(_, h)| h);
        let hosts = hosts.split('/').next().unwrap();
        for host in hosts.split(',') {
            let port: u16 = host.rsplit_once(':').unwrap().1.parse()?;
            kind.probe(addr(port))
                .await
                .with_context(|| format!("{var}={url}: {host} does not answer"))?;
            ports.push(port);
        }
    }
    // SAFETY: signalling our own child process.
    unsafe {
        libc::kill(pid as libc::pid_t, stop_signal);
    }
    let status = tokio::time::timeout(Duration::from_secs(60), proc_.wait()).await??;
    let err = stderr_text.await.unwrap_or_default();
    eprintln!("servers up said:\n{err}");
    ensure!(status.success(), "servers up exited with {status}");
    for port in ports {
        ensure!(
            !port_open(port),
            "port {port} still open after servers up stopped"
        );
    }
    let leftovers: Vec<_> = std::fs::read_dir(fixtures::fixtures_root())?
        .flatten()
        .filter(|e| {
            e.file_name()
                .to_string_lossy()
                .starts_with(&format!("{pid}-"))
        })
        .map(|e| e.path())
        .collect();
    ensure!(leftovers.is_empty(), "left behind: {leftovers:?}");
    Ok((took, exports))
}

#[tokio::test]
async fn servers_up_prints_exports_and_stops_everything_on_sigterm() -> Result<()> {
    common::init_tracing("dlock_fixtures=info,dlock_compare=info");
    let (took, _) = servers_up_in_child(
        "up",
        &[
            "DLOCK_TEST_POSTGRES_URL",
            "DLOCK_TEST_REDIS_URL",
            "DLOCK_TEST_ETCD_URL",
            "DLOCK_TEST_ZOOKEEPER_URL",
        ],
        libc::SIGTERM,
    )
    .await?;
    eprintln!(
        "servers up: all four ready after {:.1} s",
        took.as_secs_f64()
    );
    ensure!(took < Duration::from_secs(60), "servers up took {took:?}");
    Ok(())
}

#[tokio::test]
async fn servers_up_cluster_prints_cluster_urls_and_stops_everything_on_ctrl_c() -> Result<()> {
    common::init_tracing("dlock_fixtures=info,dlock_compare=info");
    let (took, exports) = servers_up_in_child(
        "up-cluster",
        &[
            "DLOCK_TEST_POSTGRES_URL",
            "DLOCK_TEST_REDIS_URL",
            "DLOCK_TEST_ETCD_URL",
            "DLOCK_TEST_ZOOKEEPER_URL",
            "DLOCK_TEST_REDLOCK_URL",
        ],
        libc::SIGINT,
    )
    .await?;
    eprintln!(
        "servers up --cluster: all ready after {:.1} s",
        took.as_secs_f64()
    );
    for (var, members) in [
        ("DLOCK_TEST_ETCD_URL", 3),
        ("DLOCK_TEST_ZOOKEEPER_URL", 3),
        ("DLOCK_TEST_REDLOCK_URL", 3),
        ("DLOCK_TEST_REDIS_URL", 1),
    ] {
        let url = &exports[var];
        assert_eq!(url.split(',').count(), members, "{var}={url}");
    }
    assert!(exports["DLOCK_TEST_REDLOCK_URL"].starts_with("redlock://"));
    ensure!(
        took < Duration::from_secs(60),
        "servers up --cluster took {took:?}"
    );
    Ok(())
}
