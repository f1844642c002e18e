//! `POST /api/v1/vms/make-ha`: the HA wizard. On the node where the VM's definition file
//! is (a request reaching another agent is forwarded there), it runs the storage checks of
//! `haven_drivers::make_ha` against the cluster's disk resources, turns their verdict into
//! one `Command::HaWizard` (create or update the group, move disk resources in, create
//! the `vm-config` and `vm`), tries it on a copy of the state, and commits it — or, when a
//! check failed, commits only the report, so the history keeps every run.
//!
//! The answer is the report, HTTP 200 whenever the wizard ran (`ok` says whether the VM is
//! now highly available); bad input (no such node, an unreadable definition) is a 4xx error.

use std::sync::Arc;

use axum::Json;
use axum::extract::State as AxState;
use haven_api::MakeHaRequest;
use haven_drivers::make_ha::{self, WizardGroup, WizardInput, WizardVolume};
use haven_model::{
    CheckResult, GroupSpec, GroupUpdate, HaReport, ResourceKind, ResourceProps, ResourceSpec, ResourceState,
};
use haven_state::{Command, Request, State};

use super::cluster::require_cluster;
use super::{ApiError, Body};
use crate::forward::{Failure, Forward, Wait};
use crate::{Agent, SubmitError, now_ms};

fn refused(e: haven_model::InvalidInput) -> ApiError {
    ApiError::from(SubmitError::Refused(e.into()))
}

/// The cluster's disk resources and groups, as the checks need them.
fn wizard_input(agent: &Agent, state: &State, req: &MakeHaRequest) -> WizardInput {
    let me = agent.name();
    let volumes = state
        .resources
        .values()
        .filter(|r| r.spec.kind == ResourceKind::Disk)
        .filter_map(|r| {
            let params = r.spec.disk_params().ok()?;
            let st = r.status.state;
            let on = r.status.node.as_deref();
            let state = match (st, on) {
                (ResourceState::Offline, _) => "offline".to_string(),
                (ResourceState::Failed, _) => "failed".to_string(),
                (s, Some(n)) => format!("{} on node {n:?}", format!("{s:?}").to_lowercase()),
                (s, None) => format!("{s:?}").to_lowercase(),
            };
            Some(WizardVolume {
                resource: r.spec.name.clone(),
                group: r.spec.group.clone(),
                params,
                online_here: st == ResourceState::Online && on == Some(me),
                state,
            })
        })
        .collect();
    let groups = state
        .groups
        .keys()
        .map(|g| {
            let rs: Vec<_> = state.group_resources(g).collect();
            let vms = rs.iter().filter(|r| r.spec.kind == ResourceKind::Vm).map(|r| r.spec.name.clone()).collect();
            let only_disks = rs.iter().all(|r| r.spec.kind == ResourceKind::Disk);
            (g.clone(), WizardGroup { name: g.clone(), vms, only_disks })
        })
        .collect();
    WizardInput {
        node: me.to_string(),
        state_dir: agent.config.state_dir.clone(),
        definition: std::path::PathBuf::from(&req.path),
        volumes,
        groups,
        group: req.group.clone(),
        fix: req.fix,
    }
}

/// The cluster change for a VM that passed checks 1–7, with one line per command.
fn plan(
    state: &State,
    node: &str,
    vm: &str,
    out: &make_ha::WizardOutcome,
) -> Result<(Vec<Command>, Vec<String>), String> {
    let group = out.group.clone().ok_or("no group was decided")?;
    let config_path = out.config_path.clone().ok_or("the definition is not on a cluster volume")?;
    let config = format!("{vm}-config");
    let mut commands = Vec::new();
    let mut lines = Vec::new();
    match state.groups.get(&group) {
        None => {
            let spec = GroupSpec { preferred_owners: vec![node.to_string()], ..GroupSpec::new(group.clone()) };
            lines.push(format!("create group {group:?} (preferred owners: {node}; online)"));
            commands.push(Command::CreateGroup { spec });
        }
        Some(g) if g.spec.preferred_owners.first().map(String::as_str) != Some(node) => {
            let mut owners = vec![node.to_string()];
            owners.extend(g.spec.preferred_owners.iter().filter(|n| *n != node).cloned());
            lines.push(format!("set the preferred owners of group {group:?} to {}", owners.join(", ")));
            commands.push(Command::UpdateGroup {
                name: group.clone(),
                update: GroupUpdate { preferred_owners: Some(owners), ..Default::default() },
            });
        }
        Some(_) => {}
    }
    for m in &out.moves {
        let from = state.resources.get(m).map(|r| r.spec.group.clone()).unwrap_or_default();
        lines.push(format!("move disk resource {m:?} from group {from:?} into group {group:?}"));
        commands.push(Command::MoveResource { name: m.clone(), group: group.clone() });
    }
    lines.push(format!(
        "create vm-config resource {config:?} in group {group:?}: path {config_path}, depends on {}",
        out.disks.join(", ")
    ));
    commands.push(Command::CreateResource {
        spec: ResourceSpec {
            name: config.clone(),
            group: group.clone(),
            kind: ResourceKind::VmConfig,
            params: serde_json::json!({ "path": config_path }),
            props: ResourceProps::default(),
            depends_on: out.disks.clone(),
        },
    });
    let props = ResourceProps::default();
    lines.push(format!(
        "create vm resource {vm:?} in group {group:?}: config {config}, depends on {config} (pending timeout {}, \
         restart {} times in {}, heartbeat_timeout 5s, shutdown_timeout 30s, boot_timeout 2m)",
        props.pending_timeout, props.restart_threshold, props.restart_period
    ));
    commands.push(Command::CreateResource {
        spec: ResourceSpec {
            name: vm.to_string(),
            group: group.clone(),
            kind: ResourceKind::Vm,
            params: serde_json::json!({ "config": config }),
            props,
            depends_on: vec![config],
        },
    });
    Ok((commands, lines))
}

