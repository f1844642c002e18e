//! The properties every run must keep, checked as the simulation goes:
//!
//! 1. **One owner**: a resource never runs on two nodes at the same instant. "Runs" is the
//!    physical truth, from the moment a start *begins* (a half-started VM already writes to
//!    its disk) until its stop *completes* or its node crashes.
//! 2. **Nothing acknowledged is lost**: see `ClusterDb::check_acknowledged`.
//! 3. **Liveness** (at the end of the quiet period): every online group that was not left
//!    failed by policy runs all its resources on exactly one node, its committed owner.
//! 4. **Handoffs finish** (at the end of the quiet period): no group is still waiting for
//!    an old owner to let go; a planned move completes or is cancelled once faults stop.
//! 5. **Idle when settled**: in the last stretch of the quiet period the cluster commits
//!    (almost) nothing: no report, release or decision is repeated forever.
//!
//! This module only records and judges; it never changes what the nodes do.

use std::collections::BTreeMap;

use haven_model::ResourceState;
use haven_state::State;

use crate::clock::Micros;

/// A broken invariant, with what an engineer needs to find it in the trace.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Violation {
    pub invariant: &'static str,
    pub at: Micros,
    pub message: String,
}

impl std::fmt::Display for Violation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "[{}] {}: {}", crate::sim::fmt_time(self.at), self.invariant, self.message)
    }
}

/// Where each resource physically runs: resource → (node index → since).
#[derive(Debug, Default)]
pub struct Running {
    on: BTreeMap<String, BTreeMap<usize, Micros>>,
}

impl Running {
    /// A start begins on `node`. Invariant 1 is broken if another node runs it now.
    pub fn begin(&mut self, at: Micros, resource: &str, node: usize, names: &[String]) -> Result<(), Violation> {
        let nodes = self.on.entry(resource.to_string()).or_default();
        let other = nodes.iter().find(|(n, _)| **n != node).map(|(n, since)| (*n, *since));
        nodes.insert(node, at);
        match other {
            Some((o, since)) => Err(Violation {
                invariant: "two-owners",
                at,
                message: format!(
                    "resource {resource:?} started on node {:?} while node {:?} still runs it (since {})",
                    names[node],
                    names[o],
                    crate::sim::fmt_time(since)
                ),
            }),
            None => Ok(()),
        }
    }

    pub fn end(&mut self, resource: &str, node: usize) {
        if let Some(nodes) = self.on.get_mut(resource) {
            nodes.remove(&node);
        }
    }

    /// A crash stops everything on the node instantly.
    pub fn crash(&mut self, node: usize) {
        self.on.values_mut().for_each(|nodes| {
            nodes.remove(&node);
        });
    }

    /// The resources running on `node`.
    pub fn on_node(&self, node: usize) -> Vec<String> {
        self.on.iter().filter(|(_, nodes)| nodes.contains_key(&node)).map(|(r, _)| r.clone()).collect()
    }

    pub fn nodes_running(&self, resource: &str) -> Vec<usize> {
        self.on.get(resource).map(|n| n.keys().copied().collect()).unwrap_or_default()
    }
}

/// Invariant 3. `online_on(resource)` lists the nodes where the resource is started and
/// not being stopped. Returns one violation per group that is not where it should be.
pub fn check_liveness(
    state: &State,
    names: &[String],
    online_on: impl Fn(&str) -> Vec<usize>,
    at: Micros,
) -> (Vec<Violation>, usize) {
    let mut violations = Vec::new();
    let mut left_failed = 0;
    for g in state.groups.values().filter(|g| g.spec.online) {
        if g.failed_reason.is_some() && g.owner.is_some() {
            left_failed += 1; // policy gave up on it (threshold reached); not a liveness bug
            continue;
        }
        let Some(owner) = g.owner.as_deref() else {
            let why = g.failed_reason.as_deref().unwrap_or("no decision");
            violations.push(Violation {
                invariant: "liveness",
                at,
                message: format!("group {:?} is online but has no owner after the quiet period: {why}", g.spec.name),
            });
            continue;
        };
        for r in state.group_resources(&g.spec.name) {
            let on: Vec<&str> = online_on(&r.spec.name).into_iter().map(|i| names[i].as_str()).collect();
            if on != [owner] {
                let status = format!("{:?} on {}", r.status.state, r.status.node.as_deref().unwrap_or("-"));
                let status = if r.status.state == ResourceState::Failed {
                    format!("{status} ({})", r.status.reason.as_deref().unwrap_or(""))
                } else {
                    status
                };
                violations.push(Violation {
                    invariant: "liveness",
                    at,
                    message: format!(
                        "group {:?} (owner {owner:?}): resource {:?} runs on [{}] after the quiet period; committed status: {status}",
                        g.spec.name,
                        r.spec.name,
                        on.join(", ")
                    ),
                });
            }
        }
    }
    (violations, left_failed)
}

/// Invariant 4: one violation per group still in a handoff.
pub fn check_handoffs_done(state: &State, at: Micros) -> Vec<Violation> {
    state
        .groups
        .values()
        .filter_map(|g| {
            let h = g.handoff.as_ref()?;
            Some(Violation {
                invariant: "handoff-stuck",
                at,
                message: format!(
                    "group {:?} is still moving from {:?} to {:?} ({}) at the end of the quiet period (generation {})",
                    g.spec.name, h.from, h.to, h.reason, g.generation
                ),
            })
        })
        .collect()
}

/// Invariant 5: the log grew from `from` to `to` entries in the last `window_ms`.
pub fn check_idle(from: usize, to: usize, window_ms: u64, max: usize, at: Micros) -> Option<Violation> {
    let commits = to.saturating_sub(from);
    (commits > max).then(|| Violation {
        invariant: "busy-when-settled",
        at,
        message: format!(
            "{commits} commits in the last {window_ms} ms of the quiet period (at most {max} expected once settled)"
        ),
    })
}
