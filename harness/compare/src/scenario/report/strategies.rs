//! The strategies section: the seed's purge on three workers under each strategy.

use std::fmt::Write as _;

use super::Report;
use super::html::esc;
use crate::strategies::{ContentionRow, IdemRow, PurgeRow};

const INTRO: &str = "Three workers fire the seed's purge (`DELETE FROM emp_details WHERE \
     last_updated < now() - interval '30 days'`, the statement of `examples/purge_job.rs` and \
     of the Java harness's Spring pods) on the same tick, each in a SERIALIZABLE transaction as \
     the seed runs it, on one PostgreSQL: without a lock (one attempt, the seed's job does not \
     retry), under dlock's advisory lock or a ShedLock table (tried without waiting; the \
     holder retries a serialization failure up to 5 times), as `FOR UPDATE SKIP LOCKED` \
     batches of 500 and as optimistic batches of 500 (`(id, version)` read, then deleted only \
     at that version; a row already gone is a conflict), each batch retried up to 5 times. \
     Quiet, then beside a live stream (one session alternating an insert and an update that \
     touches a random row, old or recent, setting `last_updated = now()`: a touched old row \
     must survive). \"Lock waits\" is the share of `pg_stat_activity` samples, every 5 ms, \
     that found the live session waiting on a lock (`wait_event_type = 'Lock'`): blocking, \
     measured where it happens; the live p99 is secondary (on two cores it mostly measures \
     CPU contention). Medians (min–max) over the runs.";

fn trio(v: [f64; 3], digits: usize) -> String {
    if v[1] == v[2] {
        format!("{:.*}", digits, v[0])
    } else {
        format!(
            "{:.*} ({:.*}–{:.*})",
            digits, v[0], digits, v[1], digits, v[2]
        )
    }
}

/// The cells of one row, in column order.
fn cells(p: &PurgeRow) -> Vec<String> {
    let mode = if p.live { "yes" } else { "no" };
    if p.status != "measured" {
        return vec![
            p.strategy.clone(),
            mode.into(),
            format!(
                "{}: {}",
                p.status,
                p.reason.as_deref().unwrap_or("no reason given")
            ),
        ];
    }
    let live = |v: Option<String>| v.unwrap_or_else(|| "—".into());
    let purge_ran = p.strategy != "live stream alone (no purge)";
    let purge = |s: String| if purge_ran { s } else { "—".into() };
    let [d, s, f] = p.workers_deleted_skipped_failed;
    vec![
        p.strategy.clone(),
        mode.into(),
        p.runs.to_string(),
        purge(trio(p.serialization_errors, 0)),
        purge(trio(p.retries, 0)),
        purge(format!("{d:.0} / {s:.0} / {f:.0}")),
        purge(format!("{:.0}", p.conflicts)),
        purge(trio(p.wall_ms, 0)),
        purge(format!(
            "{} / {}",
            p.old_rows_left_max, p.recent_rows_deleted_max
        )),
        live(p.live_lock_wait_pct.map(|v| format!("{}%", trio(v, 1)))),
        live(p.live_ops_per_s.map(|v| format!("{v:.0}"))),
        live(p.live_p99_us.map(|v| format!("{v:.0}"))),
        live(p.live_errors.map(|v| v.to_string())),
    ]
}

const HEADER: [&str; 13] = [
    "strategy",
    "live stream",
    "runs",
    "serialization errors per run",
    "retries per run",
    "workers deleted / skipped / gave up",
    "conflicts",
    "wall ms",
    "old rows left / recent rows deleted (worst run)",
    "live: lock waits",
    "live ops/s",
    "live p99 µs",
    "live errors",
];

const CONTENTION_INTRO: &str = "The seed's inventory under contention: 1, 8 and 64 workers \
     decrement one hot row for a fixed time, each decrement a read-modify-write (`SELECT \
     stock`, then `UPDATE … SET stock = <read − 1>`) kept safe by dlock's advisory lock \
     (waiting), dlock on a ShedLock table (waiting), optimistic versioning \
     (`lock_rowlock::VersionedTable`, up to 50 attempts, 0.2–20 ms jittered backoff) or \
     `SELECT … FOR UPDATE` (`lock_rowlock::RowLockTx`); one process, a pool of at most 17 \
     connections. Lost updates = decrements that reported success minus the row's drop: 0 \
     for a correct strategy. Ops/s: median (min–max) over the runs; on two cores, with the \
     server on the same machine.";

const CONTENTION_HEADER: [&str; 7] = [
    "strategy",
    "workers",
    "runs",
    "decrements/s",
    "retries per decrement",
    "gave up",
    "lost updates (worst run)",
];

fn contention_cells(c: &ContentionRow) -> Vec<String> {
    if c.status != "measured" {
        return vec![
            c.strategy.clone(),
            c.workers.to_string(),
            format!(
                "{}: {}",
                c.status,
                c.reason.as_deref().unwrap_or("no reason given")
            ),
        ];
    }
    vec![
        c.strategy.clone(),
        c.workers.to_string(),
        c.runs.to_string(),
        trio(c.ops_per_s, 0),
        format!("{:.2}", c.retries_per_op),
        c.gave_up.to_string(),
        c.lost_updates_max.to_string(),
    ]
}

