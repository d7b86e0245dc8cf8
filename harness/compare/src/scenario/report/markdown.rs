//! `comparison.md`.

use std::fmt::Write as _;

use super::bench::*;
use super::*;

/// `comparison.md`.
pub fn markdown(r: &Report) -> String {
    let mut md = String::new();
    let _ = writeln!(md, "# dlock: backend vs reliability\n");
    let _ = writeln!(
        md,
        "Measured on `{}` ({} CPUs), {} repetition(s) per cell{}, in {:.0} s. Holders are \
         separate `dlock hold` processes; faults: {}.\n",
        r.run.host,
        r.run.cpus,
        r.run.repeat,
        if r.run.quick { " (`--quick`)" } else { "" },
        r.run.duration_s,
        r.run.fault_injection
    );
    let _ = writeln!(
        md,
        "## Failover time, ms: median (min–max)\n\nFrom the fault to the waiting holder's \
         grant.\n"
    );
    md.push_str(&main_table(r));
    let _ = writeln!(md, "\n## Safety\n");
    md.push_str(&table(r, safety_text));
    backends(&mut md, r);
    reading_guide(&mut md);
    if let Some(table) = bench_markdown(r) {
        let _ = writeln!(
            md,
            "\n## Benchmarks\n\nShort runs on the same servers, after the scenarios; the raw \
             floor is the backend's minimal commands on a raw client of the same server, \
             measured alternately with dlock, one operation each. Latencies in µs. `make bench` \
             runs the longer criterion set.\n"
        );
        md.push_str(&table);
    }
    if let Some(t) = peers_markdown(r) {
        let _ = writeln!(md, "\n## dlock beside the peer libraries\n");
        md.push_str(&t);
    }
    if let Some(t) = strategies_markdown(r) {
        let _ = writeln!(md, "\n## The seed's strategies\n");
        md.push_str(&t);
    }
    if let Some(t) = targets_markdown(r) {
        let _ = writeln!(md, "\n## Targets\n");
        md.push_str(&t);
    }
    without_measurements(&mut md, r);
    cell_notes(&mut md, r);
    md
}

/// The backends: ttl, how a silent holder is freed, capabilities.
fn backends(md: &mut String, r: &Report) {
    let _ = writeln!(md, "\n## Backends\n");
    let _ = writeln!(
        md,
        "| backend | ttl in force | frees a silent holder by | capabilities |"
    );
    let _ = writeln!(md, "|---|---|---|---|");
    for b in &r.backends {
        let _ = writeln!(
            md,
            "| {} | {} | {} | {} |",
            b.name,
            b.ttl_ms
                .map_or_else(|| "none".to_string(), |t| format!("{t} ms")),
            b.frees_by,
            b.capabilities
        );
    }
}

