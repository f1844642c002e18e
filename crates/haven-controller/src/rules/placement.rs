//! Rule 2, placement: an online group without an owner is placed on the best node; if no
//! node can host it, it is left failed with every node's reason. Unplaced groups are
//! retried on every tick, so a failed-for-lack-of-room group starts as soon as a node can
//! take it. Choosing the node is `haven_policy::place`; this rule only asks.

use haven_model::Group;
use haven_state::State;

use crate::rules::{fail, place, with_choice};
use crate::{Decision, Rule};

pub(crate) fn decide(state: &State, g: &Group) -> Option<Decision> {
    let name = g.spec.name.as_str();
    let p = haven_policy::place(state, name, &[]);
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
