//! The CLI with several servers (`--server a,b,c`, `HAVEN_SERVER=a,b,c`): a request goes to
//! the next server when one cannot be reached — a read on any transport failure, a write
//! only when the connection was never made — an HTTP error is an answer and is never
//! retried elsewhere, and when no server answers the error names every one.

mod common;

use std::io::{Read, Write};
use std::net::TcpListener;
use std::process::{Command, Output};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use common::{HAVEN, Lab};

/// A loopback address nothing listens on (bound once to get a free port, then closed).
fn closed_addr() -> String {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind");
    l.local_addr().expect("addr").to_string()
}

/// What a stand-in server does with each connection after reading the request's head.
#[derive(Clone, Copy)]
enum Stub {
    /// Closes the connection without an answer: the request arrived, its outcome is unknown.
    Hangs,
    /// Answers 503 with Haven's error body.
    Refuses,
}

/// A stand-in server on loopback that treats every connection as `how` says; returns its
/// address and how many requests reached it.
fn stub_server(how: Stub) -> (String, Arc<AtomicUsize>) {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = l.local_addr().expect("addr").to_string();
    let seen = Arc::new(AtomicUsize::new(0));
    let counter = seen.clone();
    std::thread::spawn(move || {
        for conn in l.incoming().take(100) {
            let Ok(mut conn) = conn else { continue };
            let _ = conn.set_read_timeout(Some(Duration::from_secs(5)));
            let mut head = Vec::new();
            let mut buf = [0u8; 4096];
            while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < 65536 {
                match conn.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => head.extend_from_slice(&buf[..n]),
                }
            }
            counter.fetch_add(1, Ordering::SeqCst);
            if let Stub::Refuses = how {
                let body = r#"{"error":{"code":"no_quorum","message":"stand-in server refuses everything"}}"#;
                let _ = write!(
                    conn,
                    "HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                    body.len()
                );
            }
        }
    });
    (addr, seen)
}

/// The lab's admin API token, once a test started one (the CLI sends it as HAVEN_TOKEN).
static TOKEN: std::sync::OnceLock<String> = std::sync::OnceLock::new();

/// The CLI with the lab's token, if any, and never the config file of whoever runs the tests.
fn cli() -> Command {
    let mut cmd = Command::new(HAVEN);
    cmd.env("HAVEN_TOKEN", TOKEN.get().map(String::as_str).unwrap_or(""))
        .env("XDG_CONFIG_HOME", std::env::temp_dir().join("haven-tests-no-cli-config"));
    cmd
}

fn haven(servers: &str, args: &[&str]) -> Output {
    let out = cli().args(["--server", servers]).args(args).output().expect("run the haven CLI");
    println!(
        "`haven --server {servers} {}`: {}\n  stderr: {}",
        args.join(" "),
        out.status,
        String::from_utf8_lossy(&out.stderr).trim()
    );
    out
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn group_names(servers: &str) -> Vec<String> {
    let out = haven(servers, &["-o", "json", "group", "list"]);
    assert!(out.status.success(), "group list via {servers}: {}", stderr(&out));
    let groups: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    groups.as_array().expect("array").iter().filter_map(|g| g["name"].as_str().map(String::from)).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cli_moves_on_to_the_next_server_only_when_that_is_safe() {
    let lab = Lab::start(1).await;
    let _ = TOKEN.set(lab.token.clone());
    let agent = lab.node(0).addr.clone();

    // The first server is down (nothing listens): a read and a write reach the agent.
    let down = closed_addr();
    let servers = format!("{down},{agent}");
    let out = haven(&servers, &["group", "create", "via-second"]);
    assert!(out.status.success(), "a write must move on past a refused connection: {}", stderr(&out));
    assert!(group_names(&servers).contains(&"via-second".to_string()), "the read moved on too");

    // The same through HAVEN_SERVER, with spaces after the commas.
    let out = cli()
        .env("HAVEN_SERVER", format!("{down}, {agent}"))
        .args(["-o", "json", "node", "list"])
        .output()
        .expect("run the CLI");
    assert!(out.status.success(), "HAVEN_SERVER with two servers: {}", stderr(&out));

    // A server that takes the request and closes without an answer: the request may have
    // arrived, so a write must not be sent again elsewhere; a read may.
    let (hangs, seen) = stub_server(Stub::Hangs);
    let servers = format!("{hangs},{agent}");
    let out = haven(&servers, &["group", "create", "maybe-twice"]);
    assert_eq!(out.status.code(), Some(4), "a write whose outcome is unknown must fail: {}", stderr(&out));
    let err = stderr(&out);
    assert!(err.contains(&format!("no answer from the Haven agent at http://{hangs}")), "{err}");
    assert!(err.contains("may still be applied, so it was not sent to another agent"), "{err}");
    assert!(!err.contains(&agent), "the write was not tried on the agent, so the error must not name it: {err}");
    assert_eq!(seen.load(Ordering::SeqCst), 1, "the write reached the stand-in once");
    assert!(!group_names(&agent).contains(&"maybe-twice".to_string()), "the write was sent to the agent too");
    let before = seen.load(Ordering::SeqCst);
    assert!(group_names(&servers).contains(&"via-second".to_string()), "a read moves on past it");
    assert!(seen.load(Ordering::SeqCst) > before, "the read tried the stand-in first");

    // A server that answers with an HTTP error: that is its answer, not tried elsewhere.
    let (refuses, seen) = stub_server(Stub::Refuses);
    let servers = format!("{refuses},{agent}");
    let out = haven(&servers, &["group", "create", "refused-first"]);
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    assert!(stderr(&out).contains("stand-in server refuses everything"), "{}", stderr(&out));
    let out = haven(&servers, &["-o", "json", "group", "list"]);
    assert_eq!(out.status.code(), Some(3), "a read answered 503 is not retried elsewhere either");
    assert_eq!(seen.load(Ordering::SeqCst), 2);
    assert!(!group_names(&agent).contains(&"refused-first".to_string()));

    // Every server down: the error names each one and why.
    let (a, b) = (closed_addr(), closed_addr());
    let out = haven(&format!("{a},{b}"), &["node", "list"]);
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    let err = stderr(&out);
    assert!(err.contains("cannot reach any of the 2 Haven agents tried"), "{err}");
    assert!(err.contains(&format!("http://{a} (")) && err.contains(&format!("http://{b} (")), "{err}");
    let out = haven(&format!("{a},{b}"), &["group", "create", "nowhere"]);
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    assert!(stderr(&out).contains(&format!("http://{b} (")), "a write tries every server whose connection is refused");
}

#[test]
fn cluster_init_and_join_take_exactly_one_server() {
    let (a, b) = (closed_addr(), closed_addr());
    let out = haven(&format!("{a},{b}"), &["cluster", "init", "--name", "x"]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(stderr(&out).contains("acts on one particular agent"), "{}", stderr(&out));
    let out = haven(&format!("{a},{b}"), &["cluster", "join", &a, "--token", "t"]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    let out = haven(&format!("{a},,{b}"), &["node", "list"]);
    assert_eq!(out.status.code(), Some(2), "an empty entry is a usage error: {}", stderr(&out));
    assert!(stderr(&out).contains("empty entry at position 2"), "{}", stderr(&out));
}
