//! The behaviour suite over every backend variant, on managed servers (or the servers named
//! by `DLOCK_TEST_*_URL`). Filter like any test binary: `cargo test -p dlock-server-tests --test
//! behavior -- postgres::behavior::test_exclusion`.

use std::sync::Arc;

use conformance::Outcome;
use dlock_fixtures as fixtures;
use libtest_mimic::{Arguments, Failed, Trial};

fn main() -> anyhow::Result<()> {
    let args = Arguments::from_args();
    let rt = Arc::new(
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()?,
    );
    // Servers live for the whole run; each test connects its own clients.
    let (variants, _servers) = rt.block_on(variants())?;
    let mut trials = Vec::new();
    let connect = conformance::registry_connector(Arc::new(dlock::registry()));
    for (variant, url) in &variants {
        let caps = rt.block_on(async { dlock::connect(url).await.map(|b| b.capabilities()) })?;
        for b in conformance::all() {
            let name = format!("{variant}::{}", b.name);
            if let Some(reason) = conformance::skip_reason(&b, &caps, url) {
                eprintln!("skip {name}: {reason}");
                trials.push(Trial::test(name, || Ok(())).with_ignored_flag(true));
                continue;
            }
            let (url, rt, trial) = (url.clone(), rt.clone(), name.clone());
            let connect = connect.clone();
            trials.push(Trial::test(name, move || {
                match rt.block_on(conformance::run_with(&b, &url, connect.clone())) {
                    Outcome::Passed => Ok(()),
                    Outcome::Skipped(reason) => {
                        // libtest-mimic cannot turn a trial into `ignored` once it runs.
                        eprintln!("SKIPPED {trial} (at run time): {reason}");
                        Ok(())
                    }
                    Outcome::Failed(why) => Err(Failed::from(why)),
                }
            }));
        }
    }
    let conclusion = libtest_mimic::run(&args, trials);
    drop(_servers);
    conclusion.exit()
}

