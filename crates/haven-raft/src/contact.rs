//! When this node last vouched for a Raft leader, per leader term, on tokio's clock — what
//! lets a new leader bound the leases its predecessors granted without waiting a whole lease
//! from its own election (architecture invariant 4).
//!
//! The log and the way a new leader combines the voters' answers are pure and shared with
//! the simulator: `haven_node::contact` ([`ContactLog`], [`combine`]), which also says why
//! the bound holds. This module runs the log on tokio's clock, converting `Instant`s to the
//! core's microseconds at the edge (rounded up: a later note is the safe side), and holds
//! the wire type of the query.
//!
//! Where the notes are taken: every node notes the arrival of each AppendEntries with the
//! sender's term *before* Raft sees it (`network`'s append route), and a leader notes every
//! renewal it receives before its leadership check ([`ClusterDb::note_grant_request`]).
//!
//! [`ClusterDb::note_grant_request`]: crate::ClusterDb::note_grant_request

use std::sync::{Arc, Mutex};
use std::time::Duration;

pub use haven_node::contact::{ContactRule, KEEP_TERMS, combine};
use haven_node::{ContactLog, Micros};
use serde::{Deserialize, Serialize};
use tokio::time::Instant;

/// This node's notes of leader contact (cheap to clone: one shared log).
#[derive(Clone, Debug)]
pub struct LeaderContact {
    /// The origin of the log's clock readings: when the log was created, which is also its
    /// floor (what came before is forgotten, and earlier).
    epoch: Instant,
    log: Arc<Mutex<ContactLog>>,
}

impl Default for LeaderContact {
    fn default() -> Self {
        LeaderContact::new()
    }
}

/// `t` on the log's clock, rounded up to the next µs.
fn micros_since(epoch: Instant, t: Instant) -> Micros {
    let nanos = t.saturating_duration_since(epoch).as_nanos().div_ceil(1000);
    u64::try_from(nanos).unwrap_or(u64::MAX)
}

impl LeaderContact {
    pub fn new() -> LeaderContact {
        LeaderContact { epoch: Instant::now(), log: Arc::new(Mutex::new(ContactLog::new(0))) }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, ContactLog> {
        self.log.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Notes a contact with the leader of `term` now.
    pub fn note(&self, term: u64) {
        let now = micros_since(self.epoch, Instant::now());
        self.lock().note(term, now);
    }

    /// The latest contact noted with a leader of a term below `term` (at least the floor).
    pub fn last_before(&self, term: u64) -> Instant {
        let at = self.lock().last_before(term);
        // No note is later than now, so the sum fits; if not, now is later (safe).
        self.epoch.checked_add(Duration::from_micros(at)).unwrap_or_else(Instant::now)
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

/// `since_ms` as the asker's instant: the answer was made no later than `received`, so
/// the contact was no later than `received - since_ms`; the ms rounding goes the safe
/// way (later), by adding the millisecond `since_ms` dropped.
pub fn contact_instant(received: Instant, since_ms: u64) -> Instant {
    let since = Duration::from_millis(since_ms).saturating_sub(Duration::from_millis(1));
    received.checked_sub(since).unwrap_or(received)
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

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

    #[tokio::test(start_paused = true)]
    async fn a_note_is_never_earlier_than_its_instant() {
        let c = LeaderContact::new();
        let start = Instant::now();
        tokio::time::advance(Duration::from_nanos(1_500)).await;
        let noted = Instant::now();
        c.note(1);
        assert!(c.last_before(2) >= noted, "rounded up to the next µs");
        assert_eq!(c.last_before(2), start + Duration::from_micros(2));
    }

    #[test]
    fn combine_works_on_instants() {
        let t0 = std::time::Instant::now();
        let at = |ms| Instant::from_std(t0 + Duration::from_millis(ms));
        let answers: BTreeMap<u64, Instant> = [(1, at(10)), (2, at(30))].into();
        assert_eq!(combine(&[vec![1, 2, 3]], 1, &answers, ContactRule::Majority), Some(at(30)));
        assert_eq!(combine(&[vec![1, 2, 3, 4]], 1, &answers, ContactRule::Majority), None, "2 of 4 is no majority");
        assert_eq!(combine(&[vec![1, 2, 3, 4]], 1, &answers, ContactRule::OwnOnly), Some(at(10)));
    }

    #[test]
    fn contact_instant_rounds_towards_later() {
        let now = Instant::now();
        assert_eq!(contact_instant(now, 0), now);
        assert_eq!(contact_instant(now, 1), now);
        assert_eq!(contact_instant(now, 250), now - Duration::from_millis(249));
    }
}
