//! Internal routes between agents (`/internal/*`): forwarded writes, lease renewals and
//! joins, plus the client side of each. Raft's own RPCs are served by `haven_raft::router`.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::State as AxState;
use axum::routing::post;
use axum::{Json, Router};
use haven_api::{Heartbeat, HeartbeatReply, PeerJoin};
use haven_model::{Node, NodeLiveness, NodeRole};
use haven_raft::WriteError;
use haven_state::{Command, Request, Response};

use crate::api::{ApiError, Body};
use crate::{Agent, SubmitError};

/// Largest forwarded write (`/internal/write`): one command as the leader would commit it,
/// within the 512 KiB an entry may have in an AppendEntries batch (`haven_raft::network::APPEND_LIMIT`).
pub const FORWARD_LIMIT: usize = 512 * 1024;

/// Most voters a cluster has; later nodes join as learners.
pub const MAX_VOTERS: usize = 5;

pub fn router(agent: Arc<Agent>) -> Router {
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
    Body(req): Body<Request, FORWARD_LIMIT>,
) -> Result<Json<Response>, ApiError> {
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
    Body(hb): Body<Heartbeat>,
) -> Result<Json<HeartbeatReply>, ApiError> {
    match crate::lease::grant(&agent, &hb).await {
        Ok(r) => Ok(Json(r)),
        Err(e) => Err(ApiError::new(503, "not_leader", e.to_string())),
    }
}

/// Why a forwarded write got no answer from the state machine, by what it says about the
/// request.
pub enum ForwardError {
    /// Surely not applied: nothing reached the leader, or it answered that it is not one.
    NotSent(String),
    /// It may have been applied: the exchange broke after the request was sent.
    MaybeSent(String),
    /// The leader proposed it and could not commit it in time (its 504).
    Unknown(String),
}

pub async fn forward_write(client: &reqwest::Client, addr: &str, req: &Request) -> Result<Response, ForwardError> {
    let url = format!("http://{addr}/internal/write");
    let resp = client.post(&url).timeout(Duration::from_secs(10)).json(req).send().await.map_err(|e| {
        let m = format!("leader at {addr} unreachable: {e}");
        if e.is_connect() { ForwardError::NotSent(m) } else { ForwardError::MaybeSent(m) }
    })?;
    let status = resp.status().as_u16();
    if status == 200 {
        // Committed; a retry with the same id reads the same outcome back.
        return resp
            .json::<Response>()
            .await
            .map_err(|e| ForwardError::MaybeSent(format!("bad answer from {addr}: {e}")));
    }
    let body: Option<haven_api::ErrorBody> = resp.json().await.ok();
    let message = body.map(|b| b.error.message).unwrap_or_else(|| format!("HTTP {status} from {url}"));
    match status {
        504 => Err(ForwardError::Unknown(message)),
        // 421 not the leader; other 4xx: the request was refused before it was proposed.
        400..=499 => Err(ForwardError::NotSent(message)),
        _ => Err(ForwardError::MaybeSent(message)),
    }
}

pub async fn send_heartbeat(
    client: &reqwest::Client,
    addr: &str,
    hb: &Heartbeat,
    timeout: Duration,
) -> Option<HeartbeatReply> {
    let resp = client.post(format!("http://{addr}/internal/heartbeat")).timeout(timeout).json(hb).send().await.ok()?;
    if !resp.status().is_success() {
        return None;
    }
    resp.json().await.ok()
}

/// A node asks to join: only the leader admits it (as a learner that has caught up, then a
/// voter while there are fewer than five), then records it in the cluster state.
async fn join(AxState(agent): AxState<Arc<Agent>>, Body(j): Body<PeerJoin>) -> Result<Json<Node>, ApiError> {
    let state = agent.db.state();
    let Some(cluster) = &state.cluster else {
        return Err(ApiError::new(409, "not_initialized", "this node is not in an initialized cluster"));
    };
    if !agent.is_leader() {
        let Some((_, addr)) = agent.db.leader() else {
            return Err(ApiError::new(503, "unavailable", "no leader is elected right now; retry in a moment"));
        };
        return forward_join(&agent.peers, &addr, &j).await.map(Json);
    }
    if j.token != cluster.join_token {
        return Err(ApiError::new(
            403,
            "bad_token",
            "the join token is wrong; get the right one with `haven cluster token` on a member",
        ));
    }
    haven_model::validate_name("name", &j.name).map_err(|e| ApiError::from(SubmitError::Refused(e.into())))?;
    if let Some(existing) = state.nodes.get(&j.name) {
        if existing.id == j.id {
            // The same node asking again (e.g. its first attempt timed out): fine.
            return Ok(Json(existing.clone()));
        }
        return Err(SubmitError::Refused(haven_state::StateError::exists("node", &j.name)).into());
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
    match agent.submit("operator", Command::AddNode { node: node.clone() }).await {
        Ok(_) => Ok(Json(node)),
        Err(e) => Err(e.into()),
    }
}

pub async fn forward_join(client: &reqwest::Client, addr: &str, j: &PeerJoin) -> Result<Node, ApiError> {
    let url = format!("http://{addr}/internal/join");
    let resp = client.post(&url).json(j).send().await.map_err(|e| {
        ApiError::new(
            502,
            "unavailable",
            format!("cannot reach {addr} to join: {e}; check the address and that its agent runs"),
        )
    })?;
    let status = resp.status().as_u16();
    if status == 200 {
        return resp
            .json()
            .await
            .map_err(|e| ApiError::new(502, "unavailable", format!("bad answer from {addr}: {e}")));
    }
    match resp.json::<haven_api::ErrorBody>().await {
        Ok(b) => Err(ApiError { status, code: b.error.code, message: b.error.message, field: b.error.field }),
        Err(_) => Err(ApiError::new(502, "unavailable", format!("HTTP {status} from {url}"))),
    }
}
