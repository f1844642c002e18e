//! Rotating the cluster CA and renewing a node's certificate, on a running cluster (real
//! agents, real TLS, loopback), as an operator would with the CLI: `haven cluster ca
//! rotate` makes a new CA and every node renews its certificate by itself while a resource
//! keeps running where it is; a client pinning either fingerprint keeps working until the
//! old CA is retired; a node can join mid-rotation; the old certificates are revoked; after
//! `retire` a certificate of the old CA and a client pinning it are refused; `haven node
//! renew-cert` replaces one node's certificate and revokes the old one; a node restarted
//! afterwards comes back with what it stored.

mod common;

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use common::Lab;
use common::stints;
use haven_agent::pki::Pki;
use haven_api::{CaStatus, Client};

/// A copy of node `i`'s PKI directory (its certificate, key and CA; the CA key for a
/// voter), taken while the agent runs.
fn copy_pki(lab: &Lab, i: usize, into: &Path) {
    let from = lab.node(i).state_dir().join("pki");
    std::fs::create_dir_all(into).expect("a directory");
    for entry in std::fs::read_dir(&from).expect("the pki directory").flatten() {
        std::fs::copy(entry.path(), into.join(entry.file_name())).expect("copy");
    }
}

fn peer_client(dir: &Path) -> reqwest::Client {
    Arc::new(Pki::open(dir).expect("the PKI files")).peer_client().expect("a peer client")
}

/// Whether a peer client is let in: its lease renewal as `node` reached the route (200, or a
/// follower's not_leader), not refused in the handshake or with 403.
async fn let_in(client: &reqwest::Client, addr: &str, node: &str) -> bool {
    let hb = serde_json::json!({ "node": node });
    match client.post(format!("https://{addr}/internal/heartbeat")).json(&hb).send().await {
        // Let in: the handshake passed and the route took it (a follower sends renewals on).
        Ok(r) if r.status().as_u16() == 200 => true,
        Ok(r) if r.status().as_u16() == 503 => r.text().await.unwrap_or_default().contains("not_leader"),
        Ok(r) => {
            println!("{node} at {addr}: {} {}", r.status(), r.text().await.unwrap_or_default());
            false
        }
        Err(e) => {
            let mut cause: &dyn std::error::Error = &e;
            while let Some(c) = cause.source() {
                cause = c;
            }
            println!("{node} at {addr}: {cause}");
            false
        }
    }
}

/// An API client that trusts the cluster only with CA `fingerprint` pinned.
fn pinned(addr: &str, fingerprint: &str, token: &str) -> Client {
    let timeouts = (haven_api::client::CONNECT_TIMEOUT, Duration::from_secs(10));
    let (https, _) = haven_agent::pki::pinned_client(fingerprint, timeouts).expect("an HTTPS client");
    Client::with_http(&[addr], https, "https").with_token(token)
}

async fn ca_status(lab: &Lab, i: usize) -> CaStatus {
    serde_json::from_value(lab.cli_json(i, &["cluster", "ca", "status"]).await).expect("the status JSON")
}

