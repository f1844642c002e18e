//! Rule 8, handoff: a planned move (the operator's `MoveGroup`, or drain and failback,
//! which rules 5 and 6 decide as `HandOffGroup`) leaves the group without an owner until
//! the old owner reports that it stopped everything of it (`ReleaseGroup`, applied by the
//! state machine). Nothing to decide while that node is up: it is stopping the group (and
//! the state refuses to place it meanwhile). If it is declared down first (its lease is
//! over) or is no longer a member, the group goes where it was going — after fencing, if
//! that node has a fence agent (rule 7) — or, if that node can no longer take it, to the
//! best other node.
//!
//! Moving in one step let the new owner start the group while the old one was still
//! stopping it: for a VM with a slow guest shutdown, two QEMU processes on one disk.

use haven_model::{Group, Handoff};
use haven_state::State;

use crate::rules::{Tick, fail, fencing, place, with_choice};
use crate::{Decision, Rule};

pub(crate) fn decide(state: &State, g: &Group, h: &Handoff, tick: &Tick) -> Option<Decision> {
    let name = g.spec.name.as_str();
    let cause = match state.nodes.get(&h.from) {
        Some(n) if n.is_up() => return None, // it is stopping the group
        Some(_) => format!("node {:?} went down before it stopped the group", h.from),
        None => format!("node {:?} is no longer a cluster member", h.from),
    };
    if state.nodes.contains_key(&h.from)
        && let Some(wait) = fencing::before_recovery(state, &h.from, &cause, tick)
    {
        return wait;
    }
    let target_ok = state.nodes.get(&h.to).is_some_and(|n| n.is_up() && !n.paused)
        && (g.spec.possible_owners.is_empty() || g.spec.possible_owners.contains(&h.to));
    if target_ok {
        let why = format!("{cause}; placed on {:?} as planned ({})", h.to, h.reason);
        return Some(place(Rule::Handoff, name, Some(&h.to), false, why));
    }
    let p = haven_policy::place(state, name, &[]);
    match p.node.as_deref() {
        Some(node) => Some(place(Rule::Handoff, name, Some(node), false, with_choice(&cause, &p))),
        None => Some(fail(Rule::Handoff, name, format!("{cause}; {}", p.nowhere()))),
    }
}