/// Every backend variant with its URL, and the server handles that keep them alive.
async fn variants() -> anyhow::Result<(Vec<(&'static str, String)>, Servers)> {
    let mut v = vec![("memory", "memory://behavior-suite".to_string())];
    let mut servers = Servers::default();
    let pg = fixtures::postgres().await?;
    v.push(("postgres", pg.url().to_string()));
    v.push(("postgres_fencing", format!("{}?fencing=table", pg.url())));
    v.push(("shedlock_postgres", format!("shedlock+{}", pg.url())));
    v.push((
        "shedlock_postgres_fencing",
        format!("shedlock+{}?fencing=on", pg.url()),
    ));
    servers.single.push(pg);
    // Once over TLS per PostgreSQL backend: a TLS-only server, verify-full with this run's CA.
    let pki = fixtures::TestPki::new()?;
    let pg_tls = fixtures::managed_postgres_with(fixtures::PostgresOptions {
        tls: Some(fixtures::PostgresTls {
            server: pki.server.clone(),
            ca: pki.ca.clone(),
            password: "behavior-suite".into(),
            client_cert_user: "dlock-client".into(),
            also_plain: false,
        }),
    })
    .await?;
    v.push(("postgres_tls", pg_tls.url().to_string()));
    v.push((
        "shedlock_postgres_tls",
        format!("shedlock+{}", pg_tls.url()),
    ));
    servers.single.push(pg_tls);
    servers.pki.push(pki);
    let redis = fixtures::redis().await?;
    v.push(("redis", redis.url().to_string()));
    v.push(("shedlock_redis", format!("shedlock+{}", redis.url())));
    v.push((
        "shedlock_redis_fencing",
        format!("shedlock+{}?fencing=on", redis.url()),
    ));
    servers.single.push(redis);
    let redlock = fixtures::redlock(3).await?;
    v.push(("redlock", redlock.url().to_string()));
    servers.clusters.push(redlock);
    // Once over TLS: Redis and Redlock on TLS-only ports, the server's name verified.
    let redis_pki = fixtures::TestPki::new()?;
    let (redis_tls, redlock_tls) = redis_over_tls(&redis_pki).await?;
    // ShedLock's Redis keys over the same TLS-only port, fencing on so its test runs over TLS.
    let shedlock_tls = format!("shedlock+{}&fencing=on", redis_tls.0);
    v.push(("redis_tls", redis_tls.0));
    v.push(("shedlock_redis_tls", shedlock_tls));
    v.push(("redlock_tls", redlock_tls.0));
    servers.single.push(redis_tls.1);
    servers.clusters.push(redlock_tls.1);
    servers.pki.push(redis_pki);
    let etcd = fixtures::etcd().await?;
    v.push(("etcd", etcd.url().to_string()));
    servers.single.push(etcd);
    // Once over mutual TLS: a TLS-only etcd that requires a client certificate.
    let etcd_pki = fixtures::TestPki::new()?;
    let etcd_tls = fixtures::managed_etcd(fixtures::EtcdOptions {
        tls: Some(fixtures::EtcdTls::from_pki(&etcd_pki, true)),
        ..Default::default()
    })
    .await?;
    v.push(("etcd_tls", etcd_tls.url().to_string()));
    servers.single.push(etcd_tls);
    servers.pki.push(etcd_pki);
    let etcd3 = fixtures::etcd_cluster(3, Default::default()).await?;
    v.push(("etcd_cluster", etcd3.url().to_string()));
    servers.clusters.push(etcd3);
    let zk = fixtures::zookeeper().await?;
    v.push(("zookeeper", zk.url().to_string()));
    servers.single.push(zk);
    let mariadb = fixtures::mariadb().await?;
    v.push(("mariadb", mariadb.url().to_string()));
    v.push((
        "mariadb_fencing",
        format!("{}?fencing=table", mariadb.url()),
    ));
    servers.single.push(mariadb);
    let mariadb_pki = fixtures::TestPki::new()?;
    let mariadb_tls = fixtures::managed_mariadb_with(fixtures::MariaDbOptions {
        tls: Some(fixtures::MariaDbTls {
            server: mariadb_pki.server.clone(),
            ca: mariadb_pki.ca.clone(),
            password: "behavior-suite".into(),
            client_cert_user: "dlock-client".into(),
        }),
    })
    .await?;
    v.push(("mariadb_tls", mariadb_tls.url().to_string()));
    servers.single.push(mariadb_tls);
    servers.pki.push(mariadb_pki);
    let zk3 = fixtures::zookeeper_ensemble(3, Default::default()).await?;
    v.push(("zookeeper_ensemble", zk3.url().to_string()));
    servers.clusters.push(zk3);
    Ok((v, servers))
}

/// A Redis and 3 Redlock instances listening for TLS (a plain port beside it for the
/// fixture's probe), with their `rediss://` and `redlock://…?tls=on` URLs.
async fn redis_over_tls(
    pki: &fixtures::TestPki,
) -> anyhow::Result<((String, fixtures::Server), (String, fixtures::Cluster))> {
    let options = fixtures::RedisOptions {
        tls: Some(fixtures::RedisTls {
            server: pki.server.clone(),
            ca: pki.ca.clone(),
            require_client_cert: false,
        }),
        ..Default::default()
    };
    let ca = pki.ca.display();
    let single = fixtures::managed_redis(options.clone()).await?;
    let url = format!("rediss://localhost:{}?ca={ca}", single.ports()[1]);
    let cluster = fixtures::redis_instances(3, options).await?;
    let hosts: Vec<String> = cluster
        .members()
        .iter()
        .map(|s| format!("localhost:{}", s.ports()[1]))
        .collect();
    let redlock = format!("redlock://{}?tls=on&ca={ca}", hosts.join(","));
    Ok(((url, single), (redlock, cluster)))
}

/// Keeps the servers alive until the end of the run.
#[derive(Default)]
struct Servers {
    single: Vec<fixtures::Server>,
    clusters: Vec<fixtures::Cluster>,
    /// Certificates the TLS servers' URLs name.
    pki: Vec<fixtures::TestPki>,
}
