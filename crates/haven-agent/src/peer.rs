//! Internal routes between agents (`/internal/*`): forwarded writes, lease renewals and
//! joins, plus the client side of each. Raft's own RPCs are served by `haven_raft::router`.
//!
//! Every route but the join is reached only with a verified, unrevoked node certificate
//! (`listener::gate`), and binds what it does to it: a lease renewal is granted only to
//! the node the certificate names, and a forwarded write's author is what the certificate
//! vouches for. A join is authenticated by its token instead, checked and used up in the
//! same state change that admits the node (`Command::JoinNode`).

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use axum::Extension;
use axum::extract::State as AxState;
use axum::routing::post;
use axum::{Json, Router};
use haven_api::{Heartbeat, HeartbeatReply, PeerJoin, PeerJoined};
use haven_model::{Node, NodeLiveness, NodeRole};
use haven_raft::WriteError;
use haven_state::{Command, Request, Response};

use crate::api::{ApiError, Body};
use crate::forward::{Failure, Forward, Wait};
use crate::pki::PeerCert;
use crate::{Agent, SubmitError};

/// Largest forwarded write (`/internal/write`): one command as the leader would commit it,
/// within the 512 KiB an entry may have in an AppendEntries batch (`haven_raft::network::APPEND_LIMIT`).
const FORWARD_LIMIT: usize = 512 * 1024;

/// Most voters a cluster has; later nodes join as learners.
const MAX_VOTERS: usize = 5;

pub(crate) fn router(agent: Arc<Agent>) -> Router {
    Router::new()
        .route("/internal/write", post(write))
        .route("/internal/heartbeat", post(heartbeat))
        .route("/internal/join", post(join))
        .with_state(agent)
}

/// Commits a request forwarded by another node; this node must be the leader. A commit
/// timeout is answered 504 (outcome unknown), never as a refusal.
async fn write(
    AxState(agent): AxState<Arc<Agent>>,
    Extension(peer): Extension<PeerCert>,
    Body(mut req): Body<Request, FORWARD_LIMIT>,
) -> Result<Json<Response>, ApiError> {
    // The author is what the sender's certificate vouches for: a node writes as itself, or
    // passes on a write it took from someone else ("operator via node2"); and the time is
    // the leader's.
    if req.by != peer.name {
        req.by = format!("{} via {}", req.by, peer.name);
    }
    req.at = crate::now_ms();
    match agent.db.write(req.clone()).await {
        Ok(resp) => Ok(Json(resp)),
        Err(e @ WriteError::ForwardToLeader { .. }) => Err(ApiError::new(421, "not_leader", e.to_string())),
        Err(WriteError::NoQuorum(m)) => Err(SubmitError::NoQuorum(m).into()),
        Err(e @ WriteError::CommitTimeout(_)) => {
            let request_id = req.request_id.unwrap_or_default();
            Err(SubmitError::Unknown { request_id, message: e.to_string() }.into())
        }
        Err(WriteError::Fatal(m)) => Err(SubmitError::Unavailable(m).into()),
    }
}

async fn heartbeat(
    AxState(agent): AxState<Arc<Agent>>,
    Extension(peer): Extension<PeerCert>,
    Body(hb): Body<Heartbeat>,
) -> Result<Json<HeartbeatReply>, ApiError> {
    // A renewal is bound to the sender's certificate: no node renews another's lease.
    if hb.node != peer.name {
        return Err(ApiError::new(
            403,
            "wrong_node",
            format!(
                "{peer} cannot renew the lease of node {:?}: a node renews only its own lease",
                haven_api::body::shorten(&hb.node, 64)
            ),
        ));
    }
    match crate::lease::grant(&agent, &hb).await {
        Ok(r) => Ok(Json(r)),
        Err(e) => Err(ApiError::new(503, "not_leader", e.to_string())),
    }
}

/// Why a forwarded write got no answer from the state machine, by what it says about the
/// request.
pub(crate) enum ForwardError {
    /// Surely not applied, and worth another try: nothing reached the leader, or it answered
    /// that it is not one.
    NotSent(String),
    /// It may have been applied: the exchange broke after the request was sent.
    MaybeSent(String),
    /// The leader proposed it and could not commit it in time (its 504).
    Unknown(String),
    /// Not applied, and not worth another try: the leader refused the request before
    /// proposing it (a 4xx such as 413, the body too large for it). The answer as it is.
    Rejected(SubmitError),
}

