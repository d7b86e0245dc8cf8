//! Shared-lock and semaphore interop through the peer harnesses, real servers: etcd's Go
//! `recipes.RWMutex` (`dlock-peer-go etcd-rwmutex-read|write`) and Curator's
//! `InterProcessReadWriteLock` (`dlock-peer-java curator-read|write`) beside dlock's readers
//! (`dlock peer --shared`) and writers on one lock; Curator's `InterProcessSemaphoreV2`
//! (`curator-semaphore`) beside dlock's permits (`dlock peer --permits 2`) on one semaphore.
//!
//! Where one side must wait for the other, the test waits until the waiter's key is in etcd
//! (an event), then releases the holder, and checks that the waiter's grant came after the
//! holder began to release (`CLOCK_MONOTONIC` readings inside the harnesses).

use std::path::PathBuf;
use std::time::Duration;

use dlock::etcd::EtcdBackend;
use dlock::etcd::etcd_client::GetOptions;
use dlock_compare::peers::catalog::{Harnesses, peer_url};
use dlock_compare::peers::proc::{Group, Launch, Reply};
use dlock_fixtures::zookeeper::ZkSession;

const TTL_MS: u64 = 5000;
const WITHIN: Duration = Duration::from_secs(20);

/// The processes of the group, by index.
const DLOCK_READER: usize = 0;
const DLOCK_WRITER: usize = 1;
const PEER_READER: usize = 2;
const PEER_WRITER: usize = 3;

fn harnesses() -> Harnesses {
    let mut h = Harnesses::locate(std::path::Path::new(env!("CARGO_BIN_EXE_dlock-under-test")));
    h.peers_dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../peers");
    h
}

fn go(h: &Harnesses, peer: &str) -> Launch {
    installed(h, peer, "go/dlock-peer-go")
}

fn java(h: &Harnesses, peer: &str) -> Launch {
    let mut l = installed(h, peer, "java/target/dlock-peer-java.jar");
    l.program = h.peers_dir.join("java/dlock-peer-java");
    l
}

/// The harness `built` (under peers/) for `peer`, or a failure saying how to install it.
fn installed(h: &Harnesses, peer: &str, built: &str) -> Launch {
    let program = h.peers_dir.join(built);
    assert!(
        program.exists(),
        "the {peer} harness is not installed ({} missing): run scripts/install-peers (`make \
         test` does)",
        program.display()
    );
    Launch {
        program,
        pre_args: vec![],
        peer_arg: Some(peer.into()),
        env: vec![],
    }
}

/// The children of `path` on the ZooKeeper server of `url` (none if it does not exist), read
/// by a session of its own.
async fn zk_children(url: &str, path: &str) -> Vec<String> {
    let addr = url
        .strip_prefix("zk://")
        .and_then(|r| r.split(['/', '?', ',']).next())
        .and_then(|h| h.parse().ok())
        .expect("a zk://host:port URL");
    let mut s = ZkSession::connect(addr, Duration::from_secs(10))
        .await
        .expect("a ZooKeeper session");
    let children = s
        .children(path)
        .await
        .expect("ZooKeeper children")
        .unwrap_or_default();
    s.close().await.expect("closing the session");
    children
}

/// Whose queue entry a test waits for.
#[derive(Clone, Copy, Debug)]
enum Who {
    Reader,
    PeerWriter,
    DlockWriter,
    /// A semaphore lease (ZooKeeper: `leases/` children); `appears` waits for a third.
    Lease,
}

/// Reads the server directly, to see a waiter's queue entry appear.
enum Probe {
    /// etcd: reader keys `NAME/read/…`, recipe writers `NAME/write/…`, dlock's writer
    /// `NAME/<lease>`.
    Etcd(EtcdBackend),
    /// ZooKeeper, the lock nodes' parent: `__READ__`, `__WRIT__` and `-lock-` children.
    Zk(String, String),
}

