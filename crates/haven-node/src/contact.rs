//! When this node last vouched for a Raft leader, per leader term ([`ContactLog`]), and how
//! a new leader combines the voters' answers into the latest moment an earlier leader can
//! have granted a lease ([`combine`]) — what lets it bound its predecessors' leases without
//! waiting a whole lease from its own election (architecture invariant 4).
//!
//! # Why this bound holds
//!
//! A leader grants a lease renewal only after its leadership check got a fresh
//! AppendEntries acknowledgement from a majority (openraft 0.9's `ensure_linearizable`: a
//! new round of empty AppendEntries sent after the call, any reply but `HigherVote`
//! counts). The renewal was received at `t_r` before that round started, so every node of
//! that majority received an AppendEntries of the granting leader's term *after* `t_r`
//! (the leader itself counts too: it notes every renewal it receives before its check).
//!
//! Every node notes the arrival of each AppendEntries with the sender's term *before* Raft
//! sees it ([`ContactLog::note`]). When a node's own term is already `T`, Raft rejects every
//! later AppendEntries of a term below `T`, so what it noted for terms below `T` is final. A
//! new leader of term `T` asks every voter for its last contact with a leader of a term
//! below `T` and keeps the answers of nodes whose term is at least `T`; once those include a
//! majority of every configuration, the latest of them is at or after the `t_r` of every
//! lease an earlier leader granted (that grant's majority and this one share a node). A
//! restarted node has lost its notes, so it reports its start instead (the log's floor
//! begins at its creation), which is later than anything it lost.
//!
//! Durations cross the network, never clock readings, and each conversion only makes the
//! bound later (safer); clock *rate* differences are what the lease margin is for. The
//! runtime side (notes on tokio's clock, the `GET /internal/raft/leader-contact` query) is
//! `haven_raft::contact`; the simulator drives this module with its nodes' clocks and
//! chooses which answers arrive.
//!
//! Must not: read a clock (times are the node's own [`Micros`], passed in).

use std::collections::BTreeMap;

use crate::Micros;

/// Terms kept one by one; older ones are folded into the floor.
pub const KEEP_TERMS: usize = 16;

/// This node's notes of leader contact, on its own clock.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ContactLog {
    /// Per leader term, the latest contact noted.
    by_term: BTreeMap<u64, Micros>,
    /// No contact of a term no longer in `by_term` was later than this; at first the moment
    /// the log was created (what came before, e.g. before a restart, is forgotten, and was
    /// earlier).
    floor: Micros,
}

impl ContactLog {
    /// An empty log created at `now` (the agent's start, a simulated node's restart).
    pub fn new(now: Micros) -> ContactLog {
        ContactLog { by_term: BTreeMap::new(), floor: now }
    }

    /// Notes a contact with the leader of `term` at `now`. Beyond [`KEEP_TERMS`] terms, the
    /// oldest are folded into the floor.
    pub fn note(&mut self, term: u64, now: Micros) {
        let at = self.by_term.entry(term).or_insert(now);
        *at = (*at).max(now);
        while self.by_term.len() > KEEP_TERMS {
            let Some((_, at)) = self.by_term.pop_first() else { break };
            self.floor = self.floor.max(at);
        }
    }

    /// The latest contact noted with a leader of a term below `term` (at least the floor).
    pub fn last_before(&self, term: u64) -> Micros {
        self.by_term.range(..term).map(|(_, at)| *at).fold(self.floor, Micros::max)
    }
}

/// Whose answers bound the earlier leaders' grants. Anything but [`ContactRule::Majority`]
/// is unsafe and exists so the simulator can prove it notices (`haven-sim`'s
/// `BrokenRule::OwnContactOnly`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum ContactRule {
    /// The latest contact among the answers of a majority of every configuration.
    #[default]
    Majority,
    /// Broken: the new leader's own note alone, at once. A leader that was cut off from the
    /// old one counts the old one's recent grants as long over.
    OwnOnly,
}

