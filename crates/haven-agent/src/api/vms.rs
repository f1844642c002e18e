//! VM routes of the API (`/api/v1/vms`): a VM's cluster view (group, owner, state) plus
//! what only its owner node knows (accelerator, QEMU pid, guest heartbeat). A request that
//! reaches another node is forwarded to the owner, so any agent answers for any VM.

use std::sync::Arc;

use axum::Json;
use axum::extract::State as AxState;
use haven_api::{DefinitionEdit, GuestControl, VmCreate, VmView};
use haven_model::{Resource, ResourceKind};

use super::{ApiError, Body, Name};
use crate::forward::{Failure, Forward, Wait};
use crate::requests::percent_encode;
use crate::{Agent, SubmitError};

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

/// The owner node's name and address if it is another node.
fn elsewhere(agent: &Agent, r: &Resource) -> Option<(String, String)> {
    let state = agent.db.state();
    let owner = state.groups.get(&r.spec.group)?.owner.clone()?;
    if owner == agent.name() {
        return None;
    }
    let addr = state.nodes.get(&owner)?.address.clone();
    Some((owner, addr))
}

/// A request for the VM's owner node.
fn to_owner<'a>(agent: &'a Agent, (owner, addr): &'a (String, String)) -> Forward<'a> {
    Forward::new(&agent.peers.get(), format!("node {owner:?}, which runs the VM,"), addr, Wait::Short)
}

async fn view(agent: &Agent, r: Resource) -> VmView {
    let state = agent.db.state();
    let owner = state.groups.get(&r.spec.group).and_then(|g| g.owner.clone());
    let runtime = match elsewhere(agent, &r) {
        None => {
            let ctx = crate::lrm::ctx_for(agent, &state, &r.spec);
            haven_drivers::vm_status(&ctx)
        }
        Some(owner) => {
            let path = format!("/api/v1/vms/{}", percent_encode(&r.spec.name));
            to_owner(agent, &owner).get::<VmView>(&path).await.ok().and_then(|v| v.runtime)
        }
    };
    VmView { name: r.spec.name.clone(), group: r.spec.group.clone(), owner, resource: r, runtime }
}

#[utoipa::path(get, path = "/api/v1/vms", tag = "vms", responses((status = 200, body = [VmView])))]
pub(super) async fn list_vms(AxState(agent): AxState<Arc<Agent>>) -> Result<Json<Vec<VmView>>, ApiError> {
    let state = agent.db.state();
    let mut out = Vec::new();
    for r in state.resources.values().filter(|r| r.spec.kind == ResourceKind::Vm) {
        out.push(view(&agent, r.clone()).await);
    }
    Ok(Json(out))
}

#[utoipa::path(get, path = "/api/v1/vms/{name}", tag = "vms", responses((status = 200, body = VmView), (status = 404, body = haven_api::ErrorBody)))]
pub(super) async fn get_vm(AxState(agent): AxState<Arc<Agent>>, Name(name): Name) -> Result<Json<VmView>, ApiError> {
    let r = vm_resource(&agent, &name)?;
    Ok(Json(view(&agent, r).await))
}

#[utoipa::path(post, path = "/api/v1/vms/{name}/guest-control", tag = "vms", request_body = GuestControl,
    responses((status = 200, body = haven_api::GuestControlSent), (status = 404, body = haven_api::ErrorBody), (status = 409, body = haven_api::ErrorBody), (status = 502, body = haven_api::ErrorBody)))]
pub(super) async fn guest_control(
    AxState(agent): AxState<Arc<Agent>>,
    Name(name): Name,
    Body(req): Body<GuestControl>,
) -> Result<Json<haven_api::GuestControlSent>, ApiError> {
    let r = vm_resource(&agent, &name)?;
    if let Some(owner) = elsewhere(&agent, &r) {
        let path = format!("/api/v1/vms/{}/guest-control", percent_encode(&name));
        return to_owner(&agent, &owner).post(&path, &req).await.map(Json).map_err(Failure::into_api_error);
    }
    let state = agent.db.state();
    let ctx = crate::lrm::ctx_for(&agent, &state, &r.spec);
    agent
        .drivers
        .vm()
        .send_guest_control(&ctx, &req.line)
        .await
        .map_err(|e| ApiError::new(409, "conflict", e.to_string()))?;
    Ok(Json(haven_api::GuestControlSent { sent: req.line, vm: name, node: agent.name().to_string() }))
}

