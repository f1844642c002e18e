//! Testing tier 2: thousands of seeded runs of the simulated cluster with faults, and no
//! invariant broken in any of them. A failure prints the seed's trace and the command that
//! replays it.
//!
//! Seeds per test: `HAVEN_SIM_SEEDS` if set (nightly: 100000), else 5000 in an optimized
//! build and 500 in a debug build — a debug build runs ~15–30 seeds/s per core, so 5000
//! would take minutes (the workspace's dev profile cannot be changed for one crate).

use haven_sim::{Options, Profile, Stats, replay_command, run_seed};

fn seed_count() -> u64 {
    match std::env::var("HAVEN_SIM_SEEDS") {
        Ok(v) => v.parse().unwrap_or_else(|_| panic!("HAVEN_SIM_SEEDS={v:?} is not a whole number")),
        Err(_) if cfg!(debug_assertions) => 500,
        Err(_) => 5_000,
    }
}

/// Runs `seeds` seeds on every core; panics with the first failing seed's trace.
fn run_all(opts: &Options, seeds: u64) -> Stats {
    let threads = std::thread::available_parallelism().map_or(2, |n| n.get()) as u64;
    let results: Vec<(Stats, Option<u64>)> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..threads)
            .map(|t| {
                s.spawn(move || {
                    let mut stats = Stats::default();
                    for seed in (t..seeds).step_by(threads as usize) {
                        let out = run_seed(seed, opts);
                        stats.add(&out.stats);
                        if !out.violations.is_empty() {
                            return (stats, Some(seed));
                        }
                    }
                    (stats, None)
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().expect("simulation thread")).collect()
    });
    let mut total = Stats::default();
    results.iter().for_each(|(s, _)| total.add(s));
    if let Some(seed) = results.iter().filter_map(|(_, f)| *f).min() {
        let out = run_seed(seed, &Options { trace: true, ..opts.clone() });
        let tail: Vec<&String> = out.trace.iter().rev().take(80).rev().collect();
        let tail: Vec<&str> = tail.iter().map(|s| s.as_str()).collect();
        panic!(
            "seed {seed} broke an invariant:\n{}\n...last trace lines:\n{}\nreplay: {}",
            out.violations.iter().map(ToString::to_string).collect::<Vec<_>>().join("\n"),
            tail.join("\n"),
            replay_command(seed, opts)
        );
    }
    total
}

#[test]
fn no_violation_with_the_default_profile() {
    let stats = run_all(&Options::default(), seed_count());
    assert!(stats.failovers > 0 && stats.elections > 0, "faults produced no failover: {stats:?}");
}

#[test]
fn no_violation_with_the_aggressive_profile() {
    let opts = Options { profile: Profile::AGGRESSIVE, ..Options::default() };
    run_all(&opts, seed_count() / 5);
}
