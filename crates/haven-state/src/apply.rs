//! `apply`: validate a command against the state, then change it, all or nothing.
//!
//! Each arm checks everything first and mutates only at the end, so an error leaves the
//! state exactly as it was.

use std::collections::BTreeMap;

use haven_model::{Group, GroupSpec, Handoff, NodeLiveness, Resource, ResourceSpec, ResourceState, ResourceStatus};

use crate::{Command, Event, HISTORY_LIMIT, Reply, Request, Response, SCHEMA_VERSION, State, StateError};

pub(crate) fn apply(s: &mut State, req: &Request) -> Response {
    let at = req.at;
    let by = req.by.as_str();
    match &req.command {
        Command::Noop => Ok(Reply::None),
        Command::InitCluster { name, node } => {
            if let Some(c) = &s.cluster {
                return Err(StateError::conflict(format!(
                    "the cluster is already initialized as {:?}; join other nodes to it with `haven cluster join`",
                    c.name
                )));
            }
            haven_model::validate_name("cluster name", name)?;
            haven_model::validate_name("node name", &node.name)?;
            node.capacity.validate()?;
            s.schema_version = SCHEMA_VERSION;
            s.cluster = Some(crate::ClusterInfo { name: name.clone(), created_at: at });
            s.nodes.insert(node.name.clone(), node.clone());
            event(
                s,
                at,
                by,
                "cluster-init",
                Some(&node.name),
                None,
                None,
                format!("cluster {name:?} created on node {:?}", node.name),
            );
            Ok(Reply::Node(node.clone()))
        }
        Command::AddNode { node } => add_node(s, at, by, node),
        Command::RemoveNode { name } => {
            node(s, name)?;
            let owned: Vec<String> =
                s.groups.values().filter(|g| g.owner.as_deref() == Some(name)).map(|g| g.spec.name.clone()).collect();
            if !owned.is_empty() {
                return Err(StateError::conflict(format!(
                    "node {name:?} still owns groups {}; move them first (`haven node pause {name}` drains it)",
                    quoted(&owned)
                )));
            }
            let revoked = crate::pki::revoked_note(s, name).unwrap_or_default();
            s.nodes.remove(name);
            crate::pki::revoke_node_cert(s, at, name);
            let message = format!("node {name:?} removed from the cluster{revoked}");
            event(s, at, by, "node-removed", Some(name), None, None, message);
            Ok(Reply::None)
        }
        Command::RevokeJoinToken { token_hash } => crate::pki::revoke_join_token(s, at, by, token_hash),
        Command::CreateJoinToken { token_hash, expires_at, uses } => {
            crate::pki::create_join_token(s, at, by, token_hash, *expires_at, *uses)
        }
        Command::JoinNode { node, token_hash, cert_serial, cert_ca } => {
            crate::pki::join_node(s, at, by, node, token_hash, cert_serial, cert_ca.as_deref())
        }
        Command::RecordNodeCert { node, serial, ca } => {
            crate::pki::record_node_cert(s, at, by, node, serial, ca.as_deref())
        }
        Command::RenewNodeCert { node } => crate::pki::renew_node_cert(s, at, by, node),
        Command::RotateCa { ca, previous } => crate::pki::rotate_ca(s, at, by, ca, previous.as_ref()),
        Command::RetireCa { fingerprint } => crate::pki::retire_ca(s, at, by, fingerprint),
        Command::SetNodePaused { name, paused } => {
            let n = node_mut(s, name)?;
            if n.paused == *paused {
                return Ok(Reply::Node(n.clone()));
            }
            n.paused = *paused;
            let reply = n.clone();
            let (kind, what) = if *paused {
                ("node-paused", "paused: it takes no new groups and its groups move away")
            } else {
                ("node-resumed", "resumed: it can host groups again")
            };
            event(s, at, by, kind, Some(name), None, None, format!("node {name:?} {what}"));
            Ok(Reply::Node(reply))
        }
        Command::SetNodeLiveness { name, liveness, reason } => {
            let n = node_mut(s, name)?;
            if n.liveness == *liveness {
                return Ok(Reply::Node(n.clone()));
            }
            n.liveness = *liveness;
            n.since = at;
            let reply = n.clone();
            let kind = if *liveness == NodeLiveness::Up { "node-up" } else { "node-down" };
            event(s, at, by, kind, Some(name), None, None, format!("node {name:?} is {}: {reason}", reply.status()));
            Ok(Reply::Node(reply))
        }
        Command::CreateGroup { spec } => {
            spec.validate()?;
            if s.groups.contains_key(&spec.name) {
                return Err(StateError::exists("group", &spec.name));
            }
            check_owners(s, spec)?;
            let g = Group {
                spec: spec.clone(),
                owner: None,
                generation: s.generation_floor,
                failovers: Vec::new(),
                failed_reason: None,
                handoff: None,
            };
            s.groups.insert(spec.name.clone(), g.clone());
            event(s, at, by, "group-created", None, Some(&spec.name), None, format!("group {:?} created", spec.name));
            Ok(Reply::Group(g))
        }
        Command::UpdateGroup { name, update } => {
            let g = group(s, name)?;
            let spec = update.applied_to(&g.spec);
            spec.validate()?;
            check_owners(s, &spec)?;
            let g = group_mut(s, name)?;
            g.spec = spec;
            let reply = g.clone();
            event(s, at, by, "group-updated", None, Some(name), None, format!("group {name:?} properties changed"));
            Ok(Reply::Group(reply))
        }
        Command::DeleteGroup { name } => {
            group(s, name)?;
            let members: Vec<String> = s.group_resources(name).map(|r| r.spec.name.clone()).collect();
            if !members.is_empty() {
                return Err(StateError::conflict(format!(
                    "group {name:?} still has resources {}; delete them first (`haven resource delete <name>`)",
                    quoted(&members)
                )));
            }
            if let Some(g) = s.groups.remove(name) {
                s.generation_floor = s.generation_floor.max(g.generation);
            }
            event(s, at, by, "group-deleted", None, Some(name), None, format!("group {name:?} deleted"));
            Ok(Reply::None)
        }
        Command::SetGroupOnline { name, online } => {
            let g = group_mut(s, name)?;
            g.spec.online = *online;
            if *online && g.failed_reason.take().is_some() {
                // A fresh start: the owner's resource manager forgets the failures it gave
                // up on (it counts them per placement generation).
                g.generation += 1;
            }
            let reply = g.clone();
            let what = if *online { "brought online" } else { "taken offline" };
            event(
                s,
                at,
                by,
                if *online { "group-online" } else { "group-offline" },
                None,
                Some(name),
                None,
                format!("group {name:?} {what}"),
            );
            Ok(Reply::Group(reply))
        }
        Command::MoveGroup { name, node: target } => {
            let g = group(s, name)?;
            let n = s.nodes.get(target).ok_or_else(|| StateError::not_found_in("node", "node", target))?;
            if !n.is_up() {
                return Err(StateError::conflict(format!(
                    "node {target:?} is down; pick a node that is up (`haven node list`)"
                )));
            }
            if n.paused {
                return Err(StateError::conflict(format!(
                    "node {target:?} is paused; resume it first (`haven node resume {target}`) or pick another node"
                )));
            }
            if !g.spec.possible_owners.is_empty() && !g.spec.possible_owners.contains(target) {
                return Err(StateError::conflict(format!(
                    "node {target:?} is not a possible owner of group {name:?} (possible owners: {}); add it with `haven group set {name} --possible-owners ...`",
                    g.spec.possible_owners.join(", ")
                )));
            }
            if g.owner.as_deref() == Some(target) && g.failed_reason.is_none() {
                return Ok(Reply::Group(g.clone()));
            }
            if let Some(h) = g.handoff.clone() {
                // A move already waits for `h.from` to let go: back to it cancels the move
                // (it may still run the group), anywhere else changes where it goes.
                let g = group_mut(s, name)?;
                let msg = if h.from == *target {
                    g.handoff = None;
                    g.owner = Some(target.clone());
                    g.generation += 1;
                    format!("group {name:?} stays on {target:?}: the operator cancelled its move to {:?}", h.to)
                } else {
                    g.handoff = Some(Handoff { to: target.clone(), ..h.clone() });
                    format!(
                        "group {name:?} will move to {target:?} instead of {:?} once {:?} has stopped it (operator)",
                        h.to, h.from
                    )
                };
                g.failed_reason = None;
                let reply = g.clone();
                reset_failures(s, name);
                event(s, at, by, "group-moving", Some(target), Some(name), None, msg);
                return Ok(Reply::Group(reply));
            }
            // Without an owner the group may still be stopping where it was (the controller
            // unplaced it to move it after a failure, and the node's reports lag behind what
            // it does): the node that reported last must let go first.
            let last_node = match g.owner {
                Some(_) => None,
                None => s
                    .group_resources(name)
                    .filter(|r| r.status.node.is_some())
                    .max_by_key(|r| r.status.since)
                    .and_then(|r| r.status.node.clone())
                    .filter(|n| n != target && s.nodes.get(n).is_some_and(|n| n.is_up())),
            };
            // The operator asks for a place, not for a kind of move: whether it is a handoff is
            // decided here, on the committed state, by the same rule as the controller's.
            let from = match &g.owner {
                Some(owner) if owner != target => Some(owner.clone()),
                Some(_) => None,
                None => last_node,
            };
            let reply = match from {
                Some(from) => hand_off(s, at, by, name, &from, target, "moved by the operator")?,
                None => place(s, at, by, name, target, "moved by the operator")?,
            };
            Ok(Reply::Group(reply))
        }
        Command::ReleaseGroup { node: releaser, group: name, generation } => {
            node(s, releaser)?;
            let g = group(s, name)?;
            let Some(h) = g.handoff.clone() else { return Ok(Reply::Group(g.clone())) };
            if h.from != *releaser || g.generation != *generation || g.owner.is_some() {
                return Ok(Reply::Group(g.clone())); // late or duplicate: nothing to do
            }
            // The target may have gone down or been paused meanwhile: then the group is left
            // unplaced, and the controller places it (rule 2) like any group without owner.
            let target_ok = s.nodes.get(&h.to).is_some_and(|n| n.is_up() && !n.paused);
            let g = group_mut(s, name)?;
            g.handoff = None;
            g.owner = target_ok.then(|| h.to.clone());
            g.generation += 1;
            let reply = g.clone();
            let msg = if target_ok {
                format!("group {name:?} moved from {:?} to {:?} ({}): {:?} stopped it", h.from, h.to, h.reason, h.from)
            } else {
                format!(
                    "group {name:?} was stopped on {:?} for a move to {:?} ({}), which can no longer take it; it will be placed anew",
                    h.from, h.to, h.reason
                )
            };
            event(s, at, by, "group-moved", target_ok.then_some(h.to.as_str()), Some(name), None, msg);
            Ok(Reply::Group(reply))
        }
        Command::PlaceGroup { name, node: target, reason, failover } => {
            let g = group(s, name)?;
            if let Some(t) = target {
                node(s, t)?;
            }
            if g.owner == *target {
                return Ok(Reply::Group(g.clone()));
            }
            // Only a node that is down (its lease is over) or gone has stopped the group; one
            // that is up may run it until it releases it, so a move away from it is a handoff
            // (`HandOffGroup`). Unplacing it is safe: its owner stops it, and placement waits.
            if let Some(t) = target
                && let Some(holder) = running_holder(s, g).filter(|h| h != t)
            {
                return Err(StateError::conflict(match &g.handoff {
                    Some(h) => format!(
                        "group {name:?} is being handed off from node {holder:?}, which is up, to {:?}; it is not \
                         placed on {t:?} before {holder:?} has released it or is declared down",
                        h.to
                    ),
                    None => format!(
                        "group {name:?} is owned by node {holder:?}, which is up; it is not placed on {t:?} while \
                         {holder:?} may run it: hand it off instead (`HandOffGroup`, or `haven group move {name} \
                         --to {t}`), which waits for {holder:?} to stop it"
                    ),
                }));
            }
            let g = group_mut(s, name)?;
            g.handoff = None;
            g.owner = target.clone();
            g.generation += 1;
            if *failover {
                g.failovers.push(at);
            }
            let period = g.spec.failover_period.as_millis();
            g.failovers.retain(|t| t.saturating_add(period) > at);
            if target.is_some() {
                g.failed_reason = None;
            }
            let reply = g.clone();
            reset_failures(s, name);
            let msg = match target {
                Some(t) => format!("group {name:?} placed on {t:?}: {reason}"),
                None => format!("group {name:?} has no owner: {reason}"),
            };
            let kind = if *failover { "group-failover" } else { "group-placed" };
            event(s, at, by, kind, target.as_deref(), Some(name), None, msg);
            Ok(Reply::Group(reply))
        }
        Command::HandOffGroup { name, from, to, reason } => {
            let g = group(s, name)?;
            node(s, to).map_err(|_| StateError::not_found_in("to", "node", to))?;
            if from == to {
                return Err(StateError::from(haven_model::InvalidInput::new(
                    "to",
                    format!("{to:?} is the node the group is handed off from; name another node"),
                )));
            }
            // Already done, or already leaving `from` (for `to` or, moved by the operator
            // meanwhile, elsewhere): a retried or late decision changes nothing.
            let leaving = g.owner.is_none() && g.handoff.as_ref().is_some_and(|h| h.from == *from);
            if g.owner.as_deref() == Some(to.as_str()) || leaving {
                return Ok(Reply::Group(g.clone()));
            }
            if g.owner.as_deref() != Some(from.as_str()) {
                let now = match (&g.owner, &g.handoff) {
                    (Some(owner), _) => format!("it is owned by node {owner:?}"),
                    (None, Some(h)) => format!("it is being handed off from node {:?} to {:?}", h.from, h.to),
                    (None, None) => "it has no owner (place it instead)".to_string(),
                };
                return Err(StateError::conflict(format!(
                    "group {name:?} cannot be handed off from node {from:?} to {to:?}: {now}; nothing changed \
                     (decide the move again on the current state)"
                )));
            }
            hand_off(s, at, by, name, from, to, reason).map(Reply::Group)
        }
        Command::FailGroup { name, reason } => {
            let g = group_mut(s, name)?;
            if g.failed_reason.as_deref() == Some(reason) {
                return Ok(Reply::Group(g.clone()));
            }
            g.failed_reason = Some(reason.clone());
            let reply = g.clone();
            event(
                s,
                at,
                by,
                "group-failed",
                reply.owner.as_deref(),
                Some(name),
                None,
                format!("group {name:?} left failed: {reason}"),
            );
            Ok(Reply::Group(reply))
        }
        Command::CreateResource { spec } => {
            spec.validate()?;
            if s.resources.contains_key(&spec.name) {
                return Err(StateError::exists("resource", &spec.name));
            }
            group(s, &spec.group).map_err(|_| StateError::not_found_in("group", "group", &spec.group))?;
            check_dependencies(s, spec)?;
            let r = Resource { spec: spec.clone(), status: ResourceStatus { since: at, ..Default::default() } };
            s.resources.insert(spec.name.clone(), r.clone());
            event(
                s,
                at,
                by,
                "resource-created",
                None,
                Some(&spec.group),
                Some(&spec.name),
                format!("{} resource {:?} created in group {:?}", spec.kind.as_str(), spec.name, spec.group),
            );
            Ok(Reply::Resource(r))
        }
        Command::UpdateResource { name, update } => {
            let r = resource(s, name)?;
            let spec = update.applied_to(&r.spec)?;
            check_dependencies(s, &spec)?;
            let reply = update_resource(s, name, |r| {
                r.spec = spec;
                r.clone()
            })?;
            event(
                s,
                at,
                by,
                "resource-updated",
                None,
                Some(&reply.spec.group),
                Some(name),
                format!("resource {name:?} changed; new parameters apply at its next start"),
            );
            Ok(Reply::Resource(reply))
        }
        Command::DeleteResource { name } => {
            let r = resource(s, name)?;
            let dependents: Vec<String> = s
                .resources
                .values()
                .filter(|o| o.spec.depends_on.contains(name))
                .map(|o| o.spec.name.clone())
                .collect();
            if !dependents.is_empty() {
                return Err(StateError::conflict(format!(
                    "resources {} depend on {name:?}; delete them or remove the dependency first",
                    quoted(&dependents)
                )));
            }
            // Nothing is deleted while it may be running on a node: its last report must say
            // it is offline or failed, or come from a node that is down (it self-fenced when
            // its lease ended) or no longer a member.
            let reporter_up = r.status.node.as_deref().and_then(|n| s.nodes.get(n)).is_some_and(|n| n.is_up());
            if !matches!(r.status.state, ResourceState::Offline | ResourceState::Failed) && reporter_up {
                let state = format!("{:?}", r.status.state).to_lowercase();
                let on = r.status.node.as_deref().unwrap_or("?");
                let group_online = s.groups.get(&r.spec.group).is_some_and(|g| g.spec.online);
                let what_to_do = if group_online {
                    format!(
                        "take its group offline first (`haven group offline {}`), wait until the resource is offline \
                         (a start in progress is cancelled), then delete it",
                        r.spec.group
                    )
                } else {
                    format!(
                        "its group is offline, so node {on:?} is stopping it (a start in progress is cancelled): \
                         delete it once `haven resource show {name}` says offline"
                    )
                };
                return Err(StateError::conflict(format!(
                    "resource {name:?} is {state} on node {on:?}, so it may be running there, and a resource is \
                     deleted only when no node may be running it; {what_to_do}"
                )));
            }
            let g = r.spec.group.clone();
            s.resources.remove(name);
            // The owner's resource manager counts failures (and what it gave up on) per
            // placement generation: a resource created again under this name starts afresh.
            if let Some(grp) = s.groups.get_mut(&g) {
                grp.generation += 1;
            }
            event(s, at, by, "resource-deleted", None, Some(&g), Some(name), format!("resource {name:?} deleted"));
            Ok(Reply::None)
        }
        Command::MoveResource { name, group: to } => move_resource(s, at, by, name, to),
        Command::HaWizard { report, commands } => ha_wizard(s, req, report, commands),
        Command::Batch { commands } => batch(s, req, commands),
        Command::CreateToken { token } => crate::tokens::create(s, req, token),
        Command::RevokeToken { name } => crate::tokens::revoke(s, req, name),
        Command::RecordAudit { entries } => crate::tokens::record(s, entries),
        Command::ReportResource { node: reporter, resource: name, state, reason, failure } => {
            node(s, reporter)?;
            let r = resource(s, name)?;
            let period = r.spec.props.restart_period.as_millis();
            let changed = r.status.state != *state || r.status.node.as_deref() != Some(reporter);
            if !changed && !failure && r.status.reason == *reason {
                return Ok(Reply::Resource(r.clone()));
            }
            // A late "stopped" from a node that no longer owns the group must not hide that
            // another node runs the resource: the controller reads the status to know
            // whether a move may start the group elsewhere.
            // While the group has an owner, only the owner's reports are current: a report
            // from another node is one it queued before it lost the group (self-fence, handoff)
            // and could send only now, e.g. after a partition healed; taken as the status it
            // would hide the owner's (a `failed` the controller must act on).
            let owner = s.groups.get(&r.spec.group).and_then(|g| g.owner.as_deref());
            let stale = owner.is_some_and(|o| o != reporter.as_str())
                || (owner != Some(reporter.as_str())
                    && r.status.node.as_deref().is_some_and(|n| n != reporter)
                    && matches!(state, ResourceState::Offline | ResourceState::Stopping | ResourceState::Failed));
            if stale {
                let msg = format!(
                    "resource {name:?} is {} on {reporter:?} (a node that no longer owns it; its status stays as {:?} reported)",
                    format!("{state:?}").to_lowercase(),
                    r.status.node.as_deref().unwrap_or("")
                );
                let group_name = r.spec.group.clone();
                let reply = r.clone();
                event(s, at, by, "resource-report-stale", Some(reporter), Some(&group_name), Some(name), msg);
                return Ok(Reply::Resource(reply));
            }
            let group_name = r.spec.group.clone();
            let reply = update_resource(s, name, |r| {
                if *failure {
                    r.status.failures.push(at);
                }
                r.status.failures.retain(|t| t.saturating_add(period) > at);
                r.status.state = *state;
                r.status.node = Some(reporter.clone());
                r.status.reason = reason.clone();
                if changed {
                    r.status.since = at;
                }
                r.clone()
            })?;
            if changed || *failure {
                let kind = match (state, failure) {
                    (_, true) => "resource-failed",
                    (ResourceState::Online, _) => "resource-online",
                    (ResourceState::Offline, _) => "resource-offline",
                    (ResourceState::Failed, _) => "resource-failed",
                    (ResourceState::Starting, _) => "resource-starting",
                    (ResourceState::Stopping, _) => "resource-stopping",
                };
                let why = reason.as_ref().map(|r| format!(": {r}")).unwrap_or_default();
                let msg = format!("resource {name:?} is {} on {reporter:?}{why}", format!("{state:?}").to_lowercase());
                event(s, at, by, kind, Some(reporter), Some(&group_name), Some(name), msg);
            }
            Ok(Reply::Resource(reply))
        }
        Command::SetFence { .. } | Command::RequestFence { .. } | Command::RecordFence { .. } => {
            apply_fence(s, at, by, &req.command)
        }
        Command::ClearFailures { resource: name } => {
            let (g, reply) = update_resource(s, name, |r| {
                r.status.failures.clear();
                if r.status.state == ResourceState::Failed {
                    r.status.state = ResourceState::Offline;
                }
                (r.spec.group.clone(), r.clone())
            })?;
            if let Some(grp) = s.groups.get_mut(&g) {
                grp.failed_reason = None;
                grp.failovers.clear();
                // The owner's resource manager gave up on the resource for this placement
                // generation; a new one makes it try again.
                grp.generation += 1;
            }
            event(
                s,
                at,
                by,
                "failures-cleared",
                None,
                Some(&g),
                Some(name),
                format!("failures of resource {name:?} cleared by the operator"),
            );
            Ok(Reply::Resource(reply))
        }
    }
}

