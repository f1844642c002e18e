//! The discrete-event loop: a queue of timed events, the handlers that move the nodes, the
//! cluster database and the network forward, and the invariant checks after every event.
//!
//! Handlers mirror the agent's tasks: the lease keeper (`RenewTick`, `RenewReply`,
//! `RenewTimeout`), the leader's `grant` (`RenewArrive`, `GrantDone`), the controller loop
//! (`ControllerTick`, `ControllerCommit`), Raft replication (`Apply`), the LRM (`lrm_eval`,
//! `OpDone`) and the status reporter (`ReportSend`, `ReportArrive`, `ReportRetry`). Faults
//! come from `scenario`. Nothing here decides placement or liveness: that is the real
//! `haven_controller::decide`.

use std::cmp::Ordering;
use std::collections::{BTreeMap, BinaryHeap, VecDeque};

use haven_controller::{Decision, LeaseWait, Observations, Timing};
use haven_node::contact::{self, ContactRule};
use haven_node::guard::{self, GuardRule};
use haven_node::leadership::Change;
use haven_node::{GrantAnswer, GrantRule, LeaseRule, PROVISIONAL, Renewal};
use haven_state::{Command, Request, State};

use crate::clock::{Clock, EPOCH_US, Micros};
use crate::cluster_db::ClusterDb;
use crate::invariants::{Running, Violation, check_handoffs_done, check_idle, check_liveness};
use crate::network::{NORMAL_DELAY_US, Network};
use crate::node::Node;
use crate::rng::Rng;
use crate::scenario::{self, Fault};
use crate::{BrokenRule, Options, Outcome, Stats};
use haven_node::lrm::{self, Health, LrmRule, Op, Step};

/// `12.345s`: simulated true time as the trace shows it.
pub fn fmt_time(t: Micros) -> String {
    format!("{}.{:03}s", t / 1_000_000, (t / 1000) % 1000)
}

const MS: u64 = 1000;

/// An event of a frozen node's agent, waiting for the thaw (`Node::deferred`).
#[derive(Debug)]
pub struct Deferred(Ev);

#[derive(Debug)]
enum Ev {
    RenewTick {
        node: usize,
        inc: u64,
    },
    RenewArrive {
        node: usize,
        leader: usize,
        term: u64,
        renewal: Renewal,
    },
    GrantDone {
        node: usize,
        leader: usize,
        leader_inc: u64,
        renewal: Renewal,
    },
    RenewReply {
        node: usize,
        inc: u64,
        renewal: Renewal,
        min_applied: u64,
    },
    RenewTimeout {
        node: usize,
        inc: u64,
        renewal: Renewal,
    },
    ControllerTick {
        node: usize,
        inc: u64,
        term: u64,
    },
    ControllerCommit {
        node: usize,
        inc: u64,
        term: u64,
        decisions: VecDeque<Decision>,
        /// The state the decisions were made on, with those committed so far applied: a
        /// decision it refuses breaks the controller's contract; one only the real log
        /// refuses was overtaken by another write (an operator's) meanwhile.
        planned: Box<State>,
    },
    Apply {
        node: usize,
        inc: u64,
        upto: usize,
    },
    LrmWake {
        node: usize,
        inc: u64,
    },
    /// The node's lease may have ended: cut short starts, then self-fence.
    LeaseEnd {
        node: usize,
        inc: u64,
    },
    OpDone {
        node: usize,
        inc: u64,
        group: usize,
        id: u64,
        /// A start or graceful stop that fails.
        fails: bool,
    },
    ReportSend {
        node: usize,
        inc: u64,
    },
    ReportArrive {
        node: usize,
        inc: u64,
        leader: usize,
        cmd: Box<Command>,
    },
    ReportRetry {
        node: usize,
        inc: u64,
    },
    Election,
    NextFault,
    NextResourceFault,
    /// An operator moves a group (`haven group move`) or pauses (drains) or resumes a node,
    /// drawn from `move_rng`.
    OperatorMove,
    /// The quiet period: the operator resumes every paused node (retried until committed).
    ResumeAll,
    Heal,
    Restart {
        node: usize,
    },
    LossEnd,
    SlowEnd,
    /// A frozen agent goes on (`Fault::FreezeAgent`).
    Thaw {
        node: usize,
        inc: u64,
    },
    /// The node guard's deadline, while its agent is frozen.
    GuardFire {
        node: usize,
        inc: u64,
    },
    QuietStart,
    /// The last `IDLE_WINDOW_MS` of the quiet period begin: count the commits from here.
    IdleFrom,
    End,
}

/// The last stretch of the quiet period in which a settled cluster must be idle.
const IDLE_WINDOW_MS: u64 = 10_000;
/// Commits allowed in that stretch (a straggling status report or two).
const IDLE_MAX_COMMITS: usize = 3;

struct Entry {
    at: Micros,
    seq: u64,
    ev: Ev,
}

impl PartialEq for Entry {
    fn eq(&self, o: &Self) -> bool {
        (self.at, self.seq) == (o.at, o.seq)
    }
}
impl Eq for Entry {}
impl PartialOrd for Entry {
    fn partial_cmp(&self, o: &Self) -> Option<Ordering> {
        Some(self.cmp(o))
    }
}
impl Ord for Entry {
    /// Reversed: the heap pops the earliest event, ties in scheduling order.
    fn cmp(&self, o: &Self) -> Ordering {
        (o.at, o.seq).cmp(&(self.at, self.seq))
    }
}

pub(crate) struct Sim {
    opts: Options,
    rng: Rng,
    /// Operator actions draw from their own stream, so that turning them on or off does not
    /// change which faults a seed brings.
    move_rng: Rng,
    now: Micros,
    queue: BinaryHeap<Entry>,
    seq: u64,
    nodes: Vec<Node>,
    names: Vec<String>,
    groups: Vec<String>,
    /// The operator's own definitions of the groups and resources (the scenario's create
    /// commands), to re-create what the churn deleted.
    definitions: Vec<Command>,
    /// The committed log's length when the last stretch of the quiet period began: after
    /// it, an idle cluster commits (almost) nothing.
    idle_from: Option<usize>,
    db: ClusterDb,
    net: Network,
    running: Running,
    /// The controller's timing (normally the nodes' lease and margin).
    timing: Timing,
    election_pending: bool,
    faults_on: bool,
    op_seq: u64,
    done: bool,
    trace: Option<Vec<String>>,
    violations: Vec<Violation>,
    stats: Stats,
}

