//! The lease this node holds with the Raft leader, as this node knows it.
//!
//! The node renews every `renew_interval`, one renewal at a time. The lease counts from the
//! moment the renewal was *sent* ([`LeaseRule::FromSend`]), for the lease length less the
//! clock-drift allowance ([`granted_span`]), so the node's own deadline is never later than
//! the one the leader computes from the moment it *received* the renewal (plus the margin).
//! Without a valid lease the node runs nothing; to *start* something it also needs to have
//! applied the state the leader had when it granted the lease ([`Lease::may_run`]).
//!
//! Must not: read a clock (every time is an argument, in the node's own [`Micros`]), or
//! take any reply but the one to the renewal in flight (a late reply to a renewal given up
//! on never replaces a newer one).

use crate::Micros;

/// The `min_applied` of a provisional grant, made while a controller tick was committing
/// (on the wire too: `HeartbeatReply::applied_index`). See [`Lease::renewed`].
pub const PROVISIONAL: u64 = u64::MAX;

/// When a granted lease starts. Anything but [`LeaseRule::FromSend`] is unsafe and exists
/// so the simulator can prove it notices (`haven-sim`'s `BrokenRule::LeaseFromReceipt`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum LeaseRule {
    /// From when this node sent the renewal: never later than the leader's receipt.
    #[default]
    FromSend,
    /// Broken: from when the grant arrived, so a slow reply stretches the lease past the
    /// leader's deadline.
    FromReceipt,
    /// Broken: a provisional grant keeps the previous catch-up gate even after the lease
    /// lapsed, so a node the committing tick declares down may start on its stale state.
    ProvisionalIgnoresLapse,
}

/// How long a grant keeps the lease valid on this node's clock: `lease_len` less 1 %, the
/// allowance for this node's clock running up to 1 % slower than the leader's.
pub fn granted_span(lease_len: Micros) -> Micros {
    // `lease_len * 99 / 100` without overflow.
    lease_len / 100 * 99 + lease_len % 100 * 99 / 100
}

/// One renewal request: its sequence number and when (node clock) it was sent.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Renewal {
    pub seq: u64,
    pub sent: Micros,
}

impl Renewal {
    /// When to give up waiting for the reply: half a lease after sending it (a reply later
    /// than that would leave too little of the lease to be worth waiting for).
    pub fn gives_up_at(&self, lease_len: Micros) -> Micros {
        self.sent.saturating_add(lease_len / 2)
    }

    /// When the next renewal is due: one `renew_interval` after this one was sent.
    pub fn next_at(&self, renew_interval: Micros) -> Micros {
        self.sent.saturating_add(renew_interval)
    }
}

/// This node's lease and the renewal in flight.
#[derive(Clone, Debug, Default)]
pub struct Lease {
    /// The end of the last granted lease (it may be over).
    valid_until: Option<Micros>,
    /// The leader's applied index when it granted the lease.
    min_applied: u64,
    outstanding: Option<Renewal>,
    next_seq: u64,
    /// Validity at the last [`Lease::noticed`].
    was_valid: bool,
}

impl Lease {
    pub fn new() -> Lease {
        Lease::default()
    }

    /// Starts a renewal sent at `now`, unless one is still in flight.
    pub fn begin_renewal(&mut self, now: Micros) -> Option<Renewal> {
        if self.outstanding.is_some() {
            return None;
        }
        let r = Renewal { seq: self.next_seq, sent: now };
        self.next_seq += 1;
        self.outstanding = Some(r);
        Some(r)
    }

    /// The renewal in flight, if any.
    pub fn outstanding(&self) -> Option<Renewal> {
        self.outstanding
    }

    /// The leader granted `renewal`; its reply arrived at `received`, carrying the leader's
    /// applied index `min_applied`, or [`PROVISIONAL`] for a grant made while a controller
    /// tick was committing. The lease then lasts [`granted_span`]`(lease_len)` from the
    /// moment `rule` says. A provisional grant keeps the catch-up gate of the lease it
    /// continues if that lease is still valid at `received`; after a lease that lapsed it
    /// allows no start until the next (ordinary) grant — the tick may be moving this node's
    /// groups away (see `grant`). Returns whether it was taken: a reply to anything but
    /// the renewal in flight (one given up on, or of an earlier life) changes nothing.
    pub fn renewed(
        &mut self,
        renewal: Renewal,
        received: Micros,
        min_applied: u64,
        lease_len: Micros,
        rule: LeaseRule,
    ) -> bool {
        if self.outstanding != Some(renewal) {
            return false;
        }
        self.outstanding = None;
        let start = match rule {
            LeaseRule::FromReceipt => received,
            _ => renewal.sent,
        };
        let continued = self.valid(received) || rule == LeaseRule::ProvisionalIgnoresLapse;
        self.valid_until = Some(start.saturating_add(granted_span(lease_len)));
        self.min_applied = match min_applied {
            PROVISIONAL if continued => self.min_applied,
            m => m,
        };
        true
    }

