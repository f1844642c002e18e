//! `/api/v1/nodes`: the cluster's nodes with the groups they own, pausing and resuming one,
//! its fence agent, and removing a node that is down (done by the leader: it changes the
//! voter set).

use std::sync::Arc;

use axum::Json;
use axum::extract::State as AxState;
use haven_api::{ErrorBody, NodeView};
use haven_model::{FenceConfig, Node};
use haven_state::{Command, Reply, State};

use super::cluster::require_cluster;
use super::{ApiError, ApiResult, Body, Name};
use crate::forward::{Failure, Forward, Wait};
use crate::{Agent, SubmitError};

pub(super) fn node_view(agent: &Agent, state: &State, n: &Node) -> NodeView {
    NodeView {
        node: n.clone(),
        status: n.status().to_string(),
        groups: state
            .groups
            .values()
            .filter(|g| g.owner.as_deref() == Some(&n.name))
            .map(|g| g.spec.name.clone())
            .collect(),
        leader: agent.db.leader().map(|(id, _)| id) == Some(n.id),
        fence: state.fencing.get(&n.name).map(FenceConfig::redacted),
        fence_status: state.fence_status.get(&n.name).cloned(),
    }
}

#[utoipa::path(put, path = "/api/v1/nodes/{name}/fence", tag = "nodes", request_body = FenceConfig,
    responses((status = 200, body = NodeView), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub(super) async fn set_fence(
    AxState(agent): AxState<Arc<Agent>>,
    Name(name): Name,
    Body(config): Body<FenceConfig>,
) -> ApiResult<NodeView> {
    config.validate().map_err(|e| SubmitError::Refused(e.into()))?;
    agent.submit("operator", Command::SetFence { node: name.clone(), config: Some(config) }).await?;
    get_node(AxState(agent), Name(name)).await
}

#[utoipa::path(delete, path = "/api/v1/nodes/{name}/fence", tag = "nodes",
    responses((status = 200, body = NodeView), (status = 404, body = ErrorBody)))]
pub(super) async fn remove_fence(AxState(agent): AxState<Arc<Agent>>, Name(name): Name) -> ApiResult<NodeView> {
    agent.submit("operator", Command::SetFence { node: name.clone(), config: None }).await?;
    get_node(AxState(agent), Name(name)).await
}

#[utoipa::path(get, path = "/api/v1/nodes", tag = "nodes", responses((status = 200, body = [NodeView])))]
pub(super) async fn list_nodes(AxState(agent): AxState<Arc<Agent>>) -> ApiResult<Vec<NodeView>> {
    let state = agent.db.state();
    require_cluster(&state)?;
    Ok(Json(state.nodes.values().map(|n| node_view(&agent, &state, n)).collect()))
}

#[utoipa::path(get, path = "/api/v1/nodes/{name}", tag = "nodes", responses((status = 200, body = NodeView), (status = 404, body = ErrorBody)))]
pub(super) async fn get_node(AxState(agent): AxState<Arc<Agent>>, Name(name): Name) -> ApiResult<NodeView> {
    let state = agent.db.state();
    let n = state
        .nodes
        .get(&name)
        .ok_or_else(|| SubmitError::Refused(haven_state::StateError::not_found("node", &name)))?;
    Ok(Json(node_view(&agent, &state, n)))
}

/// Asks for a node's certificate to be replaced: its agent renews it with a new key, and
/// the old certificate is revoked (see `crate::certs`).
#[utoipa::path(post, path = "/api/v1/nodes/{name}/renew-certificate", tag = "nodes",
    responses((status = 200, body = haven_api::NodeCertView), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub(super) async fn renew_certificate(
    AxState(agent): AxState<Arc<Agent>>,
    Name(name): Name,
) -> ApiResult<haven_api::NodeCertView> {
    agent.submit("operator", Command::RenewNodeCert { node: name.clone() }).await?;
    let status = super::cluster::ca_status_of(&agent, &agent.db.state());
    status
        .nodes
        .into_iter()
        .find(|n| n.node == name)
        // (This node may not have applied the commit yet: the answer says what it did.)
        .map(|n| Json(haven_api::NodeCertView { renewal_pending: true, ..n }))
        .ok_or_else(|| SubmitError::Refused(haven_state::StateError::not_found("node", &name)).into())
}

pub(super) async fn node_reply(agent: &Agent, cmd: Command) -> ApiResult<NodeView> {
    let reply = agent.submit("operator", cmd).await?;
    let state = agent.db.state();
    match reply {
        Reply::Node(n) => Ok(Json(node_view(agent, &state, &n))),
        _ => Err(ApiError::new(500, "internal", "unexpected reply")),
    }
}

#[utoipa::path(post, path = "/api/v1/nodes/{name}/pause", tag = "nodes", responses((status = 200, body = NodeView), (status = 404, body = ErrorBody)))]
pub(super) async fn pause_node(AxState(agent): AxState<Arc<Agent>>, Name(name): Name) -> ApiResult<NodeView> {
    node_reply(&agent, Command::SetNodePaused { name, paused: true }).await
}

#[utoipa::path(post, path = "/api/v1/nodes/{name}/resume", tag = "nodes", responses((status = 200, body = NodeView), (status = 404, body = ErrorBody)))]
pub(super) async fn resume_node(AxState(agent): AxState<Arc<Agent>>, Name(name): Name) -> ApiResult<NodeView> {
    node_reply(&agent, Command::SetNodePaused { name, paused: false }).await
}

#[utoipa::path(delete, path = "/api/v1/nodes/{name}", tag = "nodes",
    responses((status = 200, body = haven_api::Removed), (status = 409, body = ErrorBody), (status = 502, body = ErrorBody)))]
pub(super) async fn remove_node(
    AxState(agent): AxState<Arc<Agent>>,
    Name(name): Name,
) -> ApiResult<haven_api::Removed> {
    let state = agent.db.state();
    let node = state
        .nodes
        .get(&name)
        .ok_or_else(|| SubmitError::Refused(haven_state::StateError::not_found("node", &name)))?;
    if node.is_up() {
        return Err(ApiError::new(
            409,
            "conflict",
            format!("node {name:?} is up; stop its agent (after `haven node pause {name}`) before removing it"),
        ));
    }
    let id = node.id;
    // The voter set can only change on the leader: let it do the whole removal.
    if !agent.is_leader() {
        let addr = crate::forward::leader_addr(&agent)?;
        let path = format!("/api/v1/nodes/{}", crate::requests::percent_encode(&name));
        let http = agent.peers.get();
        let leader = Forward::new(&http, "the leader", &addr, Wait::Long);
        return leader.delete(&path).await.map(Json).map_err(Failure::into_api_error);
    }
    agent.submit("operator", Command::RemoveNode { name: name.clone() }).await?;
    let voters: std::collections::BTreeSet<u64> = {
        let m = agent.db.raft().metrics().borrow().clone();
        m.membership_config.membership().voter_ids().filter(|v| *v != id).collect()
    };
    agent.db.change_membership(voters).await.map_err(|e| ApiError::new(503, "unavailable", e.to_string()))?;
    Ok(Json(haven_api::Removed { removed: name }))
}
