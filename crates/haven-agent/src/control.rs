//! The controller loop. On the Raft leader only: every tick, prove leadership (which also
//! brings the local state up to date), hand the state and the heartbeats this leader
//! received to the pure `haven_controller::decide`, and commit what it returns.
//!
//! A new leader does not know which leases its predecessor renewed, so it counts every
//! lease as renewed at its election (`leader_since`) — or, as soon as a majority of voters
//! answered, at the last moment an earlier leader can have renewed one
//! (`haven_node::contact`), which is usually shortly before the old leader was lost. That
//! bookkeeping is `haven_node::Leadership`, the code the simulator drives too; the grant
//! rule the ticks keep with the lease grants is `lease::Grants`.

use std::sync::{Arc, Mutex};

use tokio::sync::watch;

use haven_drivers::time::millis_u64;
use haven_node::ContactRule;
use haven_node::leadership::{Change, Leadership};

use crate::{Agent, SubmitError, now_ms};

pub async fn run(agent: Arc<Agent>, mut stop: watch::Receiver<bool>) {
    let tick = agent.timing.renew_interval / 2;
    let timing = haven_controller::Timing::new(millis_u64(agent.timing.lease), millis_u64(agent.timing.margin));
    let mut leadership = Leadership::new();
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
        let leading = agent.is_leader().then_some(term);
        match leadership.observe(leading, now_ms()) {
            Change::Lost => fences.abort_all(),
            Change::NewTerm => {
                // This node knows only the renewals it received itself (the heartbeats,
                // kept: all of them are renewals it really granted, some maybe in this term
                // before this tick). Every other lease counts as renewed now, until a
                // majority tells how late an earlier leader can have renewed one.
                tracing::info!(term, "this node is the leader; controller active");
                if let Some(a) = asking.take() {
                    a.abort();
                }
                asking = Some(tokio::spawn(ask_earlier_leaders(agent.clone(), term, earlier.clone())));
            }
            Change::Unchanged => {}
        }
        if leading.is_none() {
            if let Some(a) = asking.take() {
                a.abort();
            }
            continue;
        }
        if let Some((t, at)) = *earlier.lock().unwrap_or_else(|e| e.into_inner()) {
            leadership.earlier_leaders_answered(t, at);
        }
        let Some(leader_since) = leadership.leader_since() else { continue };
        // From reading the heartbeats until the decisions are committed, no lease is
        // granted (invariant 3): the tick ends when `tick_guard` is dropped.
        let Some(tick_guard) = agent.grants.begin_tick() else { continue };
        if agent.db.ensure_leader().await.is_err() {
            continue;
        }
        let state = agent.db.state();
        let obs =
            haven_controller::Observations { now: now_ms(), leader_since, last_heartbeat: &tick_guard.heartbeats };
        commit_decisions(&agent, haven_controller::decide(&state, &obs, &timing)).await;
        let state = agent.db.state();
        let deadline = haven_controller::next_lease_deadline(&state, &obs, &timing);
        drop(tick_guard);
        fences.start_pending(&agent, &state);
        // Wake when the next lease (plus margin) runs out rather than up to a tick later:
        // detection time is what a failover costs.
        if let Some(deadline) = deadline {
            let wait = std::time::Duration::from_millis(deadline.saturating_sub(now_ms()).saturating_add(1));
            next_wake = wait.clamp(std::time::Duration::from_millis(5), tick);
        }
    }
}

/// Commits one tick's decisions as one log entry (`Command::Batch`; more only past its
/// bounds), so that a node's death with many groups costs one commit while grants wait,
/// not one per group. Each decision is applied on its own: one refused (decided on a state
/// another write has changed since) is logged and skipped, and the next tick decides again.
async fn commit_decisions(agent: &Agent, decisions: Vec<haven_controller::Decision>) {
    for d in &decisions {
        tracing::info!(rule = ?d.rule, why = %d.why, "controller decision");
    }
    let mut carried = decisions.iter();
    for entry in haven_state::batches(decisions.iter().map(|d| d.command.clone()).collect()) {
        let response = match agent.submit("controller", entry.clone()).await {
            Ok(reply) => Ok(reply),
            Err(SubmitError::Refused(e)) => Err(e),
            Err(e) => {
                tracing::warn!(error = %e, "controller decisions not committed");
                return;
            }
        };
        // Outcomes first: `zip` then stops without taking a decision of the next entry.
        for (outcome, d) in haven_state::outcomes(&entry, response).into_iter().zip(carried.by_ref()) {
            if let Err(e) = outcome {
                tracing::warn!(error = %e, decision = %d, "controller decision refused");
            }
        }
    }
}

/// Asks a majority of voters when they last had contact with a leader of a term below
/// `term` (see `haven_node::contact`), and stores the answer in the agent's wall clock
/// (rounded up to the next ms: later is safe).
async fn ask_earlier_leaders(agent: Arc<Agent>, term: u64, out: Arc<Mutex<Option<(u64, u64)>>>) {
    let started = std::time::Instant::now();
    let asked = agent.db.earlier_leaders_last_contact(term, agent.timing.lease, ContactRule::Majority);
    let Some(at) = asked.await else {
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
