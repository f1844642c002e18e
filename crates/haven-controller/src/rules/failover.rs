//! Rule 3, failover: a group whose owner is down (its lease is over, see rule 1) or no
//! longer a member moves to the best other node, counted as a failover. Past the group's
//! failover threshold it is left failed instead. If no node can host it, it is unplaced
//! (so the dead node no longer owns it) and rule 2 takes over.
//!
//! Safety rests on rule 1: a node is down only after its lease plus the margin ran out, so
//! the old owner has stopped its resources (self-fence) before they start elsewhere. When
//! the node has a fence agent, recovery also waits until fencing it succeeded (rule 7).

use haven_model::Group;
use haven_state::State;

use crate::rules::{Tick, fail, fencing, place, with_choice};
use crate::{Decision, Rule};

/// How the owner was lost.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Lost {
    Down,
    /// Not in the state any more (RemoveNode refuses this today; handled for safety).
    Removed,
}

pub(crate) fn decide(state: &State, g: &Group, owner: &str, lost: Lost, tick: &Tick) -> Option<Decision> {
    let name = g.spec.name.as_str();
    let cause = match lost {
        Lost::Down => format!("node {owner:?} is down"),
        Lost::Removed => format!("node {owner:?} is no longer a cluster member"),
    };
    if lost == Lost::Down
        && let Some(wait) = fencing::before_recovery(state, owner, &cause, tick)
    {
        return wait;
    }
    if let Err(refused) = haven_policy::failover_allowed(g, state.nodes.len(), tick.now) {
        return Some(fail(Rule::Failover, name, format!("{cause}; {refused}")));
    }
    let p = haven_policy::place(state, name, &[]);
    match p.node.as_deref() {
        Some(node) => Some(place(Rule::Failover, name, Some(node), true, with_choice(&cause, &p))),
        None => Some(place(Rule::Failover, name, None, true, format!("{cause}; {}", p.nowhere()))),
    }
}
