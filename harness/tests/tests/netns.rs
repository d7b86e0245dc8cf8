//! `dlock_fixtures::netns`: what a namespace is made of, that it is gone after drop, and that
//! leftovers of dead processes are swept while a live process's are kept. Needs root on
//! Linux with iproute2 and nftables; fails (never passes silently) without them.

use std::net::{Ipv4Addr, SocketAddr};
use std::path::Path;
use std::process::Command;

use dlock_fixtures::netns::{self, Netns, NetnsLock};
use dlock_fixtures::process_alive;

// The tests here run side by side. They once took turns behind a mutex, for a failure not
// explained then ("the sweep test found a live namespace gone"). Measured without the mutex
// (30 runs of this file, 3 test threads): the sweep test failed 24 times, every time on *its
// own fake leftovers*, never on a live namespace: the other tests' `Netns::create` sweeps the
// leftovers of dead processes first, and the fakes carry a dead pid, so a concurrent create
// removed them while they were being made (`ip link add … netns` into a namespace just
// deleted), or before this test's own sweep (`removed 0`/`1`, the namespace already gone).
// Now the fakes are made holding the lock that creates and sweeps hold (`NetnsLock`), and the
// test checks that they are gone after a sweep, not who removed them. Creation itself was
// always serialised by that lock (the free /30 choice), so the other tests never raced.

fn create() -> Netns {
    Netns::create().unwrap_or_else(|e| {
        panic!(
            "this test needs a network namespace and cannot make one: {e}. Run it as root on \
             Linux with iproute2 and nftables installed (scripts/install-servers), e.g. `sudo -E \
             cargo test -p dlock-server-tests --test netns`"
        )
    })
}

fn nft_tables() -> String {
    let out = Command::new("nft")
        .args(["list", "tables", "ip"])
        .output()
        .expect("nft");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn exists(ns: &str, ifname: &str, table: &str) -> (bool, bool, bool) {
    (
        Path::new("/run/netns").join(ns).exists(),
        Path::new("/sys/class/net").join(ifname).exists(),
        nft_tables()
            .lines()
            .any(|l| l.trim() == format!("table ip {table}")),
    )
}

/// A namespace has its address inside, commands run in it, and dropping it removes the
/// namespace, the host end of the veth and the nftables table.
#[test]
fn a_namespace_is_made_and_removed_whole() {
    let ns = create();
    let (name, ifname) = (ns.name().to_string(), ns.host_ifname().to_string());
    let table = name.replace('-', "_");
    assert_eq!(exists(&name, &ifname, &table), (true, true, true));
    let inside = ns.expose(5432).unwrap();
    assert_eq!(inside, SocketAddr::from((ns.host_addr(), 5432)));
    assert!(ns.host_addr().octets()[..2] == [10, 231]);
    assert_eq!(
        u32::from(ns.ns_addr()),
        u32::from(ns.host_addr()) + 1,
        "{ns:?}"
    );
    let out = ns
        .command("ip")
        .args(["-4", "-br", "addr"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains(&format!("{}/30", ns.ns_addr())), "{text}");
    assert!(
        !text.contains(&format!("{}/30", ns.host_addr())),
        "the command ran on the host: {text}"
    );
    ns.link_down().unwrap();
    ns.link_up().unwrap();
    drop(ns);
    assert_eq!(exists(&name, &ifname, &table), (false, false, false));
}

/// What a dead process left (namespace, veth, table, named with its pid) goes at the next
/// create; what a live process has stays.
#[test]
fn leftovers_of_dead_processes_are_swept_and_live_ones_kept() {
    let live = create();
    // A pid no process can have (pid_max is at most 2^22), and one of this test process's
    // own: a fixed one let two test processes running at once make, sweep and check the same
    // fake names (measured: 8 failures in 30 paired runs, each `ip netns add` of a name the
    // other had just made, or a fake remade by the other after this sweep).
    let dead = (1u32 << 22) + std::process::id();
    assert!(!process_alive(dead));
    let (name, ifname, table) = (
        format!("dlock-{dead}-0"),
        format!("dl{dead}x0"),
        format!("dlock_{dead}_0"),
    );
    let run = |args: &[&str]| {
        let st = Command::new("ip").args(args).status().unwrap();
        assert!(st.success(), "ip {args:?}");
    };
    {
        // Every create sweeps first, in any process: without the lock, a concurrent one
        // removes the fakes while they are being made.
        let _lock = NetnsLock::take().unwrap();
        run(&["netns", "add", &name]);
        run(&[
            "link", "add", &ifname, "type", "veth", "peer", "name", "dlock0", "netns", &name,
        ]);
        let st = Command::new("nft")
            .args(["add", "table", "ip", &table])
            .status()
            .unwrap();
        assert!(st.success());
        assert_eq!(exists(&name, &ifname, &table), (true, true, true));
    }
    // A concurrent create may sweep them first (then this sweep removes fewer, so its count
    // proves nothing); either way they are gone once this sweep returns.
    netns::sweep_stale();
    assert_eq!(exists(&name, &ifname, &table), (false, false, false));
    let live_table = live.name().replace('-', "_");
    assert_eq!(
        exists(live.name(), live.host_ifname(), &live_table),
        (true, true, true),
        "a live process's namespace was swept"
    );
}

/// The /30s of two namespaces do not overlap.
#[test]
fn two_namespaces_get_different_subnets() {
    let (a, b) = (create(), create());
    let net = |ip: Ipv4Addr| u32::from(ip) & !3;
    assert_ne!(net(a.host_addr()), net(b.host_addr()), "{a:?} {b:?}");
    assert_ne!(a.name(), b.name());
}
