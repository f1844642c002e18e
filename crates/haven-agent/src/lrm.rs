//! The local resource manager: makes this node run exactly the resources that the committed
//! state places on it, and nothing while it holds no lease.
//!
//! One worker task per group, so a slow start in one group does not delay monitoring in
//! another. A worker starts its group's resources in dependency order once the group is
//! placed here (and this node holds a lease and has caught up), monitors them at their
//! LooksAlive/IsAlive intervals, restarts a failed one in place as `haven_policy` decides,
//! and reports what it does. When the group is no longer placed here, or the lease is lost,
//! it stops them in reverse order. At start-up the manager first probes which resources
//! are really running here, so an agent restart neither loses track of them nor starts a
//! second copy.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use haven_drivers::time::instant_after;
use haven_drivers::{Depth, Health, ResourceCtx};
use haven_model::{ResourceSpec, ResourceState};
use haven_policy::RestartDecision;
use haven_state::State;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::Agent;

/// How often a worker looks at its group when nothing changes.
const TICK: Duration = Duration::from_millis(100);

/// A handoff released this long ago and still not over gets its release sent again (the
/// report queue retries a release that did not commit; this covers one the state machine
/// refused, e.g. while the node was being re-added).
const RELEASE_AGAIN_AFTER: Duration = Duration::from_secs(5);

pub async fn run(agent: Arc<Agent>, mut stop: watch::Receiver<bool>) {
    let probed = probe(&agent).await;
    let mut workers: BTreeMap<String, (JoinHandle<Option<u64>>, watch::Sender<bool>)> = BTreeMap::new();
    // Handoffs this node has released (group -> placement generation, when): the release
    // is on its way through the report queue, which retries it until it commits. A new
    // worker for the same handoff would only send it again, once per commit.
    let mut released: BTreeMap<String, (u64, Instant)> = BTreeMap::new();
    let mut state_rx = agent.db.subscribe();
    let mut pending_probe = probed;
    loop {
        let stopping = *stop.borrow();
        let state = agent.db.state();
        let finished: Vec<String> =
            workers.iter().filter(|(_, (h, _))| h.is_finished()).map(|(g, _)| g.clone()).collect();
        for g in finished {
            if let Some((h, _)) = workers.remove(&g)
                && let Ok(Some(generation)) = h.await
            {
                released.insert(g, (generation, Instant::now()));
            }
        }
        released.retain(|g, (generation, at)| {
            let still_waiting = state.groups.get(g).is_some_and(|g| {
                g.generation == *generation && g.handoff.as_ref().is_some_and(|h| h.from == agent.name())
            });
            still_waiting && at.elapsed() < RELEASE_AGAIN_AFTER
        });
        if !stopping {
            let mine: BTreeSet<String> = state
                .groups
                .values()
                .filter(|g| {
                    g.owner.as_deref() == Some(agent.name())
                        || g.handoff.as_ref().is_some_and(|h| h.from == agent.name())
                            && !released.contains_key(&g.spec.name)
                })
                .map(|g| g.spec.name.clone())
                .chain(pending_probe.keys().cloned())
                .collect();
            for g in mine {
                if workers.contains_key(&g) {
                    continue;
                }
                let running = pending_probe.remove(&g).unwrap_or_default();
                let (tx, rx) = watch::channel(false);
                let h = tokio::spawn(GroupWorker::new(agent.clone(), g.clone(), running, rx).run());
                workers.insert(g, (h, tx));
            }
        } else {
            for (_, (_, tx)) in workers.iter() {
                let _ = tx.send(true);
            }
            for (_, (h, _)) in std::mem::take(&mut workers) {
                let _ = h.await;
            }
            return;
        }
        tokio::select! {
            _ = state_rx.changed() => {}
            _ = tokio::time::sleep(Duration::from_millis(200)) => {}
            _ = stop.changed() => {}
        }
    }
}

