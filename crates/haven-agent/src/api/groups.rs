//! `/api/v1/groups`: groups with their aggregate state, and the operator's commands on them
//! (create, update, delete, move, online, offline).

use std::sync::Arc;

use axum::Json;
use axum::extract::State as AxState;
use haven_api::{ErrorBody, GroupView, MoveRequest};
use haven_model::{GroupSpec, GroupUpdate};
use haven_state::{Command, Reply, State};

use super::cluster::require_cluster;
use super::{ApiError, ApiResult, Body, Name};
use crate::{Agent, SubmitError};

fn group_view(state: &State, name: &str) -> Option<GroupView> {
    let g = state.groups.get(name)?;
    Some(GroupView { group: g.clone(), state: state.group_state(name).to_string(), resources: state.start_order(name) })
}

#[utoipa::path(get, path = "/api/v1/groups", tag = "groups", responses((status = 200, body = [GroupView])))]
pub(super) async fn list_groups(AxState(agent): AxState<Arc<Agent>>) -> ApiResult<Vec<GroupView>> {
    let state = agent.db.state();
    require_cluster(&state)?;
    Ok(Json(state.groups.keys().filter_map(|g| group_view(&state, g)).collect()))
}

pub(super) async fn group_reply(agent: &Agent, cmd: Command) -> ApiResult<GroupView> {
    let reply = agent.submit("operator", cmd).await?;
    match reply {
        Reply::Group(g) => {
            // The reply is the group as committed; this node may not have applied it yet
            // (the write may have been forwarded to the leader), so the group part comes
            // from the reply and only its resources' states from the local copy.
            let state = agent.db.state();
            Ok(Json(GroupView {
                state: state.group_state_of(&g).to_string(),
                resources: state.start_order(&g.spec.name),
                group: g,
            }))
        }
        _ => Err(ApiError::new(500, "internal", "unexpected reply")),
    }
}

#[utoipa::path(post, path = "/api/v1/groups", tag = "groups", request_body = GroupSpec,
    responses((status = 200, body = GroupView), (status = 400, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub(super) async fn create_group(
    AxState(agent): AxState<Arc<Agent>>,
    Body(spec): Body<GroupSpec>,
) -> ApiResult<GroupView> {
    spec.validate().map_err(|e| SubmitError::Refused(e.into()))?;
    group_reply(&agent, Command::CreateGroup { spec }).await
}

#[utoipa::path(get, path = "/api/v1/groups/{name}", tag = "groups", responses((status = 200, body = GroupView), (status = 404, body = ErrorBody)))]
pub(super) async fn get_group(AxState(agent): AxState<Arc<Agent>>, Name(name): Name) -> ApiResult<GroupView> {
    let state = agent.db.state();
    group_view(&state, &name)
        .map(Json)
        .ok_or_else(|| SubmitError::Refused(haven_state::StateError::not_found("group", &name)).into())
}

#[utoipa::path(patch, path = "/api/v1/groups/{name}", tag = "groups", request_body = GroupUpdate,
    responses((status = 200, body = GroupView), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub(super) async fn update_group(
    AxState(agent): AxState<Arc<Agent>>,
    Name(name): Name,
    Body(update): Body<GroupUpdate>,
) -> ApiResult<GroupView> {
    group_reply(&agent, Command::UpdateGroup { name, update }).await
}

#[utoipa::path(delete, path = "/api/v1/groups/{name}", tag = "groups", responses((status = 200, body = haven_api::Deleted), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub(super) async fn delete_group(
    AxState(agent): AxState<Arc<Agent>>,
    Name(name): Name,
) -> ApiResult<haven_api::Deleted> {
    agent.submit("operator", Command::DeleteGroup { name: name.clone() }).await?;
    Ok(Json(haven_api::Deleted { deleted: name }))
}

#[utoipa::path(post, path = "/api/v1/groups/{name}/move", tag = "groups", request_body = MoveRequest,
    responses((status = 200, body = GroupView), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub(super) async fn move_group(
    AxState(agent): AxState<Arc<Agent>>,
    Name(name): Name,
    Body(req): Body<MoveRequest>,
) -> ApiResult<GroupView> {
    group_reply(&agent, Command::MoveGroup { name, node: req.node }).await
}

#[utoipa::path(post, path = "/api/v1/groups/{name}/online", tag = "groups", responses((status = 200, body = GroupView), (status = 404, body = ErrorBody)))]
pub(super) async fn group_online(AxState(agent): AxState<Arc<Agent>>, Name(name): Name) -> ApiResult<GroupView> {
    group_reply(&agent, Command::SetGroupOnline { name, online: true }).await
}

#[utoipa::path(post, path = "/api/v1/groups/{name}/offline", tag = "groups", responses((status = 200, body = GroupView), (status = 404, body = ErrorBody)))]
pub(super) async fn group_offline(AxState(agent): AxState<Arc<Agent>>, Name(name): Name) -> ApiResult<GroupView> {
    group_reply(&agent, Command::SetGroupOnline { name, online: false }).await
}