impl Sim {
    pub(crate) fn new(seed: u64, opts: &Options) -> Sim {
        let mut rng = Rng::new(seed);
        let scenario = scenario::generate(&mut rng, opts.nodes);
        let p = opts.profile;
        let nodes: Vec<Node> = scenario
            .nodes
            .iter()
            .map(|name| {
                let offset = EPOCH_US + rng.range(0, 1_000_000);
                let drift = p.drift_ppm as i64;
                let clock = Clock::new(offset, rng.range(0, 2 * drift as u64) as i64 - drift);
                Node::new(name.clone(), clock, &scenario.setup, &scenario.groups)
            })
            .collect();
        let timing = match opts.broken {
            Some(BrokenRule::SkipLeaseWait) => {
                Timing::new(p.lease_ms, p.margin_ms).with_wait(LeaseWait::TwoRenewals { renew_ms: p.renew_ms })
            }
            _ => Timing::new(p.lease_ms, p.margin_ms),
        };
        let n = nodes.len();
        let mut sim = Sim {
            opts: opts.clone(),
            rng,
            move_rng: Rng::new(seed ^ 0x6a09_e667_f3bc_c908),
            now: 0,
            queue: BinaryHeap::new(),
            seq: 0,
            names: scenario.nodes.clone(),
            groups: scenario.groups.clone(),
            definitions: scenario
                .setup
                .iter()
                .filter(|r| matches!(r.command, Command::CreateGroup { .. } | Command::CreateResource { .. }))
                .map(|r| r.command.clone())
                .collect(),
            idle_from: None,
            nodes,
            db: ClusterDb::new(scenario.setup),
            net: Network::new(n),
            running: Running::default(),
            timing,
            election_pending: false,
            faults_on: true,
            op_seq: 0,
            done: false,
            trace: opts.trace.then(Vec::new),
            violations: Vec::new(),
            stats: Stats::default(),
        };
        sim.note(|s| {
            let clocks: Vec<String> =
                s.nodes.iter().map(|n| format!("{} {:+}ppm", n.name, n.clock.rate_ppm())).collect();
            let groups: Vec<String> =
                s.db.state
                    .groups
                    .values()
                    .map(|g| {
                        let rs: Vec<String> =
                            s.db.state
                                .group_resources(&g.spec.name)
                                .map(|r| {
                                    format!(
                                        "{}(threshold {}, {:?})",
                                        r.spec.name, r.spec.props.restart_threshold, r.spec.props.restart_action
                                    )
                                })
                                .collect();
                        format!(
                            "{}: [{}] preferred {:?} possible {:?}",
                            g.spec.name,
                            rs.join(" "),
                            g.spec.preferred_owners,
                            g.spec.possible_owners
                        )
                    })
                    .collect();
            format!(
                "scenario: profile {} (renew {}ms, lease {}ms, margin {}ms, election {}-{}ms); clocks {}; groups {}",
                s.opts.profile.name,
                p.renew_ms,
                p.lease_ms,
                p.margin_ms,
                p.election_min_ms,
                p.election_max_ms,
                clocks.join(", "),
                groups.join("; ")
            )
        });
        let first = sim.rng.below(n);
        sim.become_leader(first);
        for i in 0..n {
            let d = sim.rng.range(0, p.renew_ms * MS);
            sim.at(d, Ev::RenewTick { node: i, inc: 0 });
        }
        let d = sim.rng.range(1_000, 3_000) * MS;
        sim.at(d, Ev::NextFault);
        let d = sim.rng.range(1_000, 5_000) * MS;
        sim.at(d, Ev::NextResourceFault);
        if opts.operator_moves {
            let d = sim.move_rng.range(1_000, 8_000) * MS;
            sim.at(d, Ev::OperatorMove);
        }
        sim.at(opts.fault_ms * MS, Ev::QuietStart);
        sim.at((opts.fault_ms + opts.quiet_ms.saturating_sub(IDLE_WINDOW_MS)) * MS, Ev::IdleFrom);
        sim.at((opts.fault_ms + opts.quiet_ms) * MS, Ev::End);
        sim
    }

    pub(crate) fn run(mut self, seed: u64) -> Outcome {
        while let Some(e) = self.queue.pop() {
            debug_assert!(e.at >= self.now);
            self.now = e.at;
            self.stats.events += 1;
            self.handle(e.ev);
            if let Err(m) = self.db.check_acknowledged_cheap() {
                self.violate("lost-write", m);
            }
            if self.done {
                break;
            }
        }
        Outcome { seed, violations: self.violations, trace: self.trace.unwrap_or_default(), stats: self.stats }
    }

    // ----- plumbing -------------------------------------------------------------------

    fn at(&mut self, at: Micros, ev: Ev) {
        self.seq += 1;
        self.queue.push(Entry { at: at.max(self.now), seq: self.seq, ev });
    }

    fn after(&mut self, delay: Micros, ev: Ev) {
        self.at(self.now + delay, ev);
    }

    fn note(&mut self, line: impl FnOnce(&Sim) -> String) {
        if self.trace.is_some() {
            let text = format!("{:>9}  {}", fmt_time(self.now), line(self));
            if let Some(t) = self.trace.as_mut() {
                t.push(text);
            }
        }
    }

    fn violate(&mut self, invariant: &'static str, message: String) {
        let v = Violation { invariant, at: self.now, message };
        self.note(|_| format!("VIOLATION {v}"));
        self.violations.push(v);
        self.done = true;
    }

    fn live(&self, node: usize, inc: u64) -> bool {
        self.nodes[node].alive && self.nodes[node].incarnation == inc
    }

    fn has_quorum(&self, node: usize) -> bool {
        let n = self.nodes.len();
        self.nodes[node].alive
            && (0..n).filter(|m| self.nodes[*m].alive && self.net.connected(node, *m)).count() > n / 2
    }

    fn lease_us(&self) -> u64 {
        self.opts.profile.lease_ms * MS
    }

    /// How long a commit takes: the disk, plus a round trip to the majority while the
    /// network is slowed (`Fault::Slow`: long commits are when grants land mid-tick).
    fn write_latency(&mut self) -> Micros {
        let disk = self.rng.range(500, 5_000);
        if self.net.delay_us == NORMAL_DELAY_US {
            return disk;
        }
        let (lo, hi) = self.net.delay_us;
        disk + 2 * self.rng.range(lo, hi)
    }

    // ----- events ---------------------------------------------------------------------

