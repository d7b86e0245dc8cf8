//! Tests of the server fixtures: real servers, real probes, real faults.
//!
//! Data is written and read back with the servers' own tools (`psql`, `redis-cli`,
//! `etcdctl`) or, for ZooKeeper (whose CLI takes seconds to start), the raw protocol. What
//! happens when a test process aborts, panics or runs with a different environment is in
//! `fixtures_processes.rs`.

mod common;
mod fixtures_common;

use fixtures_common::{addr, assert_gone};

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use anyhow::{Context, Result, bail, ensure};
use dlock_fixtures::zookeeper::ZkSession;
use dlock_fixtures::{
    self as fixtures, self, EtcdOptions, RedisOptions, ZooKeeperOptions, port_open, process_alive,
};
use tokio::process::Command;

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

/// A SIGKILL of the server takes its backends too (they leave the postmaster's process
/// group), so a start right after it never meets the old shared memory still in use.
#[tokio::test]
async fn postgres_kill_takes_the_backends_and_a_start_follows_at_once() -> Result<()> {
    use sqlx::Connection;
    let pg = fixtures::managed_postgres().await?;
    for round in 0..3 {
        let mut conns = Vec::new();
        let mut backends = Vec::new();
        for _ in 0..3 {
            let mut c = sqlx::PgConnection::connect(pg.url()).await?;
            let pid: i32 = sqlx::query_scalar("SELECT pg_backend_pid()")
                .fetch_one(&mut c)
                .await?;
            backends.push(pid as u32);
            conns.push(c);
        }
        pg.kill().await?;
        for pid in &backends {
            ensure!(
                !process_alive(*pid),
                "round {round}: backend {pid} outlived the server's SIGKILL"
            );
        }
        drop(conns);
        pg.start()
            .await
            .with_context(|| format!("round {round}: start right after the kill"))?;
    }
    Ok(())
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
    let r = std::sync::Arc::new(
        fixtures::managed_redis(RedisOptions {
            persistent: true,
            ..Default::default()
        })
        .await?,
    );
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

/// The throwaway PKI: the good server certificate verifies against the CA, each bad one fails
/// for its own reason, keys are private, and the directory goes away on drop.
#[test]
fn the_test_pki_has_one_good_and_three_bad_server_certificates() {
    let pki = dlock_fixtures::TestPki::new().expect("openssl");
    let verify = |ca: &std::path::Path, cert: &std::path::Path, host: Option<&str>| {
        let mut cmd = std::process::Command::new("openssl");
        cmd.arg("verify").arg("-CAfile").arg(ca);
        if let Some(h) = host {
            cmd.arg("-verify_hostname").arg(h);
        }
        let out = cmd.arg(cert).output().expect("openssl verify");
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).to_string()
                + &String::from_utf8_lossy(&out.stderr),
        )
    };
    let (ok, out) = verify(&pki.ca, &pki.server.cert, Some("localhost"));
    assert!(ok, "{out}");
    let (ok, out) = verify(&pki.ca, &pki.client.cert, None);
    assert!(ok, "{out}");
    let (ok, out) = verify(&pki.ca, &pki.expired.cert, None);
    assert!(!ok && out.contains("expired"), "{out}");
    let (ok, out) = verify(&pki.ca, &pki.foreign.cert, None);
    assert!(!ok, "{out}");
    let (ok, out) = verify(&pki.other_ca, &pki.foreign.cert, Some("localhost"));
    assert!(ok, "the foreign certificate is good for its own CA: {out}");
    let (ok, out) = verify(&pki.ca, &pki.wrong_host.cert, Some("localhost"));
    assert!(!ok && out.contains("hostname"), "{out}");
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&pki.server.key)
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o077, 0, "the key is private");
    let dir = pki.dir().to_path_buf();
    drop(pki);
    assert!(!dir.exists(), "{} left behind", dir.display());
}