    /// `renewal` got no grant (no leader, refused, timed out): the next one may be sent.
    /// Returns whether it was the renewal in flight.
    pub fn renewal_failed(&mut self, renewal: Renewal) -> bool {
        if self.outstanding != Some(renewal) {
            return false;
        }
        self.outstanding = None;
        true
    }

    /// Whether the lease is valid at `now`.
    pub fn valid(&self, now: Micros) -> bool {
        self.valid_until.is_some_and(|u| now < u)
    }

    /// The end of the last granted lease, even if it is over (see [`Lease::valid`]).
    pub fn valid_until(&self) -> Option<Micros> {
        self.valid_until
    }

    /// The leader's applied index at the last grant.
    pub fn min_applied(&self) -> u64 {
        self.min_applied
    }

    /// A valid lease at `now`, and this node's applied index `applied` has reached the one
    /// the leader had at the grant: the node may start resources.
    pub fn may_run(&self, now: Micros, applied: u64) -> bool {
        self.valid(now) && applied >= self.min_applied
    }

    /// `Some(valid)` when the lease's validity at `now` differs from the last time this was
    /// asked (for logs: "lease acquired", "lease lost"); `None` if it did not change.
    pub fn noticed(&mut self, now: Micros) -> Option<bool> {
        let valid = self.valid(now);
        (valid != self.was_valid).then(|| {
            self.was_valid = valid;
            valid
        })
    }

