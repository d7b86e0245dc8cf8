//! The short benchmark set of one backend, as `dlock compare` runs it.

use std::path::Path;
use std::sync::Arc;

use anyhow::{Context, Result};
use dlock::Backend;

use super::*;

/// The short benchmark set for one backend of the comparison (`url` from its fixture),
/// printing a line per measurement to stderr. `dlock_bin`: measure the many locks in a
/// child process of that binary (else in this one).
pub async fn run_backend(
    backend: &str,
    url: &str,
    plan: &BenchPlan,
    dlock_bin: Option<&Path>,
) -> Result<Vec<BenchEntry>> {
    let mut out = Vec::new();
    let client = dlock::connect(url).await?;
    let floor = Floor::connect(backend, url).await?;
    if let Some(floor) = &floor {
        out.extend(uncontended_entries(backend, &*client, floor, plan).await?);
        out.extend(mode_entries(backend, &*client, floor, plan).await?);
    }
    if let Some(e) = tls_entry(backend, plan.samples)
        .await
        .context("the TLS benchmark")?
    {
        out.push(e);
    }
    out.extend(handoff_entries(backend, url, floor.as_ref(), plan).await?);
    let tp = throughput(Arc::clone(&client), plan.tasks, plan.per_task).await?;
    out.push(entry(
        backend,
        "throughput_64_tasks",
        tp,
        "ops/s",
        None,
        format!(
            "{} tasks on distinct names sharing one backend, {} acquire+release each",
            plan.tasks, plan.per_task
        ),
    ));
    crate::say!(
        "[bench] {backend}: {} tasks: {tp:.0} acquire+release/s",
        plan.tasks
    );
    out.extend(many_entries(backend, url, plan, dlock_bin).await?);
    Ok(out)
}

/// An entry without distributions.
fn entry(
    backend: &str,
    metric: &str,
    value: f64,
    unit: &str,
    floor: Option<f64>,
    notes: String,
) -> BenchEntry {
    BenchEntry {
        backend: backend.to_string(),
        metric: metric.to_string(),
        value,
        unit: unit.to_string(),
        floor,
        distribution: None,
        floor_distribution: None,
        notes,
    }
}

/// Uncontended acquire + release beside the raw floor, alternating one by one.
async fn uncontended_entries(
    backend: &str,
    client: &dyn Backend,
    floor: &Floor,
    plan: &BenchPlan,
) -> Result<Vec<BenchEntry>> {
    let mut out = Vec::new();
    let (ours, raw) = uncontended(client, floor, plan.samples).await?;
    let notes = format!(
        "{} samples per side, alternating one by one; floor: {}",
        ours.len(),
        floor.describe()
    );
    let mut p50 = entry(
        backend,
        "acquire_release_p50",
        micros(ours.p50()),
        "us",
        Some(micros(raw.p50())),
        notes.clone(),
    );
    p50.distribution = Some(ours.distribution_us());
    p50.floor_distribution = Some(raw.distribution_us());
    out.push(p50);
    out.push(entry(
        backend,
        "acquire_release_p99",
        micros(ours.p99()),
        "us",
        Some(micros(raw.p99())),
        notes,
    ));
    crate::say!(
        "[bench] {backend}: acquire+release p50 {:.0} µs (floor {:.0} µs, {:.2}×), p99 {:.0} µs",
        micros(ours.p50()),
        micros(raw.p50()),
        ours.p50().as_secs_f64() / raw.p50().as_secs_f64().max(1e-9),
        micros(ours.p99())
    );
    Ok(out)
}

