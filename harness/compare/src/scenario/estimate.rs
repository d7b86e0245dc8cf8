//! What a run will cost, said before it starts: the measured cells × repetitions × each
//! nemesis's per-repetition cost, the servers' start-up, and the benchmark plan.
//!
//! The costs were measured on the 2-core machine the README's numbers come from; a faster
//! or busier machine moves them, so the estimate is a planning figure, not a bound.

use std::time::Duration;

use super::nemesis;
use super::{BACKENDS, CompareOptions, runner};
use crate::bench::BenchPlan;
use crate::peers::PeersPlan;

/// Starting (and later stopping) one backend's servers.
const SERVERS: Duration = Duration::from_millis(500);

/// Starting a 3-member cluster for a nemesis that needs servers of its own.
const OWN_SERVERS: Duration = Duration::from_secs(2);

/// One backend's benchmarks with [`BenchPlan::short`], on average (PostgreSQL's 10,000 locks
/// take the longest: 11-14 s of it; Redis 0.5 s).
const BENCH_SHORT: Duration = Duration::from_millis(5_500);

/// One backend's benchmarks with [`BenchPlan::quick`].
const BENCH_QUICK: Duration = Duration::from_millis(500);

/// One peer beside dlock with [`PeersPlan::short`] (three SIGKILL failovers per side of up
/// to a ttl each, six 1 s throughput runs per side, the handoff chains' start-up).
const PEER_SHORT: Duration = Duration::from_secs(30);

/// One peer with [`PeersPlan::quick`].
const PEER_QUICK: Duration = Duration::from_secs(10);

/// A peer holder's repetition beyond the nemesis's own cost: its two harnesses start (a JVM's
/// start and warm-up the slowest) and the third one `server_restart` may need. Measured
/// (redis and zookeeper, 3 repetitions, 2-core machine): 2.0 s on average over the five
/// scenarios and four peers, the JVM ones about 3 s, redsync's Go harness well under 1 s;
/// rounded up, as the JVM peers are most of them.
const PEER_HOLDER_START: Duration = Duration::from_millis(2_500);

/// Reading a peer holder's version before its cells (one harness started and quit).
const PEER_PROBE: Duration = Duration::from_secs(2);

/// The expected cost of a run, by section.
#[derive(Debug, Clone, PartialEq)]
pub struct Plan {
    /// Cells to measure (peer holders' included).
    pub cells: usize,
    /// Of them, the peer libraries' holders' cells.
    pub peer_cells: usize,
    /// Repetitions per cell.
    pub repeat: usize,
    /// The failure scenarios (servers' start-up included).
    pub scenarios: Duration,
    /// Backends whose benchmarks run.
    pub bench_backends: usize,
    /// The benchmarks.
    pub bench: Duration,
    /// Peers measured beside dlock.
    pub peer_count: usize,
    /// The peers section.
    pub peers: Duration,
    /// The strategies section (PostgreSQL only).
    pub strategies: Duration,
}