fn move_resource(s: &mut State, at: u64, by: &str, name: &str, to: &str) -> Response {
    let r = resource(s, name)?;
    let from = r.spec.group.clone();
    group(s, to).map_err(|_| StateError::not_found_in("group", "group", to))?;
    if from == to {
        return Ok(Reply::Resource(r.clone()));
    }
    if !matches!(r.status.state, ResourceState::Offline | ResourceState::Failed) {
        return Err(StateError::conflict(format!(
            "resource {name:?} is {} on {}; a resource changes groups only while it is not running: take group \
             {from:?} offline first (`haven group offline {from}`)",
            format!("{:?}", r.status.state).to_lowercase(),
            r.status.node.as_deref().unwrap_or("?"),
        )));
    }
    if !r.spec.depends_on.is_empty() {
        return Err(StateError::conflict(format!(
            "resource {name:?} depends on {}, which stay in group {from:?}; dependencies must stay within one group: \
             remove the dependencies first",
            quoted(&r.spec.depends_on)
        )));
    }
    let dependents: Vec<String> = s.dependents_of(&from, name).into_iter().collect();
    if !dependents.is_empty() {
        return Err(StateError::conflict(format!(
            "resources {} of group {from:?} depend on {name:?}; dependencies must stay within one group: remove \
             them or their dependency first",
            quoted(&dependents)
        )));
    }
    // A disk's claim carries its group's placement generation: the new group must not
    // count lower than the old one, or the volume would refuse it as a stale owner.
    let from_generation = s.groups.get(&from).map(|g| g.generation).unwrap_or(0);
    let target = group_mut(s, to)?;
    target.generation = target.generation.max(from_generation);
    let reply = update_resource(s, name, |r| {
        r.spec.group = to.to_string();
        r.status.failures.clear();
        r.clone()
    })?;
    event(
        s,
        at,
        by,
        "resource-moved",
        None,
        Some(to),
        Some(name),
        format!("resource {name:?} moved from group {from:?} to group {to:?}"),
    );
    Ok(Reply::Resource(reply))
}