impl Probe {
    async fn present(&self, name: &str, who: Who) -> bool {
        match self {
            Probe::Etcd(raw) => {
                let (prefix, direct) = match who {
                    Who::Reader => (format!("{name}/read/"), false),
                    Who::PeerWriter => (format!("{name}/write/"), false),
                    Who::DlockWriter => (format!("{name}/"), true),
                    Who::Lease => unreachable!("no etcd semaphore peer"),
                };
                let mut kv = raw.client().kv_client();
                let resp = kv
                    .get(
                        prefix.as_str(),
                        Some(GetOptions::new().with_prefix().with_keys_only()),
                    )
                    .await
                    .expect("etcd get");
                resp.kvs()
                    .iter()
                    .any(|kv| !direct || !kv.key()[prefix.len()..].contains(&b'/'))
            }
            Probe::Zk(url, base) => {
                let marker = match who {
                    Who::Reader => "__READ__",
                    Who::PeerWriter => "__WRIT__",
                    Who::DlockWriter => "-lock-",
                    Who::Lease => "-lease-",
                };
                let children = zk_children(url, &format!("{base}/{name}")).await;
                let n = children.iter().filter(|c| c.contains(marker)).count();
                n >= if matches!(who, Who::Lease) { 3 } else { 1 }
            }
        }
    }

    /// Every entry of `name` on the server, for failure messages.
    async fn dump(&self, name: &str) -> Vec<String> {
        match self {
            Probe::Etcd(raw) => {
                let mut kv = raw.client().kv_client();
                let resp = kv
                    .get(
                        format!("{name}/"),
                        Some(GetOptions::new().with_prefix().with_keys_only()),
                    )
                    .await
                    .expect("etcd get");
                resp.kvs()
                    .iter()
                    .map(|kv| {
                        format!(
                            "{} rev {}",
                            String::from_utf8_lossy(kv.key()),
                            kv.create_revision()
                        )
                    })
                    .collect()
            }
            Probe::Zk(url, base) => zk_children(url, &format!("{base}/{name}")).await,
        }
    }

