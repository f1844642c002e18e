//! The local resource manager of one group on one node, as a step function: the rules the
//! agent's worker executes on the real drivers and the simulator drives with its clocks.
//!
//! A [`GroupLrm`] never calls a driver. [`GroupLrm::next`] looks at what the node knows
//! ([`View`]: its applied state, its lease, its clock) and returns the next driver call to
//! make ([`Op`]) or that there is nothing to do until some time; the caller makes the call
//! and hands the result back with [`GroupLrm::done`]. While a start or a check runs, the
//! caller asks [`GroupLrm::interrupt`] whenever something changed (state, lease, time)
//! whether to abandon it. One call at a time per group; status reports come out as the
//! `haven_state::Command`s to commit, in order.
//!
//! The rules:
//! - The group runs here while this node owns it, it is online and not left failed, the
//!   agent is not stopping, and the lease is valid. Otherwise every resource is stopped, in
//!   reverse dependency order (those no longer in the group first); without a lease they
//!   are killed, not stopped gracefully (self-fencing).
//! - Starting also needs the node to have applied the state the leader had at the grant
//!   (`Lease::may_run`); resources start one at a time in dependency order.
//! - A running resource is checked at its LooksAlive interval (cheap) and IsAlive interval
//!   (thorough). A failed check, a failed start or a start past its pending timeout is a
//!   failure: the resources that depend on it are stopped (saying so), it is stopped, and
//!   `haven_policy::restart_decision` says whether to start it again here after the restart
//!   delay or to report it failed (the controller then fails the group over).
//! - A stop that fails keeps the resource counted as running (its status stays
//!   `stopping`) and is tried again after [`STOP_RETRY`]: a resource must never be left
//!   running unwatched. Only a failed kill waits for that: when the lease ends after a
//!   graceful stop failed, the kill comes at once.
//! - A start or check in progress is abandoned when the lease ends (what it started is
//!   killed) or when the group should no longer run here (what it started is stopped and
//!   reported "start cancelled: …"). A graceful stop in progress when the lease ends
//!   becomes a kill: the others may start the resource once the margin has passed.
//! - Once a group handed off *from* this node has nothing running here, the node releases
//!   it (`ReleaseGroup`), once per placement generation, and again every
//!   [`RELEASE_AGAIN_AFTER`] while the handoff is still not over.
//! - After an agent restart, what the start-up probe found running is adopted
//!   ([`GroupLrm::adopt`]) and checked at once, never started a second time.
//!
//! [`LrmRule`] switches one of these rules off, so the simulator can prove it notices; the
//! agent always runs [`LrmRule::Safe`].

use std::collections::{BTreeMap, BTreeSet};

use haven_model::ResourceState;
use haven_policy::RestartDecision;
use haven_state::{Command, State};

use crate::{Lease, Micros};

/// A stop that failed is tried again this long after.
pub const STOP_RETRY: Micros = 1_000_000;

/// A handoff released this long ago and still not over gets its release sent again (the
/// report queue retries a release that did not commit; this covers one the state machine
/// refused, e.g. while the node was being re-added).
pub const RELEASE_AGAIN_AFTER: Micros = 5_000_000;

/// Why a running resource that is no longer in its group is stopped.
pub const GONE: &str = "the resource was deleted or moved to another group";

/// The reason given when the lease ended.
pub const SELF_FENCE: &str = "self-fence: this node's lease ended (cut off from the cluster's quorum)";

/// Which rules hold. Anything but `Safe` is unsafe and exists so that the simulator can
/// prove it notices (`haven-sim`'s `BrokenRule`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum LrmRule {
    #[default]
    Safe,
    /// Broken: resources keep running (and start) after the lease ended.
    RunPastLease,
    /// Broken: a start waits only for a valid lease, not for the node to have applied the
    /// state the leader had at the grant.
    StartBeforeCatchUp,
    /// Broken: the target of a handoff starts the group as soon as the handoff is
    /// committed, before the old owner released it.
    StartBeforeRelease,
}