/// The HA wizard's change: every command on a scratch copy first, so that one refusal
/// leaves the state untouched; then the report, as the last history entry.
fn ha_wizard(s: &mut State, req: &Request, report: &haven_model::HaReport, commands: &[Command]) -> Response {
    if !report.ok && !commands.is_empty() {
        return Err(StateError::from(haven_model::InvalidInput::new(
            "commands",
            "a report with failed checks carries no changes; fix what the report names and run the wizard again",
        )));
    }
    let mut scratch = s.clone();
    for (i, c) in commands.iter().enumerate() {
        if matches!(c, Command::HaWizard { .. } | Command::Batch { .. }) {
            return Err(StateError::from(haven_model::InvalidInput::new(
                format!("commands[{i}]"),
                "an HA wizard change cannot contain another one, nor a batch",
            )));
        }
        let sub = Request::new(req.at, req.by.clone(), c.clone());
        apply(&mut scratch, &sub).map_err(|e| StateError {
            message: format!(
                "change {} of the HA wizard for VM {:?} was refused, so none was made: {}",
                i + 1,
                report.vm,
                e.message
            ),
            ..e
        })?;
    }
    *s = scratch;
    let vm = report.vm.clone();
    event(s, req.at, &req.by, "ha-wizard", Some(&report.node), report.group.as_deref(), Some(&vm), report.summary());
    if let Some(e) = s.history.back_mut() {
        e.report = Some(Box::new(report.clone()));
    }
    Ok(Reply::None)
}