    /// Waits until `who`'s entry for `name` is on the server.
    async fn appears(&self, name: &str, who: Who) {
        let end = tokio::time::Instant::now() + WITHIN;
        while !self.present(name, who).await {
            assert!(
                tokio::time::Instant::now() < end,
                "no {who:?} entry for {name} after {WITHIN:?}"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
}

fn granted(r: &Reply) -> u64 {
    match r {
        Reply::Acquired { t1, .. } => *t1,
        other => panic!("expected a grant, got {other:?}"),
    }
}

fn release_began(r: &Reply) -> u64 {
    match r {
        Reply::Released { t0, .. } => *t0,
        other => panic!("expected a release, got {other:?}"),
    }
}

/// `holder` releases `name` while `waiter` waits for it: when the holder began to release and
/// when the waiter was granted. The two replies come in either order (`Group::call` would drop
/// the waiter's if it came first).
async fn release_to_waiter(
    g: &mut Group,
    probe: &Probe,
    name: &str,
    holder: usize,
    waiter: usize,
) -> (u64, u64) {
    g.procs[holder]
        .send(&format!("release {name}"))
        .await
        .unwrap();
    let (mut released, mut got) = (None, None);
    while released.is_none() || got.is_none() {
        let (side, reply) = match g.next(WITHIN).await {
            Ok(r) => r,
            Err(e) => panic!(
                "side {waiter} waiting behind side {holder}: {e:#}; on the server: {:?}",
                probe.dump(name).await
            ),
        };
        match side {
            s if s == holder => released = Some(release_began(&reply)),
            s if s == waiter => got = Some(granted(&reply)),
            other => panic!("side {other} answered unasked: {reply:?}"),
        }
    }
    (released.unwrap_or_default(), got.unwrap_or_default())
}

/// `holder` holds `name`; `waiter`'s blocking acquire must queue (its entry appears on the
/// server) and be granted only after `holder` began to release.
async fn waits_for(
    g: &mut Group,
    probe: &Probe,
    name: &str,
    holder: usize,
    waiter: usize,
    who: Who,
) {
    let a = g
        .call(holder, &format!("acquire {name} {TTL_MS}"), WITHIN)
        .await
        .unwrap();
    granted(&a);
    g.procs[waiter]
        .send(&format!("acquire {name} {TTL_MS}"))
        .await
        .unwrap();
    probe.appears(name, who).await;
    // If the waiter did not see the holder, its grant is on its way now, before the release.
    let (released, got) = release_to_waiter(g, probe, name, holder, waiter).await;
    assert!(
        got >= released,
        "side {waiter} was granted at {got} µs while side {holder} held until {released} µs"
    );
    let r = g
        .call(waiter, &format!("release {name}"), WITHIN)
        .await
        .unwrap();
    release_began(&r);
}

/// The four sides on one lock: dlock's reader and writer, the peer library's reader and writer.
async fn readers_and_writers(g: &mut Group, probe: &Probe, peer: &str) {
    let name = format!("rw-{}", dlock_peer_proto::mono_us());
    let (acq, tr, rel) = (
        format!("acquire {name} {TTL_MS}"),
        format!("try {name} {TTL_MS}"),
        format!("release {name}"),
    );
    // Readers of both libraries hold together.
    granted(&g.call(DLOCK_READER, &acq, WITHIN).await.unwrap());
    granted(&g.call(PEER_READER, &acq, WITHIN).await.unwrap());
    // dlock's writer is kept out by the peer's reader (and dlock's).
    let b = g.call(DLOCK_WRITER, &tr, WITHIN).await.unwrap();
    assert!(matches!(b, Reply::Busy { .. }), "{b:?}");
    release_began(&g.call(DLOCK_READER, &rel, WITHIN).await.unwrap());
    let b = g.call(DLOCK_WRITER, &tr, WITHIN).await.unwrap();
    assert!(
        matches!(b, Reply::Busy { .. }),
        "dlock's writer beside {peer}'s reader: {b:?}"
    );
    // The peer's writer queued behind its reader holds back dlock's readers (writer first).
    g.procs[PEER_WRITER].send(&acq).await.unwrap();
    probe.appears(&name, Who::PeerWriter).await;
    let b = g.call(DLOCK_READER, &tr, WITHIN).await.unwrap();
    assert!(
        matches!(b, Reply::Busy { .. }),
        "dlock's reader overtook {peer}'s waiting writer: {b:?}"
    );
    let (released, got) = release_to_waiter(g, probe, &name, PEER_READER, PEER_WRITER).await;
    assert!(got >= released, "{peer}'s writer beside its reader");
    // The peer's writer excludes dlock's readers and writers.
    for side in [DLOCK_READER, DLOCK_WRITER] {
        let b = g.call(side, &tr, WITHIN).await.unwrap();
        assert!(
            matches!(b, Reply::Busy { .. }),
            "side {side} beside {peer}'s writer: {b:?}"
        );
    }
    release_began(&g.call(PEER_WRITER, &rel, WITHIN).await.unwrap());

    // Each waits for the other where the recipe says so.
    waits_for(g, probe, &name, DLOCK_READER, PEER_WRITER, Who::PeerWriter).await;
    waits_for(g, probe, &name, PEER_WRITER, DLOCK_READER, Who::Reader).await;
    waits_for(g, probe, &name, PEER_READER, DLOCK_WRITER, Who::DlockWriter).await;

    // The libraries' limit, shown: their reader does not look for mutex entries (etcd's
    // `NAME/<lease>`, Curator's `-lock-` nodes), which is what dlock's exclusive lock writes
    // by default (README: "Sharing a reader–writer lock"). If this starts failing, the
    // library learned to see them.
    granted(&g.call(DLOCK_WRITER, &acq, WITHIN).await.unwrap());
    let r = g.call(PEER_READER, &acq, WITHIN).await.unwrap();
    assert!(
        matches!(r, Reply::Acquired { .. }),
        "{peer}'s reader now waits for dlock's mutex-layout writer: update the README ({r:?})"
    );
    release_began(&g.call(PEER_READER, &rel, WITHIN).await.unwrap());
    release_began(&g.call(DLOCK_WRITER, &rel, WITHIN).await.unwrap());
}

/// Side 4 is dlock's writer in the library's write layout (`writers=rwmutex` / `rwlock`):
/// the library's reader waits for it, and it for the reader.
async fn writer_in_the_library_layout(g: &mut Group, probe: &Probe) {
    const RW_WRITER: usize = 4;
    let name = format!("rw-writers-{}", dlock_peer_proto::mono_us());
    waits_for(g, probe, &name, RW_WRITER, PEER_READER, Who::Reader).await;
    waits_for(g, probe, &name, PEER_READER, RW_WRITER, Who::PeerWriter).await;
    let tr = format!("try {name} {TTL_MS}");
    granted(
        &g.call(RW_WRITER, &format!("acquire {name} {TTL_MS}"), WITHIN)
            .await
            .unwrap(),
    );
    for side in [DLOCK_READER, DLOCK_WRITER] {
        let b = g.call(side, &tr, WITHIN).await.unwrap();
        assert!(matches!(b, Reply::Busy { .. }), "side {side}: {b:?}");
    }
    release_began(
        &g.call(RW_WRITER, &format!("release {name}"), WITHIN)
            .await
            .unwrap(),
    );
}

/// etcd's Go `recipes.RWMutex` and dlock's `etcd://` readers and writers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_go_rwmutex_and_dlock_readers_and_writers() {
    let srv = dlock_fixtures::etcd()
        .await
        .unwrap_or_else(|e| panic!("etcd server: {e:#}"));
    let h = harnesses();
    let url = srv.url().to_string();
    let go_url = peer_url("etcd", &url).expect("peer URL");
    let mut g = dlock_pair(&h, &url).await;
    g.add(&go(&h, "etcd-rwmutex-read"), &go_url)
        .await
        .expect("Go reader");
    g.add(&go(&h, "etcd-rwmutex-write"), &go_url)
        .await
        .expect("Go writer");
    let probe = Probe::Etcd(EtcdBackend::connect(&url).await.expect("raw etcd client"));
    readers_and_writers(&mut g, &probe, "etcd's RWMutex").await;
    g.add(&h.dlock(TTL_MS), &with_option(&url, "writers=rwmutex"))
        .await
        .expect("dlock writer, writers=rwmutex");
    writer_in_the_library_layout(&mut g, &probe).await;
    g.quit_all(Duration::from_secs(5)).await;
}

/// Curator's `InterProcessReadWriteLock` at `/dlock-peers/NAME` and dlock's
/// `zk://…?base=/dlock-peers` readers and writers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn curator_read_write_lock_and_dlock_readers_and_writers() {
    let (srv, url, java_url) = zookeeper_for_curator().await;
    let h = harnesses();
    let mut g = dlock_pair(&h, &url).await;
    for peer in ["curator-read", "curator-write"] {
        g.add(&java(&h, peer), &java_url).await.expect(peer);
    }
    let probe = Probe::Zk(srv.url().to_string(), "/dlock-peers".into());
    readers_and_writers(&mut g, &probe, "Curator").await;
    g.add(&h.dlock(TTL_MS), &with_option(&url, "writers=rwlock"))
        .await
        .expect("dlock writer, writers=rwlock");
    writer_in_the_library_layout(&mut g, &probe).await;
    g.quit_all(Duration::from_secs(5)).await;
}

/// Curator's `InterProcessSemaphoreV2` at `/dlock-peers/NAME%sem` and dlock's permits of
/// semaphore NAME (limit 2 on both sides) count against one limit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn curator_semaphore_and_dlock_permits_share_one_limit() {
    let (srv, url, java_url) = zookeeper_for_curator().await;
    let h = harnesses();
    let mut permits = h.dlock(TTL_MS);
    permits.pre_args.extend(["--permits".into(), "2".into()]);
    // 0 and 1: dlock; 2: Curator.
    let mut g = Group::start(&permits, &url, 2).await.expect("dlock");
    let mut curator = java(&h, "curator-semaphore");
    curator.env.push(("DLOCK_PEER_PERMITS".into(), "2".into()));
    g.add(&curator, &java_url).await.expect("Curator");
    let name = format!("sem-{}", dlock_peer_proto::mono_us());
    let (acq, tr, rel) = (
        format!("acquire {name} {TTL_MS}"),
        format!("try {name} {TTL_MS}"),
        format!("release {name}"),
    );
    granted(&g.call(0, &acq, WITHIN).await.unwrap());
    granted(&g.call(2, &acq, WITHIN).await.unwrap());
    // Full: one dlock permit and one Curator lease.
    let b = g.call(1, &tr, WITHIN).await.unwrap();
    assert!(matches!(b, Reply::Busy { .. }), "a third permit: {b:?}");
    release_began(&g.call(2, &rel, WITHIN).await.unwrap());
    granted(&g.call(1, &tr, WITHIN).await.unwrap());
    // Full with two dlock permits: Curator is refused, then waits, and is granted only after a
    // release.
    let b = g.call(2, &tr, WITHIN).await.unwrap();
    assert!(matches!(b, Reply::Busy { .. }), "Curator's third: {b:?}");
    g.procs[2].send(&acq).await.unwrap();
    let probe = Probe::Zk(srv.url().to_string(), "/dlock-peers".into());
    let sem = format!("{name}%sem/leases");
    probe.appears(&sem, Who::Lease).await;
    let (released, got) = release_to_waiter(&mut g, &probe, &name, 0, 2).await;
    assert!(got >= released, "Curator's lease beside two dlock permits");
    release_began(&g.call(2, &rel, WITHIN).await.unwrap());
    release_began(&g.call(1, &rel, WITHIN).await.unwrap());
    g.quit_all(Duration::from_secs(5)).await;
}

