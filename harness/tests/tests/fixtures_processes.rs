//! Tests of the server fixtures from child processes: these tests re-run this test binary as
//! a child process (see `child_process_entry`) to check what happens when a test process
//! aborts, panics, or runs with a different environment, when a server binary is missing, and
//! what `dlock servers up` prints and stops.

mod common;
mod fixtures_common;

use fixtures_common::{addr, assert_gone};

use std::collections::HashMap;
use std::io::Write;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use dlock_fixtures::{
    self as fixtures, self, EtcdOptions, RedisOptions, ServerKind, ZooKeeperOptions, port_open,
};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::Command;

/// Set in the environment of a child test process to the role it plays.
const CHILD_ENV: &str = "DLOCK_FIXTURES_TEST_CHILD";

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
                fixtures::managed_redis(RedisOptions {
                    persistent: true,
                    ..Default::default()
                }),
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
            let mariadb = fixtures::mariadb()
                .await
                .expect_err("mariadbd is not there");
            for (err, binary, var) in [
                (redis, "`redis-server`", "DLOCK_TEST_REDIS_URL"),
                (etcd, "`etcd`", "DLOCK_TEST_ETCD_URL"),
                (zk, "`java`", "DLOCK_TEST_ZOOKEEPER_URL"),
                (pg, "`initdb`", "DLOCK_TEST_POSTGRES_URL"),
                (mariadb, "`mariadbd`", "DLOCK_TEST_MARIADB_URL"),
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
        .env(
            fixtures::mariadb::BINDIR_ENV,
            "/nonexistent-dlock-test-path",
        )
        .env_remove("DLOCK_TEST_MARIADB_URL")
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
            "DLOCK_TEST_MARIADB_URL" => ServerKind::MariaDb,
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
            "DLOCK_TEST_MARIADB_URL",
        ],
        libc::SIGTERM,
    )
    .await?;
    eprintln!(
        "servers up: all five ready after {:.1} s",
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
            "DLOCK_TEST_MARIADB_URL",
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
        ("DLOCK_TEST_MARIADB_URL", 1),
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
