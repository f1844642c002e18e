//! Peer identity, end to end (real agents, real TLS, loopback): a process without a
//! certificate of the cluster CA cannot send Raft messages, lease renewals, forwarded writes
//! or joins; a member cannot renew another member's lease or send Raft messages in another
//! node's name, and a forwarded write's author is
//! the one its certificate vouches for; a join with a wrong, expired or used-up token, or
//! against a wrong CA fingerprint, is refused with a message that says so (and never quotes
//! the token); the CLI speaks HTTPS pinned to the cluster CA and refuses an agent of
//! another one; a removed node's certificate is refused everywhere, so it cannot come back.

mod common;

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use common::Lab;
use haven_agent::pki::Pki;
use haven_api::{ClientError, HistoryQuery, JoinTokenRequest};
use haven_model::{Dur, GroupSpec};
use haven_state::{Command, Request};

/// The peer routes a stranger must not reach, with a body each would take.
fn peer_routes() -> Vec<(&'static str, serde_json::Value)> {
    let write = Request::new(1, "attacker", Command::CreateGroup { spec: GroupSpec::new("forged".to_string()) });
    vec![
        ("/internal/heartbeat", serde_json::json!({"node": "node2"})),
        ("/internal/write", serde_json::to_value(&write).expect("a request")),
        (
            "/internal/raft/vote",
            serde_json::json!({"vote": {"leader_id": {"term": 99, "node_id": 9}, "committed": false}, "last_log_id": null}),
        ),
        (
            "/internal/raft/append",
            serde_json::json!({"vote": {"leader_id": {"term": 99, "node_id": 9}, "committed": true}, "prev_log_id": null, "entries": [], "leader_commit": null}),
        ),
    ]
}

/// A client with the identity in `dir` (`ca.pem`, and `node.pem`/`node.key` if there).
fn client_of(dir: &Path) -> reqwest::Client {
    Arc::new(Pki::open(dir).expect("the PKI files")).peer_client().expect("a peer client")
}

/// A member's identity, copied from its state directory (the agent keeps running).
fn member_identity(lab: &Lab, i: usize, into: &Path) -> reqwest::Client {
    let from = lab.node(i).state_dir().join("pki");
    std::fs::create_dir_all(into).expect("a directory");
    for f in ["ca.pem", "node.pem", "node.key"] {
        std::fs::copy(from.join(f), into.join(f)).unwrap_or_else(|e| panic!("{}: {e}", from.join(f).display()));
    }
    client_of(into)
}

/// The message of an API error, whatever its kind.
fn message(e: &ClientError) -> String {
    e.to_string()
}