    fn handle(&mut self, ev: Ev) {
        // A frozen agent does nothing: what it would do waits until it thaws.
        if let Some(n) = acting_node(&ev)
            && self.nodes[n].frozen
        {
            self.defer(n, ev);
            return;
        }
        match ev {
            Ev::RenewTick { node, inc } => self.renew_tick(node, inc),
            Ev::RenewArrive { node, leader, term, renewal } => {
                // `grant`: answer only after a quorum round proves leadership.
                let l = &self.nodes[leader];
                if !l.alive || self.db.leader != Some(leader) || self.db.term != term || !self.has_quorum(leader) {
                    return;
                }
                let leader_inc = l.incarnation;
                // `note_grant_request` on the leader, then the quorum round: every node the
                // leader reaches acknowledges it (noted as received now, the earliest it could
                // be: the real agent notes later, which only makes the bound safer).
                for m in 0..self.nodes.len() {
                    if m == leader || (self.nodes[m].alive && self.net.connected(leader, m)) {
                        let now = self.now;
                        self.nodes[m].note_contact(term, now);
                    }
                }
                let (lo, hi) = self.net.delay_us;
                let round = 2 * self.rng.range(lo, hi);
                self.after(round, Ev::GrantDone { node, leader, leader_inc, renewal });
            }
            Ev::GrantDone { node, leader, leader_inc, renewal } => {
                if !self.live(leader, leader_inc) {
                    return;
                }
                let rule = match self.opts.broken {
                    Some(BrokenRule::UnguardedGrant) => GrantRule::Unguarded,
                    _ => GrantRule::Guarded,
                };
                let now_ms = self.nodes[leader].clock.local_ms(self.now);
                let l = &mut self.nodes[leader];
                // After ensure_leader the leader has applied everything committed.
                let min_applied = match l.grants.grant(&self.names[node], now_ms, &self.db.state, rule) {
                    // During a controller tick's commits (`lease::Grants`): never waits.
                    GrantAnswer::Provisional => PROVISIONAL,
                    // Heartbeat recorded (the controller marks it up), no lease yet.
                    GrantAnswer::MarkedDown => return,
                    GrantAnswer::Granted => self.db.len() as u64,
                };
                let inc = self.nodes[node].incarnation;
                if let Some(d) = self.net.send(&mut self.rng, leader, node) {
                    self.after(d, Ev::RenewReply { node, inc, renewal, min_applied });
                }
            }
            Ev::RenewReply { node, inc, renewal, min_applied } => self.renew_reply(node, inc, renewal, min_applied),
            Ev::RenewTimeout { node, inc, renewal } => {
                if !self.live(node, inc) {
                    return;
                }
                let n = &mut self.nodes[node];
                if n.lease.renewal_failed(renewal) {
                    let next = n.clock.true_at(renewal.next_at(self.opts.profile.renew_ms * MS));
                    self.at(next, Ev::RenewTick { node, inc });
                }
            }
            Ev::ControllerTick { node, inc, term } => self.controller_tick(node, inc, term),
            Ev::ControllerCommit { node, inc, term, decisions, planned } => {
                self.controller_commit(node, inc, term, decisions, planned)
            }
            Ev::Apply { node, inc, upto } => {
                if !self.live(node, inc) {
                    return;
                }
                let upto = upto.min(self.db.len());
                let n = &mut self.nodes[node];
                if upto <= n.applied_index {
                    return;
                }
                for i in n.applied_index..upto {
                    let _ = n.applied.apply(self.db.entry(i));
                }
                n.applied_index = upto;
                self.lrm_eval(node);
            }
            Ev::LrmWake { node, inc } => {
                if self.live(node, inc) {
                    let now = self.now;
                    self.nodes[node].wakes.retain(|t| *t > now);
                    self.lrm_eval(node);
                }
            }
            Ev::LeaseEnd { node, inc } => self.lease_end(node, inc),
            Ev::OpDone { node, inc, group, id, fails } => self.op_done(node, inc, group, id, fails),
            Ev::ReportSend { node, inc } => self.report_send(node, inc),
            Ev::ReportArrive { node, inc, leader, cmd } => self.report_arrive(node, inc, leader, cmd),
            Ev::ReportRetry { node, inc } => {
                if !self.live(node, inc) {
                    return;
                }
                // Back to the front of the queue unless superseded (`ReportQueue::failed`).
                self.nodes[node].reports.failed();
                self.report_send(node, inc);
            }
            Ev::Election => self.election(),
            Ev::NextFault => self.next_fault(),
            Ev::OperatorMove => self.operator_move(),
            Ev::NextResourceFault => self.resource_fault(),
            Ev::Heal => {
                self.net.heal();
                self.note(|_| "network healed".to_string());
                self.topology_changed();
            }
            Ev::Restart { node } => self.restart(node),
            Ev::LossEnd => {
                self.net.loss = 0.0;
                self.note(|_| "message loss ends".to_string());
            }
            Ev::SlowEnd => {
                self.net.delay_us = NORMAL_DELAY_US;
                self.note(|_| "network fast again".to_string());
            }
            Ev::Thaw { node, inc } => self.thaw(node, inc),
            Ev::GuardFire { node, inc } => self.guard_fire(node, inc),
            Ev::QuietStart => {
                self.faults_on = false;
                for i in 0..self.nodes.len() {
                    let inc = self.nodes[i].incarnation;
                    self.thaw(i, inc);
                }
                self.net.heal();
                self.net.loss = 0.0;
                self.net.delay_us = NORMAL_DELAY_US;
                self.note(|_| "quiet period: faults stop, network healed, crashed nodes restart".to_string());
                for i in 0..self.nodes.len() {
                    self.restart(i);
                }
                self.topology_changed();
                if self.opts.operator_moves {
                    self.after(1_000 * MS, Ev::ResumeAll);
                }
            }
            Ev::ResumeAll => self.resume_all(),
            Ev::IdleFrom => self.idle_from = Some(self.db.len()),
            Ev::End => self.end(),
        }
    }

    // ----- lease keeper (node side) ---------------------------------------------------

    fn renew_tick(&mut self, node: usize, inc: u64) {
        if !self.live(node, inc) {
            return;
        }
        let p = self.opts.profile;
        let n = &mut self.nodes[node];
        let Some(renewal) = n.lease.begin_renewal(n.local(self.now)) else { return }; // one in flight
        let Some(leader) = self.db.leader else {
            n.lease.renewal_failed(renewal);
            let next = n.clock.true_at(renewal.next_at(p.renew_ms * MS));
            self.at(next, Ev::RenewTick { node, inc });
            return;
        };
        // `renew_once` gives up waiting after lease / 2.
        let timeout = n.clock.true_at(renewal.gives_up_at(p.lease_ms * MS));
        self.at(timeout, Ev::RenewTimeout { node, inc, renewal });
        let term = self.db.term;
        if let Some(d) = self.net.send(&mut self.rng, node, leader) {
            self.after(d, Ev::RenewArrive { node, leader, term, renewal });
        }
    }

    fn renew_reply(&mut self, node: usize, inc: u64, renewal: Renewal, min_applied: u64) {
        if !self.live(node, inc) {
            return;
        }
        let lease = self.lease_us();
        let renew = self.opts.profile.renew_ms * MS;
        let rule = match self.opts.broken {
            Some(BrokenRule::LeaseFromReceipt) => LeaseRule::FromReceipt,
            Some(BrokenRule::ProvisionalIgnoresLapse) => LeaseRule::ProvisionalIgnoresLapse,
            _ => LeaseRule::FromSend,
        };
        let guard_rule = match self.opts.broken {
            Some(BrokenRule::GuardAtLeaderDeadline) => {
                GuardRule::LeaderDeadline { lease_len: lease, margin: self.opts.profile.margin_ms * MS }
            }
            _ => GuardRule::NodeDeadline,
        };
        let n = &mut self.nodes[node];
        let received = n.local(self.now);
        if !n.lease.renewed(renewal, received, min_applied, lease, rule) {
            return;
        }
        // The lease keeper tells the guard before anyone may use the lease (the agent's
        // `lease::LeaseKeeper::renewed`), in the node's local ns.
        let told = guard::deadline(&n.lease, received, guard_rule).map(|us| us.saturating_mul(1000));
        n.guard.take(guard::line(told).as_bytes());
        let next = n.clock.true_at(renewal.next_at(renew));
        // The agent's workers wake exactly at the lease end (self-fencing waits for no tick).
        let expiry = n.lease.valid_until().map(|until| n.clock.true_at(until));
        self.at(next, Ev::RenewTick { node, inc });
        if let Some(expiry) = expiry {
            self.at(expiry, Ev::LeaseEnd { node, inc });
        }
        self.lrm_eval(node);
    }

    // ----- leader, elections, controller ---------------------------------------------