fn set_check8(report: &mut HaReport, result: CheckResult, message: String) {
    report.checks.retain(|c| c.id != 8);
    report.checks.push(make_ha::check(8, result, message));
    report.tally();
}

#[utoipa::path(post, path = "/api/v1/vms/make-ha", tag = "vms", request_body = MakeHaRequest,
    responses((status = 200, body = HaReport, description = "the wizard ran; `ok` says whether the VM is now highly available"),
              (status = 400, body = haven_api::ErrorBody), (status = 404, body = haven_api::ErrorBody),
              (status = 502, body = haven_api::ErrorBody)))]
pub(super) async fn make_ha(
    AxState(agent): AxState<Arc<Agent>>,
    Body(req): Body<MakeHaRequest>,
) -> Result<Json<HaReport>, ApiError> {
    let state = agent.db.state();
    require_cluster(&state)?;
    let node = req.node.clone().unwrap_or_else(|| agent.name().to_string());
    haven_model::validate_name("node", &node).map_err(refused)?;
    let Some(target) = state.nodes.get(&node) else {
        return Err(SubmitError::Refused(haven_state::StateError::not_found_in("node", "node", &node)).into());
    };
    if node != agent.name() {
        let fwd = MakeHaRequest { node: Some(node.clone()), ..req };
        let http = agent.peers.get();
        let holder =
            Forward::new(&http, format!("node {node:?}, which holds the definition,"), &target.address, Wait::Long);
        return holder.post("/api/v1/vms/make-ha", &fwd).await.map(Json).map_err(Failure::into_api_error);
    }
    if req.path.trim().is_empty() {
        return Err(refused(haven_model::InvalidInput::new(
            "path",
            "is empty; give the VM definition file's absolute path on the node",
        )));
    }
    if let Some(n) = &req.name {
        haven_model::validate_name("name", n).map_err(refused)?;
    }
    if let Some(g) = &req.group {
        haven_model::validate_name("group", g).map_err(refused)?;
    }

    let input = wizard_input(&agent, &state, &req);
    let mut out = tokio::task::spawn_blocking(move || make_ha::run(&input))
        .await
        .map_err(|e| ApiError::new(500, "internal", format!("the wizard's checks crashed: {e}")))?
        .map_err(refused)?;
    let def_name = out.definition.as_ref().map(|d| d.name.clone()).unwrap_or_default();
    let vm = req.name.clone().unwrap_or(def_name);
    haven_model::validate_name("name", &vm).map_err(refused)?;

    let mut report = HaReport {
        vm: vm.clone(),
        definition: req.path.clone(),
        node: node.clone(),
        group: out.group.clone(),
        ok: false,
        dry_run: req.dry_run,
        applied: false,
        checks: std::mem::take(&mut out.checks),
        fixes: out.fixes.clone(),
        plan: Vec::new(),
        warnings: 0,
        errors: 0,
    };
    report.tally();
    let mut commands = Vec::new();
    if report.ok {
        match plan(&state, &node, &vm, &out) {
            Ok((c, lines)) => {
                commands = c;
                report.plan = lines;
                // The state machine's own verdict, on a copy: names taken, dependencies.
                let mut scratch = (*state).clone();
                let try_it = Request::new(
                    now_ms(),
                    "operator",
                    Command::HaWizard { report: Box::new(report.clone()), commands: commands.clone() },
                );
                match scratch.apply(&try_it) {
                    Ok(_) => set_check8(
                        &mut report,
                        CheckResult::Pass,
                        format!(
                            "{} change(s) accepted as one request (the plan below); the group starts the VM at \
                             once if it is online",
                            commands.len()
                        ),
                    ),
                    Err(e) => set_check8(&mut report, CheckResult::Fail, e.message),
                }
            }
            Err(why) => set_check8(&mut report, CheckResult::Fail, why),
        }
    } else {
        set_check8(&mut report, CheckResult::Skip, "not tried: a check above failed, so nothing is changed".into());
    }

    if report.ok && !req.dry_run && req.fix && !out.fixes.is_empty() {
        let fixed = tokio::task::spawn_blocking(move || make_ha::apply_fixes(&mut out).map(|()| out))
            .await
            .map_err(|e| ApiError::new(500, "internal", format!("the wizard's fix crashed: {e}")))?;
        match fixed {
            Ok(o) => report.fixes = o.fixes,
            Err(why) => {
                if let Some(c) = report.checks.iter_mut().find(|c| c.id == 5) {
                    c.result = CheckResult::Fail;
                    c.message = format!("{}; the rewrite failed: {why}", c.message);
                }
                report.tally();
            }
        }
    }
    if req.dry_run {
        return Ok(Json(report));
    }
    if !report.ok {
        commands.clear();
    }
    report.applied = report.ok;
    let submitted = agent
        .submit("operator", Command::HaWizard { report: Box::new(report.clone()), commands: commands.clone() })
        .await;
    match submitted {
        Ok(_) => {
            tracing::info!(vm = %vm, ok = report.ok, "{}", report.summary());
            Ok(Json(report))
        }
        Err(SubmitError::Refused(e)) if report.ok => {
            // The state changed between the trial and the commit: record the refusal.
            report.applied = false;
            set_check8(&mut report, CheckResult::Fail, e.message);
            agent.submit("operator", Command::HaWizard { report: Box::new(report.clone()), commands: vec![] }).await?;
            Ok(Json(report))
        }
        Err(e) => Err(e.into()),
    }
}
