//! Redis backend benchmarks: uncontended acquire + release beside the raw floor (`SET NX PX`
//! plus the token-checked release script, on one connection, in the same run), throughput
//! with 64 tasks on distinct names, and handoff latency with 8 waiters.
//!
//! `cargo bench -p benches --no-default-features --features redis --bench redis`. The server
//! comes from `dlock_fixtures::redis()` (`DLOCK_TEST_REDIS_URL` to use your own).
//! `DLOCK_BENCH_SAMPLES` sets the number of latency samples (default 2000 per side).

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use benches::{Samples, env_usize, micros, once, report_vs_floor};
use criterion::Criterion;
use dlock::{LockName, LockOptions};
use redis::aio::MultiplexedConnection;
use redis::{AsyncConnectionConfig, RedisConnectionInfo, Script};

const RELEASE: &str = r#"
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
"#;

/// dlock's own scripts (acquire with the fencing counter; release with the publish), for
/// the breakdown line: the same server work as dlock without the client-side machinery.
const DLOCK_ACQUIRE: &str = r#"
if redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then
  local n = redis.call('HINCRBY', KEYS[2], ARGV[3], 1)
  return {1, n}
end
return {0, redis.call('PTTL', KEYS[1])}
"#;
const DLOCK_RELEASE: &str = r#"
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('DEL', KEYS[1])
  redis.call('PUBLISH', KEYS[1], 'released')
  return 1
end
return 0
"#;

/// The floor: what any hand-written Redis lock does, on one multiplexed connection with
/// Nagle off (as dlock's own connection).
struct Floor {
    conn: MultiplexedConnection,
    release: Script,
    dlock_acquire: Script,
    dlock_release: Script,
    n: AtomicU64,
}

impl Floor {
    async fn connect(url: &str) -> Result<Floor> {
        let addr = url
            .trim_start_matches("redis://")
            .split(['/', '?'])
            .next()
            .context("host:port")?
            .to_string();
        let stream = tokio::net::TcpStream::connect(addr).await?;
        stream.set_nodelay(true)?;
        let (conn, driver) = MultiplexedConnection::new_with_config(
            &RedisConnectionInfo::default(),
            stream,
            AsyncConnectionConfig::new(),
        )
        .await?;
        tokio::spawn(driver);
        let release = Script::new(RELEASE);
        let mut floor = Floor {
            conn,
            release,
            dlock_acquire: Script::new(DLOCK_ACQUIRE),
            dlock_release: Script::new(DLOCK_RELEASE),
            n: AtomicU64::new(0),
        };
        floor.release.load_async(&mut floor.conn).await?;
        floor.dlock_acquire.load_async(&mut floor.conn).await?;
        floor.dlock_release.load_async(&mut floor.conn).await?;
        Ok(floor)
    }

    async fn lock_unlock(&self, key: &str) -> Result<()> {
        let token = format!("{:032x}", self.n.fetch_add(1, Ordering::Relaxed));
        let mut conn = self.conn.clone();
        let set: Option<String> = redis::cmd("SET")
            .arg(key)
            .arg(&token)
            .arg("NX")
            .arg("PX")
            .arg(30_000)
            .query_async(&mut conn)
            .await?;
        anyhow::ensure!(set.is_some(), "floor: {key} was taken");
        let n: i64 = self
            .release
            .key(key)
            .arg(&token)
            .invoke_async(&mut conn)
            .await?;
        anyhow::ensure!(n == 1, "floor: release said not ours");
        Ok(())
    }
}

impl Floor {
    /// dlock's two scripts on the raw connection.
    async fn scripts_only(&self, key: &str) -> Result<()> {
        let token = format!("{:032x}", self.n.fetch_add(1, Ordering::Relaxed));
        let mut conn = self.conn.clone();
        let (ok, _): (i64, i64) = self
            .dlock_acquire
            .key(key)
            .key("bench-fence")
            .arg(&token)
            .arg(30_000)
            .arg(key)
            .invoke_async(&mut conn)
            .await?;
        anyhow::ensure!(ok == 1, "scripts: {key} was taken");
        let n: i64 = self
            .dlock_release
            .key(key)
            .arg(&token)
            .invoke_async(&mut conn)
            .await?;
        anyhow::ensure!(n == 1, "scripts: release said not ours");
        Ok(())
    }
}