    fn become_leader(&mut self, node: usize) {
        self.db.leader = Some(node);
        self.db.term += 1;
        self.stats.elections += 1;
        let term = self.db.term;
        self.note(|s| format!("{} elected leader (term {term})", s.names[node]));
        if let Err(m) = self.db.check_acknowledged() {
            self.violate("lost-write", m);
        }
        let inc = self.nodes[node].incarnation;
        let first_tick = self.rng.range(0, self.opts.profile.renew_ms * MS / 2);
        self.after(first_tick, Ev::ControllerTick { node, inc, term });
        self.replicate();
    }

    fn topology_changed(&mut self) {
        let ok = self.db.leader.is_some_and(|l| self.has_quorum(l));
        if !ok && !self.election_pending {
            self.election_pending = true;
            let p = self.opts.profile;
            let d = self.rng.range(p.election_min_ms, p.election_max_ms) * MS;
            self.after(d, Ev::Election);
        }
        self.replicate();
    }

    fn election(&mut self) {
        self.election_pending = false;
        if self.db.leader.is_some_and(|l| self.has_quorum(l)) {
            return;
        }
        let candidates: Vec<usize> = (0..self.nodes.len()).filter(|i| self.has_quorum(*i)).collect();
        if candidates.is_empty() {
            self.note(|_| "election: no majority can meet; no leader".to_string());
            return; // retried at the next heal or restart
        }
        let c = candidates[self.rng.below(candidates.len())];
        self.become_leader(c);
    }

    fn controller_tick(&mut self, node: usize, inc: u64, term: u64) {
        if !self.live(node, inc) {
            return;
        }
        if self.db.leader != Some(node) {
            // No longer leader: the loop idles (and forgets its leadership, as the agent's).
            let now_ms = self.nodes[node].clock.local_ms(self.now);
            self.nodes[node].leadership.observe(None, now_ms);
            return;
        }
        if self.db.term != term {
            return; // a tick of an earlier term of this leader: that loop ended
        }
        let tick = self.opts.profile.renew_ms * MS / 2;
        let next = self.nodes[node].clock.after(self.now, tick);
        self.at(next, Ev::ControllerTick { node, inc, term });
        let now_ms = self.nodes[node].clock.local_ms(self.now);
        if self.nodes[node].grants.ticking() {
            return;
        }
        if self.nodes[node].leadership.observe(Some(term), now_ms) == Change::NewTerm {
            // Heartbeats are kept: they are renewals this node granted (some maybe in this
            // term, before this first tick). The agent asks the voters at once and uses the
            // answer at a later tick; here it is used at the first one (sooner: the stricter
            // test).
            if let Some(bound) = self.earlier_leaders_last_contact(node, term) {
                self.nodes[node].leadership.earlier_leaders_answered(term, bound);
            }
            let since = self.nodes[node].leadership.leader_since().unwrap_or(now_ms);
            self.note(|s| {
                format!(
                    "{}: leases of earlier leaders count as renewed at local {} (elected at {})",
                    s.names[node],
                    fmt_time(since * 1000),
                    fmt_time(now_ms * 1000)
                )
            });
        }
        let Some(leader_since) = self.nodes[node].leadership.leader_since() else { return };
        if !self.has_quorum(node) {
            return;
        }
        // From reading the heartbeats until the decisions are committed, grants are provisional.
        let Some(heartbeats) = self.nodes[node].grants.begin_tick() else { return };
        let obs = Observations { now: now_ms, leader_since, last_heartbeat: &heartbeats };
        let decisions: VecDeque<Decision> = haven_controller::decide(&self.db.state, &obs, &self.timing).into();
        if decisions.is_empty() {
            self.nodes[node].grants.end_tick();
            return;
        }
        let planned = Box::new(self.db.state.clone());
        let d = self.write_latency();
        self.after(d, Ev::ControllerCommit { node, inc, term, decisions, planned });
    }

    /// `ClusterDb::earlier_leaders_last_contact` as seen by `leader` (its clock, ms rounded
    /// up): its own note and those of the nodes it reaches, all of which are in its term
    /// here; of those, the majority with the *earliest* notes (the agent takes whichever
    /// majority answers first, so the simulator takes the least safe one). Which answers
    /// arrive is the simulated environment; how they combine is `haven_node::contact`.
    fn earlier_leaders_last_contact(&self, leader: usize, term: u64) -> Option<u64> {
        let l = &self.nodes[leader];
        let leader_now = l.local(self.now);
        let mut others: Vec<(u64, usize)> = (0..self.nodes.len())
            .filter(|m| *m != leader && self.nodes[*m].alive && self.net.connected(leader, *m))
            .map(|m| {
                let n = &self.nodes[m];
                let elapsed = n.local(self.now).saturating_sub(n.contact_before(term));
                (leader_now.saturating_sub(elapsed), m)
            })
            .collect();
        others.sort_unstable();
        let need = self.nodes.len() / 2; // besides the leader
        let mut answers: BTreeMap<u64, u64> = others.into_iter().take(need).map(|(at, m)| (m as u64, at)).collect();
        answers.insert(leader as u64, l.contact_before(term));
        let voters: Vec<u64> = (0..self.nodes.len() as u64).collect();
        let rule = match self.opts.broken {
            Some(BrokenRule::OwnContactOnly) => ContactRule::OwnOnly,
            _ => ContactRule::Majority,
        };
        contact::combine(&[voters], leader as u64, &answers, rule).map(|at| at.div_ceil(1000))
    }

    fn controller_commit(
        &mut self,
        node: usize,
        inc: u64,
        term: u64,
        mut decisions: VecDeque<Decision>,
        mut planned: Box<State>,
    ) {
        if !self.live(node, inc) {
            return;
        }
        if self.db.leader != Some(node) || self.db.term != term || !self.has_quorum(node) {
            self.nodes[node].grants.end_tick();
            self.note(|s| format!("{}: controller decisions not committed (no quorum)", s.names[node]));
            return;
        }
        // One tick's decisions are one log entry (more only past the batch bounds), as the
        // agent's `control::commit_decisions` commits them.
        let commands: Vec<Command> = decisions.iter().map(|d| d.command.clone()).collect();
        let Some(entry) = haven_state::batches(commands).into_iter().next() else {
            self.nodes[node].grants.end_tick();
            return;
        };
        let carried = match &entry {
            Command::Batch { commands } => commands.len(),
            _ => 1,
        };
        let at = self.nodes[node].clock.local_ms(self.now);
        let (index, resp) = self.db.commit(Request::new(at, "controller", entry.clone()));
        self.stats.commits += 1;
        if let (Command::Batch { .. }, Err(e)) = (&entry, &resp) {
            self.violate("controller-contract", format!("the state refused the controller's batch of {carried}: {e}"));
            return;
        }
        for outcome in haven_state::outcomes(&entry, resp) {
            let Some(d) = decisions.pop_front() else { break };
            if let Command::PlaceGroup { failover: true, .. } = d.command {
                self.stats.failovers += 1;
            }
            self.note(|s| format!("{}: commit #{index} controller: {d}", s.names[node]));
            let on_plan = planned.apply(&Request::new(at, "controller", d.command.clone()));
            if let Err(e) = outcome {
                if let Err(e) = on_plan {
                    self.violate(
                        "controller-contract",
                        format!("the state refused the controller's decision {d}: {e}"),
                    );
                    return;
                }
                // Overtaken by another write since the decision: the agent logs it, the rest
                // of the batch applies, and it decides again at its next tick.
                self.note(|s| format!("{}: controller decision {d} refused (overtaken): {e}", s.names[node]));
            }
        }
        self.replicate();
        if decisions.is_empty() {
            self.nodes[node].grants.end_tick();
        } else {
            let d = self.write_latency();
            self.after(d, Ev::ControllerCommit { node, inc, term, decisions, planned });
        }
    }

