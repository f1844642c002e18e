//! Nodes: the hosts that run `haven agent`.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::{InvalidInput, Millis, bounds};

/// Whether a node takes part in Raft votes. The first five nodes are voters, the rest
/// learners (they replicate the cluster state and run resources but do not vote); a
/// witness always votes and never hosts groups.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum NodeRole {
    Voter,
    Learner,
    /// A voter that runs no resources (`haven witness`): the tie-breaker of two-node
    /// clusters, like a file-share witness.
    Witness,
}

/// Liveness as decided by the cluster (from heartbeats), not by the node itself.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum NodeLiveness {
    Up,
    Down,
}

/// What a node can host. Groups declare what they need; placement keeps the sum within this.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Capacity {
    /// Virtual CPUs. Default: the host's CPU count as the agent reports it at join.
    pub cpus: u32,
    /// Memory in MiB. Default: the host's memory as the agent reports it at join.
    pub memory_mib: u64,
}

impl Capacity {
    /// Both values within their documented bounds (`crate::bounds`).
    pub fn validate(&self) -> Result<(), InvalidInput> {
        bounds::CAPACITY_CPUS.check_count(u64::from(self.cpus))?;
        bounds::CAPACITY_MEMORY_MIB.check_count(self.memory_mib)
    }
}

/// A cluster member.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Node {
    /// Raft id, unique in the cluster, chosen in the node's config file.
    pub id: u64,
    pub name: String,
    /// `host:port` where the agent serves the API and peer traffic.
    pub address: String,
    pub role: NodeRole,
    pub liveness: NodeLiveness,
    /// Paused (draining): hosts nothing new and its groups are moved away.
    pub paused: bool,
    pub capacity: Capacity,
    /// When liveness last changed.
    pub since: Millis,
}

impl Node {
    /// `up`, `down` or `paused` — the word the CLI and console show.
    pub fn status(&self) -> &'static str {
        match (self.liveness, self.paused) {
            (NodeLiveness::Down, _) => "down",
            (NodeLiveness::Up, true) => "paused",
            (NodeLiveness::Up, false) => "up",
        }
    }
    pub fn is_up(&self) -> bool {
        self.liveness == NodeLiveness::Up
    }
}
