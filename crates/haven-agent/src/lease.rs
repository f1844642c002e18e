//! The lease keeper: this node renews a time-bounded lease with the Raft leader every
//! `renew_interval`. The lease itself (when it is valid, `may_run`, the drift allowance, the
//! rule that it counts from the moment the renewal was *sent*) is `haven_node::Lease`, the
//! code the simulator drives too; this module runs it on tokio's clock, converting
//! `Instant`s to the core's microseconds at the edge, and sends the renewals.
//!
//! The leader's side too: [`grant`] answers renewals by `haven_node::grant`'s rule, through
//! [`Grants`], the one way to the lease table (the controller loop reads it only in a
//! [`Tick`], during which grants are provisional).

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use haven_api::{Heartbeat, HeartbeatReply};
use haven_drivers::time::instant_after;
use haven_node::{GrantAnswer, GrantRule, GrantTable, Lease, LeaseRule, Micros, PROVISIONAL, Renewal};
use tokio::sync::watch;
use tokio::time::Instant;

use crate::guard::GuardLink;
use crate::{Agent, Timing, peer};

/// This node's lease, as far as this node knows.
pub struct LeaseKeeper {
    timing: Timing,
    /// The origin of the core's clock readings.
    epoch: Instant,
    lease: Mutex<Lease>,
    changed: watch::Sender<u64>,
    /// The node guard, told of every lease before it may be used (see [`crate::guard`]);
    /// without a guard that reads, the lease counts as lost here.
    guard: Arc<GuardLink>,
}

fn micros(d: Duration) -> Micros {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX)
}

impl LeaseKeeper {
    pub fn new(timing: Timing, guard: Arc<GuardLink>) -> LeaseKeeper {
        LeaseKeeper {
            timing,
            epoch: Instant::now(),
            lease: Mutex::new(Lease::new()),
            changed: watch::channel(0).0,
            guard,
        }
    }

    /// The deadline to tell the guard (`haven_node::guard::deadline`, the node's own lease
    /// end) as a `CLOCK_MONOTONIC` reading, if the lease is valid at `now`.
    fn deadline_ns(lease: &Lease, now: Micros) -> Option<u64> {
        let until = haven_node::guard::deadline(lease, now, haven_node::guard::GuardRule::NodeDeadline)?;
        let left = until.saturating_sub(now);
        Some(haven_drivers::guard::monotonic_ns().saturating_add(left.saturating_mul(1000)))
    }

    /// Tells the guard the current lease (a new guard, before it is relied on).
    pub fn tell_guard(&self) {
        let now = self.now();
        self.with(|l| self.guard.tell(Self::deadline_ns(l, now)));
    }

    /// Wakes whoever watches the lease (renewed or lost, or a guard came or went).
    pub fn announce(&self) {
        self.changed.send_modify(|v| *v += 1);
    }

    fn with<T>(&self, f: impl FnOnce(&mut Lease) -> T) -> T {
        f(&mut self.lease.lock().unwrap_or_else(|e| e.into_inner()))
    }

    /// `t` on the core's clock.
    fn at(&self, t: Instant) -> Micros {
        micros(t.saturating_duration_since(self.epoch))
    }

    fn now(&self) -> Micros {
        self.at(Instant::now())
    }

    /// The lease as it is now, and the core's clock reading of now; no lease while the
    /// node guard is not running.
    pub fn snapshot(&self) -> (Lease, Micros) {
        let now = self.now();
        if !self.guard.ok() {
            return (Lease::new(), now);
        }
        (self.with(|l| l.clone()), now)
    }

    /// A reading of the core's clock as a tokio instant.
    pub fn instant(&self, t: Micros) -> Instant {
        instant_after(self.epoch, Duration::from_micros(t))
    }

    /// Whether the lease is valid now.
    pub fn valid(&self) -> bool {
        let now = self.now();
        self.guard.ok() && self.with(|l| l.valid(now))
    }

    /// A receiver that changes whenever the lease is renewed or lost.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.changed.subscribe()
    }

    /// A renewal sent at `sent`, unless one is in flight (`run` sends one at a time).
    fn begin_renewal(&self, sent: Instant) -> Option<Renewal> {
        let sent = self.at(sent);
        self.with(|l| l.begin_renewal(sent))
    }

    fn renewed(&self, renewal: Renewal, min_applied: u64) {
        let (now, lease_len) = (self.now(), micros(self.timing.lease));
        // The guard hears of the new lease before anyone here can see it (the lock is held
        // from the renewal until the guard was told).
        let renewed = self.with(|l| {
            let renewed = l.renewed(renewal, now, min_applied, lease_len, LeaseRule::FromSend);
            if renewed {
                self.guard.tell(Self::deadline_ns(l, now));
            }
            renewed
        });
        if renewed {
            self.announce();
        }
    }

    fn renewal_failed(&self, renewal: Renewal) {
        self.with(|l| l.renewal_failed(renewal));
    }

    /// Logs and announces a change of validity since the last look.
    fn notice(&self) {
        let now = self.now();
        match self.with(|l| l.noticed(now)) {
            Some(true) => tracing::info!("lease acquired"),
            Some(false) => tracing::warn!("lease lost: no renewal from a leader with quorum"),
            None => return,
        }
        self.announce();
    }
}