    /// Raft replication: every live node the leader reaches receives the log up to the
    /// commit index after its own delay.
    fn replicate(&mut self) {
        let Some(leader) = self.db.leader else { return };
        if !self.nodes[leader].alive {
            return;
        }
        let upto = self.db.len();
        for i in 0..self.nodes.len() {
            let n = &self.nodes[i];
            if !n.alive || n.applied_index >= upto || !self.net.connected(leader, i) {
                continue;
            }
            let inc = n.incarnation;
            // A slow disk delays the apply, not the network (the leader's own is never
            // slow here: its grants assume it applied everything committed).
            let lag = match n.slow_disk {
                Some((until, lag)) if self.now < until && i != leader => Some(lag),
                _ => None,
            };
            let mut d = if i == leader {
                self.rng.range(50, 1000)
            } else {
                let (lo, hi) = self.net.delay_us;
                self.rng.range(lo, hi) + self.rng.range(100, 2_000)
            };
            if let Some(lag) = lag {
                d += self.rng.range(lag / 2, lag);
            }
            self.after(d, Ev::Apply { node: i, inc, upto });
        }
    }

    // ----- local resource manager -------------------------------------------------------

    /// The agent's `lrm` worker loop, for every group of `node`: the shared core
    /// (`haven_node::GroupLrm`) decides; this only makes its driver calls take time.
    fn lrm_eval(&mut self, node: usize) {
        if !self.nodes[node].alive {
            return;
        }
        let local = self.nodes[node].local(self.now);
        if let Some(valid) = self.nodes[node].lease.noticed(local) {
            self.note(|s| format!("{}: lease {}", s.names[node], if valid { "acquired" } else { "lost" }));
        }
        let rule = self.lrm_rule();
        for gi in 0..self.groups.len() {
            let gname = self.groups[gi].clone();
            let n = &mut self.nodes[node];
            let Some(mut core) = n.workers.remove(&gname) else { continue };
            let mut out = Vec::new();
            let (mut begin, mut wake, mut abandoned) = (None, None, None);
            let unconcerned_but_active;
            {
                let view = n.view(local, rule);
                // The agent's supervisor looks at a core it is not concerned with only when
                // its group changes: such a core must never be active.
                unconcerned_but_active = !core.concerns(view.state, view.me) && core.active(&view);
                if let Some(op) = core.busy().cloned() {
                    // `raced` in the agent: a start or check in progress may be abandoned.
                    match core.interrupt(&view) {
                        Some(why) => {
                            core.done(&view, lrm::Outcome::Interrupted(why), &mut out);
                            abandoned = Some((op, why));
                        }
                        None => wake = core.deadline(&view),
                    }
                }
                if core.busy().is_none() {
                    match core.next(&view, &mut out) {
                        Step::Begin(op) => {
                            wake = core.deadline(&view);
                            begin = Some(op);
                        }
                        Step::Idle { wake_at } => wake = wake_at,
                    }
                }
            }
            if abandoned.is_some() {
                n.busy.remove(&gname); // its completion, if it comes, is ignored
            }
            n.workers.insert(gname.clone(), core);
            if unconcerned_but_active {
                let message =
                    format!("{}: the core of {gname} is active though it concerns the node not", self.names[node]);
                self.violate("lrm-concerns", message);
            }
            if let Some((op, why)) = abandoned {
                self.note(|s| format!("{}: {} abandoned ({why:?})", s.names[node], describe_op(&op)));
            }
            self.queue_reports(node, out);
            if let Some(w) = wake {
                self.wake(node, w);
            }
            if let Some(op) = begin {
                self.begin_op(node, gi, op);
            }
            if self.done {
                return;
            }
        }
    }

    /// The node's lease may have ended: the core abandons a start or check in progress
    /// and self-fences.
    fn lease_end(&mut self, node: usize, inc: u64) {
        if self.live(node, inc) {
            self.lrm_eval(node);
        }
    }

    fn lrm_rule(&self) -> LrmRule {
        match self.opts.broken {
            Some(BrokenRule::RunPastLease) => LrmRule::RunPastLease,
            Some(BrokenRule::StartBeforeCatchUp) => LrmRule::StartBeforeCatchUp,
            Some(BrokenRule::StartBeforeRelease) => LrmRule::StartBeforeRelease,
            _ => LrmRule::Safe,
        }
    }

    /// An `LrmWake` of `node` at its local time `local`, unless one is due then already.
    fn wake(&mut self, node: usize, local: u64) {
        let n = &mut self.nodes[node];
        let t = n.clock.true_at(local).max(self.now);
        if n.wakes.insert(t) {
            let inc = n.incarnation;
            self.at(t, Ev::LrmWake { node, inc });
        }
    }

    fn begin_op(&mut self, node: usize, group: usize, op: Op) {
        // A start fails now and then, a few hang past their pending timeout, a graceful
        // stop fails now and then (tried again by the core); kills and checks never fail.
        let faults = self.faults_on;
        let (d, fails) = match op {
            Op::Start { .. } if faults && self.rng.chance(0.01) => (3_600_000, false),
            Op::Start { .. } => (self.rng.range(50, 500), faults && self.rng.chance(0.03)),
            Op::Stop { kill: true, .. } => (self.rng.range(1, 20), false),
            Op::Stop { .. } => (self.rng.range(10, 300), faults && self.rng.chance(0.02)),
            Op::Check { .. } => (self.rng.range(1, 30), false),
        };
        let d = d * MS;
        if !matches!(op, Op::Check { .. }) {
            let what = describe_op(&op);
            self.note(|s| format!("{}: {what} (takes {}ms)", s.names[node], d / MS));
        }
        if let Op::Start { resource } = &op {
            self.stats.starts += 1;
            if let Err(v) = self.running.begin(self.now, resource, node, &self.names) {
                let detail = self.explain_owners(resource);
                self.violate(v.invariant, format!("{}; {detail}", v.message));
            }
        }
        self.op_seq += 1;
        let id = self.op_seq;
        let inc = self.nodes[node].incarnation;
        self.nodes[node].busy.insert(self.groups[group].clone(), id);
        self.after(d, Ev::OpDone { node, inc, group, id, fails });
    }

