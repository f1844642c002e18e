//! One simulated node: its clock, its applied copy of the cluster state, its lease keeper,
//! its leader-side bookkeeping (used only while it leads), its status-report queue and one
//! `haven_node::GroupLrm` per group (the agent's own local resource manager).
//!
//! Plain data: the simulator (`sim`) drives it. What survives a crash is what the agent
//! keeps on disk — the applied state (Raft log and state machine in redb); everything else
//! (lease, heartbeats seen, queued reports, the LRM cores) is lost, and every resource it ran is
//! gone (the process driver ties resources to the agent's life).

use std::collections::{BTreeMap, BTreeSet};

use haven_node::{GroupLrm, Lease, ReportQueue};
use haven_state::{Request, State};

use crate::clock::{Clock, Micros};

#[derive(Debug)]
pub struct Node {
    pub name: String,
    pub clock: Clock,
    pub alive: bool,
    /// Bumped at every crash and restart; events of an older incarnation are ignored.
    pub incarnation: u64,
    /// The node's own copy of the committed state and how many log entries it applied.
    pub applied: State,
    pub applied_index: usize,
    /// The lease keeper's state: the same `haven_node::Lease` the agent runs, in this
    /// node's local µs.
    pub lease: Lease,
    pub leader_side: LeaderSide,
    /// Status reports not yet committed: the agent's `haven_node::ReportQueue`.
    pub reports: ReportQueue,
    /// Per group: the agent's local resource manager core.
    pub workers: BTreeMap<String, GroupLrm>,
    /// Per group: the id of the driver call in progress (its `OpDone` event carries it; an
    /// abandoned call's completion is ignored).
    pub busy: BTreeMap<String, u64>,
    /// Resources whose process broke on this node (the world, not the node's knowledge):
    /// the next check finds them failed.
    pub broken: BTreeSet<String>,
    /// True times at which an `LrmWake` is already scheduled.
    pub wakes: BTreeSet<Micros>,
    /// A slow disk: until (true time), and how late (µs) at most it applies entries.
    pub slow_disk: Option<(Micros, Micros)>,
    /// `haven_raft::contact`: per leader term, when (local µs) this node last vouched for
    /// that term's leader (acknowledged its leadership check, or received a renewal as
    /// that leader); lost in a crash.
    pub contact: BTreeMap<u64, u64>,
    /// No contact before this (local µs): the start of the current incarnation.
    pub contact_floor: u64,
}

/// What the node keeps while it is the leader (`Agent::heartbeats` and the controller
/// loop's `leadership`).
#[derive(Debug, Default)]
pub struct LeaderSide {
    /// Per node: the leader's clock (ms) when it granted that node's last renewal.
    pub heartbeats: BTreeMap<String, u64>,
    /// (term, leader_since in ms) as the controller loop first saw this leadership.
    pub leadership: Option<(u64, u64)>,
    /// Controller decisions of this tick not yet committed.
    pub committing: bool,
}

impl Node {
    pub fn new(name: String, clock: Clock, setup: &[Request], groups: &[String]) -> Node {
        let mut applied = State::default();
        for r in setup {
            let _ = applied.apply(r);
        }
        Node {
            name,
            clock,
            alive: true,
            incarnation: 0,
            applied,
            applied_index: setup.len(),
            lease: Lease::new(),
            leader_side: LeaderSide::default(),
            reports: ReportQueue::new(),
            workers: groups.iter().map(|g| (g.clone(), GroupLrm::new(g))).collect(),
            busy: BTreeMap::new(),
            broken: BTreeSet::new(),
            wakes: BTreeSet::new(),
            slow_disk: None,
            contact: BTreeMap::new(),
            contact_floor: clock.local(0),
        }
    }

    /// `LeaderContact::note`.
    pub fn note_contact(&mut self, term: u64, t: Micros) {
        let now = self.local(t);
        let at = self.contact.entry(term).or_insert(now);
        *at = (*at).max(now);
    }

    /// `LeaderContact::last_before`: local µs.
    pub fn contact_before(&self, term: u64) -> u64 {
        self.contact.range(..term).map(|(_, at)| *at).fold(self.contact_floor, u64::max)
    }

    pub fn local(&self, t: Micros) -> u64 {
        self.clock.local(t)
    }

    /// `Lease::may_run` on this node's clock at true time `t`.
    pub fn may_run(&self, t: Micros) -> bool {
        self.lease.may_run(self.local(t), self.applied_index as u64)
    }

    /// `Lease::valid` on this node's clock at true time `t`.
    pub fn lease_valid(&self, t: Micros) -> bool {
        self.lease.valid(self.local(t))
    }

    /// A crash: everything in memory is gone; the applied state stays on disk.
    pub fn crash(&mut self) {
        self.alive = false;
        self.incarnation += 1;
        self.lease.forget();
        self.leader_side = LeaderSide::default();
        self.reports.clear();
        self.workers.values_mut().for_each(|w| *w = GroupLrm::new(w.group()));
        self.busy.clear();
        self.broken.clear();
        self.wakes.clear();
        self.contact.clear();
    }

    pub fn restart(&mut self, t: Micros) {
        self.alive = true;
        self.incarnation += 1;
        self.contact_floor = self.local(t);
    }
}
