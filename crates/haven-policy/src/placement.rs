//! Where a group should run: the eligible nodes, their order, and for every node that was
//! not eligible, why (architecture invariant 5).
//!
//! Eligible: up, not paused, a possible owner, not excluded by the caller, and with room
//! for the group's CPUs and memory next to the online groups it already owns. Order:
//! preferred owners in their listed order, then most free memory, then fewest groups,
//! then name. This module answers only "where"; it does not know why the group has to
//! move, and it never changes the state.

use haven_model::{Group, Node};
use haven_state::State;

/// A node that cannot take the group, and why, in words an operator can act on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Exclusion {
    pub node: String,
    pub why: String,
}

/// The answer of [`place`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Placement {
    /// The best node, or `None` when no node can host the group.
    pub node: Option<String>,
    /// Why the chosen node won (`preferred owner #1`, `most free memory (6144 MiB)`).
    pub chosen_because: Option<String>,
    /// Every eligible node, best first (the chosen one included).
    pub candidates: Vec<String>,
    /// Every ineligible node with its reason, by node name.
    pub reasons: Vec<Exclusion>,
}

impl Placement {
    /// The exclusions as one line: `a: down; b: paused (draining)`.
    pub fn exclusions(&self) -> String {
        if self.reasons.is_empty() {
            return "the cluster has no nodes".to_string();
        }
        self.reasons.iter().map(|e| format!("{}: {}", e.node, e.why)).collect::<Vec<_>>().join("; ")
    }

    /// Why the group cannot run anywhere: `no node can host it (a: down; b: paused (draining))`.
    pub fn nowhere(&self) -> String {
        format!("no node can host it ({})", self.exclusions())
    }
}

/// What a node already carries: the online groups it owns.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NodeUsage {
    pub groups: usize,
    pub cpus: u64,
    pub memory_mib: u64,
}

/// The CPUs, memory and number of the online groups `node` owns, not counting
/// `except_group` (the group being placed, which would leave its current node).
pub fn node_usage(state: &State, node: &str, except_group: &str) -> NodeUsage {
    state
        .groups
        .values()
        .filter(|g| g.spec.online && g.owner.as_deref() == Some(node) && g.spec.name != except_group)
        .fold(NodeUsage::default(), |u, g| NodeUsage {
            groups: u.groups + 1,
            cpus: u.cpus + u64::from(g.spec.cpus),
            memory_mib: u.memory_mib + g.spec.memory_mib,
        })
}

/// Why `node` cannot host `group`, or `None` if it can.
fn ineligible(group: &Group, node: &Node, usage: &NodeUsage, exclude: &[&str]) -> Option<String> {
    let spec = &group.spec;
    if node.role == haven_model::NodeRole::Witness {
        return Some("a witness (votes, runs no resources)".to_string());
    }
    if !spec.possible_owners.is_empty() && !spec.possible_owners.contains(&node.name) {
        return Some("not a possible owner".to_string());
    }
    if !node.is_up() {
        return Some("down".to_string());
    }
    if node.paused {
        return Some("paused (draining)".to_string());
    }
    if exclude.contains(&node.name.as_str()) {
        return Some("excluded: previous owner that failed the group".to_string());
    }
    let free_cpus = u64::from(node.capacity.cpus).saturating_sub(usage.cpus);
    let free_mem = node.capacity.memory_mib.saturating_sub(usage.memory_mib);
    let mut short = Vec::new();
    if u64::from(spec.cpus) > free_cpus {
        short.push(format!("needs {} CPUs, {free_cpus} free", spec.cpus));
    }
    if spec.memory_mib > free_mem {
        short.push(format!("needs {} MiB, {free_mem} MiB free", spec.memory_mib));
    }
    if short.is_empty() { None } else { Some(short.join("; ")) }
}

/// The best node for `group` and the reasons every other ineligible node was passed
/// over. `exclude` lists nodes the caller rules out because they already failed the group
/// (their reason reads "excluded: previous owner that failed the group"). An unknown
/// group gets no node and no reasons.
pub fn place(state: &State, group: &str, exclude: &[&str]) -> Placement {
    let Some(g) = state.groups.get(group) else {
        return Placement { node: None, chosen_because: None, candidates: Vec::new(), reasons: Vec::new() };
    };
    let mut reasons = Vec::new();
    // (preferred rank, free memory, groups, name)
    let mut eligible: Vec<(usize, u64, usize, &str)> = Vec::new();
    for node in state.nodes.values() {
        let usage = node_usage(state, &node.name, group);
        match ineligible(g, node, &usage, exclude) {
            Some(why) => reasons.push(Exclusion { node: node.name.clone(), why }),
            None => {
                let rank = g.spec.preferred_owners.iter().position(|p| *p == node.name).unwrap_or(usize::MAX);
                let free_mem = node.capacity.memory_mib.saturating_sub(usage.memory_mib);
                eligible.push((rank, free_mem, usage.groups, node.name.as_str()));
            }
        }
    }
    eligible.sort_by(|a, b| a.0.cmp(&b.0).then(b.1.cmp(&a.1)).then(a.2.cmp(&b.2)).then(a.3.cmp(b.3)));
    let chosen_because = eligible.first().map(|&(rank, free_mem, groups, _)| {
        if rank != usize::MAX {
            format!("preferred owner #{}", rank + 1)
        } else {
            let tie = eligible.get(1).filter(|o| o.0 == rank && o.1 == free_mem);
            match tie {
                Some(o) if o.2 == groups => {
                    format!("most free memory ({free_mem} MiB), {groups} groups, first by name")
                }
                Some(_) => format!("most free memory ({free_mem} MiB), fewest groups ({groups})"),
                None => format!("most free memory ({free_mem} MiB)"),
            }
        }
    });
    Placement {
        node: eligible.first().map(|e| e.3.to_string()),
        chosen_because,
        candidates: eligible.iter().map(|e| e.3.to_string()).collect(),
        reasons,
    }
}