    /// What each node believed when two of them ran one resource (for the violation).
    fn explain_owners(&self, resource: &str) -> String {
        let group = self.db.state.resources.get(resource).map(|r| r.spec.group.clone()).unwrap_or_default();
        let parts: Vec<String> = self
            .running
            .nodes_running(resource)
            .into_iter()
            .map(|i| {
                let n = &self.nodes[i];
                let g = n.applied.groups.get(&group);
                let owner = g.and_then(|g| g.owner.clone()).unwrap_or("-".into());
                let handoff = g.and_then(|g| g.handoff.as_ref()).map(|h| format!(", handoff {} -> {}", h.from, h.to));
                let lease = match n.lease.valid_until() {
                    Some(u) => format!("lease until local {}", fmt_time(u.saturating_sub(n.clock.local(0)))),
                    None => "no lease".to_string(),
                };
                format!(
                    "{}: applied #{} says owner {owner}{}, {lease}, may_run {}",
                    n.name,
                    n.applied_index,
                    handoff.unwrap_or_default(),
                    n.may_run(self.now)
                )
            })
            .collect();
        let owner = self.db.state.groups.get(&group).and_then(|g| g.owner.clone()).unwrap_or("-".into());
        format!("committed owner of {group}: {owner}; {}", parts.join("; "))
    }

    fn op_done(&mut self, node: usize, inc: u64, group: usize, id: u64, fails: bool) {
        if !self.live(node, inc) {
            return;
        }
        let gname = self.groups[group].clone();
        let rule = self.lrm_rule();
        let n = &mut self.nodes[node];
        if n.busy.get(&gname) != Some(&id) {
            return; // abandoned meanwhile
        }
        n.busy.remove(&gname);
        let Some(mut core) = n.workers.remove(&gname) else { return };
        let Some(op) = core.busy().cloned() else {
            n.workers.insert(gname, core);
            return;
        };
        let res = op.resource().to_string();
        let outcome = match &op {
            Op::Start { .. } if fails => lrm::Outcome::Started(Err("exit status 1".to_string())),
            Op::Start { .. } => {
                n.broken.remove(&res);
                lrm::Outcome::Started(Ok(()))
            }
            Op::Stop { .. } if fails => lrm::Outcome::Stopped(Err("the process did not exit".to_string())),
            Op::Stop { .. } => {
                n.broken.remove(&res);
                lrm::Outcome::Stopped(Ok(()))
            }
            Op::Check { .. } if n.broken.contains(&res) => {
                lrm::Outcome::Checked(Health::Failed("the process is gone".into()))
            }
            Op::Check { .. } => lrm::Outcome::Checked(Health::Running),
        };
        let mut out = Vec::new();
        let view = n.view(n.local(self.now), rule);
        core.done(&view, outcome.clone(), &mut out);
        n.workers.insert(gname, core);
        if let lrm::Outcome::Stopped(Ok(())) = outcome {
            self.running.end(&res, node);
        }
        let what = match (&op, &outcome) {
            (_, lrm::Outcome::Started(Ok(()))) => Some("online"),
            (_, lrm::Outcome::Started(Err(_))) => Some("start failed"),
            (_, lrm::Outcome::Stopped(Ok(()))) => Some("stopped"),
            (_, lrm::Outcome::Stopped(Err(_))) => Some("stop failed"),
            (_, lrm::Outcome::Checked(Health::Failed(_))) => Some("found failed by its check"),
            _ => None,
        };
        if let Some(what) = what {
            self.note(|s| format!("{}: {res} {what}", s.names[node]));
        }
        self.queue_reports(node, out);
        self.lrm_eval(node);
    }

    fn resource_fault(&mut self) {
        if !self.faults_on {
            return;
        }
        let d = self.rng.range(1_000, 6_000) * MS;
        self.after(d, Ev::NextResourceFault);
        let mut candidates = Vec::new();
        for (i, n) in self.nodes.iter().enumerate().filter(|(_, n)| n.alive) {
            for w in n.workers.values() {
                let busy = w.busy().map(|op| op.resource().to_string());
                for r in w.running() {
                    if !n.broken.contains(r) && busy.as_deref() != Some(r) {
                        candidates.push((i, r.to_string()));
                    }
                }
            }
        }
        if candidates.is_empty() {
            return;
        }
        let (node, res) = candidates[self.rng.below(candidates.len())].clone();
        self.nodes[node].broken.insert(res.clone());
        self.note(|s| format!("fault: {res} breaks on {}", s.names[node]));
    }

    // ----- status reports -------------------------------------------------------------

    fn queue_reports(&mut self, node: usize, reports: Vec<Command>) {
        if reports.is_empty() {
            return;
        }
        let n = &mut self.nodes[node];
        for r in reports {
            n.reports.push(r);
        }
        // While the reporter waits after a slow or failed commit (`ReportPacing`), its
        // `ReportSend` is scheduled already, at the end of the wait.
        if !n.reports.in_flight() && n.clock.local_ms(self.now) >= n.pacing.ready_at() {
            let inc = n.incarnation;
            self.after(0, Ev::ReportSend { node, inc });
        }
    }

    /// The reporter's wait before its next try after a batch did not commit.
    fn report_failed(&mut self, node: usize) -> Micros {
        let n = &mut self.nodes[node];
        let wait = n.pacing.failed(n.clock.local_ms(self.now));
        n.clock.after(self.now, wait * MS) - self.now
    }

    fn report_send(&mut self, node: usize, inc: u64) {
        if !self.live(node, inc) {
            return;
        }
        // One commit at a time, of everything queued (up to the bounds), as the agent's
        // reporter sends it: nothing while reports are in flight.
        let mut batch =
            self.nodes[node].reports.next_batch(haven_node::report::REPORT_BATCH_MAX, haven_state::BATCH_MAX_BYTES);
        let cmd = match batch.len() {
            0 => return,
            1 => batch.remove(0),
            _ => Command::Batch { commands: batch },
        };
        let sent = match self.db.leader {
            Some(leader) => self.net.send(&mut self.rng, node, leader).map(|d| (leader, d)),
            None => None,
        };
        match sent {
            Some((leader, d)) => {
                let d = d + self.write_latency();
                self.nodes[node].report_sent_ms = self.nodes[node].clock.local_ms(self.now);
                self.after(d, Ev::ReportArrive { node, inc, leader, cmd: Box::new(cmd) });
            }
            None => {
                let wait = self.report_failed(node);
                self.after(wait, Ev::ReportRetry { node, inc });
            }
        }
    }

    fn report_arrive(&mut self, node: usize, inc: u64, leader: usize, cmd: Box<Command>) {
        let ok = self.nodes[leader].alive && self.db.leader == Some(leader) && self.has_quorum(leader);
        if !ok {
            if self.live(node, inc) {
                let wait = self.report_failed(node);
                self.after(wait, Ev::ReportRetry { node, inc });
            }
            return;
        }
        let at = self.nodes[node].clock.local_ms(self.now);
        let by = self.names[node].clone();
        let line = self.trace.is_some().then(|| describe_report(&cmd));
        let (index, _) = self.db.commit(Request::new(at, by, *cmd));
        self.stats.commits += 1;
        if let Some(line) = line {
            self.note(|s| format!("{}: commit #{index} report: {line}", s.names[node]));
        }
        self.replicate();
        if self.live(node, inc) {
            let n = &mut self.nodes[node];
            n.reports.sent();
            // Backpressure, as the agent's reporter: a slow commit means a wait first.
            let now_ms = n.clock.local_ms(self.now);
            let wait = n.pacing.committed(now_ms, now_ms.saturating_sub(n.report_sent_ms));
            if wait == 0 {
                self.report_send(node, inc);
            } else {
                let at = n.clock.after(self.now, wait * MS);
                self.at(at, Ev::ReportSend { node, inc });
            }
        }
    }

