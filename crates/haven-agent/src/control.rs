//! The controller loop. On the Raft leader only: every tick, prove leadership (which also
//! brings the local state up to date), hand the state and the heartbeats this leader
//! received to the pure `haven_controller::decide`, and commit what it returns.
//!
//! A new leader does not know which leases its predecessor renewed, so it counts every
//! lease as renewed at its election (`leader_since`) — or, as soon as a majority of voters
//! answered, at the last moment an earlier leader can have renewed one
//! (`haven_raft::contact`), which is usually shortly before the old leader was lost.

use std::sync::{Arc, Mutex};

use tokio::sync::watch;

use haven_drivers::time::millis_u64;

use crate::{Agent, now_ms};

pub async fn run(agent: Arc<Agent>, mut stop: watch::Receiver<bool>) {
    let tick = agent.timing.renew_interval / 2;
    let timing = haven_controller::Timing {
        lease_ms: millis_u64(agent.timing.lease),
        margin_ms: millis_u64(agent.timing.margin),
    };
    // (term, when this node became leader in that term)
    let mut leadership: Option<(u64, u64)> = None;
    // (term, the latest contact of any earlier leader) once a majority of voters told.
    let earlier: Arc<Mutex<Option<(u64, u64)>>> = Arc::default();
    let mut asking: Option<tokio::task::JoinHandle<()>> = None;
    let mut fences = crate::fence::FenceRuns::default();
    let mut next_wake = tick;
    loop {
        tokio::select! {
            _ = tokio::time::sleep(next_wake) => {}
            _ = stop.wait_for(|s| *s) => return,
        }
        next_wake = tick;
        let term = agent.db.raft().metrics().borrow().current_term;
        if !agent.is_leader() {
            if leadership.take().is_some() {
                fences.abort_all();
            }
            if let Some(a) = asking.take() {
                a.abort();
            }
            continue;
        }
        let mut leader_since = match leadership {
            Some((t, since)) if t == term => since,
            _ => {
                // A new term: this node knows only the renewals it received itself (the
                // heartbeats, kept: all of them are renewals it really granted, some maybe
                // in this term before this tick). Every other lease counts as renewed now,
                // until a majority tells how late an earlier leader can have renewed one.
                let since = now_ms();
                tracing::info!(term, "this node is the leader; controller active");
                leadership = Some((term, since));
                if let Some(a) = asking.take() {
                    a.abort();
                }
                asking = Some(tokio::spawn(ask_earlier_leaders(agent.clone(), term, earlier.clone())));
                since
            }
        };
        if let Some((t, at)) = *earlier.lock().unwrap_or_else(|e| e.into_inner())
            && t == term
            && at < leader_since
        {
            leader_since = at;
            leadership = Some((term, at));
        }
        let _tick = agent.control_lock.lock().await;
        if agent.db.ensure_leader().await.is_err() {
            continue;
        }
        let state = agent.db.state();
        let heartbeats = agent.heartbeats.lock().unwrap_or_else(|e| e.into_inner()).clone();
        let obs = haven_controller::Observations { now: now_ms(), leader_since, last_heartbeat: &heartbeats };
        for d in haven_controller::decide(&state, &obs, &timing) {
            tracing::info!(rule = ?d.rule, why = %d.why, "controller decision");
            if let Err(e) = agent.submit("controller", d.command).await {
                tracing::warn!(error = %e, "controller decision not committed");
                break;
            }
        }
        fences.start_pending(&agent, &agent.db.state());
        // Wake when the next lease (plus margin) runs out rather than up to a tick later:
        // detection time is what a failover costs.
        if let Some(deadline) = next_lease_deadline(&agent.db.state(), &heartbeats, leader_since, &timing) {
            let wait = std::time::Duration::from_millis(deadline.saturating_sub(now_ms()).saturating_add(1));
            next_wake = wait.clamp(std::time::Duration::from_millis(5), tick);
        }
    }
}

/// Asks a majority of voters when they last had contact with a leader of a term below
/// `term` (see `haven_raft::contact`), and stores the answer in the agent's wall clock
/// (rounded up to the next ms: later is safe).
async fn ask_earlier_leaders(agent: Arc<Agent>, term: u64, out: Arc<Mutex<Option<(u64, u64)>>>) {
    let started = std::time::Instant::now();
    let Some(at) = agent.db.earlier_leaders_last_contact(term, agent.timing.lease).await else {
        tracing::info!(
            term,
            "no majority told when an earlier leader last renewed a lease; waiting a full lease from the election"
        );
        return;
    };
    let ago = tokio::time::Instant::now().saturating_duration_since(at);
    let wall = now_ms().saturating_sub(millis_u64(ago)).saturating_add(1);
    tracing::info!(
        term,
        ago_ms = millis_u64(ago),
        took_ms = millis_u64(started.elapsed()),
        "earlier leaders renewed no lease after this; leases count from then"
    );
    *out.lock().unwrap_or_else(|e| e.into_inner()) = Some((term, wall));
}

/// When the first node that is up in `state` would be declared down if it renews no more.
fn next_lease_deadline(
    state: &haven_state::State,
    heartbeats: &std::collections::BTreeMap<String, u64>,
    leader_since: u64,
    timing: &haven_controller::Timing,
) -> Option<u64> {
    state
        .nodes
        .values()
        .filter(|n| n.is_up())
        .map(|n| {
            heartbeats
                .get(&n.name)
                .copied()
                .unwrap_or(0)
                .max(leader_since)
                .saturating_add(timing.lease_ms)
                .saturating_add(timing.margin_ms)
        })
        .min()
}
