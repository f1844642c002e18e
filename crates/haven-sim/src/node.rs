//! One simulated node: its clock, its applied copy of the cluster state, its lease keeper,
//! its leader-side bookkeeping (used only while it leads: `haven_node`'s grant table and
//! leadership, the agent's own code), its leader-contact log, its status-report queue and
//! one `haven_node::GroupLrm` per group (the agent's own local resource manager).
//!
//! Plain data: the simulator (`sim`) drives it. What survives a crash is what the agent
//! keeps on disk — the applied state (Raft log and state machine in redb); everything else
//! (lease, heartbeats seen, queued reports, the LRM cores) is lost, and every resource it ran is
//! gone (the process driver ties resources to the agent's life).

use std::collections::{BTreeMap, BTreeSet};

use haven_node::guard::Feed;
use haven_node::lrm::View;
use haven_node::{ContactLog, GrantTable, GroupLrm, Leadership, Lease, LrmRule, ReportPacing, ReportQueue};
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
    /// Leader side: the agent's `lease::Grants` (the renewals received, in the leader's
    /// ms, and whether a controller tick is committing).
    pub grants: GrantTable,
    /// Leader side: the controller loop's term and `leader_since` (ms).
    pub leadership: Leadership,
    /// Status reports not yet committed: the agent's `haven_node::ReportQueue`.
    pub reports: ReportQueue,
    /// The reporter's backpressure (`haven_node::ReportPacing`, in local ms) and when (local
    /// ms) the batch in flight was sent.
    pub pacing: ReportPacing,
    pub report_sent_ms: u64,
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
    /// `haven_raft::contact`'s log (`haven_node::ContactLog`): per leader term, when (local
    /// µs) this node last vouched for that term's leader (acknowledged its leadership check,
    /// or received a renewal as that leader). A restart begins a new log, whose floor is
    /// the restart.
    pub contact: ContactLog,
    /// The agent is frozen (`Fault::FreezeAgent`): its events wait in `deferred`.
    pub frozen: bool,
    pub deferred: Vec<crate::sim::Deferred>,
    /// The node guard's knowledge: the shared `haven_node::guard::Feed`, told in the node's
    /// local ns.
    pub guard: Feed,
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
            grants: GrantTable::new(),
            leadership: Leadership::new(),
            reports: ReportQueue::new(),
            pacing: ReportPacing::new(),
            report_sent_ms: 0,
            workers: groups.iter().map(|g| (g.clone(), GroupLrm::new(g))).collect(),
            busy: BTreeMap::new(),
            broken: BTreeSet::new(),
            wakes: BTreeSet::new(),
            slow_disk: None,
            contact: ContactLog::new(clock.local(0)),
            frozen: false,
            deferred: Vec::new(),
            guard: Feed::default(),
        }
    }

    /// `LeaderContact::note` at true time `t`.
    pub fn note_contact(&mut self, term: u64, t: Micros) {
        let now = self.local(t);
        self.contact.note(term, now);
    }

    /// `LeaderContact::last_before`: local µs.
    pub fn contact_before(&self, term: u64) -> u64 {
        self.contact.last_before(term)
    }

    pub fn local(&self, t: Micros) -> u64 {
        self.clock.local(t)
    }

    /// `Lease::may_run` on this node's clock at true time `t`.
    pub fn may_run(&self, t: Micros) -> bool {
        self.lease.may_run(self.local(t), self.applied_index as u64)
    }

    /// What this node's LRM sees at its local time `local` (the agent's `lrm::Seen`).
    pub fn view(&self, local: u64, rule: LrmRule) -> View<'_> {
        View {
            me: &self.name,
            state: &self.applied,
            applied: self.applied_index as u64,
            lease: &self.lease,
            now: local,
            stopping: false,
            rule,
        }
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
        self.grants = GrantTable::new();
        self.leadership = Leadership::new();
        self.reports.clear();
        self.pacing = ReportPacing::new();
        self.workers.values_mut().for_each(|w| *w = GroupLrm::new(w.group()));
        self.busy.clear();
        self.broken.clear();
        self.wakes.clear();
        self.frozen = false;
        self.deferred.clear();
        self.guard = Feed::default();
    }

    pub fn restart(&mut self, t: Micros) {
        self.alive = true;
        self.incarnation += 1;
        self.contact = ContactLog::new(self.local(t));
    }
}
