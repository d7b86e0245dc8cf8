//! The fault schedule: drawn from the seed before the run starts, so that `--seed` replays
//! it (the same kinds, picks, gaps and lengths, in the same order) whatever the timing.

use std::time::Duration;

use serde::Serialize;

use super::rng::SplitMix64;

/// A fault the soak applies, a cheap subset of the scenario list that works in a mixed run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum FaultKind {
    /// SIGKILL of a holder process.
    HolderKilled,
    /// SIGSTOP of a holder process, SIGCONT after the fault's length.
    HolderPaused,
    /// RST on every connection of one holder slot (its fault proxies), for
    /// [`RESET_FOR`](crate::scenario::RESET_FOR).
    ConnectionReset,
    /// The servers SIGKILLed and started again on the same port and data.
    ServerRestart,
}

impl FaultKind {
    /// The scenario id of the same fault in `dlock compare`.
    pub fn name(self) -> &'static str {
        match self {
            FaultKind::HolderKilled => "holder_killed",
            FaultKind::HolderPaused => "holder_paused",
            FaultKind::ConnectionReset => "connection_reset",
            FaultKind::ServerRestart => "server_restart",
        }
    }
}

/// How often each kind is drawn, relative to the others: restarts are the slowest fault
/// (a JVM or PostgreSQL start) and hit every holder, so they come a third as often.
const WEIGHTS: [(FaultKind, u64); 4] = [
    (FaultKind::HolderKilled, 3),
    (FaultKind::HolderPaused, 3),
    (FaultKind::ConnectionReset, 3),
    (FaultKind::ServerRestart, 1),
];

/// The quiet time before each fault (after the previous one ended), ms.
pub const GAP_MS: (u64, u64) = (500, 2500);

/// A pause lasts between these fractions of the ttl (per mille): up to 1.5 ttl, so some
/// pauses outlive the lease and some do not.
pub const PAUSE_TTL_PERMILLE: (u64, u64) = (200, 1500);

/// One planned fault.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PlannedFault {
    /// Quiet time before it, after the previous fault ended (ms).
    pub gap_ms: u64,
    /// What it does.
    pub kind: FaultKind,
    /// Which holder it hits: an index into the holders inside the lock at the time (modulo
    /// their number), or into the slots when none is inside. Unused by a server restart.
    pub pick: u64,
    /// How long it lasts (a pause; 0 for the others).
    pub length_ms: u64,
}

/// The schedule for a run of `run` at `ttl` with the kinds `allowed`: enough faults to fill
/// `run` if each took no time (the run's end cuts it short; the rest are reported as not
/// reached).
pub fn plan(
    rng: &mut SplitMix64,
    run: Duration,
    ttl: Duration,
    allowed: &[FaultKind],
) -> Vec<PlannedFault> {
    let weights: Vec<(FaultKind, u64)> = WEIGHTS
        .iter()
        .copied()
        .filter(|(k, _)| allowed.contains(k))
        .collect();
    let total: u64 = weights.iter().map(|(_, w)| w).sum();
    let mut out = Vec::new();
    let mut at_ms = 0;
    if total == 0 {
        return out;
    }
    let ttl_ms = ttl.as_millis() as u64;
    while at_ms < run.as_millis() as u64 {
        let gap_ms = rng.range(GAP_MS.0, GAP_MS.1);
        let mut w = rng.range(0, total - 1);
        let kind = weights
            .iter()
            .find(|(_, kw)| {
                let hit = w < *kw;
                w = w.saturating_sub(*kw);
                hit
            })
            .map_or(weights[0].0, |(k, _)| *k);
        let pick = rng.range(0, 1 << 16);
        let length_ms = match kind {
            FaultKind::HolderPaused => {
                ttl_ms * rng.range(PAUSE_TTL_PERMILLE.0, PAUSE_TTL_PERMILLE.1) / 1000
            }
            _ => 0,
        };
        at_ms += gap_ms + length_ms;
        out.push(PlannedFault {
            gap_ms,
            kind,
            pick,
            length_ms,
        });
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_seed_gives_one_schedule_and_only_allowed_kinds() {
        let all = [
            FaultKind::HolderKilled,
            FaultKind::HolderPaused,
            FaultKind::ConnectionReset,
            FaultKind::ServerRestart,
        ];
        let run = Duration::from_secs(60);
        let ttl = Duration::from_secs(2);
        let a = plan(&mut SplitMix64::new(9), run, ttl, &all);
        let b = plan(&mut SplitMix64::new(9), run, ttl, &all);
        assert_eq!(a, b);
        assert!(a.len() >= 10, "{}", a.len());
        for k in all {
            assert!(a.iter().any(|f| f.kind == k), "{k:?} never drawn");
        }
        let no_restart = plan(&mut SplitMix64::new(9), run, ttl, &all[..3]);
        assert!(
            no_restart
                .iter()
                .all(|f| f.kind != FaultKind::ServerRestart)
        );
        for f in a.iter().filter(|f| f.kind == FaultKind::HolderPaused) {
            assert!((400..=3000).contains(&f.length_ms), "{f:?}");
        }
        assert!(plan(&mut SplitMix64::new(9), run, ttl, &[]).is_empty());
    }
}
