//! Rule 6, failback: a healthy group moves back to a more preferred owner when its
//! `failback` setting allows it now (immediately, or inside its UTC window). When and
//! where is `haven_policy::should_fail_back`; this rule only words the decision. The
//! current owner is up and runs the group, so the move is a handoff (`HandOffGroup`).

use haven_model::{Failback, Group};
use haven_state::State;

use crate::rules::{Tick, hand_off};
use crate::{Decision, Rule};

pub(crate) fn decide(state: &State, g: &Group, owner: &str, tick: &Tick) -> Option<Decision> {
    let name = g.spec.name.as_str();
    let node = haven_policy::should_fail_back(state, name, tick.utc_hour)?;
    let rank = g.spec.preferred_owners.iter().position(|p| *p == node).map_or(0, |i| i + 1);
    let when = match g.spec.failback {
        Failback::Window { start_hour, end_hour } => {
            format!("failback window {start_hour:02}:00-{end_hour:02}:00 UTC")
        }
        _ => "failback immediate".to_string(),
    };
    let why = format!("failback to preferred owner #{rank} {node:?} ({when})");
    Some(hand_off(Rule::Failback, name, owner, &node, why))
}