/// Shared and permit acquire + release beside their floors, where the backend has the mode.
async fn mode_entries(
    backend: &str,
    client: &dyn Backend,
    floor: &Floor,
    plan: &BenchPlan,
) -> Result<Vec<BenchEntry>> {
    let caps = client.capabilities();
    let mut out = Vec::new();
    for (mode, has, metric) in [
        (Mode::Shared, caps.shared, "shared_acquire_release_p50"),
        (Mode::Permit, caps.semaphore, "permit_acquire_release_p50"),
    ] {
        let Some(what) = floor.describe_mode(mode).filter(|_| has) else {
            continue;
        };
        let Some((ours, raw)) = uncontended_mode(client, floor, mode, plan.samples).await? else {
            continue;
        };
        let mut e = entry(
            backend,
            metric,
            micros(ours.p50()),
            "us",
            Some(micros(raw.p50())),
            format!(
                "{} samples per side, alternating one by one; floor: {what}",
                ours.len()
            ),
        );
        e.distribution = Some(ours.distribution_us());
        e.floor_distribution = Some(raw.distribution_us());
        crate::say!(
            "[bench] {backend}: {metric} {:.0} µs (floor {:.0} µs, {:.2}×)",
            micros(ours.p50()),
            micros(raw.p50()),
            ours.p50().as_secs_f64() / raw.p50().as_secs_f64().max(1e-9)
        );
        out.push(e);
    }
    Ok(out)
}

/// Handoffs to queued waiters beside one raw round trip.
async fn handoff_entries(
    backend: &str,
    url: &str,
    floor: Option<&Floor>,
    plan: &BenchPlan,
) -> Result<Vec<BenchEntry>> {
    let mut out = Vec::new();
    let rtt = match floor {
        Some(f) => Some(Samples::collect(20, 100, || f.round_trip()).await?),
        None => None,
    };
    let url_owned = url.to_string();
    let h = handoff(
        || {
            let url = url_owned.clone();
            async move { Ok(dlock::connect(&url).await?) }
        },
        plan.waiters,
        plan.handoffs,
    )
    .await?;
    let notes = format!(
        "{} handoffs, {} waiters queued; floor: one round trip on the raw client",
        h.len(),
        plan.waiters
    );
    out.push(entry(
        backend,
        "handoff_p50",
        micros(h.p50()),
        "us",
        rtt.as_ref().map(|r| micros(r.p50())),
        notes.clone(),
    ));
    out.push(entry(
        backend,
        "handoff_p99",
        micros(h.p99()),
        "us",
        rtt.as_ref().map(|r| micros(r.p99())),
        notes,
    ));
    crate::say!(
        "[bench] {backend}: handoff with {} waiters p50 {:.0} µs, p99 {:.0} µs",
        plan.waiters,
        micros(h.p50()),
        micros(h.p99())
    );
    Ok(out)
}

/// Many locks held at once by one fresh backend (in a child process when `dlock_bin`).
async fn many_entries(
    backend: &str,
    url: &str,
    plan: &BenchPlan,
    dlock_bin: Option<&Path>,
) -> Result<Vec<BenchEntry>> {
    let mut out = Vec::new();
    let many = match dlock_bin {
        Some(bin) => hold_many_in_child(bin, url, plan.many).await?,
        None => hold_many(|| async { Ok(dlock::connect(url).await?) }, plan.many).await?,
    };
    let notes = format!(
        "{} locks on distinct names, 64 acquisitions in flight, held at once by one fresh \
         backend in {}",
        many.locks,
        if dlock_bin.is_some() {
            "a process of its own (`dlock hold-many`)"
        } else {
            "the benchmark process"
        }
    );
    out.push(entry(
        backend,
        "hold_many_seconds",
        many.acquire.as_secs_f64(),
        "s",
        None,
        notes.clone(),
    ));
    out.push(entry(
        backend,
        "hold_many_rss_mib",
        many.rss_mib,
        "MiB",
        None,
        notes.clone(),
    ));
    out.push(entry(
        backend,
        "hold_many_connections",
        many.connections as f64,
        "connections",
        None,
        notes,
    ));
    crate::say!(
        "[bench] {backend}: {} locks held at once: acquired in {:.1} s, +{:.1} MiB resident, {} connections",
        many.locks,
        many.acquire.as_secs_f64(),
        many.rss_mib,
        many.connections
    );
    Ok(out)
}