/// How deep a check looks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Depth {
    /// LooksAlive: the resource's process exists.
    Cheap,
    /// IsAlive: the configured health check too.
    Thorough,
}

/// A driver call for the caller to make.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Op {
    Start {
        resource: String,
    },
    /// `kill`: no graceful stop (the lease is gone). `reason` is for logs and traces.
    Stop {
        resource: String,
        kill: bool,
        reason: Option<String>,
    },
    Check {
        resource: String,
        depth: Depth,
    },
}

impl Op {
    pub fn resource(&self) -> &str {
        match self {
            Op::Start { resource } | Op::Stop { resource, .. } | Op::Check { resource, .. } => resource,
        }
    }
}

/// What a check found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Health {
    Running,
    /// Not running (it ended without being stopped).
    Stopped,
    /// Running but unhealthy, or the check itself failed; the reason is for operators.
    Failed(String),
}

/// Why a start or check in progress is abandoned.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Interrupt {
    /// The lease ended: what the start got running is killed.
    LeaseEnded,
    /// The group should no longer run here; the reason is for operators.
    Unwanted(&'static str),
    /// The start took longer than the resource's pending timeout: a failure.
    PendingTimeout,
}

/// The result of an [`Op`], handed back to [`GroupLrm::done`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// A start finished; the error is the driver's reason.
    Started(Result<(), String>),
    /// A stop finished; the error is the driver's reason.
    Stopped(Result<(), String>),
    Checked(Health),
    /// The call was abandoned because [`GroupLrm::interrupt`] said so.
    Interrupted(Interrupt),
}

/// What the node knows at this instant: nothing else may be looked at.
#[derive(Clone, Copy, Debug)]
pub struct View<'a> {
    /// This node's name.
    pub me: &'a str,
    /// The node's applied copy of the cluster state.
    pub state: &'a State,
    /// How many log entries the node applied.
    pub applied: u64,
    pub lease: &'a Lease,
    /// The node's clock.
    pub now: Micros,
    /// The agent is shutting down: stop everything, release nothing.
    pub stopping: bool,
    pub rule: LrmRule,
}

impl View<'_> {
    fn lease_valid(&self) -> bool {
        self.rule == LrmRule::RunPastLease || self.lease.valid(self.now)
    }

    fn may_start(&self) -> bool {
        match self.rule {
            LrmRule::RunPastLease => true,
            LrmRule::StartBeforeCatchUp => self.lease.valid(self.now),
            _ => self.lease.may_run(self.now, self.applied),
        }
    }
}

/// What to do next.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Step {
    /// Make this call, then hand its outcome to [`GroupLrm::done`].
    Begin(Op),
    /// Nothing to do; look again at `wake_at` (node clock) at the latest, or when the state
    /// or the lease changes.
    Idle { wake_at: Option<Micros> },
}

/// A resource counted as running here.
#[derive(Clone, Debug)]
struct Watch {
    next_cheap: Micros,
    next_thorough: Micros,
    /// A failed stop is not tried again before this (a kill does not wait for a failed
    /// graceful stop's retry).
    stop_retry_at: Option<Micros>,
    /// Whether the stop that failed was a kill. A failed *graceful* stop never holds back
    /// a kill: once the lease ends the kill must come at once, not after [`STOP_RETRY`],
    /// or the resource runs into the margin after which the cluster starts it elsewhere.
    failed_kill: bool,
    /// Reported when it is stopped, instead of the group's reason (a cancelled start).
    stop_reason: Option<String>,
}

impl Watch {
    /// Checked cheaply at `next_cheap`, thoroughly at `next_thorough`; no stop pending.
    fn at(next_cheap: Micros, next_thorough: Micros) -> Watch {
        Watch { next_cheap, next_thorough, stop_retry_at: None, failed_kill: false, stop_reason: None }
    }

