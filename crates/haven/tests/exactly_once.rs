//! Lab: writes are exactly-once, and every answer is true. A client streams distinct writes
//! (each with its own `Idempotency-Key`) to a follower while the leader's node dies
//! (SIGKILL): a write told succeeded exists exactly once, one told refused does not exist,
//! an unknown one is resolved by looking its id up (and retried with the same id, applied
//! at most once), and no write's first attempt is told that its own object already exists.
//! A graceful stop of an agent under write load is quick and refuses what it does not take.

mod common;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use common::{Lab, group_preferring};
use haven_api::{Client, ClientError, HistoryQuery, specs};
use haven_model::GroupSpec;
use serde_json::Value;

/// Concurrent writers, and writes each sends.
const WRITERS: usize = 4;
const WRITES_EACH: usize = 30;
/// The stream ends after this long even if writes remain.
const STREAM_LIMIT: Duration = Duration::from_secs(90);

/// What the client was told about one write.
#[derive(Debug, Clone)]
enum Told {
    Succeeded,
    /// Refused, with the status, code and message it was refused with.
    Refused(u16, String, String),
    /// 504 `outcome_unknown`.
    Unknown,
    /// No answer (the connection broke): as unknown to the client.
    NoAnswer(String),
}

fn group_name(w: usize, k: usize) -> String {
    format!("w-{w}-{k}")
}

fn key_of(name: &str) -> String {
    format!("exactly-once-{name}")
}

async fn create(client: &Client, name: &str) -> Told {
    match client.with_idempotency_key(&key_of(name)).create_group(&GroupSpec::new(name)).await {
        Ok(g) => {
            assert_eq!(g.group.spec.name, name);
            Told::Succeeded
        }
        Err(ClientError::Api { status: 504, code, message, .. }) => {
            assert_eq!(code, "outcome_unknown", "{message}");
            assert!(message.contains(&key_of(name)), "the message names the request id: {message}");
            Told::Unknown
        }
        Err(ClientError::Api { status, code, message, .. }) => Told::Refused(status, code, message),
        Err(e) => Told::NoAnswer(e.to_string()),
    }
}

/// `WRITERS` tasks sending their writes to `client`; `acked` counts the answers so far.
fn stream(client: &Client, acked: &Arc<AtomicUsize>) -> Vec<tokio::task::JoinHandle<Vec<(String, Told)>>> {
    let begun = Instant::now();
    (0..WRITERS)
        .map(|w| {
            let client = client.clone();
            let acked = acked.clone();
            tokio::spawn(async move {
                let mut told = Vec::new();
                for k in 0..WRITES_EACH {
                    if begun.elapsed() > STREAM_LIMIT {
                        break;
                    }
                    let name = group_name(w, k);
                    let t = create(&client, &name).await;
                    acked.fetch_add(1, Ordering::SeqCst);
                    let stop = matches!(t, Told::NoAnswer(_));
                    told.push((name, t));
                    if stop {
                        break; // the agent is gone
                    }
                }
                told
            })
        })
        .collect()
}

/// How many `group-created` events node `i` has for `name` (`None`: it did not answer).
async fn created_events(lab: &Lab, i: usize, name: &str) -> Option<usize> {
    let events = lab.client(i).history(&HistoryQuery::group(name).limit(1000)).await.ok()?;
    Some(events.iter().filter(|e| e.kind == "group-created").count())
}

/// Whether group `name` exists, as node `i` sees it, and how many times it was created.
async fn existence(lab: &Lab, i: usize, name: &str) -> (bool, usize) {
    let exists = lab.group(i, name).await.is_some();
    let created = created_events(lab, i, name).await.unwrap_or_else(|| panic!("{} answers history", lab.name(i)));
    (exists, created)
}