/// Sends `req` to the leader at `addr` to commit (`/internal/write`).
pub(crate) async fn forward_write(http: &reqwest::Client, addr: &str, req: &Request) -> Result<Response, ForwardError> {
    let leader = Forward::new(http, "the leader", addr, Wait::Commit);
    // Committed: a retry with the same id reads the same outcome back.
    leader.post("/internal/write", req).await.map_err(|f| match f {
        Failure::NotSent(m) => ForwardError::NotSent(m),
        Failure::MaybeSent { message, .. } => ForwardError::MaybeSent(message),
        Failure::Answered(e) => match e.status {
            504 => ForwardError::Unknown(e.message),
            421 => ForwardError::NotSent(e.message),
            400..=499 => {
                ForwardError::Rejected(SubmitError::Rejected { status: e.status, code: e.code, message: e.message })
            }
            // 503 (no quorum, its database stopped) or a 502 from something else there.
            _ => ForwardError::MaybeSent(e.message),
        },
    })
}

/// Renews this node's lease with the leader at `addr`; `None` without a granted renewal.
pub async fn send_heartbeat(
    http: &reqwest::Client,
    addr: &str,
    hb: &Heartbeat,
    timeout: Duration,
) -> Option<HeartbeatReply> {
    Forward::new(http, "the leader", addr, Wait::Renewal(timeout)).post("/internal/heartbeat", hb).await.ok()
}

/// A node asks to join: only the leader admits it (as a learner that has caught up, then a
/// voter while there are fewer than five), then records it, its token's use and its
/// certificate's serial in one state change, and answers with its certificate (and, for a
/// voter, the CA key: any voter may lead and sign the next join).
async fn join(AxState(agent): AxState<Arc<Agent>>, Body(j): Body<PeerJoin>) -> Result<Json<PeerJoined>, ApiError> {
    let state = agent.db.state();
    if state.cluster.is_none() {
        return Err(ApiError::new(409, "not_initialized", "this node is not in an initialized cluster"));
    }
    if !agent.is_leader() {
        let addr = crate::forward::leader_addr(&agent)?;
        return forward_join(&agent.peers.get(), "the leader", &addr, &j).await.map(Json);
    }
    // One join at a time on this leader: the token check below and its use in `JoinNode`
    // see the same state (the state machine checks it again at commit).
    let _one_at_a_time = agent.join_lock.lock().await;
    let state = agent.db.state();
    let token_hash = crate::pki::sha256_hex(j.token.as_bytes());
    haven_state::pki::check_join_token(&state, &token_hash, crate::now_ms())
        .map_err(|m| ApiError::new(403, "bad_token", m))?;
    haven_model::validate_name("name", &j.name).map_err(|e| ApiError::from(SubmitError::Refused(e.into())))?;
    if state.nodes.contains_key(&j.name) {
        return Err(ApiError::new(
            409,
            "already_exists",
            format!(
                "a node named {:?} is already a member; give the new node another name, or remove the old one first \
                 (`haven node remove {}`)",
                j.name, j.name
            ),
        ));
    }
    if let Some(other) = state.node_by_id(j.id) {
        return Err(ApiError::new(
            409,
            "conflict",
            format!(
                "node id {} is already used by node {:?}; give the new node another id in its config",
                j.id, other.name
            ),
        ));
    }
    let ca = agent.pki.ca().map_err(|e| ApiError::new(503, "unavailable", e.to_string()))?;
    let (certificate, serial) =
        ca.issue(&j.csr, &j.name, j.id, &j.address).map_err(|e| ApiError::new(400, "bad_request", e.to_string()))?;
    // Until it has its certificate, the joiner serves one over the key of its request.
    let _joiner = agent.pki.expect_joiner(&j.csr).map_err(|e| ApiError::new(400, "bad_request", e.to_string()))?;
    agent
        .db
        .add_learner(j.id, j.address.clone())
        .await
        .map_err(|e| ApiError::new(503, "unavailable", e.to_string()))?;
    let voters: BTreeSet<u64> = {
        let m = agent.db.raft().metrics().borrow().clone();
        m.membership_config.membership().voter_ids().collect()
    };
    let role = if j.witness || voters.len() < MAX_VOTERS {
        let mut v = voters.clone();
        v.insert(j.id);
        agent.db.change_membership(v).await.map_err(|e| ApiError::new(503, "unavailable", e.to_string()))?;
        if j.witness { NodeRole::Witness } else { NodeRole::Voter }
    } else {
        NodeRole::Learner
    };
    let node = Node {
        id: j.id,
        name: j.name.clone(),
        address: j.address.clone(),
        role,
        liveness: NodeLiveness::Up,
        paused: false,
        capacity: j.capacity,
        since: crate::now_ms(),
    };
    let cert_ca = Some(ca.fingerprint());
    let command = Command::JoinNode { node: node.clone(), token_hash, cert_serial: serial, cert_ca };
    agent.submit(&j.name, command).await?;
    let ca_key = if role == NodeRole::Learner { None } else { ca.key_pem() };
    let trusted_cas = agent.pki.trusted_pems().into_iter().skip(1).collect();
    Ok(Json(PeerJoined { node, certificate, ca_certificate: ca.cert_pem().to_string(), ca_key, trusted_cas }))
}