    /// Whether a stop (a kill if `kill`) must wait for the retry of one that failed.
    fn waits_for_retry(&self, now: Micros, kill: bool) -> bool {
        self.stop_retry_at.is_some_and(|t| now < t) && (self.failed_kill || !kill)
    }
}

/// The call in progress.
#[derive(Clone, Debug)]
struct Busy {
    op: Op,
    began: Micros,
    /// For a stop: the reason reported with `stopping`/`offline`, or `None` for a stop that
    /// reports nothing itself (inside a failure, which is reported after it).
    report: Option<Option<String>>,
}

/// One group's local resource manager on one node (see the module documentation).
#[derive(Clone, Debug)]
pub struct GroupLrm {
    group: String,
    running: BTreeMap<String, Watch>,
    busy: Option<Busy>,
    /// A failure being handled: the resource and why.
    failing: Option<(String, String)>,
    /// Failure times per resource, for the current placement generation.
    failures: BTreeMap<String, Vec<Micros>>,
    /// Resources given up on (past the restart threshold) in this generation.
    gave_up: BTreeSet<String>,
    not_before: BTreeMap<String, Micros>,
    generation: Option<u64>,
    /// The handoff generation released last, and when.
    released: Option<(u64, Micros)>,
}

impl GroupLrm {
    pub fn new(group: &str) -> GroupLrm {
        GroupLrm {
            group: group.to_string(),
            running: BTreeMap::new(),
            busy: None,
            failing: None,
            failures: BTreeMap::new(),
            gave_up: BTreeSet::new(),
            not_before: BTreeMap::new(),
            generation: None,
            released: None,
        }
    }

