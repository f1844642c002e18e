//! The network between nodes: which nodes can reach each other (partitions), and the
//! delay or loss of each message between two nodes that can.
//!
//! A partition is a split of the nodes into sides; nodes on one side reach each other and
//! nobody else. Loss and delay apply to single messages (lease renewals, their replies,
//! status reports); quorum rounds and log replication only look at reachability (see the
//! crate docs for why). It knows nothing about crashed nodes: the caller checks that.

use crate::rng::Rng;

#[derive(Clone, Debug)]
pub struct Network {
    side: Vec<u8>,
    /// Nodes cut off from every other (a frozen agent: `Fault::FreezeAgent`), whatever the
    /// partition.
    isolated: Vec<bool>,
    /// Probability that one message is lost.
    pub loss: f64,
    /// One-way delay range in µs.
    pub delay_us: (u64, u64),
}

/// Normal one-way delay between nodes: 0.2–15 ms.
pub const NORMAL_DELAY_US: (u64, u64) = (200, 15_000);

impl Network {
    pub fn new(nodes: usize) -> Network {
        Network { side: vec![0; nodes], isolated: vec![false; nodes], loss: 0.0, delay_us: NORMAL_DELAY_US }
    }

    pub fn connected(&self, a: usize, b: usize) -> bool {
        a == b || (self.side[a] == self.side[b] && !self.isolated[a] && !self.isolated[b])
    }

    /// Cuts `node` off from every other node (`true`), or ends that (`false`).
    pub fn isolate(&mut self, node: usize, cut: bool) {
        self.isolated[node] = cut;
    }

    pub fn partitioned(&self) -> bool {
        self.side.iter().any(|s| *s != self.side[0])
    }

    /// Splits the nodes: `sides[i]` is node i's side.
    pub fn split(&mut self, sides: Vec<u8>) {
        self.side = sides;
    }

    pub fn heal(&mut self) {
        self.side.iter_mut().for_each(|s| *s = 0);
    }

    /// The sides as `{a,b} | {c}` given node names.
    pub fn describe(&self, names: &[String]) -> String {
        let mut sides: Vec<u8> = self.side.clone();
        sides.sort_unstable();
        sides.dedup();
        sides
            .iter()
            .map(|s| {
                let members: Vec<&str> =
                    (0..names.len()).filter(|i| self.side[*i] == *s).map(|i| names[i].as_str()).collect();
                format!("{{{}}}", members.join(","))
            })
            .collect::<Vec<_>>()
            .join(" | ")
    }

    /// The delay of one message from `a` to `b`, or `None` if it is lost or cannot arrive.
    pub fn send(&self, rng: &mut Rng, a: usize, b: usize) -> Option<u64> {
        if a == b {
            return Some(rng.range(20, 200));
        }
        if !self.connected(a, b) || rng.chance(self.loss) {
            return None;
        }
        Some(rng.range(self.delay_us.0, self.delay_us.1))
    }
}
