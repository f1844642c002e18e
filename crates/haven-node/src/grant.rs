//! The leader's side of the lease: the table of renewals it received (the heartbeats the
//! controller decides liveness from) and the rule that decides whether a renewal is granted
//! (architecture invariant 3).
//!
//! The race this closes (found by `haven-sim`, seed 425 before the fix): a controller tick
//! reads the heartbeats ("node X is silent, move its groups") and then commits its
//! decisions one write at a time. A renewal granted in between would give X a fresh lease
//! while the committed state still names it the owner of groups being placed elsewhere. So
//! under [`GrantRule::Guarded`]:
//! - while a tick is committing ([`GrantTable::begin_tick`] .. [`GrantTable::end_tick`]),
//!   a renewal is recorded (the next tick sees it) and granted *provisionally*
//!   ([`GrantAnswer::Provisional`], sent as `lease::PROVISIONAL`): the lease is extended,
//!   so no grant ever waits behind the tick's commits, but a node whose lease had lapsed
//!   starts nothing until its next ordinary grant. Only such a node can be the one the tick
//!   declares down (down means no renewal for `lease + margin`, so its lease is over), and
//!   it runs nothing; a node whose lease never lapsed keeps its catch-up gate
//!   (`Lease::renewed`). Before, such a renewal waited for the tick to end, and a long tick
//!   (a failover of many groups) let every survivor's lease run out;
//! - a node the committed state marks down gets its renewal recorded (so the controller
//!   marks it up again) but no lease ([`GrantAnswer::MarkedDown`]): it starts nothing until
//!   its groups' new placements are committed and visible to it.
//!
//! The caller keeps the rest of the grant's order: it notes the request for the contact log
//! before the leadership check (`haven_raft::ClusterDb::note_grant_request`), proves its
//! leadership with a quorum round, then asks this table, passing the committed state; the
//! applied index it returns with an ordinary grant is read after that.
//!
//! Must not: read a clock (times are arguments, the leader's ms), or let anything record or
//! grant a renewal except [`GrantTable::grant`].

use std::collections::BTreeMap;

use haven_state::State;

/// Whether the leader keeps invariant 3. Anything but [`GrantRule::Guarded`] is unsafe and
/// exists so the simulator can prove it notices (`haven-sim`'s `BrokenRule::UnguardedGrant`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum GrantRule {
    /// Only provisional grants while a controller tick commits, no lease for a node marked
    /// down.
    #[default]
    Guarded,
    /// Broken: ordinary grants while a tick commits, and to nodes the state marks down (the
    /// agent before the fix).
    Unguarded,
}

/// What the leader answers one renewal.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GrantAnswer {
    /// A controller tick is committing: recorded, and granted provisionally (reply with
    /// `lease::PROVISIONAL` as the applied index).
    Provisional,
    /// The renewal was recorded (the controller marks the node up from it), but the
    /// committed state marks the node down: no lease.
    MarkedDown,
    /// The renewal was recorded and the lease is granted.
    Granted,
}

/// The leader's lease table: per node, when (the leader's ms) its last renewal was
/// recorded, and whether a controller tick is committing.
///
/// Kept across terms while the node leads in any: every entry is a renewal this node
/// received itself. Lost in a restart (a new leader counts every lease as renewed at its
/// `leader_since` anyway).
#[derive(Clone, Debug, Default)]
pub struct GrantTable {
    heartbeats: BTreeMap<String, u64>,
    ticking: bool,
}

impl GrantTable {
    pub fn new() -> GrantTable {
        GrantTable::default()
    }

    /// A controller tick begins: the heartbeats it decides from, or `None` while another
    /// tick is still committing (one at a time). Until [`GrantTable::end_tick`], every
    /// guarded grant is provisional.
    pub fn begin_tick(&mut self) -> Option<BTreeMap<String, u64>> {
        if self.ticking {
            return None;
        }
        self.ticking = true;
        Some(self.heartbeats.clone())
    }

    /// The tick's decisions are committed (or given up on): grants are ordinary again.
    pub fn end_tick(&mut self) {
        self.ticking = false;
    }