/// Checks every write's answer against what the cluster holds (through node `via`, the
/// leader): succeeded → exactly once; refused → absent; unknown → looked up, and if not
/// committed, retried with the same id → exactly once. Returns the count of each answer.
async fn check_outcomes(lab: &Lab, via: usize, told: &[(String, Told)]) -> BTreeMap<&'static str, usize> {
    let mut counts = BTreeMap::new();
    for (name, t) in told {
        let kind = match t {
            Told::Succeeded => "succeeded",
            Told::Refused(_, code, _) if code == "shutting_down" => "shutting_down",
            Told::Refused(..) => "refused",
            Told::Unknown => "unknown",
            Told::NoAnswer(_) => "no_answer",
        };
        *counts.entry(kind).or_insert(0) += 1;
        match t {
            Told::Succeeded => {
                assert_eq!(existence(lab, via, name).await, (true, 1), "{name} was told succeeded");
            }
            Told::Refused(status, code, _) => {
                assert_ne!(code, "already_exists", "{name}'s only request was told that it already exists");
                assert!(*status != 504, "{name}");
                assert_eq!(existence(lab, via, name).await, (false, 0), "{name} was told refused ({status} {code})");
            }
            Told::Unknown | Told::NoAnswer(_) => {
                if let Told::NoAnswer(why) = t {
                    lab.note(&format!("{name}: no answer ({why})"));
                }
                let key = key_of(name);
                match lab.client(via).request_outcome(&key).await {
                    Ok(v) => {
                        assert_eq!(v.request_id, key);
                        let applied = v.outcome == "succeeded";
                        assert!(applied || v.outcome == "refused", "{v:?}");
                        let want = if applied { (true, 1) } else { (false, 0) };
                        assert_eq!(existence(lab, via, name).await, want, "{name}: its lookup said {v:?}");
                    }
                    Err(ClientError::Api { status: 404, .. }) => {
                        // Not committed: the same request again is applied (once).
                        let again = create(lab.client(via), name).await;
                        assert!(matches!(again, Told::Succeeded), "{name} retried with its id: {again:?}");
                        assert_eq!(existence(lab, via, name).await, (true, 1), "{name} after its retry");
                        // And once more: the first outcome again, not `already_exists`.
                        let third = create(lab.client(via), name).await;
                        assert!(matches!(third, Told::Succeeded), "{name} retried twice: {third:?}");
                    }
                    Err(e) => panic!("looking up {key} failed: {e}"),
                }
            }
        }
    }
    counts
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_through_a_follower_are_exactly_once_when_the_leader_dies() {
    let mut lab = Lab::start(3).await;
    let leader_id = lab.leader_seen_by(0).await.expect("a leader");
    let l = (0..3).find(|i| lab.node(*i).id == leader_id).expect("the leader is a lab node");
    let f = (0..3).find(|i| *i != l).expect("a follower");
    lab.note(&format!("streaming writes to follower {} while leader {} dies", lab.name(f), lab.name(l)));

    let acked = Arc::new(AtomicUsize::new(0));
    let writers = stream(lab.client(f), &acked);
    lab.wait_until("a quarter of the writes answered", 60, async || {
        acked.load(Ordering::SeqCst) >= WRITERS * WRITES_EACH / 4
    })
    .await;
    lab.kill_node(l);
    let mut told = Vec::new();
    for w in writers {
        told.extend(w.await.expect("a writer task"));
    }
    lab.note(&format!("{} writes answered", told.len()));

    let survivors: Vec<usize> = (0..3).filter(|i| *i != l).collect();
    let new_leader = lab
        .wait_for("a new leader among the survivors", 20, async || {
            let a = lab.leader_seen_by(survivors[0]).await?;
            let b = lab.leader_seen_by(survivors[1]).await?;
            (a == b && a != leader_id).then_some(a)
        })
        .await;
    let via = (0..3).find(|i| lab.node(*i).id == new_leader).expect("the new leader is a lab node");
    let counts = check_outcomes(&lab, via, &told).await;
    lab.note(&format!("answers: {counts:?}"));
    assert!(!counts.contains_key("no_answer"), "the follower stayed up: every write has an answer: {counts:?}");
    assert!(counts.get("succeeded").copied().unwrap_or(0) >= WRITERS * WRITES_EACH / 2, "{counts:?}");

    // The follower holds the same: each acknowledged group once.
    let names: Vec<&String> = told.iter().map(|(n, _)| n).collect();
    lab.wait_until("the follower to hold what the leader holds", 15, async || {
        for name in &names {
            if lab.group(f, name).await.is_some() != lab.group(via, name).await.is_some() {
                return false;
            }
        }
        true
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_graceful_stop_under_write_load_is_quick_and_refuses_what_it_does_not_take() {
    let mut lab = Lab::start(3).await;
    let leader_id = lab.leader_seen_by(0).await.expect("a leader");
    let s = (0..3).find(|i| lab.node(*i).id != leader_id).expect("a follower");
    let leader = (0..3).find(|i| lab.node(*i).id == leader_id).expect("the leader is a lab node");
    lab.note(&format!("streaming writes to {} and stopping it", lab.name(s)));

    // A resource there that takes a moment to stop keeps the agent stopping for that long:
    // writes sent meanwhile must be refused at once.
    let c = lab.client(leader).clone();
    c.create_group(&group_preferring("slow", &[lab.name(s)])).await.expect("group");
    let argv = ["sh", "-c", "trap 'sleep 0.5; exit 0' TERM; while :; do sleep 0.1; done"];
    c.create_resource(&specs::process("slow-stop", "slow", &argv)).await.expect("resource");
    let owner = lab.name(s).to_string();
    lab.wait_until("the slow-stopping resource online there", 30, async || {
        lab.online_on(leader, "slow").await.as_deref() == Some(owner.as_str())
    })
    .await;

    let acked = Arc::new(AtomicUsize::new(0));
    let writers = stream(lab.client(s), &acked);
    lab.wait_until("some writes answered", 60, async || acked.load(Ordering::SeqCst) >= WRITERS * 3).await;
    let begun = Instant::now();
    let leftovers = tokio::task::block_in_place(|| lab.stop_node(s));
    let took = begun.elapsed();
    assert_eq!(leftovers, 0);
    lab.note(&format!("{} stopped in {:.2}s under write load", lab.name(s), took.as_secs_f64()));
    assert!(took < Duration::from_secs(2), "a graceful stop under write load took {took:?}");

    let mut told = Vec::new();
    for w in writers {
        told.extend(w.await.expect("a writer task"));
    }
    let leader_name = lab.name(leader).to_string();
    let other_name = lab.name((0..3).find(|i| *i != s && *i != leader).expect("a third node")).to_string();
    for (name, t) in &told {
        if let Told::Refused(status, code, message) = t {
            assert!(
                *status == 503 && code == "shutting_down",
                "{name}: a stopping agent refuses with 503 shutting_down, not {status} {code}: {message}"
            );
            assert!(
                message.contains(&leader_name) || message.contains(&other_name),
                "the refusal names a node to use instead: {message}"
            );
        }
    }
    let counts = check_outcomes(&lab, leader, &told).await;
    lab.note(&format!("answers: {counts:?}"));
    assert!(counts.contains_key("shutting_down"), "writes sent while it stopped were refused at once: {counts:?}");
}

/// A raw HTTP/1.1 POST of `body` to `path` (no `Idempotency-Key`, as a caller that sends
/// none, which the typed client never is): the status, the reply's `idempotency-key`
/// header, and the JSON body.
fn post_without_key(addr: &str, token: &str, path: &str, body: &impl serde::Serialize) -> (u16, Option<String>, Value) {
    use std::io::{Read, Write};
    let body = serde_json::to_string(body).expect("a JSON body");
    let mut conn = std::net::TcpStream::connect(addr).expect("connect");
    conn.set_read_timeout(Some(Duration::from_secs(15))).expect("timeout");
    let req = format!(
        "POST {path} HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {token}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    conn.write_all(req.as_bytes()).expect("send");
    let mut reply = String::new();
    conn.read_to_string(&mut reply).expect("read the reply");
    let (head, json) = reply.split_once("\r\n\r\n").expect("an HTTP reply");
    let status = head.split(' ').nth(1).and_then(|s| s.parse().ok()).expect("a status line");
    let key = head
        .lines()
        .find_map(|l| l.split_once(':').filter(|(n, _)| n.eq_ignore_ascii_case("idempotency-key")))
        .map(|(_, v)| v.trim().to_string());
    (status, key, serde_json::from_str(json).unwrap_or(Value::Null))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_that_times_out_is_unknown_then_resolved_by_its_id() {
    let mut lab = Lab::start(3).await;
    let leader_id = lab.leader_seen_by(0).await.expect("a leader");
    let l = (0..3).find(|i| lab.node(*i).id == leader_id).expect("the leader is a lab node");
    let followers: Vec<usize> = (0..3).filter(|i| *i != l).collect();
    for &f in &followers {
        lab.kill_node(f);
    }

    // The leader proposes it and cannot commit it: not "refused", unknown, with its id.
    let addr = lab.node(l).addr.clone();
    let (status, header, body) =
        tokio::task::block_in_place(|| post_without_key(&addr, &lab.token, "/api/v1/groups", &GroupSpec::new("late")));
    assert_eq!(status, 504, "{body}");
    assert_eq!(body["error"]["code"], "outcome_unknown", "{body}");
    let id = body["error"]["request_id"].as_str().expect("the error names the request id").to_string();
    assert_eq!(header.as_deref(), Some(id.as_str()), "the agent's id for a write sent without one");
    let message = body["error"]["message"].as_str().unwrap_or("");
    assert!(message.contains(&format!("/api/v1/requests/{id}")), "the message says how to look it up: {message}");
    let keyed = create(lab.client(l), "late-keyed").await;
    assert!(matches!(keyed, Told::Unknown), "{keyed:?}");
    // Not committed (yet): the lookup says so, and how to go on.
    match lab.client(l).request_outcome(&id).await {
        Err(ClientError::Api { status: 404, message, .. }) => {
            assert!(message.contains("at most once"), "{message}")
        }
        other => panic!("looking up an uncommitted request: {other:?}"),
    }

    for &f in &followers {
        lab.restart_node(f).await;
    }
    lab.wait_until("all 3 nodes up again, with a leader and a lease, on every node", 30, async || {
        for i in 0..3 {
            if !lab.sees_all_up(i, 3).await {
                return false;
            }
        }
        true
    })
    .await;
    let new_leader = lab.leader_seen_by(l).await.expect("a leader");
    let via = (0..3).find(|i| lab.node(*i).id == new_leader).expect("the leader is a lab node");
    let told = [("late-keyed".to_string(), Told::Unknown)];
    // `late` was sent without a key: look it up (and retry it) under the agent's id.
    let looked = lab.client(via).request_outcome(&id).await;
    lab.note(&format!("the timed-out write's lookup after the quorum came back: {looked:?}"));
    match looked {
        Ok(v) => {
            assert_eq!(v.outcome, "succeeded", "{v:?}");
            assert_eq!(existence(&lab, via, "late").await, (true, 1));
        }
        Err(ClientError::Api { status: 404, .. }) => {
            let again = lab
                .client(via)
                .with_idempotency_key(&id)
                .create_group(&GroupSpec::new("late"))
                .await
                .expect("the same request again with its id");
            assert_eq!(again.group.spec.name, "late");
            assert_eq!(existence(&lab, via, "late").await, (true, 1));
        }
        Err(e) => panic!("looking up {id}: {e}"),
    }
    let counts = check_outcomes(&lab, via, &told).await;
    lab.note(&format!("answers: {counts:?}"));

    // A malformed key is refused, naming the header and the bound.
    let long = "k".repeat(129);
    match lab.client(via).with_idempotency_key(&long).create_group(&GroupSpec::new("bad-key")).await {
        Err(ClientError::Api { status: 400, field: Some(f), message, .. }) => {
            assert_eq!(f, "Idempotency-Key");
            assert!(message.contains("128"), "{message}");
        }
        other => panic!("a 129-character key: {other:?}"),
    }
    // A used key with another request is refused, and that request is not applied.
    match lab.client(via).with_idempotency_key(&id).create_group(&GroupSpec::new("other")).await {
        Err(ClientError::Api { status: 422, code, message, .. }) => {
            assert_eq!(code, "request_id_reused");
            assert!(message.contains("another request"), "{message}");
        }
        other => panic!("a used key with another request: {other:?}"),
    }
    assert_eq!(existence(&lab, via, "other").await, (false, 0));
    assert!(lab.group(via, "bad-key").await.is_none());
}
