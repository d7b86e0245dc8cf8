//! What TLS costs: uncontended acquire + release through dlock over TLS beside dlock over
//! plain text **on the same server** (one server listening both ways, certificates from a
//! throwaway CA made for the run), alternating one by one. The floor of this entry is dlock
//! itself in plain text, so the ratio is the price of the encryption alone (the handshake
//! is not in it: connections are long-lived).
//!
//! PostgreSQL (`sslmode=verify-full`, SCRAM password both ways), Redis (`rediss://`, the
//! server's TLS port beside its plain one) and etcd (mutual TLS beside a plain listener).
//! ZooKeeper has no TLS in this build (lock-zookeeper's README says why); the ShedLock
//! flavours share the PostgreSQL and Redis clients' TLS.

use std::time::Instant;

use anyhow::{Context, Result};
use dlock::{LockName, LockOptions};
use dlock_fixtures::{self as fixtures, TestPki};

use super::{BenchEntry, Samples, micros, once};

/// The metric name in `comparison.json`.
pub const METRIC: &str = "acquire_release_tls_p50";

/// The TLS entry of `backend`, or `None` where it has no TLS here.
pub async fn tls_entry(backend: &str, samples: usize) -> Result<Option<BenchEntry>> {
    let pki = TestPki::new()?;
    let Some((server, plain_url, tls_url, how)) = start(backend, &pki).await? else {
        return Ok(None);
    };
    let plain = dlock::connect(&plain_url)
        .await
        .with_context(|| format!("plain text: {}", dlock::redact(&plain_url)))?;
    let tls = dlock::connect(&tls_url)
        .await
        .with_context(|| format!("TLS: {}", dlock::redact(&tls_url)))?;
    let name = LockName::new(format!("bench-tls-{}", std::process::id()))?;
    let opts = LockOptions::new();
    for _ in 0..(samples / 5).max(20) {
        once(&*plain, &name, &opts).await?;
        once(&*tls, &name, &opts).await?;
    }
    let (mut over_tls, mut in_plain) = (Vec::new(), Vec::new());
    for i in 0..samples {
        for side in [i % 2, 1 - i % 2] {
            let t = Instant::now();
            if side == 0 {
                once(&*tls, &name, &opts).await?;
                over_tls.push(t.elapsed());
            } else {
                once(&*plain, &name, &opts).await?;
                in_plain.push(t.elapsed());
            }
        }
    }
    plain.close().await;
    tls.close().await;
    drop(server);
    let (t, p) = (Samples::from(over_tls), Samples::from(in_plain));
    let (tp50, pp50) = (micros(t.p50()), micros(p.p50()));
    crate::say!(
        "[bench] {backend}: acquire+release over TLS p50 {tp50:.0} µs, plain text {pp50:.0} µs \
         on the same server ({:.2}×)",
        tp50 / pp50.max(1e-9)
    );
    Ok(Some(BenchEntry {
        backend: backend.to_string(),
        metric: METRIC.to_string(),
        value: tp50,
        unit: "us".to_string(),
        floor: Some(pp50),
        distribution: Some(t.distribution_us()),
        floor_distribution: Some(p.distribution_us()),
        notes: format!(
            "{} samples per side, alternating one by one, after a warm-up; floor: dlock over \
             plain text on the same server; {how}; certificates from a CA made for the run",
            t.len()
        ),
    }))
}

/// A server of `backend` listening both ways: (server, plain URL, TLS URL, what it is).
async fn start(
    backend: &str,
    pki: &TestPki,
) -> Result<Option<(fixtures::Server, String, String, &'static str)>> {
    Ok(Some(match backend {
        "postgres" => {
            let password = format!("bench-{:x}", dlock::random_u64());
            let pg = fixtures::managed_postgres_with(fixtures::PostgresOptions {
                tls: Some(fixtures::PostgresTls {
                    server: pki.server.clone(),
                    ca: pki.ca.clone(),
                    password: password.clone(),
                    client_cert_user: "dlock-client".into(),
                    also_plain: true,
                }),
            })
            .await?;
            let port = pg.port().context("a managed server has a port")?;
            let plain =
                format!("postgres://postgres:{password}@127.0.0.1:{port}/postgres?sslmode=disable");
            let tls = pg.url().to_string();
            (
                pg,
                plain,
                tls,
                "sslmode=verify-full, SCRAM password both ways",
            )
        }
        "redis" => {
            let r = fixtures::managed_redis(fixtures::RedisOptions {
                tls: Some(fixtures::RedisTls {
                    server: pki.server.clone(),
                    ca: pki.ca.clone(),
                    require_client_cert: false,
                }),
                ..Default::default()
            })
            .await?;
            let (p, t) = (r.ports()[0], r.ports()[1]);
            let plain = format!("redis://127.0.0.1:{p}");
            let tls = format!("rediss://127.0.0.1:{t}?ca={}", pki.ca.display());
            (r, plain, tls, "rediss:// with the CA, host name verified")
        }
        "etcd" => {
            let mut opts = fixtures::EtcdTls::from_pki(pki, true);
            opts.also_plain = true;
            let e = fixtures::managed_etcd(fixtures::EtcdOptions {
                tls: Some(opts),
                ..Default::default()
            })
            .await?;
            let plain = format!("etcd://127.0.0.1:{}", e.ports()[3]);
            let tls = e.url().to_string();
            (e, plain, tls, "mutual TLS (client certificate)")
        }
        _ => return Ok(None),
    }))
}