    // ----- operator ---------------------------------------------------------------------

    /// `haven group move G --to N` through the leader: a handoff if another node owns G.
    /// Refused (N down or paused, not a possible owner) or without quorum, it changes nothing.
    fn operator_move(&mut self) {
        if !self.faults_on {
            return;
        }
        let gap = self.move_rng.range(300, 4_000);
        self.after(gap * MS, Ev::OperatorMove);
        let group = self.groups[self.move_rng.below(self.groups.len())].clone();
        let node = self.names[self.move_rng.below(self.names.len())].clone();
        let cmd = match self.move_rng.below(12) {
            0..=2 => {
                // Pause (drain) a node, or resume it; at most a minority paused at a time.
                let paused = self.db.state.nodes.values().filter(|n| n.paused).count();
                let is_paused = self.db.state.nodes.get(&node).is_some_and(|n| n.paused);
                let pause = !is_paused && (paused + 1) * 2 < self.names.len();
                Command::SetNodePaused { name: node, paused: pause }
            }
            // Take a group offline or bring it online.
            3 => {
                let online = !self.db.state.groups.get(&group).is_some_and(|g| g.spec.online);
                Command::SetGroupOnline { name: group, online }
            }
            // Delete one of its resources (refused unless it is offline or failed), or its
            // group (refused while it has resources), or re-create what is missing.
            4 => {
                let resources: Vec<String> = self
                    .definitions_of(&group)
                    .iter()
                    .filter(|c| self.exists(c))
                    .filter_map(|c| match c {
                        Command::CreateResource { spec } => Some(spec.name.clone()),
                        _ => None,
                    })
                    .collect();
                if !resources.is_empty() && self.move_rng.below(3) != 0 {
                    Command::DeleteResource { name: resources[self.move_rng.below(resources.len())].clone() }
                } else {
                    Command::DeleteGroup { name: group }
                }
            }
            5 => match self.definitions_of(&group).into_iter().find(|c| !self.exists(c)) {
                Some(c) => c,
                None => Command::MoveGroup { name: group, node },
            },
            _ => Command::MoveGroup { name: group, node },
        };
        self.operator(cmd);
    }

    /// The scenario's create commands of `group` and its resources, the group first.
    fn definitions_of(&self, group: &str) -> Vec<Command> {
        self.definitions
            .iter()
            .filter(|c| match c {
                Command::CreateGroup { spec } => spec.name == group,
                Command::CreateResource { spec } => spec.group == group,
                _ => false,
            })
            .cloned()
            .collect()
    }

    /// Whether what a create command defines exists in the committed state.
    fn exists(&self, create: &Command) -> bool {
        match create {
            Command::CreateGroup { spec } => self.db.state.groups.contains_key(&spec.name),
            Command::CreateResource { spec } => self.db.state.resources.contains_key(&spec.name),
            _ => true,
        }
    }

    /// Commits an operator command through the leader, if there is one with quorum.
    fn operator(&mut self, cmd: Command) -> bool {
        let Some(leader) = self.db.leader.filter(|l| self.has_quorum(*l)) else { return false };
        let at = self.nodes[leader].clock.local_ms(self.now);
        let what = format!("{cmd:?}");
        let (index, resp) = self.db.commit(Request::new(at, "operator", cmd));
        self.stats.commits += 1;
        match resp {
            Ok(_) => self.note(|_| format!("operator: commit #{index} {what}")),
            Err(e) => self.note(|_| format!("operator: {what} refused: {e}")),
        }
        self.replicate();
        true
    }

    /// The operator undoes the churn: every node resumed, every group and resource that
    /// was deleted created again, every group online. Retried until all of it committed.
    fn resume_all(&mut self) {
        let paused: Vec<String> = self.db.state.nodes.values().filter(|n| n.paused).map(|n| n.name.clone()).collect();
        let mut todo: Vec<Command> =
            paused.into_iter().map(|name| Command::SetNodePaused { name, paused: false }).collect();
        todo.extend(self.definitions.iter().filter(|c| !self.exists(c)).cloned());
        for g in &self.groups {
            if self.definitions_of(g).iter().all(|c| self.exists(c))
                && self.db.state.groups.get(g).is_some_and(|g| !g.spec.online)
            {
                todo.push(Command::SetGroupOnline { name: g.clone(), online: true });
            }
        }
        let again = !todo.is_empty();
        for cmd in todo {
            if !self.operator(cmd) {
                break;
            }
        }
        // A group re-created just now is brought online by the next round.
        if again {
            self.after(1_000 * MS, Ev::ResumeAll);
        }
    }

    // ----- faults -----------------------------------------------------------------------

    fn next_fault(&mut self) {
        if !self.faults_on {
            return;
        }
        let (gap, fault) =
            scenario::next_fault(&mut self.rng, self.nodes.len(), self.opts.profile.name == "aggressive");
        self.after(gap * MS, Ev::NextFault);
        match fault {
            Fault::Partition { sides, heal_after_ms } => {
                if self.net.partitioned() {
                    return;
                }
                self.net.split(sides);
                self.note(|s| format!("fault: partition {} for {heal_after_ms}ms", s.net.describe(&s.names)));
                self.after(heal_after_ms * MS, Ev::Heal);
                self.topology_changed();
            }
            Fault::Crash { node, restart_after_ms } => self.crash(node, restart_after_ms),
            Fault::CrashLeader { restart_after_ms } => {
                if let Some(l) = self.db.leader {
                    self.crash(l, restart_after_ms);
                }
            }
            Fault::Loss { rate, for_ms } => {
                self.net.loss = rate;
                self.note(|_| format!("fault: lose {:.0}% of messages for {for_ms}ms", rate * 100.0));
                self.after(for_ms * MS, Ev::LossEnd);
            }
            Fault::Slow { max_ms, for_ms } => {
                self.net.delay_us = (200, max_ms * MS);
                self.note(|_| format!("fault: one-way delays up to {max_ms}ms for {for_ms}ms"));
                self.after(for_ms * MS, Ev::SlowEnd);
            }
            Fault::FreezeAgent { node, for_ms } => self.freeze(node, for_ms),
            Fault::SlowDisk { node, lag_ms, for_ms } => {
                self.nodes[node].slow_disk = Some((self.now + for_ms * MS, lag_ms * MS));
                self.note(|s| format!("fault: {} applies up to {lag_ms}ms late for {for_ms}ms", s.names[node]));
            }
        }
    }

    fn crash(&mut self, node: usize, restart_after_ms: u64) {
        if !self.nodes[node].alive {
            return;
        }
        // What waited for a frozen agent is handled now, as for any crashed node: its own
        // events are of a dead incarnation, a report or renewal sent to it fails.
        let waiting = std::mem::take(&mut self.nodes[node].deferred);
        self.nodes[node].crash();
        self.net.isolate(node, false);
        self.running.crash(node);
        for Deferred(ev) in waiting {
            self.after(0, ev);
        }
        if self.db.leader == Some(node) {
            self.db.leader = None; // a restarted node comes back as a follower
        }
        self.note(|s| format!("fault: {} crashes (restarts in {restart_after_ms}ms)", s.names[node]));
        self.after(restart_after_ms * MS, Ev::Restart { node });
        self.topology_changed();
    }

