//! VM routes of the API (`/api/v1/vms`): a VM's cluster view (group, owner, state) plus
//! what only its owner node knows (accelerator, QEMU pid, guest heartbeat). A request that
//! reaches another node is forwarded to the owner, so any agent answers for any VM.

use std::sync::Arc;

use axum::Json;
use axum::extract::{Path, State as AxState};
use haven_model::{Resource, ResourceKind, VmStatus};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::api::{ApiError, Body};
use crate::{Agent, SubmitError};

/// A VM as the API shows it.
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
pub struct VmView {
    pub name: String,
    pub group: String,
    /// The node the cluster state places its group on.
    pub owner: Option<String>,
    /// The `vm` resource's state (`online`, `failed`, …) and where it was reported.
    pub resource: Resource,
    /// From the owner node: accelerator, QEMU pid, guest heartbeat. `None` if it does not
    /// run (or the owner could not be asked).
    pub runtime: Option<VmStatus>,
}

/// `POST /api/v1/vms/{name}/guest-control`: a line for the guest's control channel (the
/// test guest understands `freeze`, `thaw` and `poweroff`).
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct GuestControl {
    pub line: String,
}

fn vm_resource(agent: &Agent, name: &str) -> Result<Resource, ApiError> {
    let state = agent.db.state();
    match state.resources.get(name) {
        Some(r) if r.spec.kind == ResourceKind::Vm => Ok(r.clone()),
        Some(r) => Err(ApiError::new(
            400,
            "invalid",
            format!("resource {name:?} is a {} resource, not a vm", r.spec.kind.as_str()),
        )),
        None => Err(SubmitError::Refused(haven_state::StateError::not_found("vm", name)).into()),
    }
}

/// The owner's address if it is another node.
fn elsewhere(agent: &Agent, r: &Resource) -> Option<String> {
    let state = agent.db.state();
    let owner = state.groups.get(&r.spec.group)?.owner.clone()?;
    if owner == agent.name() {
        return None;
    }
    state.nodes.get(&owner).map(|n| n.address.clone())
}

async fn view(agent: &Agent, r: Resource) -> VmView {
    let state = agent.db.state();
    let owner = state.groups.get(&r.spec.group).and_then(|g| g.owner.clone());
    let runtime = match elsewhere(agent, &r) {
        None => {
            let ctx = crate::lrm::ctx_for(agent, &state, &r.spec);
            haven_drivers::vm_status(&ctx)
        }
        Some(addr) => {
            let client = haven_api::Client::with_timeout(&addr, std::time::Duration::from_secs(3));
            client.get::<VmView>(&format!("/api/v1/vms/{}", r.spec.name)).await.ok().and_then(|v| v.runtime)
        }
    };
    VmView { name: r.spec.name.clone(), group: r.spec.group.clone(), owner, resource: r, runtime }
}

#[utoipa::path(get, path = "/api/v1/vms", tag = "vms", responses((status = 200, body = [VmView])))]
pub async fn list_vms(AxState(agent): AxState<Arc<Agent>>) -> Result<Json<Vec<VmView>>, ApiError> {
    let state = agent.db.state();
    let mut out = Vec::new();
    for r in state.resources.values().filter(|r| r.spec.kind == ResourceKind::Vm) {
        out.push(view(&agent, r.clone()).await);
    }
    Ok(Json(out))
}

#[utoipa::path(get, path = "/api/v1/vms/{name}", tag = "vms", responses((status = 200, body = VmView), (status = 404, body = haven_api::ErrorBody)))]
pub async fn get_vm(AxState(agent): AxState<Arc<Agent>>, Path(name): Path<String>) -> Result<Json<VmView>, ApiError> {
    let r = vm_resource(&agent, &name)?;
    Ok(Json(view(&agent, r).await))
}

#[utoipa::path(post, path = "/api/v1/vms/{name}/guest-control", tag = "vms", request_body = GuestControl,
    responses((status = 200), (status = 404, body = haven_api::ErrorBody), (status = 409, body = haven_api::ErrorBody)))]
pub async fn guest_control(
    AxState(agent): AxState<Arc<Agent>>,
    Path(name): Path<String>,
    Body(req): Body<GuestControl>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let r = vm_resource(&agent, &name)?;
    if let Some(addr) = elsewhere(&agent, &r) {
        let client = haven_api::Client::with_timeout(&addr, std::time::Duration::from_secs(5));
        return client
            .post::<_, serde_json::Value>(&format!("/api/v1/vms/{name}/guest-control"), &req)
            .await
            .map(Json)
            .map_err(|e| ApiError::new(e.status().unwrap_or(502), "unavailable", e.to_string()));
    }
    let state = agent.db.state();
    let ctx = crate::lrm::ctx_for(&agent, &state, &r.spec);
    agent
        .drivers
        .vm()
        .send_guest_control(&ctx, &req.line)
        .await
        .map_err(|e| ApiError::new(409, "conflict", e.to_string()))?;
    Ok(Json(serde_json::json!({"sent": req.line, "vm": name, "node": agent.name()})))
}