/// Asks the member at `addr` (named `to` in errors) to admit `j` with `http` (a member's
/// peer client, or a joiner's pinned one); a member forwards it to the leader.
pub(crate) async fn forward_join(
    http: &reqwest::Client,
    to: &str,
    addr: &str,
    j: &PeerJoin,
) -> Result<PeerJoined, ApiError> {
    Forward::new(http, to, addr, Wait::Long).post("/internal/join", j).await.map_err(Failure::into_api_error)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use haven_model::GroupSpec;
    use haven_state::{Command, Request};

    use super::{ForwardError, forward_write};
    use crate::{AgentConfig, SubmitError};

    /// A real agent (its PKI founded, not in a cluster) on a loopback port: its
    /// `/internal/write` refuses a write from a peer with a certificate of its CA, as a
    /// leader would refuse one, by the route's own rules; without a certificate, or over
    /// plain HTTP, the route is not reached at all.
    #[tokio::test]
    async fn a_forwarded_write_too_large_for_the_leader_is_refused_at_once_and_a_not_leader_is_retried() {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let port = std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).expect("a free port").port();
        let addr = format!("127.0.0.1:{port}");
        let own = crate::pki::Pki::open(&dir.path().join("pki")).expect("the agent's PKI");
        own.found("t", "n1", 1, &addr).expect("a CA and n1's certificate");
        let peer_dir = dir.path().join("peer");
        own.issue_identity(&peer_dir, "n2", 2, "127.0.0.1:1").expect("n2's certificate");
        let http =
            std::sync::Arc::new(crate::pki::Pki::open(&peer_dir).expect("n2's PKI")).peer_client().expect("a client");
        let config = AgentConfig {
            id: 1,
            name: "n1".into(),
            listen: addr.clone(),
            advertise: None,
            state_dir: dir.path().to_path_buf(),
            timing: Default::default(),
            capacity: None,
            witness: true,
            plain_http_api: false,
        };
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let agent = tokio::spawn(crate::run(config, async move {
            let _ = stopped.await;
        }));
        let small = Request::new(1, "operator", Command::CreateGroup { spec: GroupSpec::new("g".to_string()) });
        let mut big = small.clone();
        big.by = "x".repeat(super::FORWARD_LIMIT + 1);

        // Not the leader (421): worth another try. Polled until the agent listens.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        loop {
            match forward_write(&http, &addr, &small).await {
                Err(ForwardError::NotSent(m)) if m.starts_with("cannot reach") => {}
                Err(ForwardError::NotSent(m)) => {
                    assert!(m.contains("leader"), "{m}");
                    break;
                }
                Err(e) => panic!("a write to a node that is not the leader: {}", describe(&e)),
                Ok(r) => panic!("a node outside any cluster committed a write: {r:?}"),
            }
            assert!(tokio::time::Instant::now() < deadline, "the agent at {addr} never listened");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        // Too large (413): the answer, not retried until a deadline.
        let started = tokio::time::Instant::now();
        match forward_write(&http, &addr, &big).await {
            Err(ForwardError::Rejected(SubmitError::Rejected { status, code, message })) => {
                assert_eq!((status, code.as_str()), (413, "too_large"), "{message}");
            }
            Err(e) => panic!("an oversized forwarded write: {}", describe(&e)),
            Ok(r) => panic!("an oversized forwarded write was committed: {r:?}"),
        }
        assert!(started.elapsed() < Duration::from_secs(5), "took {:?}", started.elapsed());
        // Plain HTTP (even on loopback) and TLS without a certificate never reach the route.
        let plain = reqwest::Client::new().post(format!("http://{addr}/internal/write")).json(&small).send().await;
        assert_eq!(plain.map(|r| r.status().as_u16()).ok(), Some(403));
        let (anonymous, _) = crate::pki::join_client(&own.ca_fingerprint().expect("a CA")).expect("a client");
        let r = anonymous.post(format!("https://{addr}/internal/write")).json(&small).send().await.expect("an answer");
        assert_eq!(r.status().as_u16(), 401);
        let _ = stop.send(());
        let _ = tokio::time::timeout(Duration::from_secs(20), agent).await;
    }

    fn describe(e: &ForwardError) -> String {
        match e {
            ForwardError::NotSent(m) => format!("not sent: {m}"),
            ForwardError::MaybeSent(m) => format!("maybe sent: {m}"),
            ForwardError::Unknown(m) => format!("unknown: {m}"),
            ForwardError::Rejected(e) => format!("rejected: {e}"),
        }
    }
}