/// Which resources are running on this node right now, by group.
async fn probe(agent: &Agent) -> BTreeMap<String, BTreeMap<String, ResourceCtx>> {
    let state = agent.db.state();
    let mut found: BTreeMap<String, BTreeMap<String, ResourceCtx>> = BTreeMap::new();
    for r in state.resources.values() {
        let ctx = ctx_for(agent, &state, &r.spec);
        match agent.drivers.probe(&ctx).await {
            Health::Running => {
                tracing::info!(resource = %r.spec.name, "probe: running here");
                found.entry(r.spec.group.clone()).or_default().insert(r.spec.name.clone(), ctx);
            }
            Health::Stopped => {}
            Health::Failed(why) => {
                // Left over from before a crash: clean it up so it cannot confuse us later.
                tracing::info!(resource = %r.spec.name, %why, "probe: not running; cleaning up");
                let _ = agent.drivers.get(r.spec.kind).stop(&ctx).await;
            }
        }
    }
    found
}

/// The driver's view of a resource; the group's placement generation is the fencing token
/// that storage claims carry, so a stale owner's claim is refused.
pub(crate) fn ctx_for(agent: &Agent, state: &State, spec: &ResourceSpec) -> ResourceCtx {
    let generation = state.groups.get(&spec.group).map(|g| g.generation).unwrap_or(0);
    ResourceCtx::new(agent.name(), spec.clone(), &agent.config.state_dir).with_generation(generation)
}

struct Running {
    ctx: ResourceCtx,
    next_cheap: Instant,
    next_thorough: Instant,
}

struct GroupWorker {
    agent: Arc<Agent>,
    group: String,
    running: BTreeMap<String, Running>,
    /// Failure times per resource, on this node, for the current placement generation.
    failures: BTreeMap<String, Vec<Instant>>,
    /// Resources this node gave up on (past the restart threshold) in this generation.
    gave_up: BTreeSet<String>,
    not_before: BTreeMap<String, Instant>,
    generation: Option<u64>,
    /// Set when the agent shuts down.
    stop: watch::Receiver<bool>,
}

/// How an operation raced against the reasons to abandon it came out.
enum Raced<T> {
    Done(T),
    /// The lease ended: the caller kills what the operation got running (self-fence).
    LeaseEnded,
    /// The group should no longer run here (taken offline, moved, failed, resource
    /// deleted, agent stopping): the caller stops what the operation got running.
    Unwanted(&'static str),
}

impl GroupWorker {
    fn new(
        agent: Arc<Agent>,
        group: String,
        probed: BTreeMap<String, ResourceCtx>,
        stop: watch::Receiver<bool>,
    ) -> GroupWorker {
        let now = Instant::now();
        let running = probed
            .into_iter()
            .map(|(name, ctx)| {
                let next_thorough = instant_after(now, ctx.spec.props.is_alive_interval.0);
                let r = Running { next_cheap: now, next_thorough, ctx };
                (name, r)
            })
            .collect();
        GroupWorker {
            agent,
            group,
            running,
            failures: BTreeMap::new(),
            gave_up: BTreeSet::new(),
            not_before: BTreeMap::new(),
            generation: None,
            stop,
        }
    }

    /// Runs until the group has nothing left to do here; returns the placement generation
    /// of the handoff it released, if it ended by releasing one.
    async fn run(mut self) -> Option<u64> {
        let mut stop = self.stop.clone();
        let mut state_rx = self.agent.db.subscribe();
        let mut lease_rx = self.agent.lease.subscribe();
        loop {
            let stopping = *stop.borrow();
            let state = self.agent.db.state();
            let desired = !stopping && self.desired(&state);
            if desired {
                self.run_group(&state).await;
            } else {
                self.stop_all(&state, stopping).await;
                let group = state.groups.get(&self.group);
                let owned_here = group.is_some_and(|g| g.owner.as_deref() == Some(self.agent.name()));
                if self.running.is_empty()
                    && !stopping
                    && let Some(g) = group.filter(|g| g.handoff.as_ref().is_some_and(|h| h.from == self.agent.name()))
                {
                    // Everything of it is stopped here: the move may go on. The report
                    // queue retries the release until it commits, and `run` starts no new
                    // worker for this handoff meanwhile (one per commit used to re-send it).
                    tracing::info!(group = %self.group, generation = g.generation, "stopped for a move; releasing it");
                    self.agent.release(&self.group, g.generation);
                    return Some(g.generation);
                }
                if self.running.is_empty() && (stopping || !owned_here) {
                    return None;
                }
            }
            // Wake exactly when the lease ends: self-fencing must not wait for a tick.
            let lease_end = self.agent.lease.valid_until().unwrap_or_else(|| instant_after(Instant::now(), TICK));
            tokio::select! {
                _ = state_rx.changed() => {}
                _ = lease_rx.changed() => {}
                _ = stop.changed() => {}
                _ = tokio::time::sleep(TICK) => {}
                _ = tokio::time::sleep_until(lease_end), if !self.running.is_empty() => {}
            }
        }
    }