/// A batch: first checked whole (its length, no batch inside), then each command applied
/// on its own, all or nothing; a refused one is skipped and answered with its refusal.
fn batch(s: &mut State, req: &Request, commands: &[Command]) -> Response {
    if commands.len() > crate::BATCH_LIMIT {
        return Err(StateError::from(haven_model::InvalidInput::new(
            "commands",
            format!(
                "a batch of {} commands is too long; the most allowed is {} (send the rest in another batch)",
                commands.len(),
                crate::BATCH_LIMIT
            ),
        )));
    }
    if let Some(i) = commands.iter().position(|c| matches!(c, Command::Batch { .. })) {
        return Err(StateError::from(haven_model::InvalidInput::new(
            format!("commands[{i}]"),
            "a batch cannot contain another batch; put its commands in the outer one",
        )));
    }
    let replies = commands
        .iter()
        .map(|c| {
            apply(s, &Request { at: req.at, by: req.by.clone(), command: c.clone(), request_id: None, origin: None })
        })
        .collect();
    Ok(Reply::Batch(replies))
}

/// `"a", "b"`: names as the operator typed them.
pub(crate) fn quoted(names: &[String]) -> String {
    names.iter().map(|n| format!("{n:?}")).collect::<Vec<_>>().join(", ")
}