#[cfg(test)]
mod tests {
    use haven_model::{Capacity, GroupSpec, NodeLiveness};
    use haven_state::{Command, Request};

    use super::*;

    fn node(id: u64, name: &str, memory_mib: u64) -> Node {
        let node = haven_scenario::node(id, name);
        Node { capacity: Capacity { memory_mib, ..node.capacity }, ..node }
    }

    fn apply(s: &mut State, command: Command) {
        s.apply(&Request::new(0, "test", command)).expect("setup command applies");
    }

    /// Nodes a (8 GiB), b (16 GiB), c (16 GiB); group `web` needs 4 GiB.
    fn cluster() -> State {
        let mut s = State::default();
        apply(&mut s, Command::InitCluster { name: "t".into(), node: node(1, "a", 8192) });
        apply(&mut s, Command::AddNode { node: node(2, "b", 16384) });
        apply(&mut s, Command::AddNode { node: node(3, "c", 16384) });
        let mut spec = GroupSpec::new("web");
        spec.memory_mib = 4096;
        apply(&mut s, Command::CreateGroup { spec });
        s
    }

    fn with_group(s: &mut State, name: &str, memory_mib: u64, owner: &str) {
        let mut spec = GroupSpec::new(name);
        spec.memory_mib = memory_mib;
        apply(s, Command::CreateGroup { spec });
        let place =
            Command::PlaceGroup { name: name.into(), node: Some(owner.into()), reason: "t".into(), failover: false };
        apply(s, place);
    }

    #[test]
    fn most_free_memory_then_fewest_groups_then_name() {
        let mut s = cluster();
        let p = place(&s, "web", &[]);
        assert_eq!(p.node.as_deref(), Some("b"));
        assert_eq!(p.candidates, ["b", "c", "a"]);
        assert_eq!(p.chosen_because.as_deref(), Some("most free memory (16384 MiB), 0 groups, first by name"));
        with_group(&mut s, "small", 0, "b");
        let p = place(&s, "web", &[]);
        assert_eq!(p.node.as_deref(), Some("c"));
        assert_eq!(p.chosen_because.as_deref(), Some("most free memory (16384 MiB), fewest groups (0)"));
    }

    #[test]
    fn preferred_owners_first_in_order() {
        let mut s = cluster();
        let update =
            haven_model::GroupUpdate { preferred_owners: Some(vec!["a".into(), "c".into()]), ..Default::default() };
        apply(&mut s, Command::UpdateGroup { name: "web".into(), update });
        let p = place(&s, "web", &[]);
        assert_eq!(p.node.as_deref(), Some("a"));
        assert_eq!(p.candidates, ["a", "c", "b"]);
        assert_eq!(p.chosen_because.as_deref(), Some("preferred owner #1"));
        let p = place(&s, "web", &["a"]);
        assert_eq!(p.node.as_deref(), Some("c"));
        assert_eq!(
            p.reasons,
            [Exclusion { node: "a".into(), why: "excluded: previous owner that failed the group".into() }]
        );
    }

    #[test]
    fn every_ineligible_node_has_a_reason() {
        let mut s = cluster();
        with_group(&mut s, "big", 14336, "c");
        apply(&mut s, Command::SetNodePaused { name: "b".into(), paused: true });
        apply(&mut s, Command::SetNodeLiveness { name: "a".into(), liveness: NodeLiveness::Down, reason: "t".into() });
        let p = place(&s, "web", &[]);
        assert_eq!(p.node, None);
        assert_eq!(
            p.nowhere(),
            "no node can host it (a: down; b: paused (draining); c: needs 4096 MiB, 2048 MiB free)"
        );
    }

    #[test]
    fn the_group_itself_does_not_count_against_its_owner() {
        let mut s = cluster();
        let place_on_a =
            Command::PlaceGroup { name: "web".into(), node: Some("a".into()), reason: "t".into(), failover: false };
        apply(&mut s, place_on_a);
        with_group(&mut s, "other", 4096, "a");
        // a has 8192: `other` takes 4096, `web` itself is not counted, so `web` still fits.
        assert!(place(&s, "web", &[]).candidates.contains(&"a".to_string()));
        assert_eq!(node_usage(&s, "a", "web"), NodeUsage { groups: 1, cpus: 0, memory_mib: 4096 });
    }

    #[test]
    fn possible_owners_limit_the_candidates() {
        let mut s = cluster();
        let update = haven_model::GroupUpdate { possible_owners: Some(vec!["c".into()]), ..Default::default() };
        apply(&mut s, Command::UpdateGroup { name: "web".into(), update });
        let p = place(&s, "web", &[]);
        assert_eq!(p.candidates, ["c"]);
        assert_eq!(p.exclusions(), "a: not a possible owner; b: not a possible owner");
    }
}