    /// `Fault::FreezeAgent`: the agent stops (its events wait, it reaches nobody); its
    /// resources run on; its guard fires at the deadline it was told.
    fn freeze(&mut self, node: usize, for_ms: u64) {
        if !self.nodes[node].alive || self.nodes[node].frozen {
            return;
        }
        self.nodes[node].frozen = true;
        self.net.isolate(node, true);
        let inc = self.nodes[node].incarnation;
        self.note(|s| format!("fault: {}'s agent freezes for {for_ms}ms (its resources run on)", s.names[node]));
        self.after(for_ms * MS, Ev::Thaw { node, inc });
        let n = &self.nodes[node];
        let fire = match n.guard.deadline() {
            Some(ns) => n.clock.true_at(ns / 1000 + 1),
            None => self.now,
        };
        self.at(fire, Ev::GuardFire { node, inc });
        self.topology_changed();
    }

    /// The node guard, while its agent is frozen: without a valid lease it kills every
    /// resource process of the node (the agent finds them gone when it thaws).
    fn guard_fire(&mut self, node: usize, inc: u64) {
        if !self.live(node, inc) || !self.nodes[node].frozen {
            return;
        }
        let local_ns = self.nodes[node].local(self.now).saturating_mul(1000);
        if self.nodes[node].guard.valid(local_ns) {
            let ns = self.nodes[node].guard.deadline().unwrap_or(local_ns);
            let at = self.nodes[node].clock.true_at(ns / 1000 + 1);
            self.at(at, Ev::GuardFire { node, inc });
            return;
        }
        for res in self.running.on_node(node) {
            self.running.end(&res, node);
            self.nodes[node].broken.insert(res.clone());
            self.note(|s| format!("{}: the guard kills {res} (no lease)", s.names[node]));
        }
    }

    fn thaw(&mut self, node: usize, inc: u64) {
        if !self.live(node, inc) || !self.nodes[node].frozen {
            return;
        }
        self.nodes[node].frozen = false;
        self.net.isolate(node, false);
        let waiting = std::mem::take(&mut self.nodes[node].deferred);
        self.note(|s| format!("{}'s agent thaws ({} events waited)", s.names[node], waiting.len()));
        for Deferred(ev) in waiting {
            self.after(0, ev);
        }
        self.topology_changed();
        self.lrm_eval(node);
    }

    /// Keeps a frozen agent's event for the thaw. A graceful stop that completes meanwhile
    /// has stopped the process all the same: only the agent's noticing waits.
    fn defer(&mut self, node: usize, ev: Ev) {
        if let Ev::OpDone { group, id, fails: false, .. } = &ev {
            let n = &self.nodes[node];
            let gname = &self.groups[*group];
            if n.busy.get(gname) == Some(id)
                && let Some(Op::Stop { resource, .. }) = n.workers.get(gname).and_then(|w| w.busy())
            {
                let resource = resource.clone();
                self.running.end(&resource, node);
            }
        }
        self.nodes[node].deferred.push(Deferred(ev));
    }

    fn restart(&mut self, node: usize) {
        if self.nodes[node].alive {
            return;
        }
        self.nodes[node].restart(self.now);
        let inc = self.nodes[node].incarnation;
        self.note(|s| format!("{} restarts (applied #{}, runs nothing)", s.names[node], s.nodes[node].applied_index));
        let d = self.rng.range(0, self.opts.profile.renew_ms * MS);
        self.after(d, Ev::RenewTick { node, inc });
        self.topology_changed();
    }

    // ----- end of run -------------------------------------------------------------------

    fn end(&mut self) {
        if let Err(m) = self.db.check_acknowledged() {
            self.violate("lost-write", m);
            return;
        }
        for n in self.nodes.iter().filter(|n| n.alive && n.applied_index == self.db.len()) {
            if n.applied != self.db.state {
                let name = n.name.clone();
                self.violate("replica-divergence", format!("{name}'s applied state differs from the committed one"));
                return;
            }
        }
        let online_on = |res: &str| -> Vec<usize> {
            let group = self.db.state.resources.get(res).map(|r| r.spec.group.as_str()).unwrap_or("");
            (0..self.nodes.len())
                .filter(|i| {
                    let n = &self.nodes[*i];
                    let w = n.workers.get(group);
                    let stopping = w
                        .and_then(|w| w.busy())
                        .is_some_and(|op| op.resource() == res && matches!(op, Op::Stop { .. }));
                    n.alive && w.is_some_and(|w| w.is_running(res)) && !stopping
                })
                .collect()
        };
        let (mut violations, left_failed) = check_liveness(&self.db.state, &self.names, online_on, self.now);
        violations.extend(check_handoffs_done(&self.db.state, self.now));
        if let Some(from) = self.idle_from {
            violations.extend(check_idle(from, self.db.len(), IDLE_WINDOW_MS, IDLE_MAX_COMMITS, self.now));
        }
        self.stats.left_failed += left_failed;
        for v in violations {
            self.note(|_| format!("VIOLATION {v}"));
            self.violations.push(v);
        }
        self.done = true;
    }
}

fn describe_report(c: &Command) -> String {
    match c {
        Command::Batch { commands } => commands.iter().map(describe_report).collect::<Vec<_>>().join("; "),
        Command::ReleaseGroup { group, generation, .. } => format!("release {group} (generation {generation})"),
        Command::ReportResource { resource, state, reason, failure, .. } => {
            let f = if *failure { " (failure)" } else { "" };
            let why = reason.as_ref().map(|r| format!(": {r}")).unwrap_or_default();
            format!("{resource} {state:?}{f}{why}")
        }
        other => format!("{other:?}"),
    }
}

/// A driver call as the trace shows it (`starts web`, `kills web (self-fence)`).
fn describe_op(op: &Op) -> String {
    match op {
        Op::Start { resource } => format!("starts {resource}"),
        Op::Stop { resource, kill: true, .. } => format!("kills {resource} (self-fence)"),
        Op::Stop { resource, reason: None, .. } => format!("stops failed {resource}"),
        Op::Stop { resource, .. } => format!("stops {resource}"),
        Op::Check { resource, depth } => format!("checks {resource} ({depth:?})"),
    }
}

/// The node whose agent handles `ev` (`None`: the world's events, and the guard's).
fn acting_node(ev: &Ev) -> Option<usize> {
    match ev {
        Ev::RenewTick { node, .. }
        | Ev::RenewReply { node, .. }
        | Ev::RenewTimeout { node, .. }
        | Ev::ControllerTick { node, .. }
        | Ev::ControllerCommit { node, .. }
        | Ev::Apply { node, .. }
        | Ev::LrmWake { node, .. }
        | Ev::LeaseEnd { node, .. }
        | Ev::OpDone { node, .. }
        | Ev::ReportSend { node, .. }
        | Ev::ReportRetry { node, .. } => Some(*node),
        Ev::RenewArrive { leader, .. } | Ev::GrantDone { leader, .. } | Ev::ReportArrive { leader, .. } => {
            Some(*leader)
        }
        _ => None,
    }
}