fn apply_fence(s: &mut State, at: u64, by: &str, command: &Command) -> Response {
    match command {
        Command::SetFence { node: name, config } => {
            node(s, name)?;
            match config {
                Some(c) => {
                    c.validate()?;
                    s.fencing.insert(name.clone(), c.clone());
                    let msg = format!("node {name:?} will be fenced with {} (action {})", c.agent, c.action.as_str());
                    event(s, at, by, "fence-configured", Some(name), None, None, msg);
                }
                None => {
                    if s.fencing.remove(name).is_none() {
                        return Ok(Reply::None);
                    }
                    s.fence_status.remove(name);
                    event(
                        s,
                        at,
                        by,
                        "fence-removed",
                        Some(name),
                        None,
                        None,
                        format!("node {name:?} has no fence agent now"),
                    );
                }
            }
            Ok(Reply::None)
        }
        Command::RequestFence { node: name, reason } => {
            let since = node(s, name)?.since;
            if !s.fencing.contains_key(name) {
                return Err(StateError::conflict(format!("node {name:?} has no fence agent configured")));
            }
            let st = s.fence_status.entry(name.clone()).or_default();
            if st.requested_at.is_some_and(|t| t >= since) || st.fenced_at.is_some_and(|t| t >= since) {
                return Ok(Reply::None);
            }
            st.requested_at = Some(at);
            event(s, at, by, "fence-requested", Some(name), None, None, format!("fencing node {name:?}: {reason}"));
            Ok(Reply::None)
        }
        Command::RecordFence { node: name, ok, message } => {
            node(s, name)?;
            let st = s.fence_status.entry(name.clone()).or_default();
            st.last_attempt_at = Some(at);
            let (kind, msg) = if *ok {
                st.fenced_at = Some(at);
                st.failures = 0;
                st.last_error = None;
                ("node-fenced", format!("node {name:?} fenced: {message}"))
            } else {
                st.failures += 1;
                st.requested_at = None;
                st.last_error = Some(message.clone());
                let n = st.failures;
                (
                    "fence-failed",
                    format!("fencing node {name:?} failed (attempt {n}), will retry; its groups wait: {message}"),
                )
            };
            event(s, at, by, kind, Some(name), None, None, msg);
            Ok(Reply::None)
        }
        _ => Ok(Reply::None),
    }
}

