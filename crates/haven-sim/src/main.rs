//! `haven-sim`: runs many seeds of the simulated cluster and reports the first one that
//! breaks an invariant, with its trace and the command that replays it.
//!
//! Exit status: 0 all seeds passed, 1 a violation was found, 2 bad arguments.

use std::process::ExitCode;
use std::time::Instant;

use haven_sim::{BrokenRule, Options, Profile, replay_command, run_many, run_seed};

const USAGE: &str = "usage: haven-sim [--seeds N (5000)] [--start S (0)] [--nodes N] [--profile default|aggressive]
                 [--seed N --trace] [--no-moves]
                 [--broken RULE]";

struct Args {
    seeds: u64,
    start: u64,
    single: Option<u64>,
    opts: Options,
}

fn parse() -> Result<Args, String> {
    let mut a = Args { seeds: 5000, start: 0, single: None, opts: Options::default() };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = |what: &str| it.next().ok_or_else(|| format!("{flag} needs {what}"));
        let number = |v: String| v.parse::<u64>().map_err(|_| format!("{flag}: {v:?} is not a whole number"));
        match flag.as_str() {
            "--seeds" => a.seeds = number(value("a count")?)?,
            "--start" => a.start = number(value("a seed")?)?,
            "--seed" => a.single = Some(number(value("a seed")?)?),
            "--nodes" => {
                let n = number(value("a count")?)?;
                if !(1..=9).contains(&n) {
                    return Err(format!("--nodes {n}: use 1 to 9 nodes"));
                }
                a.opts.nodes = Some(n as usize);
            }
            "--profile" => {
                let p = value("a profile")?;
                a.opts.profile =
                    Profile::by_name(&p).ok_or_else(|| format!("--profile {p:?}: use default or aggressive"))?;
            }
            "--broken" => {
                let name = value("a rule")?;
                a.opts.broken = Some(BrokenRule::by_name(&name).ok_or_else(|| {
                    let names: Vec<&str> = BrokenRule::ALL.iter().map(|(n, _)| *n).collect();
                    format!("--broken {name:?}: use one of {}", names.join(", "))
                })?);
            }
            "--trace" => a.opts.trace = true,
            "--no-moves" => a.opts.operator_moves = false,
            "-h" | "--help" => return Err(String::new()),
            other => return Err(format!("unknown argument {other:?}")),
        }
    }
    Ok(a)
}

fn main() -> ExitCode {
    let args = match parse() {
        Ok(a) => a,
        Err(e) => {
            if !e.is_empty() {
                eprintln!("haven-sim: {e}");
            }
            let rules: Vec<&str> = BrokenRule::ALL.iter().map(|(name, _)| *name).collect();
            eprintln!("{USAGE}\nRULE: {}", rules.join(", "));
            return ExitCode::from(2);
        }
    };
    if let Some(seed) = args.single {
        let out = run_seed(seed, &args.opts);
        for line in &out.trace {
            println!("{line}");
        }
        println!("seed {seed}: {:?}", out.stats);
        if out.violations.is_empty() {
            println!("seed {seed}: no violation");
            return ExitCode::SUCCESS;
        }
        for v in &out.violations {
            println!("seed {seed}: {v}");
        }
        return ExitCode::from(1);
    }
    let started = Instant::now();
    let (stats, failure) = run_many(args.start, args.seeds, &args.opts);
    let secs = started.elapsed().as_secs_f64();
    match failure {
        None => {
            println!(
                "{} seeds ({}..{}), profile {}: no violation; {:.0} seeds/s; {} events, {} commits, {} elections, {} failovers, {} starts, {} groups left failed by policy",
                args.seeds,
                args.start,
                args.start + args.seeds,
                args.opts.profile.name,
                args.seeds as f64 / secs,
                stats.events,
                stats.commits,
                stats.elections,
                stats.failovers,
                stats.starts,
                stats.left_failed
            );
            ExitCode::SUCCESS
        }
        Some(out) => {
            for line in &out.trace {
                println!("{line}");
            }
            for v in &out.violations {
                println!("seed {}: {v}", out.seed);
            }
            println!("replay: {}", replay_command(out.seed, &args.opts));
            ExitCode::from(1)
        }
    }
}
