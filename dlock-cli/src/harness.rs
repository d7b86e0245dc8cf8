//! The harness's commands (`conformance`, `compare`, `servers up`, `hold-many`), compiled
//! only with the `harness` feature: they pull in the server fixtures, the fault tools and the
//! comparison, which an installed `dlock` does not need.

use dlock_compare::scenario::workload::PeerHolders;
use dlock_compare::scenario::{self, CompareOptions};

use crate::opt::{self, HarnessCommand, ServersCommand};
use crate::{EXIT_OK, EXIT_SOFTWARE, EXIT_UNAVAILABLE, exit_code, usage};

pub(crate) async fn main(cmd: HarnessCommand) -> i32 {
    match cmd {
        HarnessCommand::Conformance(args) => conformance(args).await,
        HarnessCommand::Compare(args) => compare(args).await,
        HarnessCommand::HoldMany(args) => hold_many(args).await,
        HarnessCommand::Peer(args) => crate::peer::serve(&args).await,
        HarnessCommand::Servers(ServersCommand::Up { cluster }) => {
            match dlock_fixtures::servers_up(cluster).await {
                Ok(()) => EXIT_OK,
                Err(e) => {
                    eprintln!("dlock: servers up failed: {e:#}");
                    EXIT_UNAVAILABLE
                }
            }
        }
    }
}

async fn conformance(args: opt::ConformanceArgs) -> i32 {
    use conformance::Outcome;
    let connect = conformance::registry_connector(std::sync::Arc::new(dlock::registry()));
    if let Err(e) = dlock::connect(&args.url).await {
        eprintln!("dlock: {e}");
        return exit_code(&e);
    }
    let tests: Vec<_> = conformance::all()
        .into_iter()
        .filter(|b| args.filter.as_deref().is_none_or(|f| b.name.contains(f)))
        .collect();
    println!(
        "\nrunning {} tests against {}",
        tests.len(),
        dlock::redact(&args.url)
    );
    let started = std::time::Instant::now();
    let (mut passed, mut failed, mut skipped) = (0, 0, 0);
    let mut failures = Vec::new();
    for b in &tests {
        let t = std::time::Instant::now();
        let outcome = conformance::run_with(b, &args.url, connect.clone()).await;
        let took = t.elapsed();
        match &outcome {
            Outcome::Passed => {
                passed += 1;
                println!("test {} ... ok ({:.2}s)", b.name, took.as_secs_f64());
            }
            Outcome::Skipped(reason) => {
                skipped += 1;
                println!("test {} ... skipped: {reason}", b.name);
            }
            Outcome::Failed(why) => {
                failed += 1;
                println!("test {} ... FAILED ({:.2}s)", b.name, took.as_secs_f64());
                failures.push((b.name, b.doc, why.clone()));
            }
        }
    }
    if !failures.is_empty() {
        println!("\nfailures:");
        for (name, doc, why) in &failures {
            println!("\n---- {name} ----\n{doc}\n{why}");
        }
    }
    println!(
        "\ntest result: {}. {passed} passed; {failed} failed; {skipped} skipped; finished in {:.2}s",
        if failed == 0 { "ok" } else { "FAILED" },
        started.elapsed().as_secs_f64()
    );
    if failed == 0 { EXIT_OK } else { 1 }
}