    /// Whether a controller tick is committing.
    pub fn ticking(&self) -> bool {
        self.ticking
    }

    /// The renewals recorded so far, per node (the leader's ms).
    pub fn heartbeats(&self) -> &BTreeMap<String, u64> {
        &self.heartbeats
    }

    /// Answers a renewal from `node` at `now_ms` (the leader's clock), after the leader
    /// proved its leadership; `state` is the committed state.
    pub fn grant(&mut self, node: &str, now_ms: u64, state: &State, rule: GrantRule) -> GrantAnswer {
        let guarded = rule == GrantRule::Guarded;
        self.heartbeats.insert(node.to_string(), now_ms);
        let down = state.nodes.get(node).is_some_and(|n| !n.is_up());
        if !guarded {
            GrantAnswer::Granted
        } else if down {
            GrantAnswer::MarkedDown
        } else if self.ticking {
            GrantAnswer::Provisional
        } else {
            GrantAnswer::Granted
        }
    }
}

#[cfg(test)]
mod tests {
    use haven_model::NodeLiveness;
    use haven_scenario::node;
    use haven_state::{Command, Request};

    use super::*;

    /// A cluster of `a` and `b`, `b` marked down.
    fn state_with_b_down() -> State {
        let mut s = State::default();
        let commands = [
            Command::InitCluster { name: "t".into(), node: node(1, "a") },
            Command::AddNode { node: node(2, "b") },
            Command::SetNodeLiveness { name: "b".into(), liveness: NodeLiveness::Down, reason: "test".into() },
        ];
        for c in commands {
            s.apply(&Request::new(1, "test", c)).expect("setup command applies");
        }
        s
    }

    #[test]
    fn a_grant_during_a_tick_is_provisional_and_recorded_for_the_next_tick() {
        let s = state_with_b_down();
        let mut t = GrantTable::new();
        assert_eq!(t.grant("a", 100, &s, GrantRule::Guarded), GrantAnswer::Granted);
        let seen = t.begin_tick().expect("no tick is committing");
        assert_eq!(seen, BTreeMap::from([("a".to_string(), 100)]));
        assert!(t.begin_tick().is_none(), "one tick at a time");
        assert_eq!(t.grant("a", 200, &s, GrantRule::Guarded), GrantAnswer::Provisional);
        assert_eq!(seen["a"], 100, "the tick decides from what it read");
        assert_eq!(t.heartbeats()["a"], 200, "the next tick sees it");
        assert_eq!(t.grant("b", 210, &s, GrantRule::Guarded), GrantAnswer::MarkedDown);
        t.end_tick();
        assert_eq!(t.grant("a", 300, &s, GrantRule::Guarded), GrantAnswer::Granted);
        assert_eq!(t.heartbeats()["a"], 300);
    }

    #[test]
    fn a_node_marked_down_gets_its_heartbeat_recorded_but_no_lease() {
        let s = state_with_b_down();
        let mut t = GrantTable::new();
        assert_eq!(t.grant("b", 500, &s, GrantRule::Guarded), GrantAnswer::MarkedDown);
        assert_eq!(t.heartbeats().get("b"), Some(&500), "the controller marks b up from it");
        let seen = t.begin_tick().expect("no tick is committing");
        assert_eq!(seen.get("b"), Some(&500));
    }

    #[test]
    fn a_node_unknown_to_the_state_is_granted() {
        // It is not marked down (a node joining: the state names it once its join commits).
        let mut t = GrantTable::new();
        assert_eq!(t.grant("new", 1, &State::default(), GrantRule::Guarded), GrantAnswer::Granted);
    }

    #[test]
    fn unguarded_grants_during_a_tick_and_to_nodes_marked_down() {
        let s = state_with_b_down();
        let mut t = GrantTable::new();
        let _ = t.begin_tick();
        assert_eq!(t.grant("a", 10, &s, GrantRule::Unguarded), GrantAnswer::Granted);
        assert_eq!(t.grant("b", 20, &s, GrantRule::Unguarded), GrantAnswer::Granted);
        assert_eq!(t.heartbeats().len(), 2);
        assert!(t.ticking(), "the tick is still committing");
    }
}