/// Every member's certificate is from the signing CA, none pending.
async fn all_renewed(lab: &Lab, i: usize, members: usize) -> bool {
    let s = ca_status(lab, i).await;
    s.nodes.len() == members && s.nodes.iter().all(|n| !n.renewal_pending)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_ca_rotates_and_certificates_renew_while_the_cluster_runs() {
    // node4 stays outside until it joins mid-rotation.
    let mut lab = Lab::start_members(4, 3).await;
    let scratch = lab.dir().join("scratch");
    let old_fp = lab.ca_fingerprint.clone();
    let evidence = lab.dir().join("evidence.log");
    lab.create_evidence_group(0, "node1", &evidence).await;
    lab.wait_for("g online on node1", 30, async || lab.online_on(0, "g").await.filter(|n| n == "node1")).await;

    // Identities from before the rotation: node2's certificate, and node1's CA key (to
    // issue a certificate of the old CA later).
    copy_pki(&lab, 1, &scratch.join("node2-old"));
    copy_pki(&lab, 0, &scratch.join("node1-old"));
    let old_ca = Pki::open(&scratch.join("node1-old")).expect("node1's old PKI");
    let forged_dir = scratch.join("old-ca-node3");
    old_ca.issue_identity(&forged_dir, "node3", lab.node(2).id, &lab.node(2).addr).expect("an old-CA identity");
    let node2_old = peer_client(&scratch.join("node2-old"));
    let old_ca_cert = peer_client(&forged_dir);
    let leader_addr = {
        let id = lab.leader_seen_by(0).await.expect("a leader");
        lab.nodes.iter().find(|n| n.id == id).expect("the leader").addr.clone()
    };
    assert!(let_in(&node2_old, &leader_addr, "node2").await, "the control: node2's certificate is let in");

    // The rotation, as the README says.
    let rotated = lab.cli_json(0, &["cluster", "ca", "rotate", "--no-config"]).await;
    let new_fp = rotated["fingerprint"].as_str().expect("the new fingerprint").to_string();
    assert_eq!(rotated["previous"].as_str(), Some(old_fp.as_str()));
    assert_ne!(new_fp, old_fp);
    let again = lab.cli(0).args(["cluster", "ca", "rotate", "--no-config"]).output().expect("the CLI");
    let stderr = String::from_utf8_lossy(&again.stderr);
    assert!(!again.status.success() && stderr.contains("in progress"), "one rotation at a time: {stderr}");
    lab.wait_until("every node renewed under the new CA, as every node sees it", 40, async || {
        for i in 0..3 {
            if !all_renewed(&lab, i, 3).await {
                return false;
            }
        }
        true
    })
    .await;
    let s = ca_status(&lab, 2).await;
    assert!(s.nodes.iter().all(|n| n.ca == new_fp), "{s:?}");
    assert_eq!(
        s.cas.iter().map(|c| (c.fingerprint.clone(), c.signing)).collect::<Vec<_>>(),
        [(new_fp.clone(), true), (old_fp.clone(), false)]
    );

    // Mid-rotation, both pins work against every node: a client pinning the old CA follows
    // the new CA's cross certificate.
    for i in 0..3 {
        for fp in [&old_fp, &new_fp] {
            let c = pinned(&lab.node(i).addr, fp, &lab.token);
            c.cluster_status().await.unwrap_or_else(|e| panic!("{} with CA {fp} pinned: {e}", lab.name(i)));
        }
    }
    // node2's old certificate is revoked (it renewed); the old CA is still trusted.
    lab.wait_until("node2's old certificate refused", 10, async || !let_in(&node2_old, &leader_addr, "node2").await)
        .await;
    assert!(let_in(&old_ca_cert, &leader_addr, "node3").await, "the old CA is trusted until it is retired");

    // A node joins mid-rotation, with a token that names the new CA.
    let token = lab.cli_json(0, &["cluster", "token", "create", "--ttl", "10m"]).await;
    assert_eq!(token["ca_fingerprint"].as_str(), Some(new_fp.as_str()), "tokens name the signing CA");
    let (t, fp) = (token["token"].as_str().expect("a token"), token["ca_fingerprint"].as_str().expect("a fp"));
    lab.client(3).join_cluster(&lab.node(0).addr, t, fp).await.expect("node4 joins mid-rotation");
    lab.nodes[3].client = lab.nodes[3].client.with_token(&lab.token);
    lab.wait_until("4 nodes up on node4", 30, async || lab.sees_all_up(3, 4).await).await;
    assert!(all_renewed(&lab, 3, 4).await, "node4's certificate is from the new CA");

    // Retire the old CA: certificates it signed and clients pinning it are refused.
    let retired = lab.cli_json(1, &["cluster", "ca", "retire", &old_fp]).await;
    assert_eq!(retired["cas"].as_array().map(Vec::len), Some(1), "{retired}");
    lab.wait_until("the old CA's certificate refused everywhere", 10, async || {
        for i in 0..4 {
            if let_in(&old_ca_cert, &lab.node(i).addr, "node3").await {
                return false;
            }
        }
        true
    })
    .await;
    for i in 0..4 {
        let e = pinned(&lab.node(i).addr, &old_fp, &lab.token).cluster_status().await;
        let e = e.expect_err("a client pinning the retired CA");
        assert!(e.to_string().contains("fingerprint"), "{}: {e}", lab.name(i));
        pinned(&lab.node(i).addr, &new_fp, &lab.token).cluster_status().await.expect("the new pin");
    }

    // The lab's CLI pins the new CA from now on, as an operator's config would.
    lab.ca_fingerprint = new_fp.clone();

    // One node's certificate renewed on demand; its old one is revoked.
    copy_pki(&lab, 2, &scratch.join("node3-before"));
    let node3_before = peer_client(&scratch.join("node3-before"));
    assert!(let_in(&node3_before, &leader_addr, "node3").await, "the control: node3's current certificate");
    let serial_before =
        ca_status(&lab, 0).await.nodes.iter().find(|n| n.node == "node3").expect("node3").serial.clone();
    lab.cli_json(0, &["node", "renew-cert", "node3"]).await;
    lab.wait_until("node3 renewed", 30, async || {
        let s = ca_status(&lab, 0).await;
        s.nodes.iter().any(|n| n.node == "node3" && n.serial != serial_before && !n.renewal_pending)
    })
    .await;
    lab.wait_until("node3's previous certificate refused", 10, async || {
        !let_in(&node3_before, &leader_addr, "node3").await
    })
    .await;
    let history = lab.cli_json(0, &["history", "--limit", "200"]).await;
    let kinds: Vec<&str> = history.as_array().expect("events").iter().filter_map(|e| e["kind"].as_str()).collect();
    for kind in ["ca-rotated", "node-cert-renewed", "ca-retired", "node-cert-renewal-requested"] {
        assert!(kinds.contains(&kind), "{kind} in the history: {kinds:?}");
    }

    // A node restarted now comes back with the CA and certificate it stored.
    lab.kill_node(1);
    lab.restart_node(1).await;
    lab.wait_until("node2 back, all 4 up", 30, async || lab.sees_all_up(1, 4).await).await;
    lab.client(1).set_node_paused("node4", true).await.expect("a write through node2");

    // The resource ran on node1 all along, one copy, never restarted.
    let copies = stints(&evidence);
    assert_eq!(copies.len(), 1, "the resource ran once, without a restart: {} copies", copies.len());
    assert_eq!(lab.online_on(0, "g").await.as_deref(), Some("node1"));
}
