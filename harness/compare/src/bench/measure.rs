//! The measurements: uncontended latency beside the floor, handoff, throughput, many locks
//! held at once.

use std::future::Future;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use dlock::{Backend, LockName, LockOptions, Wait};

use super::{Floor, Samples};

fn unique(prefix: &str) -> String {
    format!(
        "{prefix}-{}-{:x}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos())
    )
}

/// One acquire + release of `name`, failing if the release says the lock was not ours.
pub async fn once(backend: &dyn Backend, name: &LockName, opts: &LockOptions) -> Result<()> {
    let g = backend.acquire(name, opts).await?;
    anyhow::ensure!(g.release().await?, "release said the lock was not ours");
    Ok(())
}

/// Uncontended acquire + release beside the floor, alternating one by one (who goes first
/// alternates too). Returns (dlock, floor).
pub async fn uncontended(
    backend: &dyn Backend,
    floor: &Floor,
    samples: usize,
) -> Result<(Samples, Samples)> {
    let name = LockName::new(unique("bench-uncontended"))?;
    let floor_key = unique("bench-floor");
    alternate(backend, &name, &LockOptions::new(), samples, |nonce| {
        floor.lock_unlock(&floor_key, nonce)
    })
    .await
}

/// Like [`uncontended`], for a shared grant or a permit (limit 1) against the floor of that
/// mode; `None` when the floor has no such mode.
pub async fn uncontended_mode(
    backend: &dyn Backend,
    floor: &Floor,
    mode: super::floor::Mode,
    samples: usize,
) -> Result<Option<(Samples, Samples)>> {
    let name = LockName::new(unique("bench-mode"))?;
    let floor_key = unique("bench-mode-floor");
    let opts = match mode {
        super::floor::Mode::Shared => LockOptions::new().with_mode(dlock::LockMode::Shared),
        super::floor::Mode::Permit => LockOptions::new().with_permits(1),
    };
    if !floor.mode_lock_unlock(mode, &floor_key, 0).await? {
        return Ok(None);
    }
    let floor_key = &floor_key;
    let floor_op = |nonce| async move {
        floor
            .mode_lock_unlock(mode, floor_key, nonce)
            .await
            .map(drop)
    };
    Ok(Some(
        alternate(backend, &name, &opts, samples, floor_op).await?,
    ))
}

/// A warm-up of both sides, then `samples` of each, alternating one by one (which side goes
/// first alternates too), so that drift on the machine hits both alike.
async fn alternate<F, Fut>(
    backend: &dyn Backend,
    name: &LockName,
    opts: &LockOptions,
    samples: usize,
    mut floor: F,
) -> Result<(Samples, Samples)>
where
    F: FnMut(u64) -> Fut,
    Fut: Future<Output = Result<()>>,
{
    let mut nonce = 0u64;
    for _ in 0..(samples / 5).max(20) {
        nonce += 1;
        floor(nonce).await?;
        once(backend, name, opts).await?;
    }
    let (mut ours, mut raw) = (Vec::with_capacity(samples), Vec::with_capacity(samples));
    for i in 0..samples {
        for side in [i % 2, 1 - i % 2] {
            let t = Instant::now();
            if side == 0 {
                once(backend, name, opts).await?;
                ours.push(t.elapsed());
            } else {
                nonce += 1;
                floor(nonce).await?;
                raw.push(t.elapsed());
            }
        }
    }
    Ok((Samples::from(ours), Samples::from(raw)))
}

/// Time from a holder calling release to the next waiter holding the lock: one lock,
/// `waiters + 1` clients (each its own backend connection from `connect`), each releasing
/// as soon as it is granted, `handoffs` times in all.
pub async fn handoff<C, Fut>(connect: C, waiters: usize, handoffs: usize) -> Result<Samples>
where
    C: Fn() -> Fut,
    Fut: Future<Output = Result<Arc<dyn Backend>>>,
{
    let name = LockName::new(unique("bench-handoff"))?;
    let released_at: Arc<Mutex<Option<Instant>>> = Arc::default();
    let samples: Arc<Mutex<Vec<Duration>>> = Arc::default();
    let per_client = handoffs.div_ceil(waiters + 1).max(1);
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..=waiters {
        let backend = connect().await?;
        let (name, released_at, samples) = (name.clone(), released_at.clone(), samples.clone());
        tasks.spawn(async move {
            let opts = LockOptions::new().with_wait(Wait::For(Duration::from_secs(60)));
            for _ in 0..per_client {
                let g = backend.acquire(&name, &opts).await?;
                let granted = Instant::now();
                if let Some(at) = released_at.lock().unwrap_or_else(|p| p.into_inner()).take() {
                    samples
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .push(granted - at);
                }
                *released_at.lock().unwrap_or_else(|p| p.into_inner()) = Some(Instant::now());
                anyhow::ensure!(g.release().await?, "release said the lock was not ours");
            }
            anyhow::Ok(())
        });
    }
    let bound = Duration::from_secs(120);
    let all = async {
        while let Some(r) = tasks.join_next().await {
            r??;
        }
        anyhow::Ok(())
    };
    tokio::time::timeout(bound, all)
        .await
        .map_err(|_| anyhow!("the handoffs did not finish within {bound:?}"))??;
    let v = std::mem::take(&mut *samples.lock().unwrap_or_else(|p| p.into_inner()));
    Ok(Samples::from(v))
}