/// Where the definition of `vm` lives on shared storage, seen from this node: its
/// `vm-config` path is `<volume>/<file>`, and the group's `dir` disk resource for that
/// volume says which shared directory holds it.
fn definition_file(agent: &Agent, vm: &Resource) -> Result<std::path::PathBuf, ApiError> {
    let state = agent.db.state();
    let invalid = |e: haven_model::InvalidInput| ApiError::from(SubmitError::Refused(e.into()));
    let config_name = vm.spec.vm_params().map_err(invalid)?.config;
    let config = state.resources.get(&config_name).ok_or_else(|| {
        ApiError::from(SubmitError::Refused(haven_state::StateError::not_found("resource", &config_name)))
    })?;
    let path = config.spec.vm_config_params().map_err(invalid)?.path;
    let Some((volume, rest)) = path.split_once('/').filter(|_| !path.starts_with('/')) else {
        return Err(ApiError::new(
            409,
            "conflict",
            format!(
                "the definition path {path:?} of {config_name:?} is absolute; only a volume-relative path \
                 (<volume>/<file>) can be edited through the API — edit the file on the volume's owner"
            ),
        ));
    };
    let disk = state.group_resources(&vm.spec.group).find_map(|r| {
        let p = r.spec.disk_params().ok()?;
        (p.volume_name == volume).then_some(p)
    });
    match disk {
        Some(p) if p.backend == haven_model::DiskBackend::Dir => {
            Ok(std::path::Path::new(p.path.as_deref().unwrap_or("/")).join(rest))
        }
        Some(_) => Err(ApiError::new(
            409,
            "conflict",
            format!(
                "volume {volume:?} is a block device, mounted only while its disk resource is online; \
                 edit {rest} on the node that owns it"
            ),
        )),
        None => Err(ApiError::new(
            409,
            "conflict",
            format!("group {:?} has no disk resource for volume {volume:?} named in {path:?}", vm.spec.group),
        )),
    }
}

#[utoipa::path(put, path = "/api/v1/vms/{name}/definition", tag = "vms", request_body = DefinitionEdit,
    responses((status = 200, body = haven_api::DefinitionEdited), (status = 400, body = haven_api::ErrorBody), (status = 409, body = haven_api::ErrorBody)))]
pub(super) async fn edit_definition(
    AxState(agent): AxState<Arc<Agent>>,
    Name(name): Name,
    Body(edit): Body<DefinitionEdit, { haven_api::MAX_DEFINITION_BODY_BYTES }>,
) -> Result<Json<haven_api::DefinitionEdited>, ApiError> {
    use haven_model::ResourceState::{Online, Starting, Stopping};
    let vm = vm_resource(&agent, &name)?;
    if matches!(vm.status.state, Online | Starting | Stopping) {
        let node = vm.status.node.clone().unwrap_or_default();
        return Err(ApiError::new(
            409,
            "conflict",
            format!(
                "VM {name:?} is {} on node {node:?}; its definition can only change while it is offline: \
                 run `haven group offline {}`, edit, then bring the group online (the change applies at its next start)",
                format!("{:?}", vm.status.state).to_lowercase(),
                vm.spec.group
            ),
        ));
    }
    let file = definition_file(&agent, &vm)?;
    haven_drivers::definition_from_text(&file, &edit.text)
        .map_err(|e| ApiError::from(SubmitError::Refused(e.into())))?;
    let tmp = file.with_extension("haven-edit.tmp");
    std::fs::write(&tmp, &edit.text)
        .and_then(|()| std::fs::rename(&tmp, &file))
        .map_err(|e| ApiError::new(500, "internal", format!("cannot write {}: {e}", file.display())))?;
    tracing::info!(vm = %name, file = %file.display(), "VM definition edited");
    Ok(Json(haven_api::DefinitionEdited {
        vm: name,
        file: file.display().to_string(),
        applies: "at the VM's next start".into(),
    }))
}

/// `GET /api/v1/vms/{name}/console`: the end of the guest's serial console log (up to
/// 64 KiB), from the node that runs it.
#[utoipa::path(get, path = "/api/v1/vms/{name}/console", tag = "vms",
    responses((status = 200, body = String), (status = 404, body = haven_api::ErrorBody), (status = 409, body = haven_api::ErrorBody), (status = 502, body = haven_api::ErrorBody)))]
