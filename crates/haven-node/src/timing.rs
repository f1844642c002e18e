//! The timing profiles, one table: how often a node renews its lease, how long a lease
//! lasts, the leader's extra margin before a silent node counts as down, and the Raft
//! tuning that must fit inside the lease. The agent's `Timing` (and from it the
//! controller's and Raft's), and the simulator's `Profile`, are all derived from here.
//!
//! Must not: hold anything but the profiles' numbers and what follows from them.

/// One named timing profile, in milliseconds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TimingProfile {
    pub name: &'static str,
    /// How often a node renews its lease.
    pub renew_ms: u64,
    /// How long a renewal keeps a node's lease valid (counted from its sending).
    pub lease_ms: u64,
    /// The leader's extra wait before a silent node's lease counts as over.
    pub margin_ms: u64,
    /// Raft's heartbeat interval.
    pub raft_heartbeat_ms: u64,
    /// Raft's election timeout range.
    pub election_min_ms: u64,
    pub election_max_ms: u64,
}

impl TimingProfile {
    /// renew 500 ms, lease 3 s, margin 1 s; Raft heartbeat 200 ms, election 400–600 ms.
    pub const DEFAULT: TimingProfile = TimingProfile::scaled("default", 2);
    /// Half of each.
    pub const AGGRESSIVE: TimingProfile = TimingProfile::scaled("aggressive", 1);
    /// Every profile, the default first.
    pub const ALL: [TimingProfile; 2] = [TimingProfile::DEFAULT, TimingProfile::AGGRESSIVE];

    // openraft 0.9 makes a follower that heard from a leader wait its "leader lease"
    // (= election_max) *plus* a random election timeout (election_min..election_max),
    // checked every 1.5 heartbeats, before it stands for election: 0.5-0.75 s after the
    // last heartbeat (aggressive). That, one vote round and one renewal must fit well
    // inside the lease, or losing the leader's node makes every other node self-fence.
    const fn scaled(name: &'static str, scale: u64) -> TimingProfile {
        TimingProfile {
            name,
            renew_ms: 250 * scale,
            lease_ms: 1500 * scale,
            margin_ms: 500 * scale,
            raft_heartbeat_ms: 100 * scale,
            election_min_ms: 200 * scale,
            election_max_ms: 300 * scale,
        }
    }

    /// The profile called `name`, if there is one.
    pub fn by_name(name: &str) -> Option<TimingProfile> {
        TimingProfile::ALL.into_iter().find(|p| p.name == name)
    }

    /// How long after it last heard from a leader a follower stands for election, as a
    /// range: openraft's leader lease (`election_max`) plus one election timeout.
    pub const fn stands_after_ms(&self) -> (u64, u64) {
        (self.election_max_ms + self.election_min_ms, 2 * self.election_max_ms)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_profile_is_the_documented_one() {
        let p = TimingProfile::DEFAULT;
        assert_eq!((p.renew_ms, p.lease_ms, p.margin_ms), (500, 3000, 1000));
        assert_eq!((p.raft_heartbeat_ms, p.election_min_ms, p.election_max_ms), (200, 400, 600));
        assert_eq!(p.stands_after_ms(), (1000, 1200));
    }

    #[test]
    fn aggressive_is_half_of_default() {
        let (d, a) = (TimingProfile::DEFAULT, TimingProfile::AGGRESSIVE);
        assert_eq!(a.renew_ms * 2, d.renew_ms);
        assert_eq!(a.lease_ms * 2, d.lease_ms);
        assert_eq!(a.margin_ms * 2, d.margin_ms);
        assert_eq!(a.stands_after_ms(), (500, 600));
    }

    #[test]
    fn profiles_by_name() {
        assert_eq!(TimingProfile::by_name("default"), Some(TimingProfile::DEFAULT));
        assert_eq!(TimingProfile::by_name("aggressive"), Some(TimingProfile::AGGRESSIVE));
        assert_eq!(TimingProfile::by_name("fast"), None);
    }

    #[test]
    fn an_election_and_a_renewal_fit_inside_every_lease() {
        for p in TimingProfile::ALL {
            let (_, latest) = p.stands_after_ms();
            assert!(latest + 2 * p.renew_ms < p.lease_ms, "{p:?}");
            assert!(p.raft_heartbeat_ms < p.election_min_ms && p.election_min_ms < p.election_max_ms, "{p:?}");
        }
    }
}