/// What the columns mean and how each scenario is run (numbers from the constants the
/// nemeses run with).
fn reading_guide(md: &mut String) {
    let _ = writeln!(
        md,
        "\n## Reading guide\n\n\
         - **Clock**: every instant is `CLOCK_MONOTONIC` in microseconds — the holders print it \
         with each event (`t_mono_us`), the harness reads it for its own marks; one clock for \
         every process on the machine, never stepped, so events of different processes \
         compare exactly (a tie is not \"first\").\n\
         - **Failover** is the time from the fault (release requested, SIGKILL, SIGSTOP) \
         to the `acquired` event of a holder that was already waiting (`dlock hold --wait \
         forever`). Lease-based backends free a dead or frozen holder only when its lease / \
         session / `at_most` runs out, so expect up to one ttl there (what was left of the \
         lease when the fault hit; renewals restart it); PostgreSQL and MariaDB free a \
         killed holder as soon as its connection closes; PostgreSQL never frees a *paused* one \
         whose connection stays open, MariaDB only after the session's `wait_timeout` (10 s) \
         (`kept by the live holder` before that). Where nobody else got the lock \
         within the bound, the cell says who had it: `kept by the live holder` (it never \
         reported a loss: its session or lease survived the fault, which is the backend's rule \
         working) or `stranded` (the holder reported the loss but the server kept the lock \
         for it until it released or its session ended), with counts when the repetitions \
         differ.\n\
         - **overlap**: the harness-owned resource saw two holders inside the critical section \
         at once (by the holders' own timestamps, µs). A paused holder is inside until it reports \
         the loss, so `holder_paused` shows overlap wherever the lock moved on while it slept.\n\
         - **stale write rejected**: after the hand-over, a write carrying the previous \
         holder's fencing token reaches the resource (a delayed request of the dead or paused \
         holder). `yes`: the token was lower than the new holder's and the resource refused \
         it; `no`: the backend has no fencing token (or it did not increase), so nothing could \
         stop it; `—`: no stale write was possible (the old holder still held the lock).\n\
         - **learned first**: the faulty holder reported `lost` before the other holder's \
         grant, with the gap in ms: median; min to max over the repetitions (positive = that \
         much before; negative = after). Only where the holder survives the fault; `never \
         learned`: it lived through the handover and never reported the loss (`in k of n` \
         repetitions when not in all).\n\
         - **holder_partitioned / connection_reset** put an in-process TCP fault proxy between \
         the holder and each of its servers (blackhole that keeps the sockets open; RST for \
         200 ms then pass); the waiter connects directly. Where the run is root on Linux, \
         `holder_partitioned` instead puts the holder in a network namespace and takes its \
         link down (the cell's partition note says which): a real partition, which the \
         server's TCP stack sees. A proxy blackhole is not: the server's kernel keeps talking \
         to the proxy, so a lock that the server frees only when the client's TCP connection \
         dies (PostgreSQL) stays taken there (MariaDB frees it after `wait_timeout` either way). `kept by the live holder` after a 200 ms reset \
         means the holder reconnected and kept its lock (its session or lease outlived the \
         reset).\n\
         - **server_restart**: the server (Redlock: all three) is SIGKILLed and started again \
         on the same port and data; the failover includes the restart time (in the notes). A waiter that gives up \
         when its connection dies is replaced by a fresh one (holder 2 in the notes). `kept by \
         the live holder`: the lock survived the restart for the whole bound and its holder \
         never reported a loss (a persisted session or lease); `stranded`: the holder reported \
         it lost, yet nobody else was granted it within the bound.\n\
         - **primary_failover**: the server the lock lives on is SIGKILLed while the lock is \
         held and another takes over (PostgreSQL: its streaming replica promoted at once; \
         Redis: a replica promoted by 3 Sentinels; etcd / ZooKeeper: the leader of a 3-member \
         cluster). Every holder's URL names every host, so clients follow the new primary; \
         `kept by the live holder` means the lock's state survived on the new primary. The \
         notes give the promotion or election time. `n/a` where the backend has no primary.\n\
         - **latency**: the holder reaches every server (each of Redlock's three too) through \
         a fault proxy that delays each chunk, in order, in each direction. A probe holder \
         first acquires through ttl/{} (its time, or why it failed, is in the notes); the \
         holder, connected on a clean link, then gets the same delay and ttl/{} (a round \
         trip of half the lease), each for {} ttl — renewals should survive them (`kept the \
         lock … in N of M` in the notes) — then 1.5 ttl, longer than the lease. The climb stops \
         at the first step where the holder reports trouble or the waiter is granted; failover \
         runs from the start of that step (which step: in the notes).\n\
         - **quorum_loss** (3 servers: Redlock's instances, a 3-node etcd cluster, a 3-member \
         ZooKeeper ensemble started for this scenario): two are SIGKILLed (etcd / ZooKeeper: \
         the leader and one more) for {} ttl (at least {} s), then restarted. Nothing may be \
         granted while the majority is down (a grant would be in the notes); failover runs \
         from the restart of the majority to another holder's grant (the servers' start-up \
         included) (a waiter that gave up \
         during the outage is replaced). Single servers: `n/a`.\n\
         - **clock_skew**: the holder's wall clock is {} h ahead, the waiter's as far behind \
         (libfaketime; `CLOCK_MONOTONIC` untouched, as when a host's clock is set wrong or \
         stepped). Each holds 1.5 ttl against a waiting holder (the notes say whether the lock \
         stayed put); failover = SIGKILL of the ahead holder → the behind waiter's grant; the \
         behind holder then releases cleanly to an unskewed one. The skew is verified from the \
         holders' own timestamps, which the harness shifts back before using them.\n\
         - The fault is injected once the waiter has printed `waiting` (its first try found the \
         lock held) and {} ms more for its waiting request to reach the server; a waiter that \
         had not queued yet could only make a failover look slower, never faster.\n\
         - **Peer rows** (`redis · redisson 3.x`, under their backend): the same scenario \
         with a peer library's own processes as the holders (its harness, `peers/README.md`), \
         on the same servers, with its defaults and the same ttl. No peer hands its holder a \
         fencing token (`no token (library)`; an overlap is `unfenced overlap (library)`), \
         and none reports a loss: a peer holder that lived through the handover `never \
         learned`.\n\
         - **`· shared` and `· semaphore` rows** (under their backend, where it has shared \
         locks and semaphores; holder_killed, holder_paused, holder_partitioned and \
         server_restart only): `· shared` — the subject holds a shared grant (a reader, no \
         fencing token: `no token`), the waiter wants the lock exclusively; an overlap is the \
         writer inside beside the reader. `· semaphore` — a semaphore of 2 permits: a third \
         holder takes one first and keeps it (no fault aimed at it), the subject holds the other, \
         the waiter wants one; an overlap is **more than 2 holders at once** (subject and waiter \
         inside together beside the third), and the waiter's token fences the subject's slot.\n\
         - Cells `not measured` could not be run here (the reason says why, e.g. libfaketime \
         missing, external servers); `n/a` cannot apply (reason in `comparison.json`). No \
         number in these tables is estimated.",
        crate::scenario::nemesis::latency::ACQUIRE_LINK_DIVISOR,
        crate::scenario::nemesis::latency::SLOW_LINK_DIVISOR,
        crate::scenario::nemesis::latency::SLOW_PHASE_TTLS,
        crate::scenario::nemesis::quorum::OUTAGE_TTLS,
        crate::scenario::nemesis::quorum::OUTAGE_MIN.as_secs(),
        crate::scenario::nemesis::SKEW_MS / 3_600_000,
        crate::scenario::WAITER_SETTLE.as_millis()
    );
}

