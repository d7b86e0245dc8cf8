//! Every `run`/`hold` option means the same on every backend, or is refused with exit 64 and
//! the missing capability named: nothing is silently ignored.

mod common;

use common::{Kind, dlock, on_backend, unique};
use dlock_fixtures as fixtures;

/// `--ttl` with renewal on a backend without a lease: refused, naming the capability.
fn ttl_refused(url: &str) {
    let name = unique("opt-ttl");
    for args in [
        vec!["run", "--ttl", "5s", url, name.as_str(), "--", "true"],
        vec!["hold", "--ttl", "5s", "--for", "10ms", url, name.as_str()],
    ] {
        let (code, stderr) = dlock(&args);
        assert_eq!(code, Some(64), "{args:?}: {stderr}");
        assert!(stderr.contains("capability `lease`"), "{args:?}: {stderr}");
    }
    // Without --ttl, and with `hold --no-renew` (where it bounds the hold), it works.
    let (code, stderr) = dlock(&["run", url, name.as_str(), "--", "true"]);
    assert_eq!(code, Some(0), "{stderr}");
    let (code, stderr) = dlock(&[
        "hold",
        "--no-renew",
        "--ttl",
        "5s",
        "--for",
        "10ms",
        url,
        name.as_str(),
    ]);
    assert_eq!(code, Some(0), "{stderr}");
}

/// `--ttl` on a lease backend is the lease: accepted.
fn ttl_honoured(url: &str) {
    let name = unique("opt-ttl");
    let (code, stderr) = dlock(&["run", "--ttl", "5s", url, name.as_str(), "--", "true"]);
    assert_eq!(code, Some(0), "{url}: {stderr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_refuses_ttl() {
    on_backend(Kind::Postgres, ttl_refused).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn zookeeper_refuses_ttl() {
    on_backend(Kind::Zookeeper, ttl_refused).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lease_backends_take_ttl() {
    let redis = fixtures::redis().await.unwrap();
    let etcd = fixtures::etcd().await.unwrap();
    let pg = fixtures::postgres().await.unwrap();
    let urls = [
        redis.url().to_string(),
        format!("shedlock+{}", redis.url()),
        etcd.url().to_string(),
        format!("shedlock+{}", pg.url()),
    ];
    tokio::task::spawn_blocking(move || urls.iter().for_each(|u| ttl_honoured(u)))
        .await
        .unwrap();
}

/// `hold` ends when its lock is lost: the `lost` state event, then `released`, exit 76 — without stdin closing or a signal.
#[test]
fn hold_exits_76_when_the_lock_is_lost() {
    // Not renewed, the lease runs out after 300 ms and the guard turns Lost.
    let mut holder = common::Holder::start(
        "memory://hold-lost",
        "job",
        &["--no-renew", "--ttl", "300ms"],
    );
    holder.acquired();
    let lost = holder.next_event().expect("no event after acquired");
    assert_eq!(lost["state"], "lost", "{lost}");
    let released = holder.next_event().expect("no released event after lost");
    assert_eq!(released["event"], "released", "{released}");
    // Nothing closed the holder's stdin (the handle is still held here) and no signal was
    // sent: it ended by itself.
    let status = holder.child.wait().unwrap();
    assert_eq!(status.code(), Some(76));
}
