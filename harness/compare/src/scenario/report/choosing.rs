//! "Choosing a backend": the few columns a reader picks a backend by, generated from a run,
//! so the README that quotes it cannot drift from the report (`make compare` writes it into
//! README.md between markers, see `scripts/update-readme`).

use std::fmt::Write as _;

use super::super::{Cell, Report, Status};
use super::{Verdict, backends_of, cell, failover_text};

/// What each backend takes to run, beside the service that uses it.
const TO_RUN: &[(&str, &str)] = &[
    ("postgres", "the PostgreSQL you have; session locks"),
    (
        "redis",
        "one Redis (persistence for tokens across restarts)",
    ),
    ("redlock", "3 independent Redis instances"),
    ("etcd", "an etcd cluster (3 members for quorum)"),
    ("zookeeper", "a ZooKeeper ensemble (3 members) and a JVM"),
    (
        "shedlock-postgres",
        "a table in your PostgreSQL, shared with Java ShedLock",
    ),
    ("shedlock-redis", "one Redis, Java ShedLock's keys"),
    (
        "mariadb",
        "the MariaDB / MySQL you have; session locks (GET_LOCK)",
    ),
];

/// The failure columns: scenario and heading.
const COLUMNS: &[(&str, &str)] = &[
    ("holder_killed", "crashed holder"),
    ("holder_paused", "paused holder"),
    ("holder_partitioned", "partitioned holder"),
    ("server_restart", "server restart"),
];

/// One failure cell: failover and, unless safe, the verdict.
fn failure(c: Option<&Cell>) -> String {
    let Some(c) = c else {
        return "—".into();
    };
    let time = match (c.status, c.failover_ms) {
        // The unit goes after the number, before any "· kept by …" part.
        (Status::Measured, Some(_)) => match failover_text(c).split_once(" · ") {
            Some((number, rest)) => format!("{number} ms · {rest}"),
            None => format!("{} ms", failover_text(c)),
        },
        _ => failover_text(c),
    };
    match Verdict::of(c) {
        Verdict::Safe | Verdict::NotApplicable => time,
        v => format!("{time}, {}", v.word()),
    }
}

/// The table, with a line saying what it was measured on.
pub fn choosing_markdown(r: &Report) -> String {
    let mut md = String::new();
    let _ = writeln!(
        md,
        "| backend | fencing token | {} | what it takes to run |",
        COLUMNS
            .iter()
            .map(|(_, h)| *h)
            .collect::<Vec<_>>()
            .join(" | ")
    );
    let _ = writeln!(md, "|---|---|{}---|", "---|".repeat(COLUMNS.len()));
    for b in backends_of(r) {
        let info = r.backends.iter().find(|x| x.name == b);
        let fencing = info.is_some_and(|x| x.capabilities.split(' ').any(|c| c == "fencing"));
        // Tokens that the run turned on with a URL option say which.
        let option = info.and_then(|x| {
            let q = x.url.split_once('?')?.1;
            q.split('&').find(|kv| kv.starts_with("fencing="))
        });
        let cols: Vec<String> = COLUMNS
            .iter()
            .map(|(s, _)| failure(cell(r, b, s)))
            .collect();
        let to_run = TO_RUN.iter().find(|(n, _)| *n == b).map_or("", |(_, t)| t);
        let _ = writeln!(
            md,
            "| {b} | {} | {} | {to_run} |",
            match (fencing, option) {
                (true, Some(o)) => format!("yes, with `{o}`"),
                (true, None) => "yes".to_string(),
                (false, _) => "no".to_string(),
            },
            cols.join(" | ")
        );
    }
    let ttl = r
        .backends
        .iter()
        .find_map(|b| b.ttl_ms)
        .map_or_else(|| "—".into(), |t| format!("{t} ms"));
    let _ = writeln!(
        md,
        "\nFailover: median (min–max) from the fault to the next holder's grant; where nobody \
         else got the lock within the bound: `kept by the live holder` (its session or lease \
         survived the fault, legitimately) or `stranded` (the holder had given it up, the \
         server had not). Verdicts other than safe are named. Measured by \
         `dlock compare` on `{}` ({} CPUs), ttl {ttl}, {} repetition(s) per cell, {} UTC, \
         commit {}; servers: {}.",
        r.run.host,
        r.run.cpus,
        r.run.repeat,
        utc_date(r.run.started_ms),
        r.run.commit.as_deref().unwrap_or("unknown"),
        if r.run.servers.is_empty() {
            "unknown".to_string()
        } else {
            r.run.servers.join(", ")
        }
    );
    md
}

/// `YYYY-MM-DD HH:MM` for ms since the Unix epoch (the civil-from-days algorithm).
fn utc_date(ms: i64) -> String {
    let secs = ms.div_euclid(1000);
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02} {:02}:{:02}",
        rem / 3600,
        rem % 3600 / 60
    )
}

#[cfg(test)]
mod tests {
    use super::utc_date;

    #[test]
    fn dates_are_utc_calendar_dates() {
        assert_eq!(utc_date(0), "1970-01-01 00:00");
        assert_eq!(utc_date(951_782_400_000), "2000-02-29 00:00");
        // Checked with Python: datetime.utcfromtimestamp(1796605459.167).
        assert_eq!(utc_date(1_796_605_459_167), "2026-12-07 01:04");
    }

    #[test]
    fn the_unit_follows_the_number_not_the_kept_part() {
        use super::super::super::{Cell, NotFreed, Stats, Status};
        let mut c = Cell::empty("etcd", "server_restart", Status::Measured, None);
        c.repetitions = 3;
        c.failover_ms = Stats::of(&[4024.0, 4026.0]);
        c.not_freed = Some(NotFreed {
            kept_by_live_holder: 1,
            stranded: 0,
        });
        assert_eq!(
            super::failure(Some(&c)),
            "4025 (4024–4026) ms · kept by the live holder in 1 of 3"
        );
    }
}
