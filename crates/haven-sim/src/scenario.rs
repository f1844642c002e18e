//! Scenario generation: from a seed, the cluster (nodes, groups, resources with their
//! properties) and the faults injected while the run is in its fault phase.
//!
//! The cluster is created through real commands (`InitCluster`, `AddNode`,
//! `CreateGroup`, `CreateResource`) so the simulated state is one an operator could make.
//! Capacity is generous on purpose: every group always fits on every node, which keeps
//! the liveness invariant free of bin-packing questions.

use haven_model::{
    Capacity, Dur, GroupSpec, Node, NodeLiveness, NodeRole, ResourceKind, ResourceProps, ResourceSpec, RestartAction,
};
use haven_state::{Command, Request};

use crate::clock::EPOCH_US;
use crate::rng::Rng;

#[derive(Debug)]
pub struct Scenario {
    pub nodes: Vec<String>,
    pub groups: Vec<String>,
    pub setup: Vec<Request>,
}

/// A fault the generator can inject.
#[derive(Clone, Debug)]
pub enum Fault {
    /// Split the nodes into two sides (`sides[i]`), healed after `heal_after_ms`.
    Partition {
        sides: Vec<u8>,
        heal_after_ms: u64,
    },
    Crash {
        node: usize,
        restart_after_ms: u64,
    },
    CrashLeader {
        restart_after_ms: u64,
    },
    /// Lose this share of messages for a while.
    Loss {
        rate: f64,
        for_ms: u64,
    },
    /// Slow network: one-way delays up to `max_ms` for a while.
    Slow {
        max_ms: u64,
        for_ms: u64,
    },
    /// A slow disk on one node: for a while it applies committed entries up to `lag_ms`
    /// late, while its network (renewals, grants) stays fast. A node that gets a lease then
    /// may still see an old state: what the catch-up gate (`Lease::may_run`) is for.
    SlowDisk {
        node: usize,
        lag_ms: u64,
        for_ms: u64,
    },
    /// A frozen agent (SIGSTOP, a hung read): for a while the node's agent does nothing
    /// (everything it would do waits until it thaws) and reaches nobody, while its
    /// resources run on — until its node guard, which is not frozen, kills them.
    FreezeAgent {
        node: usize,
        for_ms: u64,
    },
}

pub fn generate(rng: &mut Rng, nodes: Option<usize>) -> Scenario {
    let n = nodes.unwrap_or_else(|| rng.range(3, 5) as usize);
    let names: Vec<String> = (1..=n).map(|i| format!("n{i}")).collect();
    let at = EPOCH_US / 1000;
    let node = |i: usize| Node {
        id: i as u64 + 1,
        name: names[i].clone(),
        address: format!("{}:7946", names[i]),
        role: if i < 5 { NodeRole::Voter } else { NodeRole::Learner },
        liveness: NodeLiveness::Up,
        paused: false,
        capacity: Capacity { cpus: 16, memory_mib: 65536 },
        since: 0,
    };
    let mut setup = vec![Request::new(at, "operator", Command::InitCluster { name: "sim".into(), node: node(0) })];
    for i in 1..n {
        setup.push(Request::new(at, "operator", Command::AddNode { node: node(i) }));
    }
    let group_count = rng.range(2, 4) as usize;
    let mut groups = Vec::new();
    for gi in 1..=group_count {
        let name = format!("g{gi}");
        let mut spec = GroupSpec::new(&name);
        spec.memory_mib = rng.range(1, 8) * 512;
        spec.cpus = rng.range(0, 2) as u32;
        if rng.chance(0.5) {
            spec.preferred_owners = vec![names[rng.below(n)].clone()];
        }
        if rng.chance(0.3) {
            let mut owners: Vec<String> = names.iter().filter(|_| rng.chance(0.7)).cloned().collect();
            if owners.len() < 2 {
                owners = names.clone();
            }
            spec.possible_owners = owners;
        }
        setup.push(Request::new(at, "operator", Command::CreateGroup { spec }));
        let resources = rng.range(1, 2);
        for ri in 0..resources {
            let rname = format!("{name}-{}", ["a", "b"][ri as usize]);
            let restart_action = match rng.below(10) {
                0 => RestartAction::RestartNoFailover,
                _ => RestartAction::RestartAndFailover,
            };
            let props = ResourceProps {
                restart_action,
                restart_threshold: rng.range(0, 2) as u32,
                restart_period: Dur::from_secs(60),
                restart_delay: Dur::from_millis(rng.range(100, 500)),
                looks_alive_interval: Dur::from_millis(1000),
                pending_timeout: Dur::from_millis(rng.range(2_000, 8_000)),
                ..ResourceProps::default()
            };
            let spec = ResourceSpec {
                name: rname,
                group: name.clone(),
                kind: ResourceKind::Process,
                params: serde_json::json!({ "argv": ["sleep", "infinity"] }),
                props,
                depends_on: if ri == 1 { vec![format!("{name}-a")] } else { vec![] },
            };
            setup.push(Request::new(at, "operator", Command::CreateResource { spec }));
        }
        groups.push(name);
    }
    Scenario { nodes: names, groups, setup }
}

/// The next fault and how long until it (ms).
pub fn next_fault(rng: &mut Rng, nodes: usize, aggressive_faults: bool) -> (u64, Fault) {
    let gap = if aggressive_faults { rng.range(300, 4_000) } else { rng.range(1_000, 8_000) };
    let fault = match rng.below(12) {
        0..=2 => {
            let mut sides: Vec<u8> = (0..nodes).map(|_| rng.range(0, 1) as u8).collect();
            if sides.iter().all(|s| *s == sides[0]) {
                sides[rng.below(nodes)] ^= 1;
            }
            Fault::Partition { sides, heal_after_ms: rng.range(500, 12_000) }
        }
        3..=4 => Fault::Crash { node: rng.below(nodes), restart_after_ms: rng.range(500, 15_000) },
        5 => Fault::CrashLeader { restart_after_ms: rng.range(500, 15_000) },
        6..=7 => Fault::Loss { rate: rng.float(0.05, 0.6), for_ms: rng.range(500, 8_000) },
        8..=9 => Fault::Slow { max_ms: rng.range(50, 1_400), for_ms: rng.range(500, 8_000) },
        10 => {
            Fault::SlowDisk { node: rng.below(nodes), lag_ms: rng.range(300, 3_000), for_ms: rng.range(1_000, 10_000) }
        }
        _ => Fault::FreezeAgent { node: rng.below(nodes), for_ms: rng.range(500, 12_000) },
    };
    (gap, fault)
}
