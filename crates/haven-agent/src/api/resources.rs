//! `/api/v1/resources`: resources with their status, created after the state machine's and
//! their driver's checks; update, delete and clearing failures.

use std::sync::Arc;

use axum::Json;
use axum::extract::State as AxState;
use haven_api::ErrorBody;
use haven_model::{Resource, ResourceSpec, ResourceUpdate};
use haven_state::{Command, Reply};
use serde::Deserialize;

use super::cluster::require_cluster;
use super::{ApiError, ApiResult, Body, Name, Params};
use crate::{Agent, SubmitError};

#[derive(Deserialize, utoipa::IntoParams)]
pub(super) struct ResourceFilter {
    group: Option<String>,
}

#[utoipa::path(get, path = "/api/v1/resources", tag = "resources", params(ResourceFilter), responses((status = 200, body = [Resource])))]
pub(super) async fn list_resources(
    AxState(agent): AxState<Arc<Agent>>,
    Params(f): Params<ResourceFilter>,
) -> ApiResult<Vec<Resource>> {
    let state = agent.db.state();
    require_cluster(&state)?;
    if let Some(g) = &f.group
        && !state.groups.contains_key(g)
    {
        return Err(SubmitError::Refused(haven_state::StateError::not_found("group", g)).into());
    }
    Ok(Json(
        state.resources.values().filter(|r| f.group.as_ref().is_none_or(|g| &r.spec.group == g)).cloned().collect(),
    ))
}

pub(super) async fn resource_reply(agent: &Agent, cmd: Command) -> ApiResult<Resource> {
    match agent.submit("operator", cmd).await? {
        Reply::Resource(r) => Ok(Json(r)),
        _ => Err(ApiError::new(500, "internal", "unexpected reply")),
    }
}

#[utoipa::path(post, path = "/api/v1/resources", tag = "resources", request_body = ResourceSpec,
    responses((status = 200, body = Resource), (status = 400, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub(super) async fn create_resource(
    AxState(agent): AxState<Arc<Agent>>,
    Body(spec): Body<ResourceSpec>,
) -> ApiResult<Resource> {
    spec.validate().map_err(|e| SubmitError::Refused(e.into()))?;
    agent.drivers.get(spec.kind).validate(&spec).map_err(|e| SubmitError::Refused(e.into()))?;
    resource_reply(&agent, Command::CreateResource { spec }).await
}

#[utoipa::path(get, path = "/api/v1/resources/{name}", tag = "resources", responses((status = 200, body = Resource), (status = 404, body = ErrorBody)))]
pub(super) async fn get_resource(AxState(agent): AxState<Arc<Agent>>, Name(name): Name) -> ApiResult<Resource> {
    let state = agent.db.state();
    state
        .resources
        .get(&name)
        .cloned()
        .map(Json)
        .ok_or_else(|| SubmitError::Refused(haven_state::StateError::not_found("resource", &name)).into())
}

#[utoipa::path(patch, path = "/api/v1/resources/{name}", tag = "resources", request_body = ResourceUpdate,
    responses((status = 200, body = Resource), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub(super) async fn update_resource(
    AxState(agent): AxState<Arc<Agent>>,
    Name(name): Name,
    Body(update): Body<ResourceUpdate>,
) -> ApiResult<Resource> {
    resource_reply(&agent, Command::UpdateResource { name, update }).await
}

#[utoipa::path(delete, path = "/api/v1/resources/{name}", tag = "resources", responses((status = 200, body = haven_api::Deleted), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub(super) async fn delete_resource(
    AxState(agent): AxState<Arc<Agent>>,
    Name(name): Name,
) -> ApiResult<haven_api::Deleted> {
    agent.submit("operator", Command::DeleteResource { name: name.clone() }).await?;
    Ok(Json(haven_api::Deleted { deleted: name }))
}

#[utoipa::path(post, path = "/api/v1/resources/{name}/clear", tag = "resources", responses((status = 200, body = Resource), (status = 404, body = ErrorBody)))]
pub(super) async fn clear_resource(AxState(agent): AxState<Arc<Agent>>, Name(name): Name) -> ApiResult<Resource> {
    resource_reply(&agent, Command::ClearFailures { resource: name }).await
}
