//! Progress output of long runs (`dlock compare`): on a terminal, one bar line that stays at
//! the bottom (cells done, elapsed, an estimate of what is left, the cell running) with the
//! log lines scrolling above it; elsewhere (CI logs, pipes) the log lines alone.

use std::fmt::Write as _;
use std::io::{IsTerminal, Write};
use std::sync::Mutex;
use std::time::{Duration, Instant};

struct Bar {
    total: usize,
    done: usize,
    started: Instant,
    label: String,
}

static BAR: Mutex<Option<Bar>> = Mutex::new(None);

fn bar() -> std::sync::MutexGuard<'static, Option<Bar>> {
    BAR.lock().unwrap_or_else(|p| p.into_inner())
}

/// Starts the bar for `total` steps when stderr is a terminal; otherwise nothing is drawn.
pub fn start(total: usize) {
    if !std::io::stderr().is_terminal() || std::env::var_os("NO_COLOR").is_some() {
        return;
    }
    *bar() = Some(Bar {
        total,
        done: 0,
        started: Instant::now(),
        label: String::new(),
    });
    draw(&bar());
}

/// Sets the number of steps done and what runs now.
pub fn set(done: usize, label: impl Into<String>) {
    let mut b = bar();
    if let Some(bar) = b.as_mut() {
        bar.done = done;
        bar.label = label.into();
    }
    draw(&b);
}

/// Prints a log line (above the bar, when there is one).
pub fn log(line: impl AsRef<str>) {
    let b = bar();
    let mut err = std::io::stderr().lock();
    if b.is_some() {
        let _ = write!(err, "\r\x1b[2K");
    }
    let _ = writeln!(err, "{}", line.as_ref());
    drop(err);
    draw(&b);
}

/// Removes the bar.
pub fn finish() {
    let mut b = bar();
    if b.take().is_some() {
        let _ = write!(std::io::stderr().lock(), "\r\x1b[2K");
    }
}

fn draw(b: &Option<Bar>) {
    let Some(bar) = b else { return };
    let line = render(bar.done, bar.total, bar.started.elapsed(), &bar.label, 100);
    let mut err = std::io::stderr().lock();
    let _ = write!(err, "\r\x1b[2K{line}");
    let _ = err.flush();
}

fn clock(d: Duration) -> String {
    let s = d.as_secs();
    format!("{}:{:02}", s / 60, s % 60)
}

/// The bar line: `[#####-----] 12/63 · 3:12 elapsed · ~6:40 left · label`, at most `width`
/// characters.
fn render(done: usize, total: usize, elapsed: Duration, label: &str, width: usize) -> String {
    const CELLS: usize = 20;
    let filled = (done * CELLS)
        .checked_div(total)
        .unwrap_or(CELLS)
        .min(CELLS);
    let mut s = format!(
        "[{}{}] {done}/{total} · {} elapsed",
        "#".repeat(filled),
        "-".repeat(CELLS - filled),
        clock(elapsed)
    );
    if done > 0 && done < total {
        let left = elapsed.mul_f64((total - done) as f64 / done as f64);
        let _ = write!(s, " · ~{} left", clock(left));
    }
    if !label.is_empty() {
        let _ = write!(s, " · {label}");
    }
    s.chars().take(width).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_bar_shows_done_elapsed_and_an_estimate() {
        let s = render(3, 12, Duration::from_secs(90), "redis × latency", 100);
        assert_eq!(
            s,
            "[#####---------------] 3/12 · 1:30 elapsed · ~4:30 left · redis × latency"
        );
        assert!(render(0, 0, Duration::ZERO, "", 100).starts_with("[####################] 0/0"));
        assert_eq!(
            render(5, 10, Duration::from_secs(1), &"x".repeat(200), 40)
                .chars()
                .count(),
            40
        );
    }
}
