//! The lease keeper: this node renews a time-bounded lease with the Raft leader every
//! `renew_interval`. The lease counts from the moment the renewal was *sent*, so the node's
//! own deadline is never later than the deadline the leader computes from the moment it
//! *received* it (plus the margin). Without a valid lease the node runs nothing.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use haven_api::{Heartbeat, HeartbeatReply};
use haven_drivers::time::instant_after;
use tokio::sync::watch;
use tokio::time::Instant;

use crate::{Agent, Timing, peer};

#[derive(Clone, Copy, Debug, Default)]
struct Lease {
    valid_until: Option<Instant>,
    /// The leader's applied index when it granted the lease.
    min_applied: u64,
}

/// This node's lease, as far as this node knows.
pub struct LeaseKeeper {
    timing: Timing,
    lease: Mutex<Lease>,
    changed: watch::Sender<u64>,
}

impl LeaseKeeper {
    pub fn new(timing: Timing) -> LeaseKeeper {
        LeaseKeeper { timing, lease: Mutex::new(Lease::default()), changed: watch::channel(0).0 }
    }

    fn get(&self) -> Lease {
        *self.lease.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Whether the lease is valid now.
    pub fn valid(&self) -> bool {
        self.get().valid_until.is_some_and(|t| Instant::now() < t)
    }

    /// When the lease ends, if it is valid.
    pub fn valid_until(&self) -> Option<Instant> {
        self.get().valid_until.filter(|t| Instant::now() < *t)
    }

    /// Valid lease and the local state is at least as new as the leader's was.
    pub fn may_run(&self, applied_index: u64) -> bool {
        let l = self.get();
        l.valid_until.is_some_and(|t| Instant::now() < t) && applied_index >= l.min_applied
    }

    /// A receiver that changes whenever the lease is renewed or lost.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.changed.subscribe()
    }

    fn renewed(&self, sent: Instant, min_applied: u64) {
        // Allow for the local clock running up to 1% slower than the leader's.
        let lease = self.timing.lease.mul_f64(0.99);
        {
            let mut l = self.lease.lock().unwrap_or_else(|e| e.into_inner());
            l.valid_until = Some(instant_after(sent, lease));
            l.min_applied = min_applied;
        }
        self.changed.send_modify(|v| *v += 1);
    }
}

/// Renews the lease until `stop`.
pub async fn run(agent: Arc<Agent>, mut stop: watch::Receiver<bool>) {
    let interval = agent.timing.renew_interval;
    let mut was_valid = false;
    loop {
        let started = Instant::now();
        if let Some(reply) = renew_once(&agent).await {
            agent.lease.renewed(started, reply.applied_index);
        }
        let valid = agent.lease.valid();
        if valid != was_valid {
            if valid {
                tracing::info!("lease acquired");
            } else {
                tracing::warn!("lease lost: no renewal from a leader with quorum");
            }
            agent.lease.changed.send_modify(|v| *v += 1);
            was_valid = valid;
        }
        let next = instant_after(started, interval);
        // A new leader is renewed with at once: after the leader's node is lost, the first
        // renewal with its successor must not wait for the next tick (nor, in `renew_once`,
        // for a request to the lost leader to time out), or every lease runs out.
        let leader_before = agent.db.leader().map(|(id, _)| id);
        let mut metrics = agent.db.raft().metrics();
        tokio::select! {
            _ = tokio::time::sleep_until(next) => {}
            Ok(_) = metrics.wait_for(|m| m.current_leader.is_some() && m.current_leader != leader_before) => {}
            _ = stop.wait_for(|s| *s) => return,
        }
        if !agent.lease.valid() && was_valid {
            agent.lease.changed.send_modify(|v| *v += 1);
        }
    }
}

async fn renew_once(agent: &Agent) -> Option<HeartbeatReply> {
    let state = agent.db.state();
    if !state.nodes.contains_key(agent.name()) {
        return None; // not a member (yet)
    }
    let (leader_id, addr) = agent.db.leader()?;
    let hb = Heartbeat { node: agent.name().to_string() };
    let timeout = agent.timing.lease / 2;
    if leader_id == agent.db.node_id() {
        tokio::time::timeout(timeout, grant(agent, &hb)).await.ok()?.ok()
    } else {
        // Give up on this leader as soon as another one is known (see `run`).
        let mut metrics = agent.db.raft().metrics();
        tokio::select! {
            reply = peer::send_heartbeat(&agent.peers, &addr, &hb, timeout) => reply,
            Ok(_) = metrics.wait_for(|m| m.current_leader != Some(leader_id)) => None,
        }
    }
}

/// Why the leader did not renew a lease.
#[derive(Debug, thiserror::Error)]
pub enum GrantError {
    #[error(transparent)]
    NotLeader(#[from] haven_raft::WriteError),
    #[error(
        "node {0:?} is marked down in the cluster state; its renewal is noted and it gets a lease again once the controller has marked it up"
    )]
    MarkedDown(String),
}

/// Leader side: grant a lease renewal only after a quorum confirmed this node still leads.
///
/// Two rules close the race the simulator found (`haven-sim`, seed 425 before the fix):
/// - the grant holds the controller's lock, so it cannot fall between a controller tick
///   reading the heartbeats ("node X is silent, move its groups") and those moves being
///   committed — X would otherwise get a fresh lease while the state still names it owner;
/// - a node the committed state marks down gets its heartbeat recorded (so the controller
///   marks it up) but no lease, so it starts nothing until its groups' new placements are
///   committed and visible to it.
pub async fn grant(agent: &Agent, hb: &Heartbeat) -> Result<HeartbeatReply, GrantError> {
    // Before the leadership check that vouches for this grant: a later leader learns from
    // this note (through a majority's answers) how late an earlier leader granted a lease.
    agent.db.note_grant_request();
    let _tick = agent.control_lock.lock().await;
    agent.db.ensure_leader().await?;
    let applied_index = agent.applied_index();
    agent.heartbeats.lock().unwrap_or_else(|e| e.into_inner()).insert(hb.node.clone(), crate::now_ms());
    let state = agent.db.state();
    if state.nodes.get(&hb.node).is_some_and(|n| !n.is_up()) {
        return Err(GrantError::MarkedDown(hb.node.clone()));
    }
    Ok(HeartbeatReply { leader_id: agent.db.node_id(), applied_index })
}

/// Time left on the lease, for logs and status.
pub fn remaining(agent: &Agent) -> Duration {
    agent.lease.valid_until().map(|t| t.saturating_duration_since(Instant::now())).unwrap_or_default()
}
