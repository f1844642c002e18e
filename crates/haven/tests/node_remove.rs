//! Removing a node that is down, through any node: it leaves the cluster state and the Raft
//! voter set (the request is handled by the leader), and the cluster keeps working.

mod common;

use common::Lab;
use haven_api::ClusterStatus;
use haven_model::GroupSpec;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_node_is_removed_from_the_state_and_the_voters() {
    let mut lab = Lab::start(3).await;
    let leader_id = lab.leader_seen_by(0).await.expect("a leader");
    // A follower to kill, and the other follower to send the removal to.
    let followers: Vec<usize> = (0..3).filter(|i| lab.node(*i).id != leader_id).collect();
    let (dead, via) = (followers[0], followers[1]);
    let dead_name = lab.name(dead).to_string();
    let dead_id = lab.node(dead).id;

    let up_refused = lab.client(via).remove_node(&dead_name).await;
    assert!(matches!(up_refused, Err(haven_api::ClientError::Api { status: 409, .. })), "{up_refused:?}");

    lab.kill_node(dead);
    lab.wait_until(&format!("{dead_name} down"), 20, async || {
        lab.node_list(via).await.is_some_and(|n| n.iter().any(|n| n.node.name == dead_name && n.status == "down"))
    })
    .await;
    let removed = lab.client(via).remove_node(&dead_name).await.expect("remove the dead node");
    assert_eq!(removed.removed, dead_name);
    lab.wait_until(&format!("{dead_name} gone from the state and the voters"), 20, async || {
        let Some(nodes) = lab.node_list(via).await else { return false };
        let Some(st): Option<ClusterStatus> = lab.status(via).await else { return false };
        nodes.len() == 2 && !st.voters.contains(&dead_id) && st.voters.len() == 2
    })
    .await;
    // Two voters of two: writes still commit.
    lab.client(via).create_group(&GroupSpec::new("after")).await.expect("a write");
}