impl Plan {
    /// The plan of `opts`.
    pub fn of(opts: &CompareOptions) -> Plan {
        let to_run = runner::selected(opts);
        let backends: Vec<&str> = BACKENDS
            .iter()
            .copied()
            .filter(|b| opts.backends.iter().any(|x| x == b))
            .collect();
        let mut cells = 0;
        let mut scenarios = Duration::ZERO;
        for n in nemesis::all().iter().filter(|n| to_run.contains(&n.name())) {
            for b in &backends {
                if n.not_applicable(b).is_some() {
                    continue;
                }
                cells += 1;
                scenarios += n.cost(opts.ttl) * opts.repeat as u32;
                if n.own_servers(b) {
                    scenarios += OWN_SERVERS;
                }
            }
        }
        let peer_scenarios = runner::peer_scenarios(&to_run);
        let mut peer_cells = 0;
        for b in &backends {
            let peers = opts.peer_holders.of(b).len();
            if peers == 0 || peer_scenarios.is_empty() {
                continue;
            }
            scenarios += PEER_PROBE * peers as u32;
            for n in nemesis::all()
                .iter()
                .filter(|n| peer_scenarios.contains(&n.name()))
            {
                peer_cells += peers;
                let rep = n.cost(opts.ttl) + PEER_HOLDER_START;
                scenarios += rep * (opts.repeat * peers) as u32;
            }
        }
        // dlock's shared lock and semaphore: one cell each per scenario they go through.
        let mut multi_cells = 0;
        for b in &backends {
            for n in nemesis::all()
                .iter()
                .filter(|n| runner::multi_scenarios(b, &to_run).contains(&n.name()))
            {
                multi_cells += 2;
                scenarios += n.cost(opts.ttl) * (2 * opts.repeat) as u32;
            }
        }
        let cells = cells + peer_cells + multi_cells;
        if cells > 0 {
            scenarios += SERVERS * backends.len() as u32;
        }
        let bench_backends = opts.bench.as_ref().map_or(0, |_| backends.len());
        let peer_count = match &opts.peers {
            None => 0,
            Some(_) => crate::peers::catalog::all_peers()
                .filter(|p| backends.contains(&p.backend))
                .count(),
        };
        let per_peer = match &opts.peers {
            Some(p) if p.samples <= PeersPlan::quick().samples => PEER_QUICK,
            _ => PEER_SHORT,
        };
        let strategies = match &opts.strategies {
            Some(p) if backends.contains(&"postgres") => {
                let contention_runs = (4 * p.workers.len() * p.repeat) as u32;
                STRATEGIES_FIXED
                    + STRATEGIES_PER_RUN * (13 * p.repeat) as u32
                    + (p.contention + CONTENTION_SETUP) * contention_runs
                    + IDEMPOTENCY_RUN * (8 * p.repeat) as u32
            }
            _ => Duration::ZERO,
        };
        Plan {
            strategies,
            peer_cells,
            peer_count,
            peers: per_peer * peer_count as u32,
            cells,
            repeat: opts.repeat,
            scenarios,
            bench_backends,
            bench: per_backend(opts.bench.as_ref()) * bench_backends as u32,
        }
    }

    /// Every section.
    pub fn total(&self) -> Duration {
        self.scenarios + self.bench + self.peers + self.strategies
    }

    /// One line for the log: the total and what it is made of.
    pub fn describe(&self) -> String {
        let scenarios = if self.cells == 0 {
            "no scenarios".to_string()
        } else {
            let peers = if self.peer_cells == 0 {
                String::new()
            } else {
                format!(", {} of them peer holders'", self.peer_cells)
            };
            format!(
                "scenarios {} ({} cells{peers} × {} repetition(s))",
                minutes(self.scenarios),
                self.cells,
                self.repeat
            )
        };
        let bench = if self.bench_backends == 0 {
            "no benchmarks".to_string()
        } else {
            format!(
                "benchmarks {} ({} backend(s))",
                minutes(self.bench),
                self.bench_backends
            )
        };
        let peers = if self.peer_count == 0 {
            "no peers".to_string()
        } else {
            format!(
                "peers {} ({} peer(s))",
                minutes(self.peers),
                self.peer_count
            )
        };
        let strategies = if self.strategies.is_zero() {
            "no strategies".to_string()
        } else {
            format!("strategies {}", minutes(self.strategies))
        };
        format!(
            "expected to take about {}: {scenarios}, {bench}, {peers}, {strategies}",
            minutes(self.total())
        )
    }
}

/// The strategies section's PostgreSQL start and its table seeding, once.
const STRATEGIES_FIXED: Duration = Duration::from_secs(5);
/// One purge run (seeding 40,000 rows, three workers, the live stream) or one baseline.
const STRATEGIES_PER_RUN: Duration = Duration::from_millis(300);
/// One idempotency situation on one grade (a server restart in two of the eight).
const IDEMPOTENCY_RUN: Duration = Duration::from_millis(300);
/// A contention run's table, pool and (for the dlock strategies) backend.
const CONTENTION_SETUP: Duration = Duration::from_millis(100);

