//! The controller's rules, one module each, and the dispatch that picks the one rule that
//! applies to a group in its current situation.
//!
//! A rule reads the (projected) state and returns at most one decision; it never applies
//! it, reads a clock or looks at anything but its arguments.

pub mod drain;
pub mod failback;
pub mod failover;
pub mod fencing;
pub mod handoff;
pub mod liveness;
pub mod placement;
pub mod resource_failure;

use std::cmp::Reverse;

use haven_model::Millis;
use haven_model::ResourceState;
use haven_policy::Placement;
use haven_state::{Command, State};

use crate::{Decision, Rule};

/// What every group rule needs to know about this tick.
#[derive(Clone, Copy, Debug)]
pub struct Tick {
    pub now: Millis,
    /// The UTC hour of `now`, for failback windows.
    pub utc_hour: u8,
    /// Lease + margin: after this long, a node that was told to stop a group has either
    /// applied that (and reported its stop) or lost its lease (and killed the group).
    pub lease_and_margin: Millis,
}

impl Tick {
    /// A tick with the default lease timing.
    pub fn new(now: Millis) -> Tick {
        Tick::with_timing(now, &crate::Timing::default())
    }

    pub fn with_timing(now: Millis, timing: &crate::Timing) -> Tick {
        let hour = (now / 3_600_000) % 24;
        let lease_and_margin = timing.lease_over_after_ms();
        Tick { now, utc_hour: u8::try_from(hour).unwrap_or(0), lease_and_margin }
    }
}

/// Group names, highest priority first, then by name: recovery order when capacity is short.
pub fn groups_by_priority(state: &State) -> Vec<String> {
    let mut groups: Vec<_> = state.groups.values().collect();
    groups.sort_by_key(|g| (Reverse(g.spec.priority), g.spec.name.as_str()));
    groups.into_iter().map(|g| g.spec.name.clone()).collect()
}

/// The decision for one group, by the first rule that applies to its situation.
pub fn decide_group(state: &State, group: &str, tick: &Tick) -> Option<Decision> {
    let g = state.groups.get(group)?;
    if !g.spec.online {
        return None;
    }
    let Some(owner) = g.owner.as_deref() else {
        if let Some(h) = &g.handoff {
            return handoff::decide(state, g, h, tick);
        }
        return placement::decide(state, g, tick);
    };
    if g.failed_reason.is_some() {
        return None;
    }
    match state.nodes.get(owner) {
        None => failover::decide(state, g, owner, failover::Lost::Removed, tick),
        Some(n) if !n.is_up() => failover::decide(state, g, owner, failover::Lost::Down, tick),
        Some(n) => resource_failure::decide(state, g, owner, tick).or_else(|| {
            if n.paused { drain::decide(state, g, owner) } else { failback::decide(state, g, owner, tick) }
        }),
    }
}

/// A resource of `group` that `node` reports starting, online or stopping, if any.
pub(crate) fn running_on<'a>(state: &'a State, group: &'a str, node: &str) -> Option<&'a str> {
    state
        .group_resources(group)
        .find(|r| {
            r.status.node.as_deref() == Some(node)
                && matches!(r.status.state, ResourceState::Starting | ResourceState::Online | ResourceState::Stopping)
        })
        .map(|r| r.spec.name.as_str())
}

/// `PlaceGroup` with its reason as the decision's `why`.
pub(crate) fn place(rule: Rule, group: &str, node: Option<&str>, failover: bool, why: String) -> Decision {
    Decision {
        rule,
        command: Command::PlaceGroup {
            name: group.to_string(),
            node: node.map(str::to_string),
            reason: why.clone(),
            failover,
        },
        why,
    }
}

/// `HandOffGroup` from the group's live owner `from`, with its reason as the decision's
/// `why`: a planned move, which waits for `from` to stop the group and release it.
pub(crate) fn hand_off(rule: Rule, group: &str, from: &str, to: &str, why: String) -> Decision {
    Decision {
        rule,
        command: Command::HandOffGroup {
            name: group.to_string(),
            from: from.to_string(),
            to: to.to_string(),
            reason: why.clone(),
        },
        why,
    }
}

/// `FailGroup` with its reason as the decision's `why`.
pub(crate) fn fail(rule: Rule, group: &str, why: String) -> Decision {
    Decision { rule, command: Command::FailGroup { name: group.to_string(), reason: why.clone() }, why }
}

/// `cause; chose "b": preferred owner #1`, or `cause` alone if nothing was chosen.
pub(crate) fn with_choice(cause: &str, p: &Placement) -> String {
    match (&p.node, &p.chosen_because) {
        (Some(n), Some(because)) => format!("{cause}; chose {n:?}: {because}"),
        _ => cause.to_string(),
    }
}