    /// Everything in memory is lost (a crash): no lease, nothing in flight. Sequence
    /// numbers keep counting, so no reply to a renewal of the earlier life is taken.
    pub fn forget(&mut self) {
        *self = Lease { next_seq: self.next_seq, ..Lease::default() };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LEASE: Micros = 3_000_000;

    fn granted(sent: Micros, received: Micros, min_applied: u64) -> Lease {
        let mut l = Lease::new();
        let r = l.begin_renewal(sent).expect("nothing in flight");
        assert!(l.renewed(r, received, min_applied, LEASE, LeaseRule::FromSend));
        l
    }

    #[test]
    fn a_provisional_grant_keeps_the_gate_of_a_lease_it_continues() {
        let mut l = granted(0, 100_000, 5);
        assert!(l.may_run(200_000, 5));
        let r = l.begin_renewal(500_000).expect("nothing in flight");
        assert!(l.renewed(r, 600_000, PROVISIONAL, LEASE, LeaseRule::FromSend));
        assert_eq!(l.valid_until(), Some(3_470_000), "extended from the send");
        assert!(l.may_run(700_000, 5), "the lease never lapsed: the old catch-up gate holds");
    }

    #[test]
    fn a_provisional_grant_after_a_lapse_allows_no_start_until_an_ordinary_one() {
        let mut l = granted(0, 100_000, 5);
        // The lease ended at 2.97 s; the next grant comes while a tick commits.
        let r = l.begin_renewal(4_000_000).expect("nothing in flight");
        assert!(l.renewed(r, 4_100_000, PROVISIONAL, LEASE, LeaseRule::FromSend));
        assert!(l.valid(4_200_000), "valid: it keeps nothing running, but need not fence");
        assert!(!l.may_run(4_200_000, u64::MAX - 1), "no start: the tick may be moving its groups");
        // A provisional grant continuing that one keeps the block.
        let r = l.begin_renewal(4_500_000).expect("nothing in flight");
        assert!(l.renewed(r, 4_600_000, PROVISIONAL, LEASE, LeaseRule::FromSend));
        assert!(!l.may_run(4_700_000, 1_000));
        let r = l.begin_renewal(5_000_000).expect("nothing in flight");
        assert!(l.renewed(r, 5_100_000, 9, LEASE, LeaseRule::FromSend));
        assert!(l.may_run(5_200_000, 9), "an ordinary grant lifts it");
    }

    #[test]
    fn no_lease_before_the_first_grant() {
        let l = Lease::new();
        assert!(!l.valid(0));
        assert!(!l.may_run(0, u64::MAX));
        assert_eq!(l.valid_until(), None);
    }

    #[test]
    fn valid_until_sent_plus_lease_less_the_drift_allowance() {
        let l = granted(10_000_000, 10_800_000, 5);
        assert_eq!(granted_span(LEASE), 2_970_000);
        assert_eq!(l.valid_until(), Some(12_970_000));
        assert!(l.valid(12_969_999));
        assert!(!l.valid(12_970_000), "the deadline itself is already outside the lease");
    }

    #[test]
    fn the_drift_allowance_is_one_percent_without_overflow() {
        assert_eq!(granted_span(100), 99);
        assert_eq!(granted_span(1_500_000), 1_485_000);
        assert_eq!(granted_span(u64::MAX), u64::MAX / 100 * 99 + u64::MAX % 100 * 99 / 100);
        assert!(granted_span(u64::MAX) < u64::MAX);
    }

    #[test]
    fn a_slow_reply_does_not_stretch_the_lease() {
        let late = granted(0, 1_400_000, 0);
        let quick = granted(0, 1_000, 0);
        assert_eq!(late.valid_until(), quick.valid_until());
    }

    #[test]
    fn from_receipt_counts_from_the_arrival() {
        let mut l = Lease::new();
        let r = l.begin_renewal(0).expect("nothing in flight");
        assert!(l.renewed(r, 1_400_000, 0, LEASE, LeaseRule::FromReceipt));
        assert_eq!(l.valid_until(), Some(1_400_000 + 2_970_000));
    }

    #[test]
    fn may_run_needs_the_leaders_applied_index() {
        let l = granted(0, 1_000, 7);
        assert!(!l.may_run(1_000, 6));
        assert!(l.may_run(1_000, 7));
        assert!(l.may_run(1_000, 8));
        assert!(!l.may_run(3_000_000, 8), "not after the lease ended");
    }

    #[test]
    fn one_renewal_at_a_time() {
        let mut l = Lease::new();
        let r = l.begin_renewal(0).expect("nothing in flight");
        assert_eq!(l.begin_renewal(100), None);
        assert_eq!(l.outstanding(), Some(r));
        assert!(l.renewal_failed(r));
        assert_eq!(l.outstanding(), None);
        assert!(l.begin_renewal(100).is_some());
    }

    #[test]
    fn a_late_reply_to_a_renewal_given_up_on_changes_nothing() {
        let mut l = Lease::new();
        let old = l.begin_renewal(0).expect("nothing in flight");
        assert!(l.renewal_failed(old));
        let new = l.begin_renewal(500_000).expect("nothing in flight");
        assert!(l.renewed(new, 600_000, 9, LEASE, LeaseRule::FromSend));
        let until = l.valid_until();
        // The older renewal's grant arrives afterwards: it would end the lease earlier and
        // lower the index to catch up to.
        assert!(!l.renewed(old, 700_000, 3, LEASE, LeaseRule::FromSend));
        assert_eq!(l.valid_until(), until);
        assert_eq!(l.min_applied(), 9);
        assert!(!l.renewal_failed(old));
    }

    #[test]
    fn a_newer_grant_moves_the_lease_and_the_index_on() {
        let mut l = granted(0, 1_000, 4);
        let r = l.begin_renewal(500_000).expect("nothing in flight");
        assert!(l.renewed(r, 501_000, 6, LEASE, LeaseRule::FromSend));
        assert_eq!(l.valid_until(), Some(500_000 + 2_970_000));
        assert!(!l.may_run(600_000, 5));
    }

    #[test]
    fn forgetting_drops_the_lease_and_ignores_replies_of_the_earlier_life() {
        let mut l = granted(0, 1_000, 1);
        let r = l.begin_renewal(500_000).expect("nothing in flight");
        l.forget();
        assert!(!l.valid(600_000));
        assert_eq!(l.outstanding(), None);
        assert!(!l.renewed(r, 600_000, 1, LEASE, LeaseRule::FromSend));
        let again = l.begin_renewal(700_000).expect("nothing in flight");
        assert_ne!(again.seq, r.seq);
    }

    #[test]
    fn noticed_reports_each_change_once() {
        let mut l = Lease::new();
        assert_eq!(l.noticed(0), None);
        let r = l.begin_renewal(0).expect("nothing in flight");
        l.renewed(r, 10, 0, LEASE, LeaseRule::FromSend);
        assert_eq!(l.noticed(10), Some(true));
        assert_eq!(l.noticed(20), None);
        assert_eq!(l.noticed(2_970_000), Some(false));
        assert_eq!(l.noticed(2_970_001), None);
    }

    #[test]
    fn renewal_deadlines() {
        let r = Renewal { seq: 0, sent: 1_000_000 };
        assert_eq!(r.gives_up_at(LEASE), 2_500_000);
        assert_eq!(r.next_at(500_000), 1_500_000);
        assert_eq!(Renewal { seq: 0, sent: u64::MAX }.next_at(1), u64::MAX);
    }
}
