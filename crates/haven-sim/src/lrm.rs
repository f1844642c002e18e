//! One node's local resource manager for one group, as `haven-agent`'s `GroupWorker`
//! behaves, written as a step function instead of an async task.
//!
//! The agent's worker is a sequential program that awaits one driver call at a time; here
//! [`Worker::next_step`] returns the next driver call to begin (a start or a stop, which the
//! simulator completes after its random duration) or that the worker is idle. It decides
//! with the *node's own applied state*, the node's lease (`may_run`) and the node's clock,
//! and it follows the agent's rules: run only while desired (owner here, online, not
//! failed, `may_run`), start in dependency order, check `may_run` before every start,
//! stop in reverse order when not desired, and on a failure stop the dependents and the
//! resource, then ask `haven_policy::restart_decision` whether to restart in place.
//! A failure being handled runs to completion, as the agent's `failed()` does.
//!
//! It must not look at anything the agent could not see (other nodes, the committed
//! state, true time).

use std::collections::{BTreeMap, BTreeSet};

use haven_model::ResourceState;
use haven_policy::RestartDecision;
use haven_state::State;

/// Why a running resource that is no longer in its group is stopped.
pub const GONE: &str = "the resource was deleted or moved to another group";

/// A driver call the worker is waiting for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Op {
    Start(String),
    /// `stop_one`: reports `stopping`, then `offline` with the reason. `kill`: the lease is
    /// gone, so no graceful stop (the agent's self-fence kills at once).
    Stop {
        resource: String,
        reason: Option<String>,
        kill: bool,
    },
    /// The driver stop inside `failed()`, which reports nothing by itself.
    StopFailed(String),
}

impl Op {
    pub fn resource(&self) -> &str {
        match self {
            Op::Start(r) | Op::Stop { resource: r, .. } | Op::StopFailed(r) => r,
        }
    }
}

/// What the worker does next.
#[derive(Debug, PartialEq, Eq)]
pub enum Step {
    /// Nothing to do; look again at this local time (µs) if something is pending.
    Idle {
        wake_at: Option<u64>,
    },
    Begin(Op),
}

/// A status report for the cluster (becomes `Command::ReportResource`).
#[derive(Clone, Debug, PartialEq)]
pub struct Report {
    pub resource: String,
    pub state: ResourceState,
    pub reason: Option<String>,
    pub failure: bool,
}

/// What the worker is allowed to know this instant.
pub struct View<'a> {
    pub me: &'a str,
    pub group: &'a str,
    /// The node's applied copy of the cluster state.
    pub state: &'a State,
    /// Lease valid now and applied index at least the leader's index at the grant.
    pub may_run: bool,
    /// Lease valid now (without it the worker self-fences: kills instead of stopping).
    pub lease_valid: bool,
    /// Local clock, µs.
    pub now: u64,
}

#[derive(Debug, Default)]
pub struct Worker {
    /// Resources this worker has started (and not stopped).
    pub running: BTreeSet<String>,
    /// Resources whose process broke, and the local time the monitor notices it.
    pub broken: BTreeMap<String, u64>,
    /// A failure being handled (`failed()` in the agent): the resource and why.
    failing: Option<(String, String)>,
    failures: BTreeMap<String, Vec<u64>>,
    gave_up: BTreeSet<String>,
    not_before: BTreeMap<String, u64>,
    generation: Option<u64>,
    /// A handoff generation this worker let go of and must report (`ReleaseGroup`), and the
    /// last one it reported.
    pub release: Option<u64>,
    released: Option<u64>,
}

impl Worker {
    /// As the agent's `GroupWorker::desired`: keeping resources needs a valid lease;
    /// starting one also needs `may_run` (checked before every start).
    fn desired(&self, v: &View) -> bool {
        let Some(g) = v.state.groups.get(v.group) else { return false };
        g.owner.as_deref() == Some(v.me) && g.spec.online && g.failed_reason.is_none() && v.lease_valid
    }

    /// Marks a resource whose start failed: it is handled like a detected failure.
    pub fn start_failed(&mut self, resource: &str) {
        self.running.insert(resource.to_string());
        self.failing = Some((resource.to_string(), "start failed: exit status 1".to_string()));
    }

