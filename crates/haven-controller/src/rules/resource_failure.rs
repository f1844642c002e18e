//! Rule 4, resource failure escalation: when the owner's local manager gave up restarting
//! a resource (it reported the resource `failed`), the group fails over to another node if
//! the resource's restart action allows it and the failover threshold is not reached;
//! otherwise the group is left failed where it is.
//!
//! The owner is alive and may still run (or be starting) the group's other resources, and
//! its committed status reports lag behind what it does, so the move is made in two steps:
//! the group is first unplaced (the owner stops it), and rule 2 places it on another node
//! once the owner has had lease + margin to see that and no node that is up reports the
//! group running (see `placement`). Moving it in one step let the new owner start a
//! resource while the old owner was still stopping — or restarting — it.
//!
//! A `failed` status from before the group's latest placement (its failures were cleared
//! by that placement) is history too: acting on it moved a group that had just been placed
//! back on that node, while the node was starting it.
//!
//! Restarting in place is the owner's job, not this rule's. A `failed` status reported by
//! a node that no longer owns the group is history (the group already moved) and ignored.

use haven_model::{Group, ResourceState, RestartAction};
use haven_policy::RestartDecision;
use haven_state::State;

use crate::rules::{Tick, fail, place};
use crate::{Decision, Rule};

pub(crate) fn decide(state: &State, g: &Group, owner: &str, tick: &Tick) -> Option<Decision> {
    let name = g.spec.name.as_str();
    let failed = state.group_resources(name).find(|r| {
        // A placement clears `failures`: a `failed` status without any is from before the
        // group was (re)placed here, and the owner's manager will start it afresh.
        r.status.state == ResourceState::Failed
            && r.status.node.as_deref() == Some(owner)
            && !r.status.failures.is_empty()
    })?;
    let props = &failed.spec.props;
    let count = haven_policy::failures_in_period(props, &failed.status.failures, tick.now);
    let gave_up = match haven_policy::restart_decision(props, count) {
        RestartDecision::GiveUp { reason } => format!(" gave up: {reason}"),
        RestartDecision::Restart { .. } => " failed".to_string(),
    };
    let last = failed.status.reason.as_deref().map(|r| format!("; last error: {r}")).unwrap_or_default();
    let cause = format!("resource {:?} on {owner:?}{gave_up}{last}", failed.spec.name);
    match props.restart_action {
        RestartAction::RestartAndFailover => {
            if let Err(refused) = haven_policy::failover_allowed(g, state.nodes.len(), tick.now) {
                return Some(fail(Rule::ResourceFailure, name, format!("{cause}; {refused}")));
            }
            let p = haven_policy::place(state, name, &[owner]);
            match p.node.as_deref() {
                Some(node) => {
                    let why = format!("{cause}; stopping the group on {owner:?} before it moves (to {node:?} now)");
                    Some(place(Rule::ResourceFailure, name, None, true, why))
                }
                None => Some(fail(Rule::ResourceFailure, name, format!("{cause}; {}", p.nowhere()))),
            }
        }
        RestartAction::RestartNoFailover => Some(fail(
            Rule::ResourceFailure,
            name,
            format!("{cause}; its restart action is restart-no-failover, so the group stays on {owner:?}"),
        )),
        RestartAction::DoNotRestart => Some(fail(Rule::ResourceFailure, name, cause)),
    }
}