pub(super) async fn console(AxState(agent): AxState<Arc<Agent>>, Name(name): Name) -> Result<Json<String>, ApiError> {
    let r = vm_resource(&agent, &name)?;
    if let Some(owner) = elsewhere(&agent, &r) {
        let path = format!("/api/v1/vms/{}/console", percent_encode(&name));
        return to_owner(&agent, &owner).get(&path).await.map(Json).map_err(Failure::into_api_error);
    }
    let state = agent.db.state();
    let ctx = crate::lrm::ctx_for(&agent, &state, &r.spec);
    let path = ctx.run_dir.join("console.log");
    let bytes = std::fs::read(&path).map_err(|e| {
        ApiError::new(
            409,
            "conflict",
            format!("no console log for VM {name:?} on node {:?} ({e}); has it started here?", agent.name()),
        )
    })?;
    let tail = &bytes[bytes.len().saturating_sub(64 * 1024)..];
    Ok(Json(String::from_utf8_lossy(tail).into_owned()))
}

#[utoipa::path(post, path = "/api/v1/vms", tag = "vms", request_body = VmCreate,
    responses((status = 200, body = VmView), (status = 400, body = haven_api::ErrorBody), (status = 404, body = haven_api::ErrorBody), (status = 409, body = haven_api::ErrorBody)))]
pub(super) async fn create_vm(
    AxState(agent): AxState<Arc<Agent>>,
    Body(req): Body<VmCreate, { haven_api::MAX_DEFINITION_BODY_BYTES }>,
) -> Result<Json<VmView>, ApiError> {
    use haven_model::{DiskBackend, ResourceProps, ResourceSpec};
    let refused = |e: haven_model::InvalidInput| ApiError::from(SubmitError::Refused(e.into()));
    let name = req.definition.name.clone();
    haven_model::validate_name("definition.name", &name).map_err(refused)?;
    let config_name = format!("{name}-config");
    let state = agent.db.state();
    if !state.groups.contains_key(&req.group) {
        return Err(SubmitError::Refused(haven_state::StateError::not_found_in("group", "group", &req.group)).into());
    }
    for taken in [&name, &config_name] {
        if state.resources.contains_key(taken) {
            return Err(SubmitError::Refused(haven_state::StateError::exists("resource", taken)).into());
        }
    }
    let disk = state.resources.get(&req.volume).filter(|r| r.spec.group == req.group).ok_or_else(|| {
        ApiError::new(
            404,
            "not_found",
            format!("group {:?} has no disk resource named {:?}; create it first (type disk)", req.group, req.volume),
        )
    })?;
    let params = disk.spec.disk_params().map_err(|_| {
        ApiError::new(
            400,
            "invalid",
            format!("resource {:?} is a {} resource, not a disk", req.volume, disk.spec.kind.as_str()),
        )
    })?;
    if params.backend != DiskBackend::Dir {
        return Err(ApiError::new(
            409,
            "conflict",
            format!(
                "volume {:?} is a block device; write the definition on it from its owner node",
                params.volume_name
            ),
        ));
    }
    let dir = std::path::Path::new(params.path.as_deref().unwrap_or("/")).join(&name);
    let file = dir.join("vm.toml");
    if file.exists() {
        return Err(ApiError::new(
            409,
            "conflict",
            format!("{} already exists; pick another VM name or edit it with `haven vm edit`", file.display()),
        ));
    }
    let text = toml::to_string(&req.definition)
        .map_err(|e| ApiError::new(400, "invalid", format!("cannot write the definition as TOML: {e}")))?;
    std::fs::create_dir_all(&dir)
        .map_err(|e| ApiError::new(500, "internal", format!("cannot create {}: {e}", dir.display())))?;
    if let Err(e) = haven_drivers::definition_from_text(&file, &text) {
        let _ = std::fs::remove_dir(&dir); // only if we left it empty
        return Err(refused(e));
    }
    std::fs::write(&file, &text)
        .map_err(|e| ApiError::new(500, "internal", format!("cannot write {}: {e}", file.display())))?;
    let resources = [
        ResourceSpec {
            name: config_name.clone(),
            group: req.group.clone(),
            kind: ResourceKind::VmConfig,
            params: serde_json::json!({"path": format!("{}/{name}/vm.toml", params.volume_name)}),
            props: ResourceProps::default(),
            depends_on: vec![req.volume.clone()],
        },
        ResourceSpec {
            name: name.clone(),
            group: req.group.clone(),
            kind: ResourceKind::Vm,
            params: serde_json::json!({"config": config_name}),
            props: ResourceProps::default(),
            depends_on: vec![config_name.clone()],
        },
    ];
    for spec in resources {
        agent.submit("operator", haven_state::Command::CreateResource { spec }).await?;
    }
    let r = vm_resource(&agent, &name)?;
    Ok(Json(view(&agent, r).await))
}