/// Combines the answers that count (one per voter, by id, in any time type of one clock):
/// under [`ContactRule::Majority`], `Some(latest)` once the voters that answered form a
/// majority of every configuration in `configs` (one, or two during a joint membership
/// change), `latest` being the most recent contact among *all* answers (more answers only
/// make it later). Under [`ContactRule::OwnOnly`], `own`'s answer alone.
pub fn combine<T: Copy + Ord>(
    configs: &[Vec<u64>],
    own: u64,
    answers: &BTreeMap<u64, T>,
    rule: ContactRule,
) -> Option<T> {
    if rule == ContactRule::OwnOnly {
        return answers.get(&own).copied();
    }
    let majority = |ids: &Vec<u64>| ids.iter().filter(|id| answers.contains_key(id)).count() * 2 > ids.len();
    if configs.is_empty() || !configs.iter().all(majority) {
        return None;
    }
    answers.values().copied().max()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn last_before_ignores_the_asked_term_and_later_and_keeps_the_floor() {
        let mut c = ContactLog::new(1_000);
        c.note(3, 1_100);
        c.note(4, 1_200);
        assert_eq!(c.last_before(4), 1_100);
        assert_eq!(c.last_before(5), 1_200);
        // Nothing below term 3: the creation of the log (a restart forgets, so it counts).
        assert_eq!(c.last_before(3), 1_000);
        assert_eq!(c.last_before(0), 1_000);
    }

    #[test]
    fn a_term_keeps_its_latest_note() {
        let mut c = ContactLog::new(0);
        c.note(2, 500);
        c.note(2, 300);
        assert_eq!(c.last_before(3), 500, "an earlier reading never lowers a note");
        c.note(2, 700);
        assert_eq!(c.last_before(3), 700);
    }

    #[test]
    fn folded_terms_raise_the_floor() {
        let mut c = ContactLog::new(0);
        let terms = KEEP_TERMS as u64 + 4;
        for term in 1..=terms {
            c.note(term, 10 * term);
        }
        // Terms 1-4 were folded: asking below term 2 now answers the floor (term 4's time).
        assert_eq!(c.last_before(2), 40);
        assert_eq!(c.last_before(5), 40);
        assert_eq!(c.last_before(10), 90);
        assert_eq!(c.last_before(terms + 1), 10 * terms);
        assert_eq!(c.by_term.len(), KEEP_TERMS);
    }

    #[test]
    fn a_later_note_of_a_folded_term_is_folded_too() {
        let mut c = ContactLog::new(0);
        for term in 10..10 + KEEP_TERMS as u64 {
            c.note(term, term);
        }
        // A late note of an old term (a message delayed from long ago) enters and is the
        // oldest, so it is folded at once, raising the floor to its time.
        c.note(1, 5_000);
        assert_eq!(c.last_before(2), 5_000);
    }

    #[test]
    fn combine_needs_a_majority_of_each_configuration() {
        let answers: BTreeMap<u64, Micros> = [(1, 10), (2, 30)].into();
        let m = ContactRule::Majority;
        assert_eq!(combine(&[vec![1, 2, 3]], 1, &answers, m), Some(30));
        assert_eq!(combine(&[vec![1, 2, 3, 4]], 1, &answers, m), None, "2 of 4 is no majority");
        assert_eq!(combine(&[vec![1, 2, 3], vec![3, 4, 5]], 1, &answers, m), None, "joint: second config lacks one");
        assert_eq!(combine(&[vec![1, 2, 3], vec![1, 2, 4]], 1, &answers, m), Some(30), "joint: both have 2 of 3");
        assert_eq!(combine(&[], 1, &answers, m), None);
    }

    #[test]
    fn combine_takes_the_latest_of_all_answers() {
        // Three of five answered: a majority; the latest of the three, not of the first two.
        let answers: BTreeMap<u64, Micros> = [(1, 10), (2, 30), (5, 20)].into();
        assert_eq!(combine(&[vec![1, 2, 3, 4, 5]], 1, &answers, ContactRule::Majority), Some(30));
    }

    #[test]
    fn own_only_takes_the_leaders_own_note_without_a_majority() {
        let answers: BTreeMap<u64, Micros> = [(1, 10), (2, 30)].into();
        let own = ContactRule::OwnOnly;
        assert_eq!(combine(&[vec![1, 2, 3]], 1, &answers, own), Some(10), "the later answer of 2 is ignored");
        let alone: BTreeMap<u64, Micros> = [(1, 10)].into();
        assert_eq!(combine(&[vec![1, 2, 3]], 1, &alone, own), Some(10), "no majority needed");
        assert_eq!(combine(&[vec![1, 2, 3]], 1, &alone, ContactRule::Majority), None);
        assert_eq!(combine(&[vec![1, 2, 3]], 3, &alone, own), None, "without its own note");
    }
}