/// `AddNode` (and the node part of `JoinNode`).
pub(crate) fn add_node(s: &mut State, at: u64, by: &str, node: &haven_model::Node) -> Response {
    require_cluster(s)?;
    haven_model::validate_name("node name", &node.name)?;
    node.capacity.validate()?;
    if s.nodes.contains_key(&node.name) {
        return Err(StateError::exists("node", &node.name));
    }
    if let Some(other) = s.node_by_id(node.id) {
        return Err(StateError::conflict(format!(
            "node id {} is already used by node {:?}; give the new node another `id` in its config file",
            node.id, other.name
        )));
    }
    s.nodes.insert(node.name.clone(), node.clone());
    event(
        s,
        at,
        by,
        "node-joined",
        Some(&node.name),
        None,
        None,
        format!("node {:?} joined as a {:?} at {}", node.name, node.role, node.address),
    );
    Ok(Reply::Node(node.clone()))
}

pub(crate) fn require_cluster(s: &State) -> Result<(), StateError> {
    if s.cluster.is_none() {
        return Err(StateError::conflict("the cluster is not initialized; run `haven cluster init` on the first node"));
    }
    Ok(())
}

fn node<'a>(s: &'a State, name: &str) -> Result<&'a haven_model::Node, StateError> {
    s.nodes.get(name).ok_or_else(|| StateError::not_found("node", name))
}
fn node_mut<'a>(s: &'a mut State, name: &str) -> Result<&'a mut haven_model::Node, StateError> {
    s.nodes.get_mut(name).ok_or_else(|| StateError::not_found("node", name))
}
fn group<'a>(s: &'a State, name: &str) -> Result<&'a Group, StateError> {
    s.groups.get(name).ok_or_else(|| StateError::not_found("group", name))
}
fn group_mut<'a>(s: &'a mut State, name: &str) -> Result<&'a mut Group, StateError> {
    s.groups.get_mut(name).ok_or_else(|| StateError::not_found("group", name))
}
fn resource<'a>(s: &'a State, name: &str) -> Result<&'a Resource, StateError> {
    s.resources.get(name).ok_or_else(|| StateError::not_found("resource", name))
}
/// Changes resource `name` with `f` (see [`crate::Resources::update`]).
fn update_resource<T>(s: &mut State, name: &str, f: impl FnOnce(&mut Resource) -> T) -> Result<T, StateError> {
    s.resources.update(name, f).ok_or_else(|| StateError::not_found("resource", name))
}

