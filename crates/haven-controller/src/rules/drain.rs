//! Rule 5, drain: groups owned by a paused node move to the best other node. The paused
//! node is up and runs them, so this is a planned move, a handoff (`HandOffGroup`): the
//! target starts a group only once the paused node has stopped and released it. If no
//! node can host a group it stays where it is, still running; a drain never takes a group
//! offline.

use haven_model::Group;
use haven_state::State;

use crate::rules::{hand_off, with_choice};
use crate::{Decision, Rule};

pub(crate) fn decide(state: &State, g: &Group, owner: &str) -> Option<Decision> {
    let name = g.spec.name.as_str();
    let p = haven_policy::place(state, name, &[]);
    let node = p.node.as_deref()?;
    let cause = format!("node {owner:?} is paused (draining)");
    Some(hand_off(Rule::Drain, name, owner, node, with_choice(&cause, &p)))
}