const IDEM_INTRO: &str = "The seed's idempotency table, measured: payment grade \
     (`idempotency::IdempotencyStore` on PostgreSQL: the charge and the stored answer in one \
     transaction, a 500 ms lease, `OnInProgress::Reject`) beside click grade \
     (`idempotency::ClickDeduper` on Redis without persistence, a 60 s window), through four \
     situations: 99 duplicates of an answered request; a client that times out and retries \
     50 ms into a 300 ms request; a worker that dies after claiming the key; the server \
     SIGKILLed and restarted while the request runs (payment: with the charge inserted in its \
     open transaction). \"Effect happened\" counts charges written or clicks counted \
     (median, min–max per run); what the clients saw is built from the last run's counts; \
     retries ask every 25 ms.";

const IDEM_HEADER: [&str; 6] = [
    "grade",
    "situation",
    "runs",
    "effect happened",
    "what the clients saw (last run)",
    "fault → answered retry, ms",
];

fn idem_cells(r: &IdemRow) -> Vec<String> {
    if r.status != "measured" {
        return vec![
            r.grade.clone(),
            r.scenario.clone(),
            format!(
                "{}: {}",
                r.status,
                r.reason.as_deref().unwrap_or("no reason given")
            ),
        ];
    }
    vec![
        r.grade.clone(),
        r.scenario.clone(),
        r.runs.to_string(),
        trio(r.executions, 0),
        r.outcome.clone(),
        r.recovered_ms.map_or_else(|| "—".into(), |v| trio(v, 0)),
    ]
}

fn md_table(header: &[&str], rows: impl Iterator<Item = Vec<String>>) -> String {
    let mut md = format!("| {} |\n|", header.join(" | "));
    md.push_str(&"---|".repeat(header.len()));
    md.push('\n');
    for r in rows {
        let _ = writeln!(md, "| {} |", r.join(" | "));
    }
    md
}

fn html_table(header: &[&str], rows: impl Iterator<Item = Vec<String>>) -> String {
    let mut h = String::from("<table><tr>");
    for c in header {
        let _ = write!(h, "<th>{}</th>", esc(c));
    }
    h.push_str("</tr>");
    for r in rows {
        h.push_str("<tr>");
        for c in r {
            let _ = write!(h, "<td>{}</td>", esc(&c));
        }
        h.push_str("</tr>");
    }
    h.push_str("</table>");
    h
}

/// The section (markdown), or `None` without one.
pub fn strategies_markdown(r: &Report) -> Option<String> {
    let s = &r.strategies;
    if s.is_empty() {
        return None;
    }
    let mut md = String::new();
    if !s.purge.is_empty() {
        let _ = writeln!(md, "{INTRO}\n");
        md.push_str(&md_table(&HEADER, s.purge.iter().map(cells)));
    }
    if !s.contention.is_empty() {
        let _ = writeln!(md, "\n{CONTENTION_INTRO}\n");
        md.push_str(&md_table(
            &CONTENTION_HEADER,
            s.contention.iter().map(contention_cells),
        ));
    }
    if !s.idempotency.is_empty() {
        let _ = writeln!(md, "\n{IDEM_INTRO}\n");
        md.push_str(&md_table(
            &IDEM_HEADER,
            s.idempotency.iter().map(idem_cells),
        ));
    }
    Some(md)
}

/// The section (HTML), empty without one.
pub(super) fn strategies_html(r: &Report) -> String {
    let s = &r.strategies;
    if s.is_empty() {
        return String::new();
    }
    format!(
        "<h2>The seed's strategies</h2><p>{}</p>{}<p>{}</p>{}<p>{}</p>{}",
        esc(INTRO),
        html_table(&HEADER, s.purge.iter().map(cells)),
        esc(CONTENTION_INTRO),
        html_table(
            &CONTENTION_HEADER,
            s.contention.iter().map(contention_cells)
        ),
        esc(IDEM_INTRO),
        html_table(&IDEM_HEADER, s.idempotency.iter().map(idem_cells))
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_row_shows_medians_with_their_range_and_a_failed_one_its_reason() {
        let row = PurgeRow {
            strategy: "no lock".into(),
            live: false,
            runs: 3,
            status: "measured".into(),
            reason: None,
            serialization_errors: [2.0, 1.0, 2.0],
            retries: [0.0; 3],
            workers_deleted_skipped_failed: [1.0, 0.0, 2.0],
            conflicts: 0.0,
            wall_ms: [120.0, 100.0, 150.0],
            old_rows_left_max: 0,
            recent_rows_deleted_max: 0,
            live_lock_wait_pct: None,
            live_ops_per_s: None,
            live_p99_us: None,
            live_errors: None,
        };
        let c = cells(&row);
        assert_eq!(c.len(), HEADER.len());
        assert_eq!(c[3], "2 (1–2)");
        assert_eq!(c[5], "1 / 0 / 2");
        assert_eq!(c[7], "120 (100–150)");
        assert_eq!(c[9], "—");
        let failed = PurgeRow {
            status: "failed".into(),
            reason: Some("PostgreSQL did not start".into()),
            ..row
        };
        assert_eq!(cells(&failed)[2], "failed: PostgreSQL did not start");
    }
}
