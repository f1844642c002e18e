//! The README's first command and its tour: `haven demo` brings up three agents and prints
//! the commands to try (with every node in `HAVEN_SERVER`); `demo restart` of a running
//! node is refused and says why, `demo kill` of a dead node fails and says so, a restart
//! whose agent dies reports it with its log, a real restart rejoins; the CLI keeps working
//! with the first node of `HAVEN_SERVER` killed; and Ctrl-C stops everything the demo
//! started — including an agent a `demo restart` started — before it removes its
//! directory, also when it comes during start-up.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc::Receiver;
use std::time::{Duration, Instant};

use haven_agent::host::{kill_session, session_members};
use haven_drivers::procfs::is_alive as alive;

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

/// A running `haven demo` with its printed lines. Dropping it (a failed test) SIGKILLs the
/// demo and every session its nodes' pid files ever named, so nothing outlives the test.
struct Demo {
    child: Child,
    lines: Receiver<String>,
    printed: Vec<String>,
    /// Every agent session seen in the nodes' pid files, for the final check and for drop.
    sessions: Vec<i32>,
    dir: Option<PathBuf>,
}

impl Demo {
    /// Starts `haven demo --no-vm --base-port <free>` plus `extra` arguments.
    fn start(extra: &[&str]) -> Demo {
        let base = free_base_port();
        let mut child = Command::new(HAVEN)
            .args(["demo", "--no-vm", "--base-port", &base.to_string()])
            .args(extra)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start haven demo");
        let stdout = child.stdout.take().expect("stdout");
        let (tx, lines) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                println!("demo: {line}");
                let _ = tx.send(line);
            }
        });
        Demo { child, lines, printed: Vec::new(), sessions: Vec::new(), dir: None }
    }

    /// Reads the demo's output until a line contains `needle` (within `limit_s`).
    fn wait_for_line(&mut self, needle: &str, limit_s: u64) -> String {
        let deadline = Instant::now() + Duration::from_secs(limit_s);
        loop {
            if let Some(l) = self.printed.iter().find(|l| l.contains(needle)) {
                return l.clone();
            }
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(l) => self.printed.push(l),
                Err(_) => panic!(
                    "the demo did not print {needle:?} within {limit_s} s; it printed:\n{}",
                    self.printed.join("\n")
                ),
            }
        }
    }

    fn dir(&self) -> &Path {
        self.dir.as_deref().expect("the demo's directory is known")
    }

    /// The session recorded in `node`'s pid file now (remembered for the final check).
    fn recorded(&mut self, node: &str) -> i32 {
        let path = self.dir().join(node).join("agent.pid");
        let sid: i32 = std::fs::read_to_string(&path)
            .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()))
            .trim()
            .parse()
            .expect("a pid");
        if !self.sessions.contains(&sid) {
            self.sessions.push(sid);
        }
        sid
    }

    /// `haven demo <action> <node> --dir <dir>`.
    fn action(&self, action: &str, node: &str) -> Output {
        self.action_with(&[], action, node)
    }

    /// `haven <global> demo <action> <node> --dir <dir>`.
    fn action_with(&self, global: &[&str], action: &str, node: &str) -> Output {
        let out = Command::new(HAVEN)
            .args(global)
            .args(["demo", action, node, "--dir"])
            .arg(self.dir())
            .output()
            .expect("run haven demo <action>");
        println!(
            "`haven demo {action} {node}`: {}\n  stdout: {}\n  stderr: {}",
            out.status,
            String::from_utf8_lossy(&out.stdout).trim(),
            String::from_utf8_lossy(&out.stderr).trim()
        );
        out
    }

    /// SIGINT (what Ctrl-C sends) to the demo, then waits for it to exit (60 s at most).
    fn ctrl_c(&mut self) -> std::process::ExitStatus {
        let status = Command::new("kill").args(["-INT", &self.child.id().to_string()]).status().expect("kill -INT");
        assert!(status.success());
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(code) = self.child.try_wait().expect("wait") {
                return code;
            }
            assert!(Instant::now() < deadline, "the demo did not exit within 60 s of Ctrl-C");
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for Demo {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if let Some(dir) = &self.dir {
            for i in 1..=3 {
                if let Some(sid) = std::fs::read_to_string(dir.join(format!("node{i}/agent.pid")))
                    .ok()
                    .and_then(|p| p.trim().parse().ok())
                {
                    self.sessions.push(sid);
                }
            }
        }
        for sid in &self.sessions {
            kill_session(*sid);
        }
    }
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Waits (10 s at most) until no process is left in any of `sessions`; the ones left.
fn left_in(sessions: &[i32]) -> Vec<i32> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let left: Vec<i32> = sessions.iter().flat_map(|s| session_members(*s)).collect();
        if left.is_empty() || Instant::now() >= deadline {
            return left;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// `haven -o json <args>` with `env` (`HAVEN_SERVER`, `HAVEN_TOKEN` as the demo printed
/// them), retried for up to `limit_s` until it succeeds and `ok` accepts its output.
fn cli_until(
    env: &[(&str, &str)],
    args: &[&str],
    limit_s: u64,
    ok: impl Fn(&serde_json::Value) -> bool,
) -> serde_json::Value {
    let deadline = Instant::now() + Duration::from_secs(limit_s);
    loop {
        let out = Command::new(HAVEN)
            .envs(env.iter().copied())
            .args(["-o", "json"])
            .args(args)
            .output()
            .expect("run the CLI");
        let last = if out.status.success() {
            let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
            if ok(&v) {
                return v;
            }
            v.to_string()
        } else {
            stderr(&out)
        };
        assert!(
            Instant::now() < deadline,
            "`haven {}` did not get there within {limit_s} s; last: {last}",
            args.join(" ")
        );
        std::thread::sleep(Duration::from_millis(300));
    }
}

fn statuses(nodes: &serde_json::Value) -> Vec<String> {
    nodes.as_array().expect("array").iter().filter_map(|n| n["status"].as_str().map(String::from)).collect()
}

#[test]
fn demo_kill_restart_and_ctrl_c_report_what_really_happened() {
    let mut demo = Demo::start(&[]);
    let header = demo.wait_for_line("state and logs in ", 240);
    let dir = PathBuf::from(header.rsplit_once("state and logs in ").expect("dir").1.trim());
    demo.dir = Some(dir.clone());
    demo.wait_for_line("Press Ctrl-C", 30);
    let export = demo.wait_for_line("export HAVEN_SERVER=", 1);
    let servers =
        export.split_whitespace().nth(1).expect("export line").trim_start_matches("HAVEN_SERVER=").to_string();
    assert_eq!(servers.split(',').count(), 3, "the demo exports every node: {export}");
    let export = demo.wait_for_line("export HAVEN_TOKEN=", 1);
    let token = export.split_whitespace().nth(1).expect("export line").trim_start_matches("HAVEN_TOKEN=").to_string();
    assert!(token.starts_with("hvn_"), "the demo prints the admin token it uses: {export}");
    let env = [("HAVEN_SERVER", servers.as_str()), ("HAVEN_TOKEN", token.as_str())];
    // Without the token the CLI is refused, and says how to pass one.
    let out = Command::new(HAVEN)
        .env("HAVEN_SERVER", &servers)
        .env_remove("HAVEN_TOKEN")
        .env("XDG_CONFIG_HOME", &dir)
        .args(["node", "list"])
        .output();
    let out = out.expect("run the CLI");
    assert_eq!(out.status.code(), Some(1), "without a token: {}", stderr(&out));
    assert!(stderr(&out).contains("HAVEN_TOKEN"), "{}", stderr(&out));
    assert!(demo.printed.iter().any(|l| l.contains("haven node list")), "the demo prints the commands to try");
    let first: Vec<i32> = ["node1", "node2", "node3"].iter().map(|n| demo.recorded(n)).collect();

    let nodes = cli_until(&env, &["node", "list"], 10, |_| true);
    assert_eq!(statuses(&nodes), ["up", "up", "up"], "{nodes}");

    // Restarting a node that runs is refused, says why and what to do, and changes nothing.
    let out = demo.action("restart", "node1");
    assert_eq!(out.status.code(), Some(1), "restart of a running node must fail");
    let err = stderr(&out);
    assert!(err.contains(&format!("node1 is running (agent pid {})", first[0])), "{err}");
    assert!(err.contains("haven demo kill node1 --dir"), "{err}");
    assert_eq!(demo.recorded("node1"), first[0], "a refused restart must not touch the pid file");
    assert!(alive(first[0]), "node1's agent still runs");

    // Kill node1, HAVEN_SERVER's first node: the kill is checked, the CLI moves on to node2.
    // With `-o json` it says the same as JSON, with what it killed.
    let out = demo.action_with(&["-o", "json"], "kill", "node1");
    assert!(out.status.success(), "{}", stderr(&out));
    let killed: serde_json::Value = serde_json::from_slice(&out.stdout).expect("`-o json demo kill` prints JSON");
    assert_eq!(
        (&killed["node"], &killed["action"], &killed["session"]),
        (&"node1".into(), &"killed".into(), &first[0].into())
    );
    assert!(killed["processes"].as_u64().is_some_and(|n| n >= 1), "{killed}");
    assert!(killed["message"].as_str().is_some_and(|m| m.contains("killed node1")), "{killed}");
    assert!(session_members(first[0]).is_empty(), "`demo kill` said so, yet node1's session has processes");
    let nodes = cli_until(&env, &["node", "list"], 30, |v| statuses(v).iter().filter(|s| *s == "down").count() == 1);
    assert!(nodes.to_string().contains("node1"), "{nodes}");

    // A second kill: nothing runs, and it says so.
    let out = demo.action("kill", "node1");
    assert_eq!(out.status.code(), Some(1), "kill of a dead node must fail");
    let err = stderr(&out);
    assert!(err.contains("node1 is not running") && err.contains("nothing was killed"), "{err}");

    // A restart whose agent dies at once (its Raft store cannot be opened) fails with its log.
    let raft = dir.join("node1/state/raft");
    let saved = dir.join("node1/state/raft.saved");
    std::fs::rename(&raft, &saved).expect("move the raft store aside");
    std::fs::write(&raft, "not a directory").expect("block the raft store");
    let out = demo.action("restart", "node1");
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(3), "a restart whose agent died must fail: {err}");
    assert!(err.contains("node1's new agent") && err.contains("exited") && err.contains("The end of its log"), "{err}");
    let dead = demo.recorded("node1");
    assert!(session_members(dead).is_empty(), "nothing of the failed restart may run");
    std::fs::remove_file(&raft).expect("unblock");
    std::fs::rename(&saved, &raft).expect("restore the raft store");

    // A real restart: it waits until the agent answers and rejoins, and says so.
    let out = demo.action("restart", "node1");
    assert!(out.status.success(), "{}", stderr(&out));
    let said = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(said.contains("restarted node1") && said.contains("rejoined the cluster"), "{said}");
    let restarted = demo.recorded("node1");
    assert!(restarted != first[0] && alive(restarted), "the restarted agent runs under a new pid");
    let nodes = cli_until(&env, &["node", "list"], 30, |v| statuses(v) == ["up", "up", "up"]);
    assert_eq!(statuses(&nodes), ["up", "up", "up"]);

    // Ctrl-C stops every agent, the restarted one (not the demo's child) too, and their
    // resources, before the directory is removed.
    let code = demo.ctrl_c();
    assert!(code.success(), "the demo exited with {code}");
    let sessions = demo.sessions.clone();
    let left = left_in(&sessions);
    assert!(left.is_empty(), "processes {left:?} of the demo's sessions {sessions:?} outlived it");
    assert!(!dir.exists(), "the demo's temporary directory {} was not removed", dir.display());
    demo.wait_for_line("every agent of the demo and every process they started has stopped", 5);
}

#[test]
fn ctrl_c_while_the_demo_starts_leaves_nothing_running() {
    let dir = tempfile::tempdir().expect("tempdir");
    let dir_arg = dir.path().to_string_lossy().into_owned();
    let mut demo = Demo::start(&["--dir", &dir_arg]);
    demo.dir = Some(std::fs::canonicalize(dir.path()).expect("canonical dir"));
    // As soon as the last agent is recorded, long before the cluster is formed.
    let pid_file = dir.path().join("node3/agent.pid");
    let deadline = Instant::now() + Duration::from_secs(60);
    while !pid_file.exists() {
        assert!(Instant::now() < deadline, "the demo started no third agent within 60 s");
        std::thread::sleep(Duration::from_millis(20));
    }
    let sessions: Vec<i32> = ["node1", "node2", "node3"].iter().map(|n| demo.recorded(n)).collect();
    let code = demo.ctrl_c();
    assert!(code.success(), "the demo exited with {code}");
    let left = left_in(&sessions);
    assert!(left.is_empty(), "processes {left:?} of the demo's sessions {sessions:?} outlived it");
    assert!(!dir.path().join("demo.pid").exists(), "the stopped demo still claims its directory");
    // No restart into a demo that has stopped: nothing would stop that agent again.
    let out = demo.action("restart", "node1");
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(stderr(&out).contains("no `haven demo` runs for"), "{}", stderr(&out));
    assert!(session_members(sessions[0]).is_empty());
}