    /// Runs `op` unless the lease ends first or the group stops being wanted here.
    ///
    /// Renewals while `op` runs extend it: only a lease that really ended (was not renewed
    /// in time) cuts it short, so a start longer than one lease (a VM, a KVM probe) can
    /// finish. The state is looked at on every change, so a start that never finishes
    /// (a health check that never passes, a long pending timeout) is abandoned as soon as
    /// the group is taken offline, moved or failed, `resource` is deleted, or the agent
    /// stops — the operator is never left waiting for the pending timeout.
    async fn race<T>(&self, resource: &str, op: impl std::future::Future<Output = T>) -> Raced<T> {
        let mut op = std::pin::pin!(op);
        let mut state_rx = self.agent.db.subscribe();
        let mut stop = self.stop.clone();
        let (mut state_open, mut stop_open) = (true, true);
        loop {
            let Some(end) = self.agent.lease.valid_until() else { return Raced::LeaseEnded };
            if let Some(why) = self.unwanted(&self.agent.db.state(), resource) {
                return Raced::Unwanted(why);
            }
            tokio::select! {
                out = &mut op => return Raced::Done(out),
                // Look again: renewed meanwhile, or ended.
                _ = tokio::time::sleep_until(end) => {}
                r = state_rx.changed(), if state_open => state_open = r.is_ok(),
                r = stop.changed(), if stop_open => stop_open = r.is_ok(),
                // Also notices a change whose notification raced with the subscription.
                _ = tokio::time::sleep(TICK) => {}
            }
        }
    }

    /// Why `resource` of this group should not be started or kept running here now, if so.
    fn unwanted(&self, state: &State, resource: &str) -> Option<&'static str> {
        if *self.stop.borrow() {
            return Some("the agent on this node is shutting down");
        }
        let Some(g) = state.groups.get(&self.group) else { return Some("the group was deleted") };
        if !state.resources.contains_key(resource) {
            Some("the resource was deleted")
        } else if g.handoff.is_some() {
            Some("the group is moving to another node")
        } else if g.owner.as_deref() != Some(self.agent.name()) {
            Some("the group is no longer placed here")
        } else if !g.spec.online {
            Some("the group was taken offline")
        } else if g.failed_reason.is_some() {
            Some("the group was left failed")
        } else {
            None
        }
    }

    /// Whether this group should run here now.
    ///
    /// Keeping resources running needs a valid lease; *starting* one also needs this node
    /// to have caught up with the state the leader had at the grant (checked before each
    /// start in `run_group`). Requiring the catch-up here too would stop everything
    /// whenever a renewal arrives a few log entries ahead of this node's apply.
    fn desired(&self, state: &State) -> bool {
        let Some(g) = state.groups.get(&self.group) else { return false };
        g.owner.as_deref() == Some(self.agent.name())
            && g.spec.online
            && g.failed_reason.is_none()
            && self.agent.lease.valid()
    }