/// The cells that were not measured, and why.
fn without_measurements(md: &mut String, r: &Report) {
    let others: Vec<&Cell> = r
        .scenarios
        .iter()
        .filter(|c| c.status != Status::Measured)
        .collect();
    if !others.is_empty() {
        let _ = writeln!(md, "\n## Cells without measurements\n");
        let _ = writeln!(md, "| backend | scenario | status | reason |");
        let _ = writeln!(md, "|---|---|---|---|");
        for c in others {
            let status = match c.status {
                Status::NotApplicable => "not_applicable",
                Status::NotMeasured => "not_measured",
                Status::Failed => "failed",
                Status::Measured => "measured",
            };
            let _ = writeln!(
                md,
                "| {} | {} | {status} | {} |",
                c.row_label(),
                c.scenario,
                c.reason.as_deref().unwrap_or("").replace('|', "\\|")
            );
        }
    }
}

/// The measured cells' notes (after the first, the scenario's description).
fn cell_notes(md: &mut String, r: &Report) {
    let notes: Vec<&Cell> = r
        .scenarios
        .iter()
        .filter(|c| c.status == Status::Measured && c.notes.len() > 1)
        .collect();
    if !notes.is_empty() {
        let _ = writeln!(md, "\n## Notes\n");
        for c in notes {
            for n in &c.notes[1..] {
                let _ = writeln!(md, "- {} × {}: {n}", c.row_label(), c.scenario);
            }
        }
    }
}
