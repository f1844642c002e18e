//! The README's first command: `haven demo` brings up three agents, prints the commands to
//! try, `haven node list` against it shows three nodes up, and Ctrl-C stops everything it
//! started.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const HAVEN: &str = env!("CARGO_BIN_EXE_haven");

/// A base port whose three successors are free now (the demo binds base + 1..=3).
fn free_base_port() -> u16 {
    for _ in 0..50 {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let base = l.local_addr().expect("addr").port().saturating_sub(10);
        drop(l);
        if base > 1024 && (1..=3).all(|i| std::net::TcpListener::bind(("127.0.0.1", base + i)).is_ok()) {
            return base;
        }
    }
    panic!("no free ports for the demo");
}

#[test]
fn demo_brings_up_three_nodes_and_cleans_up_on_ctrl_c() {
    let dir = tempfile::tempdir().expect("tempdir");
    let base = free_base_port();
    let mut demo = Command::new(HAVEN)
        .args(["demo", "--base-port", &base.to_string(), "--dir"])
        .arg(dir.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("start haven demo");
    let stdout = demo.stdout.take().expect("stdout");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            println!("demo: {line}");
            let _ = tx.send(line);
        }
    });
    let deadline = Instant::now() + Duration::from_secs(240);
    let mut printed = Vec::new();
    while !printed.iter().any(|l: &String| l.contains("Press Ctrl-C")) {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(l) => printed.push(l),
            Err(_) => {
                let _ = demo.kill();
                panic!("the demo did not get ready within 240 s; it printed:\n{}", printed.join("\n"));
            }
        }
    }
    assert!(printed.iter().any(|l| l.contains("haven node list")), "the demo prints the commands to try");

    let server = format!("127.0.0.1:{}", base + 1);
    let out =
        Command::new(HAVEN).args(["--server", &server, "-o", "json", "node", "list"]).output().expect("node list");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let nodes: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    let statuses: Vec<&str> = nodes.as_array().expect("array").iter().filter_map(|n| n["status"].as_str()).collect();
    assert_eq!(statuses, ["up", "up", "up"], "{nodes}");

    // Ctrl-C: the demo stops its agents (and their resources) and exits.
    let pids: Vec<i32> = (1..=3)
        .filter_map(|i| std::fs::read_to_string(dir.path().join(format!("node{i}/agent.pid"))).ok())
        .filter_map(|p| p.trim().parse().ok())
        .collect();
    assert_eq!(pids.len(), 3, "the demo records its agents' pids");
    let status = Command::new("kill").args(["-INT", &demo.id().to_string()]).status().expect("kill -INT");
    assert!(status.success());
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Some(code) = demo.try_wait().expect("wait") {
            assert!(code.success(), "the demo exited with {code}");
            break;
        }
        assert!(Instant::now() < deadline, "the demo did not exit within 60 s of Ctrl-C");
        std::thread::sleep(Duration::from_millis(100));
    }
    for pid in pids {
        let alive = std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .is_ok_and(|s| s.rsplit_once(')').is_some_and(|(_, r)| !r.trim_start().starts_with('Z')));
        assert!(!alive, "agent {pid} outlived the demo");
    }
}
