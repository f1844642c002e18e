//! The node guard's rules (the process is `haven guard`, run by `haven_drivers::guard`):
//! which deadline the agent tells its guard, in what words, and what the guard makes of
//! them. The agent's lease keeper, the guard process and the simulator all use these.
//!
//! The guard is told, one line each: `deadline <ns>` (the lease is valid until the guard's
//! clock reads `ns`: `CLOCK_MONOTONIC` nanoseconds on a host, the node's local clock in the
//! simulator) or `none`. Until its first line there is no lease; end of file means the
//! agent is gone. The guard lets the node's resources live only while [`Feed::valid`].

use std::time::Duration;

use crate::{Lease, Micros};

/// Which deadline the agent tells its guard.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GuardRule {
    /// The node's own lease end ([`Lease::valid_until`]: counted from when the renewal was
    /// sent, the drift allowance taken off). What the agent ships.
    NodeDeadline,
    /// Broken, to prove the simulator catches it: the leader's deadline as the node can
    /// guess it (the renewal's sending plus the whole lease and the margin, no drift
    /// allowance): when the leader stops counting the lease, which a node whose clock runs
    /// slow reaches after the survivors started its groups.
    LeaderDeadline { lease_len: Micros, margin: Micros },
}

/// The deadline (on the lease's clock) to tell the guard while `lease` is valid at `now`;
/// `None`: no lease.
pub fn deadline(lease: &Lease, now: Micros, rule: GuardRule) -> Option<Micros> {
    if !lease.valid(now) {
        return None;
    }
    let until = lease.valid_until()?;
    Some(match rule {
        GuardRule::NodeDeadline => until,
        GuardRule::LeaderDeadline { lease_len, margin } => {
            let sent = until.saturating_sub(crate::lease::granted_span(lease_len));
            sent.saturating_add(lease_len).saturating_add(margin)
        }
    })
}

/// The line that tells the guard `deadline_ns` (`None`: no lease).
pub fn line(deadline_ns: Option<u64>) -> String {
    match deadline_ns {
        Some(ns) => format!("deadline {ns}\n"),
        None => "none\n".to_string(),
    }
}

/// What the guard knows from the agent.
#[derive(Clone, Debug, Default)]
pub struct Feed {
    /// The lease's end on the guard's clock (ns); `None`: no lease.
    deadline: Option<u64>,
    /// The agent closed its end: it is gone.
    pub eof: bool,
    partial: Vec<u8>,
}

impl Feed {
    /// Takes in what the agent sent (bytes of one or more lines, maybe a partial one).
    pub fn take(&mut self, bytes: &[u8]) {
        self.partial.extend_from_slice(bytes);
        while let Some(end) = self.partial.iter().position(|b| *b == b'\n') {
            let line: Vec<u8> = self.partial.drain(..=end).collect();
            let line = String::from_utf8_lossy(&line);
            let mut words = line.split_whitespace();
            self.deadline = match (words.next(), words.next().map(str::parse::<u64>), words.next()) {
                (Some("deadline"), Some(Ok(ns)), None) => Some(ns),
                // `none`, and anything not from our agent, is no lease.
                _ => None,
            };
        }
        // A line longer than any the agent sends is not from it either.
        if self.partial.len() > 64 {
            self.partial.clear();
            self.deadline = None;
        }
    }

    /// Whether the lease is valid at `now_ns`: the node's resources may live.
    pub fn valid(&self, now_ns: u64) -> bool {
        !self.eof && self.deadline.is_some_and(|d| now_ns < d)
    }

    /// How long until the lease ends, if it is valid at `now_ns`.
    pub fn left(&self, now_ns: u64) -> Option<Duration> {
        self.valid(now_ns).then(|| Duration::from_nanos(self.deadline.unwrap_or(0) - now_ns))
    }

    /// The lease's end (ns), if one was told (over or not).
    pub fn deadline(&self) -> Option<u64> {
        self.deadline
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::LeaseRule;

    #[test]
    fn the_feed_reads_deadlines_in_pieces_and_anything_else_is_no_lease() {
        let mut f = Feed::default();
        assert!(!f.valid(0), "no lease before the first line");
        f.take(b"deadline 10");
        assert!(!f.valid(0), "half a line changes nothing");
        f.take(b"00\n");
        assert!(f.valid(999) && !f.valid(1000));
        assert_eq!(f.left(400), Some(Duration::from_nanos(600)));
        f.take(line(Some(5000)).as_bytes());
        f.take(line(None).as_bytes());
        assert!(!f.valid(0), "the last line counts");
        f.take(b"deadline 5000\n");
        assert!(f.valid(10));
        f.take(b"deadline soon\n");
        assert!(!f.valid(10), "a line not from the agent is no lease");
        f.take(b"deadline 5000 6000\n");
        assert!(!f.valid(10), "nor is one with more words");
        f.take(b"deadline 5000\n");
        f.take(&[b'x'; 100]);
        assert!(!f.valid(10), "nor is an endless line");
        f.take(b"\ndeadline 5000\n");
        f.eof = true;
        assert!(!f.valid(10), "an agent that is gone holds no lease");
    }

    #[test]
    fn the_node_deadline_is_the_lease_end_and_the_leaders_comes_later() {
        let mut lease = Lease::new();
        let renewal = lease.begin_renewal(1_000).expect("a renewal");
        let lease_len = 3_000_000;
        assert!(lease.renewed(renewal, 1_500, 0, lease_len, LeaseRule::FromSend));
        assert_eq!(deadline(&lease, 2_000, GuardRule::NodeDeadline), lease.valid_until());
        assert_eq!(lease.valid_until(), Some(1_000 + crate::lease::granted_span(lease_len)));
        let leader = deadline(&lease, 2_000, GuardRule::LeaderDeadline { lease_len, margin: 1_000_000 });
        assert_eq!(leader, Some(1_000 + lease_len + 1_000_000));
        assert_eq!(deadline(&lease, 10_000_000, GuardRule::NodeDeadline), None, "a lease that ended: none");
    }
}
