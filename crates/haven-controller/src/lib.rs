//! The controller: runs on the Raft leader and turns the committed cluster state plus the
//! leader's own observations (heartbeat arrival times, the time it became leader) into
//! state commands, each with the reason an operator will read in the history.
//!
//! It is pure: time is an argument, it reads no clock, does no I/O, keeps no state between
//! calls and iterates only ordered maps, so the same inputs give the same commands. It
//! decides; it does not propose the commands to Raft nor execute anything on nodes — the
//! agent does that. Where a group goes is asked of `haven-policy`; this crate decides only
//! *when* a group must move and *why*.
//!
//! One rule per module under [`rules`]; [`decide`] runs them in a fixed order on a
//! projection of the state, so later rules see the effects of earlier decisions of the same
//! tick (two groups placed in one tick share a node's capacity correctly).

mod projection;
pub mod rules;

use std::collections::BTreeMap;
use std::fmt;

use haven_model::{Millis, NodeLiveness};
use haven_state::{Command, State};

use projection::Projection;

/// Lease timing the leader enforces (see DESIGN.md, "Lease protocol").
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Timing {
    /// How long a renewal keeps a node's lease valid. Default 3000.
    pub lease_ms: u64,
    /// Extra wait on the leader's side before a lost lease counts as over. Default 1000.
    pub margin_ms: u64,
    /// How long the controller waits for a silent node's lease to be over.
    pub wait: LeaseWait,
}

/// How long after a node's last renewal the controller counts its lease as over (and so
/// declares it down, or takes a group it was told to stop as stopped). Anything but
/// [`LeaseWait::LeaseAndMargin`] is unsafe and exists so the simulator can prove it notices
/// (`haven-sim`'s `BrokenRule::SkipLeaseWait`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum LeaseWait {
    /// `lease + margin`: the node's own deadline is surely past (invariant 4).
    #[default]
    LeaseAndMargin,
    /// Broken: two missed renewals (`2 × renew_ms`), while nodes keep their full lease.
    /// (No wait at all would mark *every* node down on every tick, so nothing would ever be
    /// placed: a liveness failure, not a two-owner one.)
    TwoRenewals { renew_ms: u64 },
}

impl Timing {
    /// A lease of `lease_ms` and the leader's `margin_ms`, waited out in full.
    pub const fn new(lease_ms: u64, margin_ms: u64) -> Timing {
        Timing { lease_ms, margin_ms, wait: LeaseWait::LeaseAndMargin }
    }

    /// The leader's side of a timing profile (`haven_node::TimingProfile`).
    pub const fn of(p: &haven_node::TimingProfile) -> Timing {
        Timing::new(p.lease_ms, p.margin_ms)
    }

    /// The same timing, waiting `wait` for a lease to be over.
    pub const fn with_wait(self, wait: LeaseWait) -> Timing {
        Timing { wait, ..self }
    }

    /// How long after a node's last renewal (or `leader_since`) its lease counts as over.
    pub const fn lease_over_after_ms(&self) -> u64 {
        match self.wait {
            LeaseWait::LeaseAndMargin => self.lease_ms.saturating_add(self.margin_ms),
            LeaseWait::TwoRenewals { renew_ms } => renew_ms.saturating_mul(2),
        }
    }

    /// That wait as the history's reasons word it.
    pub fn describe_wait(&self) -> String {
        match self.wait {
            LeaseWait::LeaseAndMargin => {
                format!(
                    "lease {} + margin {}",
                    haven_policy::seconds(self.lease_ms),
                    haven_policy::seconds(self.margin_ms)
                )
            }
            LeaseWait::TwoRenewals { renew_ms } => {
                format!("two renewals of {}, not the lease", haven_policy::seconds(renew_ms))
            }
        }
    }
}

impl Default for Timing {
    /// The default profile's.
    fn default() -> Self {
        Timing::of(&haven_node::TimingProfile::DEFAULT)
    }
}

/// When the first node that is up in `state` would be declared down if it renews no more
/// (the leader's ms): the controller loop wakes then rather than up to a tick later, since
/// detection time is what a failover costs.
pub fn next_lease_deadline(state: &State, obs: &Observations, timing: &Timing) -> Option<Millis> {
    state
        .nodes
        .values()
        .filter(|n| n.is_up())
        .map(|n| {
            obs.last_heartbeat
                .get(&n.name)
                .copied()
                .unwrap_or(0)
                .max(obs.leader_since)
                .saturating_add(timing.lease_over_after_ms())
        })
        .min()
}

/// What the leader saw, besides the committed state.
#[derive(Clone, Copy, Debug)]
pub struct Observations<'a> {
    /// The leader's clock, ms since the Unix epoch (UTC).
    pub now: Millis,
    /// No lease renewal granted by an earlier leader can be later than this: the moment this
    /// node became leader, or earlier once a majority of voters told when they last vouched
    /// for an earlier leader (`haven_node::contact`). Every lease counts as renewed at this
    /// time at the latest.
    pub leader_since: Millis,
    /// Per node name: when the leader last *received* a heartbeat (lease renewal) from it.
    pub last_heartbeat: &'a BTreeMap<String, Millis>,
}

