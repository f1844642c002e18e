//! Fixtures for tests that build a cluster state by hand.

use haven_model::{Capacity, Node, NodeLiveness, NodeRole};

/// A cluster member as the tests write one: a voter, up and not paused, at `NAME:7946`,
/// with 8 CPUs and 16 GiB, whose liveness last changed at 0. Change a field with
/// struct-update syntax: `Node { role: NodeRole::Learner, ..node(6, "f") }`.
pub fn node(id: u64, name: &str) -> Node {
    Node {
        id,
        name: name.to_string(),
        address: format!("{name}:7946"),
        role: NodeRole::Voter,
        liveness: NodeLiveness::Up,
        paused: false,
        capacity: Capacity { cpus: 8, memory_mib: 16384 },
        since: 0,
    }
}
