//! When this node last vouched for a Raft leader, per leader term — what lets a new leader
//! bound the leases its predecessors granted without waiting a whole lease from its own
//! election.
//!
//! # Why this bound holds
//!
//! A leader grants a lease renewal only after `ensure_linearizable` got a fresh
//! AppendEntries acknowledgement from a majority (openraft 0.9's `CheckIsLeader`: a new
//! round of empty AppendEntries sent after the call, any reply but `HigherVote` counts). The
//! renewal was received at `t_r` before that round started, so every node of that majority
//! received an AppendEntries of the granting leader's term *after* `t_r` (the leader itself
//! counts too: it notes every renewal it receives, see [`ClusterDb::note_grant_request`]).
//!
//! Every node notes the arrival of each AppendEntries with the sender's term *before* Raft
//! sees it ([`LeaderContact::note`]). When a node's own term is already `T`, Raft rejects
//! every later AppendEntries of a term below `T`, so what it noted for terms below `T` is
//! final. A new leader of term `T` asks every voter for its last contact with a leader of a
//! term below `T` and keeps the answers of nodes whose term is at least `T`; once those
//! include a majority, the latest of them is at or after the `t_r` of every lease an earlier
//! leader granted (that grant's majority and this one share a node). A restarted node has
//! lost its notes, so it reports its start instead, which is later than anything it lost.
//!
//! Durations cross the network, never clock readings, and each conversion only makes the
//! bound later (safer); clock *rate* differences are what the lease margin is for.
//!
//! [`ClusterDb::note_grant_request`]: crate::ClusterDb::note_grant_request

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::time::Instant;

/// Terms kept one by one; older ones are folded into one floor.
const KEEP_TERMS: usize = 16;

/// This node's notes of leader contact (cheap to clone: one shared log).
#[derive(Clone, Debug)]
pub struct LeaderContact {
    log: Arc<Mutex<ContactLog>>,
}

#[derive(Debug)]
struct ContactLog {
    /// Per leader term, the latest contact noted.
    by_term: BTreeMap<u64, Instant>,
    /// No contact of a term no longer in `by_term` was later than this; at first the moment
    /// the log was created (what came before is forgotten, and earlier).
    floor: Instant,
}

impl Default for LeaderContact {
    fn default() -> Self {
        LeaderContact::new()
    }
}

impl LeaderContact {
    pub fn new() -> LeaderContact {
        LeaderContact { log: Arc::new(Mutex::new(ContactLog { by_term: BTreeMap::new(), floor: Instant::now() })) }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, ContactLog> {
        self.log.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Notes a contact with the leader of `term` now.
    pub fn note(&self, term: u64) {
        let now = Instant::now();
        let mut log = self.lock();
        let at = log.by_term.entry(term).or_insert(now);
        *at = (*at).max(now);
        while log.by_term.len() > KEEP_TERMS {
            let Some((_, at)) = log.by_term.pop_first() else { break };
            log.floor = log.floor.max(at);
        }
    }

    /// The latest contact noted with a leader of a term below `term` (at least the floor).
    pub fn last_before(&self, term: u64) -> Instant {
        let log = self.lock();
        log.by_term.range(..term).map(|(_, at)| *at).fold(log.floor, Instant::max)
    }
}

/// Reply of `GET /internal/raft/leader-contact?term=T`.
#[derive(Clone, Copy, Debug, Serialize, Deserialize)]
pub struct ContactReply {
    /// The answering node's current term when it answered; its answer counts only if this
    /// is at least the asked term.
    pub term: u64,
    /// How long ago (on its clock) it last had contact with a leader of a term below the
    /// asked one, rounded down to whole ms (the asker rounds its reading the safe way).
    pub since_ms: u64,
}

/// Combines answers, one per voter: `Some(latest)` once the voters whose answer counts
/// form a majority of every configuration in `configs` (one, or two during a joint
/// membership change), `latest` being the most recent contact among *all* answers that
/// count (more answers only make it later).
pub fn combine(configs: &[Vec<u64>], answers: &BTreeMap<u64, Instant>) -> Option<Instant> {
    let majority = |ids: &Vec<u64>| ids.iter().filter(|id| answers.contains_key(id)).count() * 2 > ids.len();
    if configs.is_empty() || !configs.iter().all(majority) {
        return None;
    }
    answers.values().copied().max()
}

/// `since_ms` as the asker's instant: the answer was made no later than `received`, so
/// the contact was no later than `received - since_ms`; the ms rounding goes the safe
/// way (later), by adding the millisecond `since_ms` dropped.
pub fn contact_instant(received: Instant, since_ms: u64) -> Instant {
    let since = Duration::from_millis(since_ms).saturating_sub(Duration::from_millis(1));
    received.checked_sub(since).unwrap_or(received)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn last_before_ignores_the_asked_term_and_later_and_keeps_the_floor() {
        let c = LeaderContact::new();
        let start = Instant::now();
        tokio::time::advance(Duration::from_millis(100)).await;
        c.note(3);
        tokio::time::advance(Duration::from_millis(100)).await;
        c.note(4);
        assert_eq!(c.last_before(4), start + Duration::from_millis(100));
        assert_eq!(c.last_before(5), start + Duration::from_millis(200));
        // Nothing below term 2: the creation of the log (a restart forgets, so it counts).
        assert_eq!(c.last_before(2), start);
    }

    #[tokio::test(start_paused = true)]
    async fn folded_terms_raise_the_floor() {
        let c = LeaderContact::new();
        for term in 1..=(KEEP_TERMS as u64 + 4) {
            tokio::time::advance(Duration::from_millis(10)).await;
            c.note(term);
        }
        let start = Instant::now() - Duration::from_millis(10 * (KEEP_TERMS as u64 + 4));
        // Terms 1-4 were folded: asking below term 2 now answers the floor (term 4's time).
        assert_eq!(c.last_before(2), start + Duration::from_millis(40));
        assert_eq!(c.last_before(10), start + Duration::from_millis(90));
    }

    #[test]
    fn combine_needs_a_majority_of_each_configuration() {
        let t0 = std::time::Instant::now();
        let at = |ms| Instant::from_std(t0 + Duration::from_millis(ms));
        let answers: BTreeMap<u64, Instant> = [(1, at(10)), (2, at(30))].into();
        assert_eq!(combine(&[vec![1, 2, 3]], &answers), Some(at(30)));
        assert_eq!(combine(&[vec![1, 2, 3, 4]], &answers), None, "2 of 4 is no majority");
        assert_eq!(combine(&[vec![1, 2, 3], vec![3, 4, 5]], &answers), None, "joint: second config lacks one");
        assert_eq!(combine(&[], &answers), None);
    }

    #[test]
    fn contact_instant_rounds_towards_later() {
        let now = Instant::now();
        assert_eq!(contact_instant(now, 0), now);
        assert_eq!(contact_instant(now, 1), now);
        assert_eq!(contact_instant(now, 250), now - Duration::from_millis(249));
    }
}
