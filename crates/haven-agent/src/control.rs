//! The controller loop. On the Raft leader only: every tick, prove leadership (which also
//! brings the local state up to date), hand the state and the heartbeats this leader
//! received to the pure `haven_controller::decide`, and commit what it returns.

use std::sync::Arc;

use tokio::sync::watch;

use crate::{Agent, now_ms};

pub async fn run(agent: Arc<Agent>, mut stop: watch::Receiver<bool>) {
    let tick = agent.timing.renew_interval / 2;
    let timing = haven_controller::Timing {
        lease_ms: agent.timing.lease.as_millis() as u64,
        margin_ms: agent.timing.margin.as_millis() as u64,
    };
    // (term, when this node became leader in that term)
    let mut leadership: Option<(u64, u64)> = None;
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
            continue;
        }
        let leader_since = match leadership {
            Some((t, since)) if t == term => since,
            _ => {
                // A new term: heartbeats seen by an earlier leader (or by us in an earlier
                // term) are not ours to trust; every lease counts as renewed now.
                agent.heartbeats.lock().unwrap_or_else(|e| e.into_inner()).clear();
                let since = now_ms();
                tracing::info!(term, "this node is the leader; controller active");
                leadership = Some((term, since));
                since
            }
        };
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
            let wait = std::time::Duration::from_millis(deadline.saturating_sub(now_ms()) + 1);
            next_wake = wait.clamp(std::time::Duration::from_millis(5), tick);
        }
    }
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
        .map(|n| heartbeats.get(&n.name).copied().unwrap_or(0).max(leader_since) + timing.lease_ms + timing.margin_ms)
        .min()
}