async fn compare(args: opt::CompareArgs) -> i32 {
    let dlock_bin = match std::env::current_exe() {
        Ok(p) => p,
        Err(e) => {
            eprintln!("dlock: cannot find the running dlock binary: {e}");
            return EXIT_SOFTWARE;
        }
    };
    let all = |v: Vec<String>, names: &[&str]| {
        if v.is_empty() {
            names.iter().map(|s| s.to_string()).collect()
        } else {
            v
        }
    };
    if let Some(duration) = args.soak {
        return soak(args, duration, dlock_bin).await;
    }
    // No --only: every section.
    let section = |s| args.only.is_empty() || args.only.contains(&s);
    let no_bench = args.no_bench || !section(opt::CompareSection::Bench);
    let no_peers = args.no_bench || !section(opt::CompareSection::Peers);
    let run_scenarios = section(opt::CompareSection::Scenarios);
    let opts = CompareOptions {
        dlock_bin,
        repeat: args.repeat.unwrap_or(if args.quick { 1 } else { 3 }),
        backends: all(args.backends, &scenario::BACKENDS),
        scenarios: all(args.scenarios, &scenario::SCENARIOS),
        ttl: args.ttl,
        out: args.out,
        run_scenarios,
        bench: match (no_bench, args.quick) {
            (true, _) => None,
            (false, true) => Some(dlock_compare::bench::BenchPlan::quick()),
            (false, false) => Some(dlock_compare::bench::BenchPlan::short()),
        },
        peers: match (no_peers, args.quick) {
            (true, _) => None,
            (false, true) => Some(dlock_compare::peers::PeersPlan::quick()),
            (false, false) => Some(dlock_compare::peers::PeersPlan::short()),
        },
        strategies: match (section(opt::CompareSection::Strategies), args.quick) {
            (false, _) => None,
            (true, true) => Some(dlock_compare::strategies::StrategiesPlan::quick()),
            (true, false) => Some(dlock_compare::strategies::StrategiesPlan::short()),
        },
        peer_holders: match (run_scenarios && !args.no_peer_holders, args.quick) {
            (false, _) => PeerHolders::Off,
            (true, true) => PeerHolders::FirstPerBackend,
            (true, false) => PeerHolders::All,
        },
    };
    if opts.ttl.is_zero() {
        return usage("--ttl must be more than 0");
    }
    let report = match scenario::compare(&opts, args.quick).await {
        Ok(r) => r,
        Err(e) => return usage(&format!("{e:#}")),
    };
    if let Err(e) = scenario::report::write(&report, &opts.out) {
        eprintln!("dlock: {e:#}");
        return EXIT_SOFTWARE;
    }
    println!(
        "Failover time, ms: median (min–max), {} repetition(s)\n",
        opts.repeat
    );
    print!("{}", scenario::report::main_table(&report));
    println!(
        "\nReport: {}, {} and {}",
        opts.out.join("comparison.md").display(),
        opts.out.join("comparison.json").display(),
        opts.out.join("index.html").display()
    );
    if report
        .scenarios
        .iter()
        .any(|c| c.status == scenario::Status::Failed)
    {
        eprintln!("dlock: some cells failed; see the report");
        return 1;
    }
    EXIT_OK
}

/// `dlock compare --soak`: see [`dlock_compare::soak`].
async fn soak(
    args: opt::CompareArgs,
    duration: std::time::Duration,
    dlock_bin: std::path::PathBuf,
) -> i32 {
    use dlock_compare::soak;
    if duration.is_zero() || args.ttl.is_zero() {
        return usage("--soak and --ttl must be more than 0");
    }
    let opts = soak::SoakOptions {
        dlock_bin,
        duration,
        seed: args.seed.unwrap_or_else(soak::fresh_seed),
        backends: if args.backends.is_empty() {
            scenario::BACKENDS.iter().map(|s| s.to_string()).collect()
        } else {
            args.backends
        },
        ttl: args.ttl,
        out: args.out,
    };
    let report = match soak::soak(&opts).await {
        Ok(r) => r,
        Err(e) => return usage(&format!("{e:#}")),
    };
    if let Err(e) = soak::report::write(&report, &opts.out) {
        eprintln!("dlock: {e:#}");
        return EXIT_SOFTWARE;
    }
    println!(
        "\nReport: {} and {}",
        opts.out.join("soak.md").display(),
        opts.out.join("soak.json").display()
    );
    if report.failed() {
        for b in report.backends.iter().filter(|b| b.failed()) {
            for v in &b.findings.violations {
                eprintln!(
                    "dlock: {}: fencing violation: holder {} wrote with token {:?} at +{:.1} ms after holder {} got the lock with {:?} at +{:.1} ms (seed {}):\n  {}",
                    b.backend,
                    v.holder,
                    v.token,
                    v.write_ms,
                    v.taken_over_by,
                    v.taken_over_token,
                    v.taken_over_ms,
                    report.seed,
                    v.window.join("\n  ")
                );
            }
        }
        eprintln!("dlock: soak failed (seed {}); see the report", report.seed);
        return 1;
    }
    EXIT_OK
}

async fn hold_many(args: opt::HoldManyArgs) -> i32 {
    if args.count == 0 {
        return usage("--count must be at least 1");
    }
    let url = args.url.clone();
    match dlock_compare::bench::hold_many(
        || async move { Ok(dlock::connect(&url).await?) },
        args.count,
    )
    .await
    {
        Ok(m) => {
            println!(
                "{}",
                serde_json::json!({
                    "locks": m.locks,
                    "acquire_s": m.acquire.as_secs_f64(),
                    "rss_mib": m.rss_mib,
                    "connections": m.connections,
                })
            );
            EXIT_OK
        }
        Err(e) => {
            eprintln!("dlock: hold-many failed: {e:#}");
            EXIT_UNAVAILABLE
        }
    }
}
