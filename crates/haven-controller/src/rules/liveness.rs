//! Rule 1, node liveness: a node whose lease ran out (no renewal for lease + margin) is
//! declared down; a down node that renews again is declared up.
//!
//! The leader counts a lease from when it *received* the renewal, and never from before
//! `leader_since`: a new leader cannot know what its predecessor granted, so it treats
//! every lease as renewed at `leader_since` (the new-leader grace) — its election, or the
//! latest moment a majority says an earlier leader can have granted a renewal
//! (`haven_node::contact`). This rule only changes liveness; moving the groups of a down
//! node is rule 3's job.

use haven_model::NodeLiveness;
use haven_policy::seconds;
use haven_state::Command;

use crate::projection::Projection;
use crate::{Decision, Observations, Rule, Timing};

pub(crate) fn decide(p: &mut Projection, obs: &Observations, timing: &Timing) {
    let window = timing.lease_over_after_ms();
    let lease = timing.describe_wait();
    let mut decisions = Vec::new();
    for node in p.state().nodes.values() {
        let heartbeat = obs.last_heartbeat.get(&node.name).copied();
        let (liveness, why) = match node.liveness {
            NodeLiveness::Up => {
                let renewed = heartbeat.unwrap_or(0).max(obs.leader_since);
                if obs.now < renewed.saturating_add(window) {
                    continue;
                }
                let why = match heartbeat {
                    Some(h) if h >= obs.leader_since => {
                        format!("no heartbeat for {} ({lease})", seconds(obs.now.saturating_sub(h)))
                    }
                    _ => format!(
                        "no heartbeat in the {} since the last renewal an earlier leader can have granted ({lease})",
                        seconds(obs.now.saturating_sub(obs.leader_since))
                    ),
                };
                (NodeLiveness::Down, why)
            }
            NodeLiveness::Down => {
                // Only a renewal after it was declared down, and one that is still fresh.
                let Some(h) = heartbeat else { continue };
                if h <= node.since || obs.now >= h.saturating_add(window) {
                    continue;
                }
                (NodeLiveness::Up, format!("heartbeat received {} ago", seconds(obs.now.saturating_sub(h))))
            }
        };
        decisions.push(Decision {
            rule: Rule::NodeLiveness,
            command: Command::SetNodeLiveness { name: node.name.clone(), liveness, reason: why.clone() },
            why,
        });
    }
    for d in decisions {
        p.emit(d);
    }
}