/// A ZooKeeper server, dlock's URL for it (with `base=/dlock-peers`, where the Java harness
/// keeps Curator's locks) and the Java harness's.
async fn zookeeper_for_curator() -> (dlock_fixtures::Server, String, String) {
    let srv = dlock_fixtures::zookeeper()
        .await
        .unwrap_or_else(|e| panic!("ZooKeeper server: {e:#}"));
    let url = with_base(srv.url());
    let java_url = peer_url("zookeeper", srv.url()).expect("peer URL");
    (srv, url, java_url)
}

/// `url` with `base=/dlock-peers`, where the Java harness keeps Curator's locks.
fn with_base(url: &str) -> String {
    with_option(url, "base=/dlock-peers")
}

/// `url` with one more query option.
fn with_option(url: &str, option: &str) -> String {
    let sep = if url.contains('?') { '&' } else { '?' };
    format!("{url}{sep}{option}")
}

/// dlock's reader (`dlock peer --shared`, side 0) and writer (side 1) on `url`.
async fn dlock_pair(h: &Harnesses, url: &str) -> Group {
    let mut reader = h.dlock(TTL_MS);
    reader.pre_args.push("--shared".into());
    let mut g = Group::start(&reader, url, 1).await.expect("dlock reader");
    g.add(&h.dlock(TTL_MS), url).await.expect("dlock writer");
    g
}