    /// Takes over resources the start-up probe found running here: they are checked at
    /// once (cheaply), never started again.
    pub fn adopt<'a>(&mut self, resources: impl IntoIterator<Item = &'a str>, state: &State, now: Micros) {
        for name in resources {
            let is_alive =
                state.resources.get(name).map(|r| us(r.spec.props.is_alive_interval.as_millis())).unwrap_or(0);
            self.running.insert(name.to_string(), Watch::at(now, now.saturating_add(is_alive)));
        }
    }

    pub fn group(&self) -> &str {
        &self.group
    }

    /// Whether `resource` counts as running here (started, or possibly left running by a
    /// call in progress or a stop that failed).
    pub fn is_running(&self, resource: &str) -> bool {
        self.running.contains_key(resource)
    }

    /// The resources counted as running here.
    pub fn running(&self) -> impl Iterator<Item = &str> {
        self.running.keys().map(String::as_str)
    }

    /// The call in progress, if any.
    pub fn busy(&self) -> Option<&Op> {
        self.busy.as_ref().map(|b| &b.op)
    }

    /// Whether this group needs a worker: something runs or is in progress here, it should
    /// run here, or a release is due. When not, the agent lets the worker go.
    pub fn active(&self, v: &View) -> bool {
        self.busy.is_some()
            || !self.running.is_empty()
            || self.failing.is_some()
            || self.desired(v)
            || self.release_due(v).is_some()
    }

    /// Whether anything could make this core [`active`](Self::active) here, whatever the
    /// lease, the clock or the agent's stop flag: it holds a call, a resource or a failure,
    /// or the group is placed here or moving to or from here. A core that is not concerned
    /// stays inactive until its group changes in the state, so a supervisor need look at
    /// it again only then (the agent's does: the cost of a commit then follows the groups
    /// it changed, not how many the state holds).
    pub fn concerns(&self, state: &State, me: &str) -> bool {
        self.busy.is_some()
            || !self.running.is_empty()
            || self.failing.is_some()
            || state.groups.get(&self.group).is_some_and(|g| {
                g.owner.as_deref() == Some(me) || g.handoff.as_ref().is_some_and(|h| h.from == me || h.to == me)
            })
    }

    /// Whether the group should run here now (starting needs more: [`View::may_start`]).
    fn desired(&self, v: &View) -> bool {
        self.why_not_here(v).is_none() && v.lease_valid()
    }

    /// Why this group should not run here now (the lease aside), if so.
    fn why_not_here(&self, v: &View) -> Option<&'static str> {
        if v.stopping {
            return Some("the agent on this node is shutting down");
        }
        let Some(g) = v.state.groups.get(&self.group) else { return Some("the group was deleted") };
        let target_early =
            v.rule == LrmRule::StartBeforeRelease && g.handoff.as_ref().is_some_and(|h| h.to == v.me && h.from != v.me);
        if target_early {
            None
        } else if g.handoff.is_some() {
            Some("the group is moving to another node")
        } else if g.owner.as_deref() != Some(v.me) {
            Some("the group is no longer placed here")
        } else if !g.spec.online {
            Some("the group was taken offline")
        } else if g.failed_reason.is_some() {
            Some("the group was left failed")
        } else {
            None
        }
    }

    /// The generation of a handoff from this node whose release is due now, if any.
    fn release_due(&self, v: &View) -> Option<u64> {
        if v.stopping || !self.running.is_empty() || self.busy.is_some() {
            return None;
        }
        let g = v.state.groups.get(&self.group)?;
        if g.handoff.as_ref().is_none_or(|h| h.from != v.me) {
            return None;
        }
        match self.released {
            Some((generation, at)) if generation == g.generation && v.now < at.saturating_add(RELEASE_AGAIN_AFTER) => {
                None
            }
            _ => Some(g.generation),
        }
    }

    /// Whether the call in progress should be abandoned now: a start or check when the
    /// lease ended or the group should no longer run here; a graceful stop when the lease
    /// ended (it becomes a kill: the rest of the cluster may start the resource once the
    /// margin after the lease has passed, however long a graceful stop would take). A kill
    /// always runs to its end.
    pub fn interrupt(&self, v: &View) -> Option<Interrupt> {
        let busy = self.busy.as_ref()?;
        let resource = match &busy.op {
            Op::Stop { kill: true, .. } => return None,
            Op::Stop { .. } => return (!v.lease_valid()).then_some(Interrupt::LeaseEnded),
            Op::Start { resource } | Op::Check { resource, .. } => resource,
        };
        if !v.lease_valid() {
            return Some(Interrupt::LeaseEnded);
        }
        if let Some(why) = self.why_not_here(v) {
            return Some(Interrupt::Unwanted(why));
        }
        if !v.state.resources.contains_key(resource) {
            return Some(Interrupt::Unwanted("the resource was deleted"));
        }
        if matches!(busy.op, Op::Start { .. }) && v.now >= self.pending_deadline(v, busy) {
            return Some(Interrupt::PendingTimeout);
        }
        None
    }

    /// When [`GroupLrm::interrupt`] may change its answer with time alone (the lease end,
    /// a start's pending timeout), while a start or check is in progress.
    pub fn deadline(&self, v: &View) -> Option<Micros> {
        let busy = self.busy.as_ref()?;
        let lease_end = (v.rule != LrmRule::RunPastLease).then(|| v.lease.valid_until()).flatten();
        match busy.op {
            Op::Stop { kill: true, .. } => None,
            Op::Stop { .. } | Op::Check { .. } => lease_end,
            Op::Start { .. } => {
                let pending = self.pending_deadline(v, busy);
                Some(lease_end.map_or(pending, |l| l.min(pending)))
            }
        }
    }

    fn pending_deadline(&self, v: &View, busy: &Busy) -> Micros {
        let timeout = v
            .state
            .resources
            .get(busy.op.resource())
            .map(|r| us(r.spec.props.pending_timeout.as_millis()))
            .unwrap_or(Micros::MAX);
        busy.began.saturating_add(timeout)
    }

    /// The next call to make, pushing the status reports to send first onto `out`. Must not
    /// be called while a call is in progress (it then returns `Idle`).
    pub fn next(&mut self, v: &View, out: &mut Vec<Command>) -> Step {
        if self.busy.is_some() {
            return Step::Idle { wake_at: None };
        }
        let fencing = !v.lease_valid();
        // A failure being handled runs to its end: dependents stopped (reverse order), then
        // the resource itself, quietly; then the restart decision.
        if let Some((name, why)) = self.failing.clone() {
            let order = v.state.start_order(&self.group);
            let affected = v.state.dependents_of(&self.group, &name);
            let dep = order.iter().rev().find(|n| affected.contains(*n) && self.running.contains_key(*n)).cloned();
            if let Some(dep) = dep {
                // A dependent is stopped for a reason its operator must see: it did not
                // fail itself, and it may stay offline (the failed one may be given up on).
                let reason = if fencing {
                    SELF_FENCE.to_string()
                } else {
                    format!("{name}, which it depends on, failed: {why}")
                };
                if let Some(step) = self.stop(v, &dep, Some(&reason), fencing, out) {
                    return step;
                }
                return self.idle(v);
            }
            if self.running.contains_key(&name) {
                return self.stop_quietly(v, &name, fencing).unwrap_or_else(|| self.idle(v));
            }
            self.failing = None;
            self.record_failure(v, &name, &why, out);
        }
        let not_here = self.why_not_here(v);
        if not_here.is_some() || fencing {
            if self.running.is_empty() {
                if let Some(generation) = self.release_due(v) {
                    self.released = Some((generation, v.now));
                    out.push(Command::ReleaseGroup { node: v.me.to_string(), group: self.group.clone(), generation });
                }
                return self.idle(v);
            }
            let reason = if fencing { SELF_FENCE } else { not_here.unwrap_or_default() };
            let order = v.state.start_order(&self.group);
            let candidates: Vec<String> = self
                .running
                .keys()
                .filter(|n| !order.contains(n))
                .cloned()
                .chain(order.iter().rev().filter(|n| self.running.contains_key(*n)).cloned())
                .collect();
            for n in candidates {
                if let Some(step) = self.stop(v, &n, Some(reason), fencing, out) {
                    return step;
                }
            }
            return self.idle(v);
        }
        let Some(g) = v.state.groups.get(&self.group) else { return self.idle(v) };
        if self.generation != Some(g.generation) {
            // A new placement: earlier local failures do not count against it.
            self.generation = Some(g.generation);
            self.failures.clear();
            self.gave_up.clear();
            self.not_before.clear();
        }
        let order = v.state.start_order(&self.group);
        // A resource deleted (or moved to another group) while it ran here is stopped first.
        let gone: Vec<String> = self.running.keys().filter(|n| !order.contains(n)).cloned().collect();
        for n in gone {
            if let Some(step) = self.stop(v, &n, Some(GONE), false, out) {
                return step;
            }
        }
        // Checks that are due, thorough before cheap.
        let due = self.running.iter().find_map(|(name, w)| {
            if w.stop_reason.is_some() || w.stop_retry_at.is_some_and(|t| v.now < t) {
                None
            } else if w.stop_retry_at.is_some() {
                // A stop that failed before the group was wanted here again: look whether
                // it still runs.
                Some((name.clone(), Depth::Cheap))
            } else if v.now >= w.next_thorough {
                Some((name.clone(), Depth::Thorough))
            } else if v.now >= w.next_cheap {
                Some((name.clone(), Depth::Cheap))
            } else {
                None
            }
        });
        if let Some((resource, depth)) = due {
            return self.begin(v, Op::Check { resource, depth }, None);
        }
        // A cancelled start left behind (its stop failed): stop it again.
        let left: Vec<String> =
            self.running.iter().filter(|(_, w)| w.stop_reason.is_some()).map(|(n, _)| n.clone()).collect();
        for n in left {
            if let Some(step) = self.stop(v, &n, None, false, out) {
                return step;
            }
        }
        // Start, in dependency order, what should run and does not.
        if v.may_start() {
            for name in &order {
                if self.running.contains_key(name) || self.gave_up.contains(name) {
                    continue;
                }
                let Some(res) = v.state.resources.get(name) else { continue };
                if !res.spec.depends_on.iter().all(|d| self.running.contains_key(d)) {
                    continue;
                }
                if self.not_before.get(name).is_some_and(|t| v.now < *t) {
                    continue;
                }
                out.push(report(v, name, ResourceState::Starting, None, false));
                return self.begin(v, Op::Start { resource: name.clone() }, None);
            }
        }
        self.idle(v)
    }

    /// Hands back the outcome of the call in progress, pushing the reports it causes.
    pub fn done(&mut self, v: &View, outcome: Outcome, out: &mut Vec<Command>) {
        let Some(busy) = self.busy.take() else { return };
        let fresh = |v: &View, name: &str| {
            let (cheap, thorough) = v
                .state
                .resources
                .get(name)
                .map(|r| {
                    (us(r.spec.props.looks_alive_interval.as_millis()), us(r.spec.props.is_alive_interval.as_millis()))
                })
                .unwrap_or((0, 0));
            Watch::at(v.now.saturating_add(cheap), v.now.saturating_add(thorough))
        };
        match (busy.op, outcome) {
            (Op::Start { resource }, Outcome::Started(Ok(()))) => {
                self.running.insert(resource.clone(), fresh(v, &resource));
                out.push(report(v, &resource, ResourceState::Online, None, false));
            }
            (Op::Start { resource }, Outcome::Started(Err(why))) => {
                self.running.insert(resource.clone(), fresh(v, &resource));
                self.failing = Some((resource, format!("start failed: {why}")));
            }
            (Op::Start { resource }, Outcome::Interrupted(Interrupt::PendingTimeout)) => {
                let timeout = v
                    .state
                    .resources
                    .get(&resource)
                    .map(|r| r.spec.props.pending_timeout.to_string())
                    .unwrap_or_else(|| "?".to_string());
                self.running.insert(resource.clone(), fresh(v, &resource));
                self.failing = Some((resource, format!("start did not finish within its pending timeout ({timeout})")));
            }
            (Op::Start { resource }, Outcome::Interrupted(Interrupt::LeaseEnded)) => {
                // Whatever the start got running is killed by the self-fence that follows.
                self.running.insert(resource, fresh(v, ""));
            }
            (Op::Start { resource }, Outcome::Interrupted(Interrupt::Unwanted(why))) => {
                let mut w = fresh(v, "");
                w.stop_reason = Some(format!("start cancelled: {why}"));
                self.running.insert(resource, w);
            }
            (Op::Check { resource, depth }, Outcome::Checked(health)) => match health {
                Health::Running => {
                    let f = fresh(v, &resource);
                    if let Some(w) = self.running.get_mut(&resource) {
                        // Kept after a failed stop, now that the group is wanted here
                        // again: its last report said `stopping`, which is no longer true.
                        let kept = w.stop_retry_at.take().is_some();
                        w.next_cheap = f.next_cheap;
                        if depth == Depth::Thorough {
                            w.next_thorough = f.next_thorough;
                        }
                        if kept {
                            out.push(report(v, &resource, ResourceState::Online, None, false));
                        }
                    }
                }
                Health::Stopped => self.failing = Some((resource, "stopped unexpectedly".to_string())),
                Health::Failed(why) => self.failing = Some((resource, why)),
            },
            // The next step stops the group (or self-fences).
            (Op::Check { .. }, _) => {}
            (Op::Stop { resource, .. }, Outcome::Stopped(Ok(()))) => {
                let w = self.running.remove(&resource);
                if let Some(reason) = busy.report {
                    let reason = w.and_then(|w| w.stop_reason).or(reason);
                    out.push(report(v, &resource, ResourceState::Offline, reason, false));
                }
            }
            // Cut short by the end of the lease: the self-fence kills it at once.
            (Op::Stop { .. }, Outcome::Interrupted(_)) => {}
            (Op::Stop { resource, kill, .. }, _) => {
                // Still counted as running: it is tried again, and must not run unwatched.
                if let Some(w) = self.running.get_mut(&resource) {
                    w.stop_retry_at = Some(v.now.saturating_add(STOP_RETRY));
                    w.failed_kill = kill;
                }
            }
            (Op::Start { resource }, _) => {
                // A start answered as something else: count it as possibly running.
                self.running.insert(resource, fresh(v, ""));
            }
        }
    }

    fn begin(&mut self, v: &View, op: Op, report: Option<Option<String>>) -> Step {
        self.busy = Some(Busy { op: op.clone(), began: v.now, report });
        Step::Begin(op)
    }

    /// Begins stopping `name` (reporting `stopping` with `reason`), unless a failed stop of
    /// it waits for its retry (a kill does not wait: the lease is over).
    fn stop(&mut self, v: &View, name: &str, reason: Option<&str>, kill: bool, out: &mut Vec<Command>) -> Option<Step> {
        let w = self.running.get(name)?;
        if w.waits_for_retry(v.now, kill) {
            return None;
        }
        let reason = w.stop_reason.clone().or(reason.map(str::to_string));
        out.push(report(v, name, ResourceState::Stopping, reason.clone(), false));
        let op = Op::Stop { resource: name.to_string(), kill, reason: reason.clone() };
        Some(self.begin(v, op, Some(reason)))
    }

    /// The stop inside a failure: it reports nothing itself.
    fn stop_quietly(&mut self, v: &View, name: &str, kill: bool) -> Option<Step> {
        let w = self.running.get(name)?;
        if w.waits_for_retry(v.now, kill) {
            return None;
        }
        let op = Op::Stop { resource: name.to_string(), kill, reason: None };
        Some(self.begin(v, op, None))
    }

    /// `Idle` until the earliest time something is due.
    fn idle(&self, v: &View) -> Step {
        let mut times: Vec<Micros> = Vec::new();
        for w in self.running.values() {
            times.extend(w.stop_retry_at);
            if w.stop_retry_at.is_none() {
                times.push(w.next_cheap.min(w.next_thorough));
            }
        }
        times.extend(self.not_before.values().copied());
        if !self.running.is_empty() && v.rule != LrmRule::RunPastLease {
            times.extend(v.lease.valid_until());
        }
        if let Some((_, at)) = self.released {
            times.push(at.saturating_add(RELEASE_AGAIN_AFTER));
        }
        Step::Idle { wake_at: times.into_iter().filter(|t| *t > v.now).min() }
    }

    fn record_failure(&mut self, v: &View, name: &str, why: &str, out: &mut Vec<Command>) {
        let Some(res) = v.state.resources.get(name) else { return };
        let props = &res.spec.props;
        let period = us(props.restart_period.as_millis());
        let list = self.failures.entry(name.to_string()).or_default();
        list.push(v.now);
        list.retain(|t| v.now.saturating_sub(*t) < period);
        let count = list.len();
        match haven_policy::restart_decision(props, count) {
            RestartDecision::Restart { delay_ms } => {
                self.not_before.insert(name.to_string(), v.now.saturating_add(us(delay_ms)));
                let reason = format!(
                    "{why}; restarting in place (failure {count} of {} allowed within {})",
                    props.restart_threshold, props.restart_period
                );
                out.push(report(v, name, ResourceState::Starting, Some(reason), true));
            }
            RestartDecision::GiveUp { reason } => {
                self.gave_up.insert(name.to_string());
                out.push(report(v, name, ResourceState::Failed, Some(format!("{why}; {reason}")), true));
            }
        }
    }
}

/// Milliseconds as [`Micros`], saturating.
fn us(ms: u64) -> Micros {
    ms.saturating_mul(1000)
}

fn report(v: &View, resource: &str, state: ResourceState, reason: Option<String>, failure: bool) -> Command {
    Command::ReportResource { node: v.me.to_string(), resource: resource.to_string(), state, reason, failure }
}