    /// The next driver call, pushing any status reports the agent would send first.
    pub fn next_step(&mut self, v: &View, reports: &mut Vec<Report>) -> Step {
        if let Some((name, why)) = self.failing.clone() {
            let order = v.state.start_order(v.group);
            let affected = v.state.dependents_of(v.group, &name);
            if let Some(dep) = order.iter().rev().find(|n| affected.contains(*n) && self.running.contains(*n)) {
                return self.begin_stop(dep, None, false, reports);
            }
            if self.running.contains(&name) {
                return Step::Begin(Op::StopFailed(name));
            }
            self.failing = None;
            self.record_failure(v, &name, why, reports);
        }
        if !self.desired(v) {
            if self.running.is_empty() {
                // As the agent's worker: stopped for a handoff from here, it releases the
                // group (once per generation; the report queue retries it).
                if let Some(g) = v.state.groups.get(v.group)
                    && g.owner.is_none()
                    && g.handoff.as_ref().is_some_and(|h| h.from == v.me)
                    && self.released != Some(g.generation)
                {
                    self.released = Some(g.generation);
                    self.release = Some(g.generation);
                }
                return Step::Idle { wake_at: None };
            }
            let reason = if !v.lease_valid {
                "self-fence: this node's lease ended (cut off from the cluster's quorum)"
            } else if !v.may_run {
                "this node has not caught up with the cluster state yet"
            } else {
                "the group is no longer placed here or was taken offline"
            };
            let order = v.state.start_order(v.group);
            let next = self
                .running
                .iter()
                .find(|n| !order.contains(n))
                .or_else(|| order.iter().rev().find(|n| self.running.contains(*n)))
                .cloned();
            return match next {
                Some(n) => self.begin_stop(&n, Some(reason.to_string()), !v.lease_valid, reports),
                None => Step::Idle { wake_at: None },
            };
        }
        // A resource deleted (or moved to another group) while it runs here: stop it, as
        // the agent's `run_group` does, before anything else.
        let order = v.state.start_order(v.group);
        if let Some(gone) = self.running.iter().find(|n| !order.contains(n)).cloned() {
            return self.begin_stop(&gone, Some(GONE.to_string()), false, reports);
        }
        let generation = v.state.groups.get(v.group).map(|g| g.generation);
        if self.generation != generation {
            self.generation = generation;
            self.failures.clear();
            self.gave_up.clear();
            self.not_before.clear();
        }
        // Monitor: a broken resource is noticed at its next check.
        let detected = self.broken.iter().find(|(r, at)| **at <= v.now && self.running.contains(*r));
        if let Some((name, _)) = detected {
            let name = name.clone();
            self.failing = Some((name, "stopped unexpectedly".to_string()));
            return self.next_step(v, reports);
        }
        let mut wake_at = self.broken.values().copied().filter(|t| *t > v.now).min();
        for name in v.state.start_order(v.group) {
            if self.running.contains(&name) || self.gave_up.contains(&name) {
                continue;
            }
            if !v.may_run {
                break;
            }
            let Some(res) = v.state.resources.get(&name) else { continue };
            if !res.spec.depends_on.iter().all(|d| self.running.contains(d)) {
                continue;
            }
            if let Some(t) = self.not_before.get(&name).copied().filter(|t| v.now < *t) {
                wake_at = Some(wake_at.map_or(t, |w| w.min(t)));
                continue;
            }
            reports.push(Report {
                resource: name.clone(),
                state: ResourceState::Starting,
                reason: None,
                failure: false,
            });
            return Step::Begin(Op::Start(name));
        }
        Step::Idle { wake_at }
    }

    fn begin_stop(&mut self, name: &str, reason: Option<String>, kill: bool, reports: &mut Vec<Report>) -> Step {
        reports.push(Report {
            resource: name.to_string(),
            state: ResourceState::Stopping,
            reason: reason.clone(),
            failure: false,
        });
        Step::Begin(Op::Stop { resource: name.to_string(), reason, kill })
    }

    /// The lease ended during a start: the agent kills what the start got running and
    /// reports nothing; the next pass self-fences the rest.
    pub fn start_cut_short(&mut self, resource: &str) {
        self.running.remove(resource);
        self.broken.remove(resource);
    }

    /// A driver call finished (successfully, unless `start_failed` was called instead).
    pub fn finish(&mut self, op: &Op, reports: &mut Vec<Report>) {
        match op {
            Op::Start(r) => {
                self.running.insert(r.clone());
                reports.push(Report {
                    resource: r.clone(),
                    state: ResourceState::Online,
                    reason: None,
                    failure: false,
                });
            }
            Op::Stop { resource: r, reason, .. } => {
                self.running.remove(r);
                self.broken.remove(r);
                reports.push(Report {
                    resource: r.clone(),
                    state: ResourceState::Offline,
                    reason: reason.clone(),
                    failure: false,
                });
            }
            Op::StopFailed(r) => {
                self.running.remove(r);
                self.broken.remove(r);
            }
        }
    }

    fn record_failure(&mut self, v: &View, name: &str, why: String, reports: &mut Vec<Report>) {
        let Some(res) = v.state.resources.get(name) else { return };
        let props = &res.spec.props;
        let period_us = props.restart_period.as_millis().saturating_mul(1000);
        let list = self.failures.entry(name.to_string()).or_default();
        list.push(v.now);
        list.retain(|t| v.now.saturating_sub(*t) < period_us);
        let count = list.len();
        match haven_policy::restart_decision(props, count) {
            RestartDecision::Restart { delay_ms } => {
                self.not_before.insert(name.to_string(), v.now.saturating_add(delay_ms.saturating_mul(1000)));
                let reason = format!(
                    "{why}; restarting in place (failure {count} of {} allowed within {})",
                    props.restart_threshold, props.restart_period
                );
                reports.push(Report {
                    resource: name.to_string(),
                    state: ResourceState::Starting,
                    reason: Some(reason),
                    failure: true,
                });
            }
            RestartDecision::GiveUp { reason } => {
                self.gave_up.insert(name.to_string());
                reports.push(Report {
                    resource: name.to_string(),
                    state: ResourceState::Failed,
                    reason: Some(format!("{why}; {reason}")),
                    failure: true,
                });
            }
        }
    }
}
