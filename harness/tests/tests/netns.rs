//! `dlock_fixtures::netns`: what a namespace is made of, that it is gone after drop, and that
//! leftovers of dead processes are swept while a live process's are kept. Needs root on
//! Linux with iproute2 and nftables; fails (never passes silently) without them.

use std::net::{Ipv4Addr, SocketAddr};
use std::path::Path;
use std::process::Command;

use dlock_fixtures::netns::{self, Netns};
use dlock_fixtures::process_alive;

/// The tests here change machine-wide state (namespaces, interfaces, nftables tables, and
/// the sweep of leftovers); they take turns. (Run side by side, the sweep test once found the
/// live namespace of a concurrent test gone; not explained yet.)
static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|p| p.into_inner())
}

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
    let _serial = serial();
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
    let _serial = serial();
    let live = create();
    // A pid that is not running (pid_max is at most 4194304).
    let dead = (3_000_000u32..4_000_000)
        .find(|p| !process_alive(*p))
        .expect("a free pid");
    let (name, ifname, table) = (
        format!("dlock-{dead}-0"),
        format!("dl{dead}x0"),
        format!("dlock_{dead}_0"),
    );
    let run = |args: &[&str]| {
        let st = Command::new("ip").args(args).status().unwrap();
        assert!(st.success(), "ip {args:?}");
    };
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
    let removed = netns::sweep_stale();
    assert!(removed >= 3, "removed {removed}");
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
    let _serial = serial();
    let (a, b) = (create(), create());
    let net = |ip: Ipv4Addr| u32::from(ip) & !3;
    assert_ne!(net(a.host_addr()), net(b.host_addr()), "{a:?} {b:?}");
    assert_ne!(a.name(), b.name());
}
