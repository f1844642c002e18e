//! Rule 2, placement: an online group without an owner is placed on the best node; if no
//! node can host it, it is left failed with every node's reason. Unplaced groups are
//! retried on every tick, so a failed-for-lack-of-room group starts as soon as a node can
//! take it. Choosing the node is `haven_policy::place`; this rule only asks.
//!
//! A group that was just unplaced by a failover (rule 4 moves in two steps) is placed only
//! after lease + margin (by then the old owner has applied the move or lost its lease), and
//! once no node that is up still reports one of its resources starting, online or
//! stopping — the old owner has stopped it — or once the resources' pending timeout has
//! passed too (a restarted agent does not report what it no longer runs).
//! The node whose failure caused the move is excluded while its `failed` report stands.

use haven_model::{Group, ResourceState};
use haven_state::State;

use crate::rules::{Tick, fail, place, running_on, with_choice};
use crate::{Decision, Rule};

pub(crate) fn decide(state: &State, g: &Group, tick: &Tick) -> Option<Decision> {
    let name = g.spec.name.as_str();
    let resources: Vec<_> = state.group_resources(name).collect();
    let pending = resources.iter().map(|r| r.spec.props.pending_timeout.as_millis()).max().unwrap_or(0);
    let moved_at = g.failovers.last().copied();
    // Moved away from a node that is still up (rule 4): it reported a resource failed or
    // running there. After a node-down failover (rule 3) there is nothing to wait for.
    let from_live_node = resources.iter().any(|r| {
        r.status.state != ResourceState::Offline
            && r.status.node.as_deref().is_some_and(|n| state.nodes.get(n).is_some_and(|n| n.is_up()))
    });
    if from_live_node && moved_at.is_some_and(|t| tick.now < t.saturating_add(tick.lease_and_margin)) {
        return None; // the old owner may not have seen the move yet
    }
    let recently_moved =
        moved_at.is_some_and(|t| tick.now < t.saturating_add(tick.lease_and_margin).saturating_add(pending));
    if recently_moved && state.nodes.values().any(|n| n.is_up() && running_on(state, name, &n.name).is_some()) {
        return None; // the old owner is still stopping it
    }
    let failed_on: Vec<&str> = resources
        .iter()
        .filter(|r| recently_moved && r.status.state == ResourceState::Failed)
        .filter_map(|r| r.status.node.as_deref())
        .collect();
    let p = haven_policy::place(state, name, &failed_on);
    match p.node.as_deref() {
        Some(node) => {
            let cause = match &g.failed_reason {
                Some(_) => "a node can host it again",
                None => "it is online and has no owner",
            };
            Some(place(Rule::Placement, name, Some(node), false, with_choice(cause, &p)))
        }
        None => {
            let why = p.nowhere();
            // FailGroup with the reason it already has would change nothing.
            (g.failed_reason.as_deref() != Some(why.as_str())).then(|| fail(Rule::Placement, name, why))
        }
    }
}