/// Acquire + release cycles per second with `tasks` tasks on distinct names, sharing one
/// backend (as one service would).
pub async fn throughput(backend: Arc<dyn Backend>, tasks: usize, per_task: usize) -> Result<f64> {
    let started = Instant::now();
    let mut set = tokio::task::JoinSet::new();
    let base = unique("bench-tp");
    for t in 0..tasks {
        let backend = Arc::clone(&backend);
        let name = LockName::new(format!("{base}-{t}"))?;
        set.spawn(async move {
            let opts = LockOptions::new();
            for _ in 0..per_task {
                once(&*backend, &name, &opts).await?;
            }
            anyhow::Ok(())
        });
    }
    while let Some(r) = set.join_next().await {
        r??;
    }
    Ok((tasks * per_task) as f64 / started.elapsed().as_secs_f64())
}

/// What holding many locks at once cost.
#[derive(Debug, Clone, Copy)]
pub struct ManyLocks {
    /// Locks held.
    pub locks: usize,
    /// Time to acquire them all (64 at a time).
    pub acquire: Duration,
    /// Growth of this process's resident memory while they were held, MiB.
    pub rss_mib: f64,
    /// Sockets this process opened for them (from a fresh backend).
    pub connections: usize,
}

/// Resident set size of this process in bytes (Linux `/proc/self/statm`).
pub fn rss_bytes() -> Option<u64> {
    let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
    let pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    // The page size is 4 KiB on every platform this runs on (x86-64, aarch64 Linux).
    Some(pages * 4096)
}

/// Open sockets of this process (Linux `/proc/self/fd`).
pub fn open_sockets() -> Option<usize> {
    let dir = std::fs::read_dir("/proc/self/fd").ok()?;
    Some(
        dir.filter_map(|e| e.ok())
            .filter(|e| {
                std::fs::read_link(e.path())
                    .map(|l| l.to_string_lossy().starts_with("socket:"))
                    .unwrap_or(false)
            })
            .count(),
    )
}

/// Acquires `n` distinct locks with a fresh backend from `connect`, holds them all, measures,
/// then releases them.
pub async fn hold_many<C, Fut>(connect: C, n: usize) -> Result<ManyLocks>
where
    C: FnOnce() -> Fut,
    Fut: Future<Output = Result<Arc<dyn Backend>>>,
{
    let sockets_before = open_sockets().unwrap_or(0);
    let rss_before = rss_bytes().unwrap_or(0);
    let backend = connect().await?;
    let base = unique("bench-many");
    let started = Instant::now();
    let mut guards = Vec::with_capacity(n);
    let opts = LockOptions::new();
    let mut set = tokio::task::JoinSet::new();
    let mut next = 0usize;
    // 64 acquisitions in flight at a time: a service taking its locks at start-up.
    while next < n || !set.is_empty() {
        while next < n && set.len() < 64 {
            let (backend, opts) = (Arc::clone(&backend), opts.clone());
            let name = LockName::new(format!("{base}-{next}"))?;
            set.spawn(async move { backend.acquire(&name, &opts).await });
            next += 1;
        }
        if let Some(r) = set.join_next().await {
            guards.push(r??);
        }
    }
    let acquire = started.elapsed();
    let rss = rss_bytes().unwrap_or(0).saturating_sub(rss_before);
    let connections = open_sockets().unwrap_or(0).saturating_sub(sockets_before);
    let held = guards
        .iter()
        .filter(|g| g.state() == dlock::LockState::Held)
        .count();
    if held != n {
        bail!("only {held} of {n} locks were still held after acquiring them all");
    }
    let mut set = tokio::task::JoinSet::new();
    for g in guards {
        set.spawn(async move { g.release().await });
    }
    while let Some(r) = set.join_next().await {
        r.context("release task")??;
    }
    Ok(ManyLocks {
        locks: n,
        acquire,
        rss_mib: rss as f64 / (1024.0 * 1024.0),
        connections,
    })
}

/// Runs [`hold_many`] in a child process (`dlock hold-many`), so that the memory it reports
/// is that of a process doing nothing else.
pub async fn hold_many_in_child(dlock_bin: &Path, url: &str, n: usize) -> Result<ManyLocks> {
    let out = tokio::process::Command::new(dlock_bin)
        .args(["hold-many", "--count", &n.to_string(), url])
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true)
        .output();
    let bound = Duration::from_secs(300);
    let out = tokio::time::timeout(bound, out)
        .await
        .map_err(|_| anyhow!("dlock hold-many did not finish within {bound:?}"))??;
    if !out.status.success() {
        bail!(
            "dlock hold-many failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    let v: serde_json::Value = serde_json::from_slice(&out.stdout)
        .with_context(|| format!("bad output: {}", String::from_utf8_lossy(&out.stdout)))?;
    let num = |k: &str| {
        v[k].as_f64()
            .ok_or_else(|| anyhow!("dlock hold-many printed no {k}: {v}"))
    };
    Ok(ManyLocks {
        locks: num("locks")? as usize,
        acquire: Duration::from_secs_f64(num("acquire_s")?),
        rss_mib: num("rss_mib")?,
        connections: num("connections")? as usize,
    })
}