/// p50/p99 of acquire + release beside the floor.
async fn latency_vs_floor(url: &str, run: &str) -> Result<f64> {
    let backend = dlock::connect(url).await?;
    let floor = Floor::connect(url).await?;
    let name = LockName::new(format!("bench-{run}-lat"))?;
    let floor_key = format!("bench-{run}-floor");
    let opts = LockOptions::new();
    let n = env_usize("DLOCK_BENCH_SAMPLES", 2000);
    // Warm up every path, then alternate one floor, one scripts-only and one dlock operation,
    // so that load from other processes on this shared machine hits all three alike.
    Samples::collect(200, 0, || floor.lock_unlock(&floor_key)).await?;
    Samples::collect(200, 0, || floor.scripts_only(&floor_key)).await?;
    Samples::collect(200, 0, || once(&*backend, &name, &opts)).await?;
    let (mut raw, mut scripts, mut mine) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..n {
        let t = Instant::now();
        floor.lock_unlock(&floor_key).await?;
        raw.push(t.elapsed());
        let t = Instant::now();
        floor.scripts_only(&floor_key).await?;
        scripts.push(t.elapsed());
        let t = Instant::now();
        once(&*backend, &name, &opts).await?;
        mine.push(t.elapsed());
    }
    let raw = Samples::from(raw);
    let ratio = report_vs_floor("redis acquire+release", &Samples::from(mine), &raw);
    report_vs_floor(
        "  breakdown: dlock's two scripts, raw connection",
        &Samples::from(scripts),
        &raw,
    );
    Ok(ratio)
}

/// Acquire + release per second with 64 tasks on distinct names (one backend, shared
/// connection, as a service would use it), and the handoff to the next of 8 waiters, each on
/// its own connection as separate processes would be: the measurements `dlock compare`
/// reports, run longer.
async fn throughput_and_handoff(url: &str) -> Result<()> {
    let backend = dlock::connect(url).await?;
    let (tasks, per_task) = (64, 150);
    let rate = dlock_compare::bench::throughput(backend, tasks, per_task).await?;
    println!(
        "redis throughput, {tasks} tasks on distinct names: {rate:.0} acquire+release/s ({} in all)",
        tasks * per_task
    );
    let connect = || async { Ok(dlock::connect(url).await?) };
    let s = dlock_compare::bench::handoff(connect, 8, 400).await?;
    println!(
        "redis handoff with 8 waiters: p50 {:.1} µs  p99 {:.1} µs ({} handoffs)",
        micros(s.p50()),
        micros(s.p99()),
        s.len()
    );
    Ok(())
}

fn criterion_group(c: &mut Criterion, rt: &tokio::runtime::Runtime, url: &str) -> Result<()> {
    let backend = rt.block_on(dlock::connect(url))?;
    let floor = rt.block_on(Floor::connect(url))?;
    let name = LockName::new("bench-criterion")?;
    let opts = LockOptions::new();
    let mut group = c.benchmark_group("redis");
    group
        .sample_size(30)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2));
    group.bench_function("acquire_release", |b| {
        b.to_async(rt)
            .iter(|| async { once(&*backend, &name, &opts).await.unwrap() })
    });
    group.bench_function("floor_set_nx_px_release_script", |b| {
        b.to_async(rt)
            .iter(|| async { floor.lock_unlock("bench-criterion-floor").await.unwrap() })
    });
    group.finish();
    Ok(())
}

fn main() -> Result<()> {
    let rt = benches::runtime()?;
    let server = rt.block_on(dlock_fixtures::redis())?;
    benches::pin_apart(&server.pid().into_iter().collect::<Vec<_>>());
    let url = server.url().to_string();
    let run = format!("{:x}", std::process::id());
    let mut c = Criterion::default().configure_from_args();
    criterion_group(&mut c, &rt, &url)?;
    rt.block_on(async {
        latency_vs_floor(&url, &run).await?;
        throughput_and_handoff(&url).await
    })?;
    c.final_summary();
    Ok(())
}