    async fn run_group(&mut self, state: &State) {
        let Some(g) = state.groups.get(&self.group) else { return };
        if self.generation != Some(g.generation) {
            // A new placement: earlier local failures do not count against it.
            self.generation = Some(g.generation);
            self.failures.clear();
            self.gave_up.clear();
            self.not_before.clear();
        }
        let order = state.start_order(&self.group);

        // A resource deleted (or moved to another group) while it ran here must not stay
        // behind unwatched: stop it first.
        let gone: Vec<String> = self.running.keys().filter(|n| !order.contains(n)).cloned().collect();
        for name in gone {
            self.stop_one(&name, Some("the resource was deleted or moved to another group")).await;
        }

        // Monitor what runs, at each resource's intervals.
        let now = Instant::now();
        let due: Vec<(String, Depth)> = self
            .running
            .iter()
            .filter_map(|(name, r)| {
                if now >= r.next_thorough {
                    Some((name.clone(), Depth::Thorough))
                } else if now >= r.next_cheap {
                    Some((name.clone(), Depth::Cheap))
                } else {
                    None
                }
            })
            .collect();
        for (name, depth) in due {
            let Some(r) = self.running.get(&name) else { continue };
            let ctx = r.ctx.clone();
            let Raced::Done(result) =
                self.race(&name, self.agent.drivers.get(ctx.spec.kind).monitor(&ctx, depth)).await
            else {
                // The next pass stops the group (or self-fences).
                return;
            };
            let health = match result {
                Ok(h) => h,
                Err(e) => Health::Failed(format!("monitor failed: {e}")),
            };
            match health {
                Health::Running => {
                    if let Some(r) = self.running.get_mut(&name) {
                        let now = Instant::now();
                        r.next_cheap = instant_after(now, ctx.spec.props.looks_alive_interval.0);
                        if depth == Depth::Thorough {
                            r.next_thorough = instant_after(now, ctx.spec.props.is_alive_interval.0);
                        }
                    }
                }
                Health::Stopped => self.failed(state, &name, "stopped unexpectedly".to_string()).await,
                Health::Failed(why) => self.failed(state, &name, why).await,
            }
        }

        // Start, in dependency order, whatever should run and does not.
        for name in &order {
            if self.running.contains_key(name) || self.gave_up.contains(name) {
                continue;
            }
            if !self.agent.may_run() {
                return;
            }
            let Some(res) = state.resources.get(name) else { continue };
            let deps_up = res.spec.depends_on.iter().all(|d| self.running.contains_key(d));
            if !deps_up {
                continue;
            }
            if self.not_before.get(name).is_some_and(|t| Instant::now() < *t) {
                continue;
            }
            let ctx = ctx_for(&self.agent, state, &res.spec);
            self.agent.report(name, ResourceState::Starting, None, false);
            let driver = self.agent.drivers.get(ctx.spec.kind);
            let timeout = ctx.spec.props.pending_timeout.0;
            let started = match self.race(name, tokio::time::timeout(timeout, driver.start(&ctx))).await {
                Raced::Done(started) => started,
                Raced::LeaseEnded => {
                    // The lease ended mid-start: whatever the start got running must not stay.
                    tracing::warn!(resource = %name, "lease ended during start; killing what it started");
                    let _ = driver.stop_within(&ctx, Duration::ZERO).await;
                    return;
                }
                Raced::Unwanted(why) => {
                    tracing::info!(resource = %name, group = %self.group, %why, "start abandoned; stopping what it started");
                    self.abandon_start(name, &ctx, why).await;
                    return;
                }
            };
            let result = match started {
                Ok(r) => r.map_err(|e| e.to_string()),
                Err(_) => {
                    Err(format!("start did not finish within its pending timeout ({})", ctx.spec.props.pending_timeout))
                }
            };
            match result {
                Ok(()) => {
                    tracing::info!(resource = %name, group = %self.group, "started");
                    let now = Instant::now();
                    let r = Running {
                        next_cheap: instant_after(now, ctx.spec.props.looks_alive_interval.0),
                        next_thorough: instant_after(now, ctx.spec.props.is_alive_interval.0),
                        ctx,
                    };
                    self.running.insert(name.clone(), r);
                    self.agent.report(name, ResourceState::Online, None, false);
                }
                Err(why) => {
                    let _ = driver.stop(&ctx).await;
                    self.failed(state, name, format!("start failed: {why}")).await;
                }
            }
        }
    }

    /// A start was cut short because the group should no longer run here: stop what it got
    /// running and say so. If the stop fails, the resource is kept as running so the next
    /// pass stops it again (and its status stays "stopping", so it cannot be deleted).
    async fn abandon_start(&mut self, name: &str, ctx: &ResourceCtx, why: &str) {
        let reason = format!("start cancelled: {why}");
        let driver = self.agent.drivers.get(ctx.spec.kind);
        self.agent.report(name, ResourceState::Stopping, Some(reason.clone()), false);
        match driver.stop(ctx).await {
            Ok(()) => self.agent.report(name, ResourceState::Offline, Some(reason), false),
            Err(e) => {
                tracing::error!(resource = %name, error = %e, "stop after a cancelled start failed");
                let r = Running { ctx: ctx.clone(), next_cheap: Instant::now(), next_thorough: Instant::now() };
                self.running.insert(name.to_string(), r);
            }
        }
    }

