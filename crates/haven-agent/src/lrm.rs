//! The local resource manager: makes this node run exactly the resources that the committed
//! state places on it, and nothing while it holds no lease.
//!
//! The rules are `haven_node::lrm::GroupLrm`, the step function the simulator drives too:
//! which driver call to make next, what to report, when to abandon a call in progress,
//! when to release a group handed off. This module only executes them: one worker task per
//! group that has something to do here (so a slow start in one group does not delay checks
//! in another), feeding the core what this node sees (its applied state, its lease, its
//! clock) and running the calls it asks for on the real drivers. A start, a check or a
//! graceful stop is raced against every change of the state or the lease and against the
//! core's deadline (the lease end, the pending timeout), and dropped the moment the core
//! says to abandon it.
//!
//! At start-up the manager first probes which resources are really running here and hands
//! them to the cores as adopted, so an agent restart neither loses track of them nor starts
//! a second copy.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use haven_drivers::{Depth, Health, ResourceCtx};
use haven_model::ResourceSpec;
use haven_node::lrm::{self, GroupLrm, LrmRule, Op, Outcome, Step, View};
use haven_node::{Lease, Micros};
use haven_state::imbl::ordmap::DiffItem;
use haven_state::{Command, State};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::Agent;

/// How often a worker looks at its group when nothing changes (a safety net: it also
/// wakes on every state or lease change and at the core's own deadlines).
const TICK: Duration = Duration::from_millis(100);

/// A group's core and the driver contexts of what it runs here.
struct Group {
    core: GroupLrm,
    /// Per resource counted as running: the context it was started (or adopted) with, so it
    /// can be stopped even after it was deleted from the state.
    ctxs: BTreeMap<String, ResourceCtx>,
}

/// What this node sees at one instant, owned (a `View` borrows from it).
struct Seen {
    state: Arc<State>,
    applied: u64,
    lease: Lease,
    now: Micros,
    stopping: bool,
}

impl Seen {
    fn now(agent: &Agent, stop: &watch::Receiver<bool>) -> Seen {
        let state = agent.db.state();
        let applied = agent.applied_index();
        let (lease, now) = agent.lease.snapshot();
        Seen { state, applied, lease, now, stopping: *stop.borrow() }
    }

    fn view<'a>(&'a self, agent: &'a Agent) -> View<'a> {
        View {
            me: agent.name(),
            state: &self.state,
            applied: self.applied,
            lease: &self.lease,
            now: self.now,
            stopping: self.stopping,
            rule: LrmRule::Safe,
        }
    }
}

pub async fn run(agent: Arc<Agent>, stop: watch::Receiver<bool>) {
    let mut idle: BTreeMap<String, Group> = probe(&agent, &stop).await;
    let mut workers: BTreeMap<String, JoinHandle<Group>> = BTreeMap::new();
    // The idle cores that something could make active without their group changing in the
    // state (`GroupLrm::concerns`: placed here, moving to or from here, holding something):
    // looked at on every wake. Every other core is looked at only when the state changes
    // its group, found by diffing the groups table with the one seen last (which skips
    // the subtrees the two share), so a commit costs what it changed, not the state's size.
    // (The first wake looks at every group of the state and every core the probe made.)
    let mut concerned: BTreeSet<String> = BTreeSet::new();
    let mut last_groups: Option<haven_state::Map<haven_model::Group>> = None;
    let mut state_rx = agent.db.subscribe();
    let mut stop_rx = stop.clone();
    loop {
        let mut look = std::mem::take(&mut concerned);
        let finished: Vec<String> = workers.iter().filter(|(_, h)| h.is_finished()).map(|(g, _)| g.clone()).collect();
        for name in finished {
            if let Some(h) = workers.remove(&name)
                && let Ok(group) = h.await
            {
                idle.insert(name.clone(), group);
            }
            look.insert(name);
        }
        let seen = Seen::now(&agent, &stop);
        let view = seen.view(&agent);
        let groups = &seen.state.groups;
        match &last_groups {
            Some(before) if before.ptr_eq(groups) => {}
            Some(before) => look.extend(before.diff(groups).map(|change| match change {
                DiffItem::Add(name, _) | DiffItem::Update { new: (name, _), .. } | DiffItem::Remove(name, _) => {
                    name.clone()
                }
            })),
            None => look.extend(groups.keys().chain(idle.keys()).cloned()),
        }
        last_groups = Some(groups.clone());
        for name in look {
            if workers.contains_key(&name) {
                continue;
            }
            let group =
                idle.remove(&name).unwrap_or_else(|| Group { core: GroupLrm::new(&name), ctxs: BTreeMap::new() });
            if group.core.active(&view) {
                workers.insert(name, tokio::spawn(work(agent.clone(), group, stop.clone())));
            } else if groups.contains_key(&name) {
                // (A core of a group the state no longer has, with nothing left here, is dropped.)
                if group.core.concerns(&seen.state, agent.name()) {
                    concerned.insert(name.clone());
                }
                idle.insert(name, group);
            }
        }
        if seen.stopping && workers.is_empty() {
            return;
        }
        tokio::select! {
            _ = state_rx.changed() => {}
            _ = tokio::time::sleep(Duration::from_millis(200)) => {}
            _ = stop_rx.changed() => {}
        }
    }
}

