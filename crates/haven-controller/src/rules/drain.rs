//! Rule 5, drain: groups owned by a paused node move to the best other node (a planned
//! move, not a failover). If no node can host a group it stays where it is, still running;
//! a drain never takes a group offline.

use haven_model::Group;
use haven_state::State;

use crate::rules::{place, with_choice};
use crate::{Decision, Rule};

pub(crate) fn decide(state: &State, g: &Group, owner: &str) -> Option<Decision> {
    let name = g.spec.name.as_str();
    let p = haven_policy::place(state, name, &[]);
    let node = p.node.as_deref()?;
    let cause = format!("node {owner:?} is paused (draining)");
    Some(place(Rule::Drain, name, Some(node), false, with_choice(&cause, &p)))
}
