//! Reads through the typed API client (each `None` when the node cannot answer, so a wait
//! can poll them), what a test asks of them (every node up, where a group runs), and the
//! request bodies the lab tests build.

use haven_api::{ClusterStatus, GroupView, NodeView, ResourceView};
use haven_model::{Dur, GroupSpec, ResourceProps, ResourceState};

use super::lab::Lab;

impl Lab {
    pub async fn status(&self, i: usize) -> Option<ClusterStatus> {
        self.nodes[i].client.cluster_status().await.ok()
    }

    /// The leader's id as node `i` sees it.
    pub async fn leader_seen_by(&self, i: usize) -> Option<u64> {
        self.status(i).await?.leader.map(|l| l.id)
    }

    pub async fn node_list(&self, i: usize) -> Option<Vec<NodeView>> {
        self.nodes[i].client.nodes().await.ok()
    }

    pub async fn groups(&self, i: usize) -> Option<Vec<GroupView>> {
        self.nodes[i].client.groups().await.ok()
    }

    pub async fn group(&self, i: usize, name: &str) -> Option<GroupView> {
        self.nodes[i].client.group(name).await.ok()
    }

    pub async fn resource(&self, i: usize, name: &str) -> Option<ResourceView> {
        self.nodes[i].client.resource(name).await.ok()
    }

    /// Whether node `i` sees `n` nodes, all up, a leader, and holds a lease itself.
    pub async fn sees_all_up(&self, i: usize, n: usize) -> bool {
        let Some(st) = self.status(i).await else { return false };
        let Some(nodes) = self.node_list(i).await else { return false };
        st.leader.is_some() && st.lease_valid && nodes.len() == n && nodes.iter().all(|v| v.status == "up")
    }

    /// Where `group` runs, as node `i` sees it: `Some(owner)` once the group is online
    /// there and each of its resources was last reported `online` by that owner.
    pub async fn online_on(&self, i: usize, group: &str) -> Option<String> {
        let g = self.group(i, group).await?;
        let owner = g.group.owner.clone()?;
        if g.state != "online" {
            return None;
        }
        for r in &g.resources {
            let res = self.resource(i, r).await?;
            if res.status.node.as_deref() != Some(owner.as_str()) || res.status.state != ResourceState::Online {
                return None;
            }
        }
        Some(owner)
    }
}

/// Default resource properties but the cheap check every `ms` milliseconds (the lab's
/// resources are watched closely, so failures are seen at once).
pub fn looks_alive(ms: u64) -> ResourceProps {
    ResourceProps { looks_alive_interval: Dur::from_millis(ms), ..ResourceProps::default() }
}

/// Group `name` preferring `owners`, in order.
pub fn group_preferring(name: &str, owners: &[&str]) -> GroupSpec {
    GroupSpec { preferred_owners: owners.iter().map(|o| o.to_string()).collect(), ..GroupSpec::new(name) }
}