/// Curator's read lock and semaphore beside dlock's reader and permit on one ZooKeeper, each
/// through its harness (the same driver, clock readings inside the harness processes):
/// uncontended `acquire` + `release`, the four alternating one by one, 50 warm-up rounds then
/// `DLOCK_MEASURE_SAMPLES` (300) each, on fresh names per side. Prints p10/p50/p90 of the time
/// inside the harness (acquire's library call + release's) and dlock's ratio to Curator's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a measurement (about 30 s); run with --ignored --nocapture"]
async fn measure_curator_read_lock_and_semaphore_beside_dlock() {
    let samples: usize = std::env::var("DLOCK_MEASURE_SAMPLES")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(300);
    let (_srv, url, java_url) = zookeeper_for_curator().await;
    let h = harnesses();
    let mut reader = h.dlock(TTL_MS);
    reader.pre_args.push("--shared".into());
    let mut permits = h.dlock(TTL_MS);
    permits.pre_args.extend(["--permits".into(), "2".into()]);
    let mut g = Group::start(&reader, &url, 1).await.expect("dlock reader");
    g.add(&permits, &url).await.expect("dlock permits");
    g.add(&java(&h, "curator-read"), &java_url)
        .await
        .expect("Curator reader");
    g.add(&java(&h, "curator-semaphore"), &java_url)
        .await
        .expect("Curator semaphore");
    let sides = [
        "dlock reader",
        "dlock permit",
        "Curator read lock",
        "Curator semaphore",
    ];
    let names: Vec<String> = (0..sides.len())
        .map(|i| format!("cost-{i}-{}", dlock_peer_proto::mono_us()))
        .collect();
    let mut times: Vec<Vec<u64>> = vec![Vec::with_capacity(samples); sides.len()];
    for round in 0..samples + 50 {
        for i in 0..sides.len() {
            let s = (i + round) % sides.len();
            let a = g
                .call(s, &format!("acquire {} {TTL_MS}", names[s]), WITHIN)
                .await
                .unwrap();
            let Reply::Acquired { t0, t1, .. } = a else {
                panic!("{}: {a:?}", sides[s]);
            };
            let r = g
                .call(s, &format!("release {}", names[s]), WITHIN)
                .await
                .unwrap();
            let Reply::Released { t0: r0, t1: r1, .. } = r else {
                panic!("{}: {r:?}", sides[s]);
            };
            if round >= 50 {
                times[s].push((t1 - t0) + (r1 - r0));
            }
        }
    }
    let mut p50 = Vec::new();
    for (s, side) in sides.iter().enumerate() {
        let v = &mut times[s];
        v.sort_unstable();
        let at = |p: usize| v[(v.len() - 1) * p / 100];
        assert_eq!(v.len(), samples);
        eprintln!("{side}: p50 {} µs (p10 {}, p90 {})", at(50), at(10), at(90));
        p50.push(at(50) as f64);
    }
    eprintln!(
        "dlock/Curator p50: read lock {:.2}×, semaphore {:.2}×",
        p50[0] / p50[2],
        p50[1] / p50[3]
    );
    g.quit_all(Duration::from_secs(5)).await;
}
