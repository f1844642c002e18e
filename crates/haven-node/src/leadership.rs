//! The controller loop's leadership bookkeeping: which term this node leads, and
//! `leader_since`, the moment from which it counts every lease an earlier leader can have
//! granted as renewed (architecture invariant 4).
//!
//! A new leader does not know which leases its predecessors renewed, so when it first sees
//! itself leading a term it counts every lease as renewed *now* (its election, as far as it
//! knows). Once a majority of voters told it how late an earlier leader can have granted one
//! ([`crate::contact`]), `leader_since` moves back to that moment, which is usually shortly
//! before the old leader was lost: only for the same term, and only ever earlier. Losing
//! leadership forgets all of it, and tells the caller, which aborts what it does only as
//! the leader (the agent: fence runs and the question to the voters).
//!
//! Must not: read a clock (times are the leader's ms, passed in), or move `leader_since`
//! later within a term (an answer only ever bounds the earlier grants from above).

/// What [`Leadership::observe`] saw change.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Change {
    /// Nothing: still leading the same term, or still not leading.
    Unchanged,
    /// This node leads a term it did not lead at the last look: `leader_since` is now; ask
    /// the voters about earlier leaders (for this term).
    NewTerm,
    /// This node led and no longer does: everything done as the leader must stop.
    Lost,
}

/// The term this node leads and its `leader_since`, if it leads.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Leadership {
    current: Option<Led>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Led {
    term: u64,
    since_ms: u64,
}

impl Leadership {
    pub fn new() -> Leadership {
        Leadership::default()
    }

    /// At a controller tick: `leading` is the term this node leads now, if it leads.
    pub fn observe(&mut self, leading: Option<u64>, now_ms: u64) -> Change {
        match (leading, self.current) {
            (None, None) => Change::Unchanged,
            (None, Some(_)) => {
                self.current = None;
                Change::Lost
            }
            (Some(term), Some(led)) if led.term == term => Change::Unchanged,
            (Some(term), _) => {
                self.current = Some(Led { term, since_ms: now_ms });
                Change::NewTerm
            }
        }
    }

    /// The term this node leads, as of the last [`Leadership::observe`].
    pub fn term(&self) -> Option<u64> {
        self.current.map(|l| l.term)
    }

    /// No lease an earlier leader granted can be later than this (the leader's ms).
    pub fn leader_since(&self) -> Option<u64> {
        self.current.map(|l| l.since_ms)
    }

    /// A majority of voters told that no leader of a term below `term` can have granted a
    /// lease after `last_contact_ms`: `leader_since` moves back to it if this node still
    /// leads `term` and it is earlier. Returns whether it moved.
    pub fn earlier_leaders_answered(&mut self, term: u64, last_contact_ms: u64) -> bool {
        match &mut self.current {
            Some(led) if led.term == term && last_contact_ms < led.since_ms => {
                led.since_ms = last_contact_ms;
                true
            }
            _ => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_new_term_counts_leases_from_now() {
        let mut l = Leadership::new();
        assert_eq!(l.observe(None, 10), Change::Unchanged);
        assert_eq!(l.leader_since(), None);
        assert_eq!(l.observe(Some(3), 100), Change::NewTerm);
        assert_eq!((l.term(), l.leader_since()), (Some(3), Some(100)));
        assert_eq!(l.observe(Some(3), 200), Change::Unchanged);
        assert_eq!(l.leader_since(), Some(100), "the first look in the term counts");
    }

    #[test]
    fn a_later_term_starts_again_without_losing_leadership() {
        let mut l = Leadership::new();
        l.observe(Some(3), 100);
        assert_eq!(l.observe(Some(5), 400), Change::NewTerm, "re-elected in a later term");
        assert_eq!(l.leader_since(), Some(400));
    }

    #[test]
    fn an_answer_about_earlier_leaders_only_moves_leader_since_back_in_its_term() {
        let mut l = Leadership::new();
        l.observe(Some(4), 1_000);
        assert!(!l.earlier_leaders_answered(3, 500), "an answer for another term");
        assert!(!l.earlier_leaders_answered(4, 1_200), "later than the election: kept");
        assert_eq!(l.leader_since(), Some(1_000));
        assert!(l.earlier_leaders_answered(4, 700));
        assert_eq!(l.leader_since(), Some(700));
        assert!(!l.earlier_leaders_answered(4, 900), "never later again");
        assert_eq!(l.observe(Some(4), 2_000), Change::Unchanged);
        assert_eq!(l.leader_since(), Some(700));
    }

    #[test]
    fn losing_leadership_forgets_it_and_says_so_once() {
        let mut l = Leadership::new();
        l.observe(Some(2), 100);
        assert_eq!(l.observe(None, 200), Change::Lost);
        assert_eq!(l.leader_since(), None);
        assert_eq!(l.observe(None, 300), Change::Unchanged);
        assert!(!l.earlier_leaders_answered(2, 50), "a late answer for a term no longer led");
        assert_eq!(l.observe(Some(2), 400), Change::NewTerm, "leading again starts from now");
        assert_eq!(l.leader_since(), Some(400));
    }
}