fn check_owners(s: &State, spec: &GroupSpec) -> Result<(), StateError> {
    for (field, list) in [("preferred_owners", &spec.preferred_owners), ("possible_owners", &spec.possible_owners)] {
        for n in list {
            if !s.nodes.contains_key(n) {
                return Err(StateError::not_found_in(field, "node", n));
            }
        }
    }
    Ok(())
}

/// Dependencies must name resources of the same group and must not form a cycle.
fn check_dependencies(s: &State, spec: &ResourceSpec) -> Result<(), StateError> {
    for d in &spec.depends_on {
        match s.resources.get(d) {
            None => return Err(StateError::not_found_in("depends_on", "resource", d)),
            Some(other) if other.spec.group != spec.group => {
                return Err(StateError::from(haven_model::InvalidInput::new(
                    "depends_on",
                    format!(
                        "{d:?} is in group {:?} but {:?} is in group {:?}; dependencies must stay within one group",
                        other.spec.group, spec.name, spec.group
                    ),
                )));
            }
            Some(_) => {}
        }
    }
    let mut graph: BTreeMap<String, Vec<String>> =
        s.group_resources(&spec.group).map(|r| (r.spec.name.clone(), r.spec.depends_on.clone())).collect();
    graph.insert(spec.name.clone(), spec.depends_on.clone());
    haven_model::deps::start_order(&graph)?;
    Ok(())
}