/// Which resources are running on this node right now, as cores that adopted them.
async fn probe(agent: &Agent, stop: &watch::Receiver<bool>) -> BTreeMap<String, Group> {
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
    let seen = Seen::now(agent, stop);
    found
        .into_iter()
        .map(|(name, ctxs)| {
            let mut core = GroupLrm::new(&name);
            core.adopt(ctxs.keys().map(String::as_str), &seen.state, seen.now);
            (name, Group { core, ctxs })
        })
        .collect()
}

/// The driver's view of a resource; the group's placement generation is the fencing token
/// that storage claims carry, so a stale owner's claim is refused.
pub(crate) fn ctx_for(agent: &Agent, state: &State, spec: &ResourceSpec) -> ResourceCtx {
    let generation = state.groups.get(&spec.group).map(|g| g.generation).unwrap_or(0);
    ResourceCtx::new(agent.name(), spec.clone(), &agent.config.state_dir).with_generation(generation)
}

/// Runs one group's core until it has nothing left to do here, then hands it back.
async fn work(agent: Arc<Agent>, mut g: Group, stop: watch::Receiver<bool>) -> Group {
    let mut state_rx = agent.db.subscribe();
    let mut lease_rx = agent.lease.subscribe();
    let mut stop_rx = stop.clone();
    loop {
        let seen = Seen::now(&agent, &stop);
        let view = seen.view(&agent);
        if !g.core.active(&view) {
            return g;
        }
        let mut out = Vec::new();
        let step = g.core.next(&view, &mut out);
        send(&agent, out);
        match step {
            Step::Begin(op) => {
                let outcome = execute(&agent, &mut g, &op, &seen.state, &stop).await;
                let seen = Seen::now(&agent, &stop);
                log_outcome(g.core.group(), &op, &outcome);
                if let (Op::Stop { resource, .. }, Outcome::Stopped(Ok(()))) = (&op, &outcome) {
                    g.ctxs.remove(resource);
                }
                let mut out = Vec::new();
                g.core.done(&seen.view(&agent), outcome, &mut out);
                send(&agent, out);
            }
            Step::Idle { wake_at } => {
                let wake = wake_at.map(|t| agent.lease.instant(t));
                tokio::select! {
                    _ = state_rx.changed() => {}
                    _ = lease_rx.changed() => {}
                    _ = stop_rx.changed() => {}
                    _ = tokio::time::sleep(TICK) => {}
                    _ = sleep_until(wake) => {}
                }
            }
        }
    }
}

async fn sleep_until(t: Option<tokio::time::Instant>) {
    match t {
        Some(t) => tokio::time::sleep_until(t).await,
        None => std::future::pending().await,
    }
}

fn send(agent: &Agent, reports: Vec<Command>) {
    for c in reports {
        agent.send_report(c);
    }
}