/// Renews the lease until `stop`.
pub async fn run(agent: Arc<Agent>, mut stop: watch::Receiver<bool>) {
    let interval = agent.timing.renew_interval;
    loop {
        let started = Instant::now();
        if let Some(renewal) = agent.lease.begin_renewal(started) {
            match renew_once(&agent).await {
                Some(reply) => agent.lease.renewed(renewal, reply.applied_index),
                None => agent.lease.renewal_failed(renewal),
            }
        }
        agent.lease.notice();
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
        agent.lease.notice();
    }
}

async fn renew_once(agent: &Agent) -> Option<HeartbeatReply> {
    let state = agent.db.state();
    if !state.nodes.contains_key(agent.name()) || agent.pki.identity().is_none() {
        return None; // not a member (yet), or listed before the join's answer brought the certificate
    }
    let (leader_id, addr) = agent.db.leader()?;
    let hb = Heartbeat { node: agent.name().to_string() };
    let timeout = agent.timing.lease / 2;
    if leader_id == agent.db.node_id() {
        tokio::time::timeout(timeout, grant(agent, &hb)).await.ok()?.ok()
    } else {
        // Give up on this leader as soon as another one is known (see `run`).
        let mut metrics = agent.db.raft().metrics();
        let http = agent.peers.get();
        tokio::select! {
            reply = peer::send_heartbeat(&http, &addr, &hb, timeout) => reply,
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

/// The leader's lease table and its grant rule (`haven_node::GrantTable`, invariant 3),
/// shared by the grants and the controller loop. Nothing can record or grant a renewal but
/// [`Grants::grant`], nor read the heartbeats but a [`Tick`]; a grant during a tick is
/// provisional and never waits for it.
#[derive(Default)]
pub struct Grants {
    table: Mutex<GrantTable>,
}

/// A controller tick in progress: from reading the heartbeats until its decisions are
/// committed, renewals are granted only provisionally. Dropping it ends the tick (also
/// when the controller's task is aborted mid-commit).
pub struct Tick<'a> {
    grants: &'a Grants,
    /// The renewals received so far (the leader's ms), for `haven_controller::decide`.
    pub heartbeats: BTreeMap<String, u64>,
}

impl Drop for Tick<'_> {
    fn drop(&mut self) {
        self.grants.with(|t| t.end_tick());
    }
}

impl Grants {
    fn with<T>(&self, f: impl FnOnce(&mut GrantTable) -> T) -> T {
        f(&mut self.table.lock().unwrap_or_else(|e| e.into_inner()))
    }

    /// Begins a controller tick, unless one is in progress.
    pub fn begin_tick(&self) -> Option<Tick<'_>> {
        let heartbeats = self.with(|t| t.begin_tick())?;
        Some(Tick { grants: self, heartbeats })
    }

    /// Answers a renewal from `node` by `haven_node::GrantTable::grant`'s rule: the leader's
    /// applied index to send with the lease (`haven_node::PROVISIONAL` while a tick commits),
    /// read after the answer; `state` reads the committed state.
    fn grant(&self, node: &str, state: &haven_state::State, applied: impl Fn() -> u64) -> Result<u64, GrantError> {
        match self.with(|t| t.grant(node, crate::now_ms(), state, GrantRule::Guarded)) {
            GrantAnswer::Granted => Ok(applied()),
            GrantAnswer::Provisional => Ok(PROVISIONAL),
            GrantAnswer::MarkedDown => Err(GrantError::MarkedDown(node.to_string())),
        }
    }
}

/// Leader side: grant a lease renewal only after a quorum confirmed this node still leads,
/// and only by the rule of `haven_node::grant` (provisional while a controller tick commits,
/// no lease for a node the committed state marks down; the simulator found the race, seed
/// 425 before the first fix).
pub async fn grant(agent: &Agent, hb: &Heartbeat) -> Result<HeartbeatReply, GrantError> {
    // Before the leadership check that vouches for this grant: a later leader learns from
    // this note (through a majority's answers) how late an earlier leader granted a lease.
    agent.db.note_grant_request();
    agent.db.ensure_leader().await?;
    // The applied index is read after the answer: a node then starts nothing before it
    // applied what was committed before its grant.
    let applied_index = agent.grants.grant(&hb.node, &agent.db.state(), || agent.applied_index())?;
    Ok(HeartbeatReply { leader_id: agent.db.node_id(), applied_index })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn empty_state() -> Arc<haven_state::State> {
        Arc::new(haven_state::State::default())
    }

    #[test]
    fn a_grant_during_a_tick_is_provisional_and_the_guard_ends_the_tick() {
        let grants = Grants::default();
        let tick = grants.begin_tick().expect("no tick is in progress");
        assert!(grants.begin_tick().is_none(), "one tick at a time");
        assert_eq!(grants.grant("a", &empty_state(), || 7).ok(), Some(PROVISIONAL));
        drop(tick);
        assert_eq!(grants.grant("a", &empty_state(), || 7).ok(), Some(7), "the dropped guard ended the tick");
        let tick = grants.begin_tick().expect("the tick ended");
        assert!(tick.heartbeats.contains_key("a"), "the renewal is recorded");
    }

    #[test]
    fn without_a_tick_a_grant_is_answered_with_the_applied_index() {
        let grants = Grants::default();
        assert_eq!(grants.grant("a", &empty_state(), || 3).ok(), Some(3));
        assert!(grants.begin_tick().is_some_and(|t| t.heartbeats.contains_key("a")));
    }
}