fn leader_index(lab: &Lab, leader_id: u64) -> usize {
    (0..lab.nodes.len()).find(|i| lab.node(*i).id == leader_id).expect("the leader is a lab node")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn strangers_wrong_tokens_and_wrong_fingerprints_are_refused() {
    // node4 runs outside the cluster: the joins below are its.
    let lab = Lab::start_members(4, 3).await;
    let scratch = lab.dir().join("scratch");
    let leader_id = lab.leader_seen_by(0).await.expect("a leader");
    let leader = leader_index(&lab, leader_id);
    let leader_addr = lab.node(leader).addr.clone();
    let state_before = lab.client(0).groups().await.expect("groups").len();

    // A member's own identity reaches every peer route (the control for the refusals).
    let node2 = member_identity(&lab, 1, &scratch.join("node2"));
    let ok =
        node2.post(format!("https://{leader_addr}/internal/heartbeat")).json(&serde_json::json!({"node": "node2"}));
    let ok = ok.send().await.expect("node2's renewal is answered");
    assert_eq!(ok.status().as_u16(), 200, "{:?}", ok.text().await);

    // Plain HTTP, even on loopback: never a peer route.
    let plain = reqwest::Client::new();
    for (path, body) in peer_routes() {
        let r = plain.post(format!("http://{leader_addr}{path}")).json(&body).send().await.expect("an answer");
        assert_eq!(r.status().as_u16(), 403, "plain HTTP {path}");
        assert!(r.text().await.unwrap_or_default().contains("tls_required"), "{path}");
    }
    // TLS without a certificate: 401, the route never runs.
    let ca_only = scratch.join("ca-only");
    std::fs::create_dir_all(&ca_only).expect("a directory");
    std::fs::copy(lab.node(0).state_dir().join("pki/ca.pem"), ca_only.join("ca.pem")).expect("ca.pem");
    let anonymous = client_of(&ca_only);
    for (path, body) in peer_routes() {
        let r = anonymous.post(format!("https://{leader_addr}{path}")).json(&body).send().await.expect("an answer");
        assert_eq!(r.status().as_u16(), 401, "no certificate: {path}");
        assert!(r.text().await.unwrap_or_default().contains("no_certificate"), "{path}");
    }
    // A certificate of another CA (for a name of this cluster, even): the handshake fails.
    let foreign = scratch.join("foreign");
    Pki::open(&foreign).expect("a PKI").found("evil", "node2", 2, "127.0.0.1:1").expect("another CA");
    std::fs::copy(lab.node(0).state_dir().join("pki/ca.pem"), foreign.join("ca.pem")).expect("trust the real CA");
    let stranger = client_of(&foreign);
    let mut routes = peer_routes();
    routes.push(("/internal/join", serde_json::json!({})));
    for (path, body) in routes {
        let r = stranger.post(format!("https://{leader_addr}{path}")).json(&body).send().await;
        assert!(r.is_err(), "a certificate of another CA reached {path}: {:?}", r.map(|r| r.status()));
    }
    let groups = lab.client(0).groups().await.expect("groups");
    assert_eq!(groups.len(), state_before, "no forged write was applied: {groups:?}");
    assert!(groups.iter().all(|g| g.group.spec.name != "forged"));

    // A member cannot send Raft messages in another node's name.
    for (path, body) in peer_routes().into_iter().filter(|(p, _)| p.starts_with("/internal/raft/")) {
        let r = node2.post(format!("https://{leader_addr}{path}")).json(&body).send().await.expect("an answer");
        assert_eq!(r.status().as_u16(), 403, "{path} in node 9's name");
        let text = r.text().await.unwrap_or_default();
        assert!(text.contains("wrong_node") && text.contains("in its own name only"), "{path}: {text}");
    }

    // A member cannot renew another member's lease.
    let r = node2.post(format!("https://{leader_addr}/internal/heartbeat")).json(&serde_json::json!({"node": "node3"}));
    let r = r.send().await.expect("an answer");
    assert_eq!(r.status().as_u16(), 403);
    let text = r.text().await.unwrap_or_default();
    assert!(text.contains("wrong_node") && text.contains("only its own lease"), "{text}");

    // A forwarded write is authored by what the certificate vouches for.
    let write = Request::new(1, "attacker", Command::CreateGroup { spec: GroupSpec::new("authored".to_string()) });
    let r = node2.post(format!("https://{leader_addr}/internal/write")).json(&write).send().await.expect("an answer");
    assert_eq!(r.status().as_u16(), 200);
    let history = lab.client(0).history(&HistoryQuery::group("authored")).await.expect("history");
    let created = history.iter().find(|e| e.kind == "group-created").expect("the group's creation");
    assert_eq!(created.by, "attacker via node2", "{created:?}");

    // Joins of node4, through its own API.
    let joiner = lab.client(3);
    let member = lab.node(0).addr.clone();
    // The token the join finally succeeds with, made as the README says (the CLI).
    let made = lab.cli_json(0, &["cluster", "token", "create", "--ttl", "10m"]).await;
    let good: haven_api::JoinTokenCreated = serde_json::from_value(made).expect("the token's JSON");
    assert_eq!((good.uses, good.ca_fingerprint.len()), (1, 64));
    let made_up = "5ec2e7".repeat(10);
    let e = joiner.join_cluster(&member, &made_up, &good.ca_fingerprint).await.expect_err("a made-up token");
    assert!(message(&e).contains("not valid") && !message(&e).contains(&made_up), "{e}");
    let wrong_fp = "00".repeat(32);
    let e = joiner.join_cluster(&member, &good.token, &wrong_fp).await.expect_err("a wrong fingerprint");
    assert!(message(&e).contains("not the one given with --ca-fingerprint"), "{e}");
    assert!(!message(&e).contains(&good.token), "{e}");
    let e = joiner.join_cluster(&member, &good.token, "not-a-fingerprint").await.expect_err("a malformed one");
    assert!(message(&e).contains("ca_fingerprint must be the 64 hex digits"), "{e}");
    let e = lab.client(0).create_join_token(&JoinTokenRequest { ttl: None, uses: Some(0) }).await.expect_err("0 uses");
    assert!(message(&e).contains("1 to 100"), "{e}");
    let e = lab
        .client(0)
        .create_join_token(&JoinTokenRequest { ttl: Some(Dur::parse("8d").expect("a duration")), uses: None })
        .await
        .expect_err("8 days");
    assert!(message(&e).contains("from 1s to 7d"), "{e}");

    let short = JoinTokenRequest { ttl: Some(Dur::parse("1s").expect("a duration")), uses: None };
    let expiring = lab.client(0).create_join_token(&short).await.expect("a 1 s token");
    // Wait for the wall-clock moment it expires (bounded: it was made to expire in 1 s).
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while haven_agent::now_ms() <= expiring.expires_at + 50 {
        assert!(std::time::Instant::now() < deadline, "the clock did not pass the token's expiry");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let e = joiner.join_cluster(&member, &expiring.token, &expiring.ca_fingerprint).await.expect_err("expired");
    assert!(message(&e).contains("expired"), "{e}");

    // A token revoked before its use admits nobody; `token list` shows the others, never a
    // token itself (the role walk of api_access checks that only an admin revokes).
    let revoked = lab.cli_json(0, &["cluster", "token", "create"]).await;
    let (rid, rtoken) = (revoked["id"].as_str().expect("an id"), revoked["token"].as_str().expect("a token"));
    let listed = lab.cli_json(0, &["cluster", "token", "list"]).await;
    let listed = listed.as_array().expect("a list");
    assert!(listed.iter().any(|t| t["id"] == rid && t["status"] == "valid"), "{listed:?}");
    assert!(listed.iter().any(|t| t["id"] == good.id.as_str()), "{listed:?}");
    assert!(listed.iter().any(|t| t["id"] == expiring.id.as_str() && t["status"] == "expired"), "{listed:?}");
    let text = serde_json::to_string(&listed).expect("JSON");
    assert!(!text.contains(rtoken) && !text.contains(&good.token), "a token in the list: {text}");
    lab.cli_json(0, &["cluster", "token", "revoke", rid]).await;
    let e = joiner.join_cluster(&member, rtoken, &good.ca_fingerprint).await.expect_err("a revoked token");
    assert!(message(&e).contains("revoked"), "{e}");
    let again = lab.cli(0).args(["cluster", "token", "revoke", rid]).output().expect("the CLI");
    assert!(String::from_utf8_lossy(&again.stderr).contains("no join token with id"), "{again:?}");

    // The right token and fingerprint: node4 joins (the refusals above used nothing up).
    let args = ["cluster", "join", member.as_str(), "--token", &good.token, "--ca-fingerprint", &good.ca_fingerprint];
    let joined = lab.cli_json(3, &args).await;
    assert_eq!(joined["name"], "node4", "{joined}");
    lab.wait_until("node4 up, with a lease", 30, async || lab.sees_all_up(3, 4).await).await;
    // (A voter keeps the CA key it was given under the CA's fingerprint.)
    for f in ["node.key".to_string(), format!("ca-{}.key", good.ca_fingerprint)] {
        let mode = std::os::unix::fs::PermissionsExt::mode(
            &std::fs::metadata(lab.node(3).state_dir().join("pki").join(&f)).expect("written").permissions(),
        ) & 0o777;
        assert_eq!(mode, 0o600, "{f}");
    }

    // The CLI over HTTPS, pinned to the cluster CA (the fingerprint init printed): an
    // https:// server proves it is not plain HTTP. A wrong fingerprint is refused before
    // anything is sent; https:// without one is a usage error.
    let https = format!("https://{leader_addr}");
    let run = |fp: &str| {
        let mut cmd = std::process::Command::new(common::HAVEN);
        cmd.env("HAVEN_TOKEN", &lab.token).env("XDG_CONFIG_HOME", lab.dir()).args(["--server", &https]);
        if !fp.is_empty() {
            cmd.args(["--ca-fingerprint", fp]);
        }
        cmd.args(["-o", "json", "node", "list"]).output().expect("the CLI runs")
    };
    let ok = run(&lab.ca_fingerprint);
    assert!(ok.status.success(), "{}", String::from_utf8_lossy(&ok.stderr));
    assert_eq!(
        serde_json::from_slice::<serde_json::Value>(&ok.stdout).ok().and_then(|v| v.as_array().map(Vec::len)),
        Some(4)
    );
    let wrong = run(&wrong_fp);
    let stderr = String::from_utf8_lossy(&wrong.stderr);
    assert_eq!(wrong.status.code(), Some(3), "{stderr}");
    assert!(stderr.contains("not the one given with --ca-fingerprint") && !stderr.contains(&lab.token), "{stderr}");
    let none = run("");
    let stderr = String::from_utf8_lossy(&none.stderr);
    assert_eq!(none.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("needs the cluster's CA fingerprint"), "{stderr}");

    // The used-up token, presented straight to the leader's join route by a fifth node.
    let fifth = Arc::new(Pki::open(&scratch.join("node5")).expect("a PKI"));
    let join = haven_api::PeerJoin {
        id: 5,
        name: "node5".into(),
        address: "127.0.0.1:9".into(),
        token: good.token.clone(),
        capacity: haven_model::Capacity { cpus: 1, memory_mib: 1024 },
        witness: false,
        csr: fifth.join_request("node5").expect("a CSR"),
    };
    let (pinned, _) = haven_agent::pki::join_client(&good.ca_fingerprint).expect("a client");
    let r = pinned.post(format!("https://{leader_addr}/internal/join")).json(&join).send().await.expect("an answer");
    assert_eq!(r.status().as_u16(), 403);
    let text = r.text().await.unwrap_or_default();
    assert!(text.contains("used up") && !text.contains(&good.token), "{text}");
    assert_eq!(lab.node_list(0).await.map(|n| n.len()), Some(4), "node5 was not admitted");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_removed_node_cannot_reconnect() {
    let mut lab = Lab::start(3).await;
    let scratch = lab.dir().join("scratch");
    let leader_id = lab.leader_seen_by(0).await.expect("a leader");
    let leader = leader_index(&lab, leader_id);
    let (removed, via) = {
        let followers: Vec<usize> = (0..3).filter(|i| *i != leader).collect();
        (followers[0], followers[1])
    };
    let name = lab.name(removed).to_string();
    let identity = scratch.join(&name);
    let client = member_identity(&lab, removed, &identity);
    // The control: before the removal, its certificate renews its own lease.
    let leader_addr = lab.node(leader).addr.clone();
    let hb = serde_json::json!({"node": name});
    let r = client.post(format!("https://{leader_addr}/internal/heartbeat")).json(&hb).send().await;
    assert_eq!(r.map(|r| r.status().as_u16()).ok(), Some(200), "{name}'s renewal before its removal");

    lab.kill_node(removed);
    // Down as the leader sees it too (it decides the removal; a follower may apply the
    // change first).
    lab.wait_until(&format!("{name} down on the leader and on {}", lab.name(via)), 20, async || {
        for i in [leader, via] {
            let down = lab.node_list(i).await;
            if !down.is_some_and(|n| n.iter().any(|n| n.node.name == name && n.status == "down")) {
                return false;
            }
        }
        true
    })
    .await;
    lab.client(via).remove_node(&name).await.expect("the removal");
    let history = lab.client(via).history(&HistoryQuery { node: Some(name.clone()), ..Default::default() }).await;
    let history = history.expect("history");
    assert!(history.iter().any(|e| e.kind == "node-removed" && e.message.contains("is revoked")), "{history:?}");
    // The removal was forwarded to the leader: its audit entry names the client it came
    // from, and the member that passed it on.
    let all = lab.client(via).history(&HistoryQuery { limit: Some(1000), ..Default::default() }).await;
    let audit = all
        .expect("history")
        .into_iter()
        .find(|e| e.kind == "api-request" && e.message.starts_with(&format!("DELETE /api/v1/nodes/{name} from ")));
    let audit = audit.expect("the removal's audit entry");
    if leader != via {
        assert!(audit.message.contains(&format!(" via {}:", lab.name(via))), "{audit:?}");
    }

    // Its certificate is refused by every remaining node, at once.
    for i in (0..3).filter(|i| *i != removed) {
        let addr = lab.node(i).addr.clone();
        lab.wait_until(&format!("{} refusing {name}'s certificate", lab.name(i)), 10, async || {
            let hb = serde_json::json!({"node": name});
            match client.post(format!("https://{addr}/internal/heartbeat")).json(&hb).send().await {
                Err(_) => true,
                Ok(r) => r.status().as_u16() == 403,
            }
        })
        .await;
    }
    // Started again with its old state and certificate, it gets no lease and never rejoins.
    lab.restart_node(removed).await;
    lab.hold_for(&format!("{name} without a lease"), 5.0, async || match lab.status(removed).await {
        Some(s) if s.lease_valid => Err(format!("{name} has a lease again: {s:?}")),
        _ => Ok(()),
    })
    .await;
    let nodes = lab.node_list(via).await.expect("nodes");
    assert!(nodes.iter().all(|n| n.node.name != name), "{nodes:?}");
}