/// Which rule produced a decision.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Rule {
    /// Rule 1: heartbeats stopped or resumed.
    NodeLiveness,
    /// Rule 2: an online group with no owner.
    Placement,
    /// Rule 3: the owner is down or gone.
    Failover,
    /// Rule 4: a resource failed on the owner beyond its restart threshold.
    ResourceFailure,
    /// Rule 5: the owner is paused (draining): a handoff.
    Drain,
    /// Rule 6: a more preferred owner is available and the group's failback allows it: a
    /// handoff.
    Failback,
    /// Rule 7: a down owner with a fence agent is fenced before its groups are recovered.
    Fencing,
    /// Rule 8: a planned move whose old owner went down before it released the group.
    Handoff,
}

/// One command for the Raft log and why it was decided. `why` is the same text as the
/// command's own `reason`.
#[derive(Clone, Debug, PartialEq)]
pub struct Decision {
    pub rule: Rule,
    pub command: Command,
    pub why: String,
}

impl fmt::Display for Decision {
    /// One line, as the scenario tests and logs show it:
    /// `place web -> c (failover): node "a" is down; …`, `hand off web b -> c: node "b" is
    /// paused (draining); …`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.command {
            Command::SetNodeLiveness { name, liveness, .. } => {
                let word = if *liveness == NodeLiveness::Up { "up" } else { "down" };
                write!(f, "node {name} {word}: {}", self.why)
            }
            Command::PlaceGroup { name, node, failover, .. } => {
                let to = node.as_deref().unwrap_or("none");
                let kind = if *failover { " (failover)" } else { "" };
                write!(f, "place {name} -> {to}{kind}: {}", self.why)
            }
            Command::HandOffGroup { name, from, to, .. } => write!(f, "hand off {name} {from} -> {to}: {}", self.why),
            Command::FailGroup { name, .. } => write!(f, "fail {name}: {}", self.why),
            Command::RequestFence { node, .. } => write!(f, "fence {node}: {}", self.why),
            other => write!(f, "{other:?}: {}", self.why),
        }
    }
}

/// Passes over the groups per tick. A pass may enable another decision (a group unplaced
/// in one pass is failed in the next with its exclusions); a few passes reach a fixed
/// point, and the bound keeps a rule bug from looping.
const MAX_PASSES: usize = 8;

/// Decides what the leader should commit now. Applying the returned commands in order
/// (each stamped `at = obs.now`) succeeds, every one changes the state, and calling
/// `decide` again on the result with the same observations returns nothing.
///
/// Order: node liveness first (rule 1), then each group in priority order (high first,
/// then by name), at most one decision per group per pass, by the first rule that applies:
/// offline groups and failed groups that still have an owner are left alone; unplaced
/// groups are placed (rule 2); groups whose owner is down or gone fail over (rule 3);
/// groups with a resource given up on the owner escalate (rule 4); groups on a paused node
/// drain (rule 5); otherwise failback (rule 6). A move away from an owner that is up
/// (drain, failback) is a `HandOffGroup`; a `PlaceGroup` only places a group that no node
/// that is up holds (the state refuses any other).
pub fn decide(state: &State, obs: &Observations, timing: &Timing) -> Vec<Decision> {
    let mut p = Projection::new(state, obs.now);
    rules::liveness::decide(&mut p, obs, timing);
    let tick = rules::Tick::with_timing(obs.now, timing);
    for _ in 0..MAX_PASSES {
        let before = p.len();
        for group in rules::groups_by_priority(p.state()) {
            if let Some(d) = rules::decide_group(p.state(), &group, &tick) {
                p.emit(d);
            }
        }
        if p.len() == before {
            break;
        }
    }
    p.into_decisions()
}

#[cfg(test)]
mod tests {
    use haven_model::GroupSpec;
    use haven_scenario::node;
    use haven_state::Request;

    use super::*;

    fn apply(s: &mut State, command: Command) {
        s.apply(&Request::new(0, "test", command)).expect("setup command applies");
    }

    /// `RemoveNode` refuses to remove an owner, but a state from an older version or a bug
    /// elsewhere must not strand a group on a node that no longer exists.
    #[test]
    fn group_of_a_removed_node_fails_over() {
        let mut s = State::default();
        apply(&mut s, Command::InitCluster { name: "t".into(), node: node(1, "a") });
        apply(&mut s, Command::AddNode { node: node(2, "b") });
        apply(&mut s, Command::AddNode { node: node(3, "c") });
        apply(&mut s, Command::CreateGroup { spec: GroupSpec::new("web") });
        let setup =
            Command::PlaceGroup { name: "web".into(), node: Some("a".into()), reason: "t".into(), failover: false };
        apply(&mut s, setup);
        s.nodes.remove("a");
        let heartbeats = BTreeMap::from([("b".to_string(), 9_900), ("c".to_string(), 9_900)]);
        let obs = Observations { now: 10_000, leader_since: 0, last_heartbeat: &heartbeats };
        let decisions = decide(&s, &obs, &Timing::default());
        let lines: Vec<String> = decisions.iter().map(ToString::to_string).collect();
        assert_eq!(
            lines,
            [
                r#"place web -> b (failover): node "a" is no longer a cluster member; chose "b": most free memory (16384 MiB), 0 groups, first by name"#
            ]
        );
        assert_eq!(decisions[0].rule, Rule::Failover);
    }

    #[test]
    fn utc_hour_of_now() {
        assert_eq!(rules::Tick::new(0).utc_hour, 0);
        assert_eq!(rules::Tick::new(25 * 3_600_000 + 59_999).utc_hour, 1);
    }
}
