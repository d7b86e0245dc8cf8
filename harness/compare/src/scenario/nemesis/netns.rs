//! How `holder_partitioned` cuts the holder off from its server.
//!
//! Where it can, the holder runs inside a network namespace ([`dlock_fixtures::netns`]) and the veth
//! link goes down: a real blackhole, which the server's own TCP stack sees (keepalives and
//! `tcp_user_timeout` fire), so server-side detection is measured too. That needs Linux,
//! root, iproute2 and nftables, and a single managed server on loopback of a backend listed
//! in [`NETNS_BACKENDS`]. Otherwise the holder's traffic is blackholed in the in-process fault
//! proxy, whose kernel keeps ACKing the server (server-side detection cannot fire there).
//! Every cell's notes and the report's `run.fault_injection` say which was used.

use std::time::Duration;

use crate::scenario::cell::{Cell, Status};
use crate::scenario::target::{Target, reroute};
use dlock_fixtures::netns::{self, Netns};

/// The backends whose holder `holder_partitioned` runs in a network namespace when it can:
/// single-server backends whose fixture accepts connections from a namespace (PostgreSQL's
/// `pg_hba.conf`, Redis without protected mode, MariaDB's `root@'10.231.0.0/255.255.0.0'`).
/// etcd and ZooKeeper stay on the fault proxy in this build; Redlock needs a cut to each of
/// several servers.
pub(super) const NETNS_BACKENDS: [&str; 5] = [
    "postgres",
    "shedlock-postgres",
    "redis",
    "shedlock-redis",
    "mariadb",
];

/// The least time the waiter gets after the link went down: the server-side detection of a
/// vanished PostgreSQL client takes up to about 10 s with lock-postgres's defaults, MariaDB's
/// `wait_timeout` 10 s with lock-mysql's, plus slack.
pub(super) const NETNS_FAULT_BOUND: Duration = Duration::from_secs(20);

/// The start of the note that says a cell used a namespace (also read back by
/// [`fault_injection`]).
const NETNS_NOTE: &str = "partition: network namespace";

/// A namespace for the holder of `backend` with `url` rewritten to reach the server from
/// inside it, or why not.
pub(super) fn namespace(backend: &str, target: &Target) -> Result<(Netns, String), String> {
    if !NETNS_BACKENDS.contains(&backend) {
        return Err(format!(
            "{backend} is not run in a network namespace by this build"
        ));
    }
    let Some(addr) = target.addr.filter(|a| a.ip().is_loopback()) else {
        return Err("no single loopback server address".into());
    };
    if !target.server.as_ref().is_some_and(|s| s.is_managed()) {
        return Err("external server: its access rules may refuse a client in a namespace".into());
    }
    let ns = Netns::create().map_err(|e| e.to_string())?;
    let inside = ns.expose(addr.port()).map_err(|e| e.to_string())?;
    let url = reroute(&target.url, &[(addr, inside)]).map_err(|_| {
        format!(
            "cannot route {} through the namespace",
            dlock::redact(&target.url)
        )
    })?;
    Ok((ns, url))
}

/// The cell note for a repetition run in `ns`, with the server's view of the holder's
/// connections (`ss`), taken while the holder holds the lock.
pub(super) fn netns_note(ns: &Netns, server_port: Option<u16>) -> String {
    let peers = match server_port.map(netns::tcp_peers) {
        Some(Ok(peers)) => {
            let from_ns: Vec<String> = peers
                .iter()
                .filter(|p| p.ip() == std::net::IpAddr::V4(ns.ns_addr()))
                .map(|p| p.ip().to_string())
                .collect();
            if from_ns.is_empty() {
                format!("ss showed no server connection from {}", ns.ns_addr())
            } else {
                format!(
                    "the server's TCP peer was the namespace ({} connection(s) from {}, per ss)",
                    from_ns.len(),
                    ns.ns_addr()
                )
            }
        }
        Some(Err(e)) => format!("ss failed: {e}"),
        None => "no server port".to_string(),
    };
    format!(
        "{NETNS_NOTE} (holder inside, veth link taken down in the namespace: a blackhole the \
         server's TCP stack sees; {peers}); failover = link down → grant"
    )
}

/// The cell note for a repetition that fell back to the fault proxy, and why.
pub(super) fn proxy_note(why: &str) -> String {
    format!(
        "partition: fault proxy blackhole (sockets stay open, the server's kernel sees a live \
         peer); no network namespace: {why}"
    )
}

/// How `holder_partitioned` was injected, per backend, for `run.fault_injection`.
pub(crate) fn fault_injection(cells: &[Cell]) -> String {
    let (mut ns, mut proxy) = (Vec::new(), Vec::new());
    for c in cells
        .iter()
        .filter(|c| c.scenario == "holder_partitioned" && c.status != Status::NotMeasured)
        .filter(|c| c.status != Status::NotApplicable && c.library.is_none())
    {
        if c.notes.iter().any(|n| n.starts_with(NETNS_NOTE)) {
            ns.push(c.backend.as_str());
        } else if c
            .notes
            .iter()
            .any(|n| n.starts_with("partition: fault proxy"))
        {
            proxy.push(c.backend.as_str());
        }
    }
    let mut parts = Vec::new();
    if !ns.is_empty() {
        parts.push(format!(
            "network namespace + veth link down (Linux, root) for {}",
            ns.join(", ")
        ));
    }
    if !proxy.is_empty() {
        parts.push(format!("fault proxy blackhole for {}", proxy.join(", ")));
    }
    if parts.is_empty() {
        return "holder_partitioned: not run".to_string();
    }
    format!("holder_partitioned: {}", parts.join("; "))
}