/// The node that may be running `g` and has not let go of it: its owner, or the node it
/// is being handed off from, if that node is up. A node that is down has stopped it (its
/// lease is over); one that is no longer a member runs nothing of the cluster's.
fn running_holder(s: &State, g: &Group) -> Option<String> {
    let holder = g.owner.as_ref().or(g.handoff.as_ref().map(|h| &h.from))?;
    s.nodes.get(holder).is_some_and(|n| n.is_up()).then(|| holder.clone())
}

/// Places `name` on `target` at once (an operator move of a group that no node that is up
/// holds; see [`hand_off`] for the other case).
fn place(s: &mut State, at: u64, by: &str, name: &str, target: &str, reason: &str) -> Result<Group, StateError> {
    let g = group_mut(s, name)?;
    g.generation += 1;
    g.failed_reason = None;
    g.owner = Some(target.to_string());
    g.handoff = None;
    let reply = g.clone();
    reset_failures(s, name);
    event(
        s,
        at,
        by,
        "group-moved",
        Some(target),
        Some(name),
        None,
        format!("group {name:?} placed on {target:?}: {reason}"),
    );
    Ok(reply)
}

/// Starts a handoff of `name` from `from` to `target`: the group has no owner until `from`
/// reports it stopped everything (`ReleaseGroup`) or is declared down, so the two never
/// run it at the same time. Every planned move goes through here: the operator's
/// `MoveGroup` and the controller's `HandOffGroup`.
fn hand_off(
    s: &mut State,
    at: u64,
    by: &str,
    name: &str,
    from: &str,
    target: &str,
    reason: &str,
) -> Result<Group, StateError> {
    let g = group_mut(s, name)?;
    g.generation += 1;
    g.failed_reason = None;
    g.owner = None;
    g.handoff = Some(Handoff { from: from.to_string(), to: target.to_string(), reason: reason.to_string() });
    let reply = g.clone();
    reset_failures(s, name);
    let msg = format!(
        "group {name:?} is moving from {from:?} to {target:?} ({reason}): it starts there once {from:?} has stopped it"
    );
    event(s, at, by, "group-moving", Some(target), Some(name), None, msg);
    Ok(reply)
}

/// A new placement starts the restart count afresh: failures counted on the old owner
/// say nothing about the new one.
fn reset_failures(s: &mut State, group: &str) {
    // Only the members that have failures are written (a persistent map copies what it
    // changes).
    let counted: Vec<String> =
        s.group_resources(group).filter(|r| !r.status.failures.is_empty()).map(|r| r.spec.name.clone()).collect();
    for name in counted {
        s.resources.update(&name, |r| r.status.failures.clear());
    }
}

#[allow(clippy::too_many_arguments)]
pub(crate) fn event(
    s: &mut State,
    at: u64,
    by: &str,
    kind: &str,
    node: Option<&str>,
    group: Option<&str>,
    resource: Option<&str>,
    message: String,
) {
    s.next_event_id += 1;
    s.history.push_back(Event {
        id: s.next_event_id,
        at,
        kind: kind.to_string(),
        node: node.map(str::to_string),
        group: group.map(str::to_string),
        resource: resource.map(str::to_string),
        message,
        by: by.to_string(),
        report: None,
        audit: None,
    });
    while s.history.len() > HISTORY_LIMIT {
        s.history.pop_front();
    }
}
