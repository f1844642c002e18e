//! The state as it will be once this tick's decisions are committed.
//!
//! Every decision is applied here with the real `State::apply` as soon as it is made, so
//! the next rule sees its effect, a command the state would refuse or ignore is never
//! emitted, and capacity used by one placement counts against the next. This is a private
//! scratch copy: it is never proposed or stored.

use std::collections::VecDeque;

use haven_model::Millis;
use haven_state::{Request, State};

use crate::Decision;

/// The author stamped on the controller's requests.
pub(crate) const AUTHOR: &str = "controller";

pub(crate) struct Projection {
    state: State,
    now: Millis,
    decisions: Vec<Decision>,
}

impl Projection {
    pub(crate) fn new(state: &State, now: Millis) -> Self {
        // The history and the request outcomes are write-only for decisions; do not copy
        // up to HISTORY_LIMIT events or REQUEST_OUTCOME_LIMIT outcomes.
        let state = State {
            schema_version: state.schema_version,
            cluster: state.cluster.clone(),
            nodes: state.nodes.clone(),
            groups: state.groups.clone(),
            resources: state.resources.clone(),
            history: VecDeque::new(),
            next_event_id: state.next_event_id,
            fencing: state.fencing.clone(),
            fence_status: state.fence_status.clone(),
            generation_floor: state.generation_floor,
            requests: Default::default(),
            api_tokens: Default::default(),
        };
        Projection { state, now, decisions: Vec::new() }
    }

    pub(crate) fn state(&self) -> &State {
        &self.state
    }

    pub(crate) fn len(&self) -> usize {
        self.decisions.len()
    }

    /// Applies `d` to the projection and keeps it, unless it would change nothing.
    ///
    /// `apply` records an event for every command that changes the state and returns
    /// early without one for a command that would not (same owner, same failed reason, same
    /// liveness), so an unchanged event counter means "no-op".
    pub(crate) fn emit(&mut self, d: Decision) -> bool {
        let before = self.state.next_event_id;
        match self.state.apply(&Request::new(self.now, AUTHOR, d.command.clone())) {
            Ok(_) if self.state.next_event_id != before => {
                self.decisions.push(d);
                true
            }
            Ok(_) => false,
            Err(e) => {
                // Only existing nodes and groups are named, so this is a controller bug.
                if cfg!(debug_assertions) {
                    panic!("the controller decided a command the state refuses: {e}: {d}");
                }
                false
            }
        }
    }

    pub(crate) fn into_decisions(self) -> Vec<Decision> {
        self.decisions
    }
}