    /// A resource failed here: stop it and what depends on it, then restart in place or give up.
    async fn failed(&mut self, state: &State, name: &str, why: String) {
        tracing::warn!(resource = %name, group = %self.group, %why, "resource failed");
        let Some(res) = state.resources.get(name) else { return };
        let props = res.spec.props.clone();
        // Dependents cannot run without it: stop them first (reverse order), then it.
        let order = state.start_order(&self.group);
        let affected = state.dependents_of(&self.group, name);
        for dep in order.iter().rev().filter(|n| affected.contains(*n)) {
            self.stop_one(dep, None).await;
        }
        if let Some(r) = self.running.remove(name) {
            let _ = self.agent.drivers.get(r.ctx.spec.kind).stop(&r.ctx).await;
        }
        let now = Instant::now();
        let list = self.failures.entry(name.to_string()).or_default();
        list.push(now);
        list.retain(|t| now.duration_since(*t) < props.restart_period.0);
        let count = list.len();
        match haven_policy::restart_decision(&props, count) {
            RestartDecision::Restart { delay_ms } => {
                self.not_before.insert(name.to_string(), instant_after(now, Duration::from_millis(delay_ms)));
                let reason = format!(
                    "{why}; restarting in place (failure {count} of {} allowed within {})",
                    props.restart_threshold, props.restart_period
                );
                self.agent.report(name, ResourceState::Starting, Some(reason), true);
            }
            RestartDecision::GiveUp { reason } => {
                self.gave_up.insert(name.to_string());
                self.agent.report(name, ResourceState::Failed, Some(format!("{why}; {reason}")), true);
            }
        }
    }

    async fn stop_one(&mut self, name: &str, report: Option<&str>) {
        self.stop_one_within(name, report, None).await
    }

    /// Stops one resource; with `grace`, the graceful part is cut short (self-fencing).
    async fn stop_one_within(&mut self, name: &str, report: Option<&str>, grace: Option<Duration>) {
        let Some(r) = self.running.remove(name) else { return };
        self.agent.report(name, ResourceState::Stopping, report.map(str::to_string), false);
        let driver = self.agent.drivers.get(r.ctx.spec.kind);
        let stopped = match grace {
            Some(g) => driver.stop_within(&r.ctx, g).await,
            None => driver.stop(&r.ctx).await,
        };
        if let Err(e) = stopped {
            tracing::error!(resource = %name, error = %e, "stop failed");
            // Keep it in the list so the next pass tries again: it must not keep running.
            self.running.insert(name.to_string(), r);
            return;
        }
        tracing::info!(resource = %name, group = %self.group, "stopped");
        self.agent.report(name, ResourceState::Offline, report.map(str::to_string), false);
    }

    async fn stop_all(&mut self, state: &State, agent_stopping: bool) {
        if self.running.is_empty() {
            return;
        }
        let fencing = !agent_stopping && !self.agent.lease.valid();
        let reason = if agent_stopping {
            "the agent on this node is shutting down"
        } else if fencing {
            "self-fence: this node's lease ended (cut off from the cluster's quorum)"
        } else if !self.agent.may_run() {
            "this node has not caught up with the cluster state yet"
        } else if state.groups.get(&self.group).is_some_and(|g| g.handoff.is_some()) {
            "the group is moving to another node"
        } else {
            "the group is no longer placed here or was taken offline"
        };
        // Self-fencing has no time for graceful stops: the rest of the cluster may start
        // these resources once the margin after our lease has passed.
        let grace = fencing.then_some(Duration::ZERO);
        if fencing {
            tracing::warn!(group = %self.group, "lease lost: killing this group's resources");
        }
        // Reverse dependency order; resources the state no longer knows go first.
        let order = state.start_order(&self.group);
        let mut names: Vec<String> = self.running.keys().filter(|n| !order.contains(n)).cloned().collect();
        names.extend(order.iter().rev().filter(|n| self.running.contains_key(*n)).cloned());
        for n in names {
            self.stop_one_within(&n, Some(reason), grace).await;
        }
    }
}
