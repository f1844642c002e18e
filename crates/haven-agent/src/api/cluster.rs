//! `/api/v1/cluster`: this agent's view of the cluster, founding one (`init`), joining one
//! (forwarded to a member, which forwards it to the leader) and the join token.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::Json;
use axum::extract::State as AxState;
use haven_api::{ClusterStatus, ErrorBody, InitRequest, InitResponse, JoinRequest, NodeIdentity, NodeView, PeerJoin};
use haven_model::{Node, NodeLiveness, NodeRole};
use haven_state::{Command, State};

use super::nodes::node_view;
use super::{ApiError, ApiResult, Body};
use crate::{Agent, SubmitError, now_ms};

pub(super) fn require_cluster(state: &State) -> Result<(), ApiError> {
    if state.cluster.is_none() {
        return Err(ApiError::new(
            409,
            "not_initialized",
            "this node is not part of a cluster yet; run `haven cluster init` here or `haven cluster join <address> --token <token>`",
        ));
    }
    Ok(())
}

#[utoipa::path(get, path = "/api/v1/cluster", tag = "cluster", responses((status = 200, body = ClusterStatus)))]
pub(super) async fn cluster_status(AxState(agent): AxState<Arc<Agent>>) -> Json<ClusterStatus> {
    let state = agent.db.state();
    let m = agent.db.raft().metrics().borrow().clone();
    let membership = m.membership_config.membership();
    let leader = agent.db.leader().map(|(id, address)| NodeIdentity {
        id,
        name: state.node_by_id(id).map(|n| n.name.clone()),
        address,
    });
    Json(ClusterStatus {
        name: state.cluster.as_ref().map(|c| c.name.clone()),
        this_node: NodeIdentity {
            id: agent.config.id,
            name: Some(agent.config.name.clone()),
            address: agent.config.advertise(),
        },
        leader,
        term: m.current_term,
        voters: membership.voter_ids().collect(),
        learners: membership.learner_ids().collect(),
        lease_valid: agent.lease.valid(),
        applied_index: m.last_applied.map(|l| l.index).unwrap_or(0),
    })
}

#[utoipa::path(post, path = "/api/v1/cluster/init", tag = "cluster", request_body = InitRequest,
    responses((status = 200, body = InitResponse), (status = 409, body = ErrorBody)))]
pub(super) async fn cluster_init(
    AxState(agent): AxState<Arc<Agent>>,
    Body(req): Body<InitRequest>,
) -> ApiResult<InitResponse> {
    if agent.config.witness {
        return Err(ApiError::new(
            409,
            "conflict",
            "a witness cannot found a cluster; run `haven cluster init` on a data node, then join the witness to it",
        ));
    }
    let name = req.name.unwrap_or_else(|| "haven".to_string());
    haven_model::validate_name("name", &name).map_err(|e| SubmitError::Refused(e.into()))?;
    if agent.db.is_initialized() {
        return Err(ApiError::new(
            409,
            "conflict",
            "this node already belongs to a cluster; to found a new one, stop the agent and empty its state_dir first",
        ));
    }
    let mut members = BTreeMap::new();
    members.insert(agent.config.id, haven_raft::BasicNode { addr: agent.config.advertise() });
    agent.db.initialize(members).await.map_err(|e| ApiError::new(409, "conflict", e.to_string()))?;
    let join_token = random_token()?;
    let node = Node {
        id: agent.config.id,
        name: agent.config.name.clone(),
        address: agent.config.advertise(),
        role: NodeRole::Voter,
        liveness: NodeLiveness::Up,
        paused: false,
        capacity: agent.config.capacity(),
        since: now_ms(),
    };
    // The first admin token commits with the cluster, in one entry: there is no moment in
    // which the cluster exists and nobody may change it.
    let (admin_token, token) = super::tokens::mint(FIRST_TOKEN, haven_state::Role::Admin, None)?;
    let init = Command::InitCluster { name: name.clone(), join_token: join_token.clone(), node };
    let reply =
        agent.submit("operator", Command::Batch { commands: vec![init, Command::CreateToken { token }] }).await?;
    if let haven_state::Reply::Batch(replies) = reply {
        replies.into_iter().try_for_each(|r| r.map(drop)).map_err(SubmitError::Refused)?;
    }
    Ok(Json(InitResponse { name, join_token, admin_token }))
}

/// The name of the admin token `cluster init` creates.
pub(super) const FIRST_TOKEN: &str = "admin";

fn random_token() -> Result<String, ApiError> {
    let mut bytes = [0u8; 16];
    use std::io::Read;
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut bytes))
        .map_err(|e| ApiError::new(500, "internal", format!("cannot read /dev/urandom for a join token: {e}")))?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

#[utoipa::path(post, path = "/api/v1/cluster/join", tag = "cluster", request_body = JoinRequest,
    responses((status = 200, body = NodeView), (status = 403, body = ErrorBody), (status = 502, body = ErrorBody)))]
pub(super) async fn cluster_join(
    AxState(agent): AxState<Arc<Agent>>,
    Body(req): Body<JoinRequest>,
) -> ApiResult<NodeView> {
    if agent.db.state().cluster.is_some() {
        return Err(ApiError::new(409, "conflict", "this node is already a member of a cluster"));
    }
    let address = req.address.trim_start_matches("http://").trim_end_matches('/').to_string();
    let join = PeerJoin {
        id: agent.config.id,
        name: agent.config.name.clone(),
        address: agent.config.advertise(),
        token: req.token,
        capacity: agent.config.capacity(),
        witness: agent.config.witness,
    };
    let node = crate::peer::forward_join(&agent.peers, "the cluster member", &address, &join).await?;
    // Wait (bounded) until this node has received the state that lists it.
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(30);
    while !agent.db.state().nodes.contains_key(&node.name) {
        if tokio::time::Instant::now() >= deadline {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    Ok(Json(node_view(&agent, &agent.db.state(), &node)))
}

#[utoipa::path(get, path = "/api/v1/cluster/token", tag = "cluster", responses((status = 200, body = haven_api::JoinToken)))]
pub(super) async fn cluster_token(AxState(agent): AxState<Arc<Agent>>) -> ApiResult<haven_api::JoinToken> {
    let state = agent.db.state();
    require_cluster(&state)?;
    Ok(Json(haven_api::JoinToken {
        join_token: state.cluster.as_ref().map(|c| c.join_token.clone()).unwrap_or_default(),
    }))
}
