//! The benchmark's service, compiled: the same behaviour as `service.py`, without the
//! ~100 ms a Python interpreter needs to start on this machine (which would otherwise be
//! counted in every failover). `bench/failover` builds it with `rustc -O` (std only).
//!
//!     service PORT EVIDENCE_FILE BIND
//!
//! BIND is an address, or `env` for $HAVEN_BENCH_ADDR. It appends
//! "<run-dir> <pid> <time_ns>" to EVIDENCE_FILE as soon as it starts and then every ~10 ms
//! (one write(2) per line on an O_APPEND file), and answers every TCP connection on
//! BIND:PORT with "<node> <pid>\n".

use std::fs::OpenOptions;
use std::io::Write;
use std::net::TcpListener;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use std::{env, process, thread};

fn main() {
    let args: Vec<String> = env::args().collect();
    if args.len() != 4 {
        eprintln!("usage: service PORT EVIDENCE_FILE BIND");
        process::exit(2);
    }
    let port: u16 = args[1].parse().unwrap_or_else(|_| {
        eprintln!("PORT {:?} is not a port number", args[1]);
        process::exit(2)
    });
    let bind = if args[3] == "env" {
        env::var("HAVEN_BENCH_ADDR").unwrap_or_else(|_| {
            eprintln!("BIND is `env` but HAVEN_BENCH_ADDR is not set");
            process::exit(2)
        })
    } else {
        args[3].clone()
    };
    let node = env::var("HAVEN_BENCH_NODE").unwrap_or_else(|_| "?".into());
    let cwd = env::current_dir().map(|p| p.display().to_string()).unwrap_or_default();
    let tag = format!("{cwd} {}", process::id());
    let mut file = OpenOptions::new().append(true).create(true).open(&args[2]).unwrap_or_else(|e| {
        eprintln!("cannot open {}: {e}", args[2]);
        process::exit(1)
    });
    let mut mark = move || {
        let ns = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0);
        let _ = file.write_all(format!("{tag} {ns}\n").as_bytes());
    };
    mark();
    thread::spawn(move || {
        loop {
            thread::sleep(Duration::from_millis(10));
            mark();
        }
    });

    let deadline = Instant::now() + Duration::from_secs(30);
    let listener = loop {
        match TcpListener::bind((bind.as_str(), port)) {
            Ok(l) => break l,
            Err(e) if Instant::now() > deadline => {
                eprintln!("cannot bind {bind}:{port}: {e}");
                process::exit(1)
            }
            Err(_) => thread::sleep(Duration::from_millis(50)),
        }
    };
    println!("{node}: serving on {bind}:{port}");
    let banner = format!("{node} {}\n", process::id());
    for conn in listener.incoming() {
        if let Ok(mut c) = conn {
            let _ = c.write_all(banner.as_bytes());
        }
    }
}