/// One backend's benchmarks under `plan`.
fn per_backend(plan: Option<&BenchPlan>) -> Duration {
    match plan {
        None => Duration::ZERO,
        // The many-locks step dominates; it scales with the lock count.
        Some(p) if p.many <= BenchPlan::quick().many => BENCH_QUICK,
        Some(_) => BENCH_SHORT,
    }
}

/// `12 min 30 s`, `45 s`.
pub fn minutes(d: Duration) -> String {
    let s = d.as_secs();
    if s < 60 {
        format!("{s} s")
    } else {
        format!("{} min {:02} s", s / 60, s % 60)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scenario::SCENARIOS;
    use crate::scenario::workload::PeerHolders;

    fn opts(scenarios: bool, bench: Option<BenchPlan>) -> CompareOptions {
        CompareOptions {
            dlock_bin: "dlock".into(),
            repeat: 3,
            backends: BACKENDS.iter().map(|s| s.to_string()).collect(),
            scenarios: SCENARIOS.iter().map(|s| s.to_string()).collect(),
            ttl: Duration::from_secs(2),
            out: "report".into(),
            run_scenarios: scenarios,
            bench,
            peers: None,
            peer_holders: PeerHolders::Off,
            strategies: None,
        }
    }

    #[test]
    fn the_plan_counts_the_measured_cells_and_the_sections() {
        // 8 × 10 cells, of which 5 are quorum_loss on a single server and 2 are
        // primary_failover without a primary (Redlock, ShedLock-Redis): not applicable; and
        // the shared lock and the semaphore on 4 backends × 4 scenarios.
        let all = Plan::of(&opts(true, Some(BenchPlan::short())));
        assert_eq!(all.cells, 73 + 32);
        assert_eq!(all.bench_backends, 8);
        assert_eq!(all.total(), all.scenarios + all.bench);
        let with_peers = Plan::of(&CompareOptions {
            peers: Some(PeersPlan::short()),
            ..opts(false, None)
        });
        assert_eq!(
            with_peers.peer_count,
            crate::peers::PEERS.len() + crate::peers::MULTI_PEERS.len()
        );
        assert_eq!(with_peers.total(), with_peers.peers);
        let scenarios = Plan::of(&opts(true, None));
        assert_eq!(
            (scenarios.bench, scenarios.scenarios),
            (Duration::ZERO, all.scenarios)
        );
        let bench = Plan::of(&opts(false, Some(BenchPlan::short())));
        assert_eq!((bench.cells, bench.scenarios), (0, Duration::ZERO));
        assert_eq!(bench.bench, all.bench);
        assert!(all.describe().starts_with("expected to take about "));
        // Peer holders: 7 libraries × 5 scenarios, each repetition its harnesses' start more.
        let peers = Plan::of(&CompareOptions {
            peer_holders: PeerHolders::All,
            ..opts(true, None)
        });
        assert_eq!((peers.peer_cells, peers.cells), (35, 105 + 35));
        assert!(peers.scenarios > scenarios.scenarios + PEER_HOLDER_START * 105);
        assert!(
            peers
                .describe()
                .contains("140 cells, 35 of them peer holders'")
        );
        let quick = Plan::of(&CompareOptions {
            peer_holders: PeerHolders::FirstPerBackend,
            ..opts(true, None)
        });
        assert_eq!(quick.peer_cells, 6 * 5);
        let none = Plan::of(&CompareOptions {
            peer_holders: PeerHolders::All,
            ..opts(false, None)
        });
        assert_eq!((none.peer_cells, none.scenarios), (0, Duration::ZERO));
        assert_eq!(minutes(Duration::from_secs(754)), "12 min 34 s");
    }
}