/// Makes the driver call `op`; a start or check is abandoned as soon as the core says so.
async fn execute(agent: &Agent, g: &mut Group, op: &Op, state: &State, stop: &watch::Receiver<bool>) -> Outcome {
    let resource = op.resource();
    if let Op::Start { .. } = op
        && let Some(r) = state.resources.get(resource)
    {
        g.ctxs.insert(resource.to_string(), ctx_for(agent, state, &r.spec));
    }
    let Some(ctx) = g.ctxs.get(resource).cloned() else {
        // Nothing of it was ever started or adopted here (cannot happen: the core only
        // stops or checks what it counts as running): nothing to stop.
        tracing::error!(resource, "no driver context for a resource counted as running here");
        return match op {
            Op::Check { .. } => Outcome::Checked(lrm::Health::Stopped),
            _ => Outcome::Stopped(Ok(())),
        };
    };
    let driver = agent.drivers.get(ctx.spec.kind);
    match op {
        Op::Start { .. } => {
            tracing::info!(resource, group = %g.core.group(), "starting");
            raced(agent, &g.core, stop, async { Outcome::Started(driver.start(&ctx).await.map_err(|e| e.to_string())) })
                .await
        }
        Op::Check { depth, .. } => {
            let depth = match depth {
                lrm::Depth::Cheap => Depth::Cheap,
                lrm::Depth::Thorough => Depth::Thorough,
            };
            raced(agent, &g.core, stop, async {
                Outcome::Checked(match driver.monitor(&ctx, depth).await {
                    Ok(Health::Running) => lrm::Health::Running,
                    Ok(Health::Stopped) => lrm::Health::Stopped,
                    Ok(Health::Failed(why)) => lrm::Health::Failed(why),
                    Err(e) => lrm::Health::Failed(format!("monitor failed: {e}")),
                })
            })
            .await
        }
        Op::Stop { kill, reason, .. } => {
            if *kill {
                tracing::warn!(resource, group = %g.core.group(), "lease lost: killing");
            } else {
                tracing::info!(resource, group = %g.core.group(), reason = reason.as_deref().unwrap_or(""), "stopping");
            }
            // Self-fencing has no time for graceful stops: the rest of the cluster may
            // start it once the margin after our lease has passed. A graceful stop still
            // running when the lease ends is abandoned (the core then kills).
            if *kill {
                Outcome::Stopped(driver.stop_within(&ctx, Duration::ZERO).await.map_err(|e| e.to_string()))
            } else {
                raced(agent, &g.core, stop, async {
                    Outcome::Stopped(driver.stop(&ctx).await.map_err(|e| e.to_string()))
                })
                .await
            }
        }
    }
}

/// Runs `call` unless the core abandons it first: looked at again on every change of the
/// state, the lease or the agent's stop flag, at the core's deadline and every tick.
///
/// Renewals while `call` runs extend it: only a lease that really ended cuts it short, so a
/// start longer than one lease (a VM, a KVM probe) can finish.
async fn raced(
    agent: &Agent,
    core: &GroupLrm,
    stop: &watch::Receiver<bool>,
    call: impl std::future::Future<Output = Outcome>,
) -> Outcome {
    let mut call = std::pin::pin!(call);
    let mut state_rx = agent.db.subscribe();
    let mut lease_rx = agent.lease.subscribe();
    let mut stop_rx = stop.clone();
    let (mut state_open, mut lease_open, mut stop_open) = (true, true, true);
    loop {
        let seen = Seen::now(agent, stop);
        let view = seen.view(agent);
        if let Some(why) = core.interrupt(&view) {
            return Outcome::Interrupted(why);
        }
        let deadline = core.deadline(&view).map(|t| agent.lease.instant(t));
        tokio::select! {
            out = &mut call => return out,
            _ = sleep_until(deadline) => {}
            r = state_rx.changed(), if state_open => state_open = r.is_ok(),
            r = lease_rx.changed(), if lease_open => lease_open = r.is_ok(),
            r = stop_rx.changed(), if stop_open => stop_open = r.is_ok(),
            // Also notices a change whose notification raced with the subscription.
            _ = tokio::time::sleep(TICK) => {}
        }
    }
}

fn log_outcome(group: &str, op: &Op, outcome: &Outcome) {
    let resource = op.resource();
    match (op, outcome) {
        (Op::Start { .. }, Outcome::Started(Ok(()))) => tracing::info!(resource, group, "started"),
        (Op::Stop { .. }, Outcome::Stopped(Ok(()))) => tracing::info!(resource, group, "stopped"),
        (_, Outcome::Started(Err(e))) => tracing::warn!(resource, group, error = %e, "start failed"),
        (_, Outcome::Stopped(Err(e))) => {
            tracing::error!(resource, group, error = %e, "stop failed; it is tried again")
        }
        (_, Outcome::Checked(lrm::Health::Running)) => {}
        (_, Outcome::Checked(h)) => tracing::warn!(resource, group, health = ?h, "check found it not running"),
        (_, Outcome::Interrupted(why)) => tracing::info!(resource, group, why = ?why, "call abandoned"),
        _ => {}
    }
}
