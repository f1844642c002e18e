//! Lab, two data nodes plus a witness (`haven witness`), each in a network namespace of its
//! own. Killing either data node fails its group over to the other; killing the witness
//! changes nothing (the data nodes are 2 of 3 voters: writes still commit); a partition
//! between the two data nodes, with the witness reaching both, leaves exactly one of them
//! running the group. The witness never hosts anything.

mod common;

use std::path::PathBuf;

use common::{Lab, Role, alive, assert_no_overlap, lines_from, pid_in, processes_in, stints};
use haven_api::NodeView;
use haven_model::NodeRole;

const D1: usize = 0;
const D2: usize = 1;
const W: usize = 2;

/// Starts d1, d2 and w, and group g (resource r, writing evidence) on the data node that
/// `owner` picks given the leader's id.
async fn start(owner: impl FnOnce(u64) -> usize) -> Option<(Lab, PathBuf)> {
    let lab = Lab::start_with(&[("d1", Role::Agent), ("d2", Role::Agent), ("w", Role::Witness)], true).await?;
    let nodes: Vec<NodeView> = lab.node_list(D1).await.expect("nodes");
    let role = |name: &str| nodes.iter().find(|n| n.node.name == name).map(|n| n.node.role);
    assert_eq!(role("w"), Some(NodeRole::Witness), "{nodes:?}");
    assert_eq!(role("d1"), Some(NodeRole::Voter));
    assert_eq!(role("d2"), Some(NodeRole::Voter));
    let status = lab.status(W).await.expect("status");
    assert_eq!(status.voters.len(), 3, "the witness votes: voters {:?}", status.voters);
    assert_eq!(status.node_guard, "none", "a witness runs no resources, so no guard");
    assert_eq!(lab.status(D1).await.expect("status").node_guard, "running");

    let evidence = lab.dir().join("evidence");
    let leader = lab.leader_seen_by(W).await.expect("a leader");
    let o = owner(leader);
    let o_name = lab.name(o).to_string();
    lab.create_evidence_group(D1, &o_name, &evidence).await;
    let run_o = lab.node(o).run_dir("r");
    lab.wait_until(&format!("g online on {o_name}, its evidence flowing"), 20, async || {
        lab.online_on(W, "g").await.as_deref() == Some(o_name.as_str()) && lines_from(&evidence, &run_o) >= 3
    })
    .await;
    Some((lab, evidence))
}

/// The witness must never run anything: its run directory stays empty.
fn witness_runs_nothing(lab: &Lab) {
    let run = lab.node(W).state_dir().join("run");
    let entries: Vec<_> = std::fs::read_dir(&run).map(|d| d.flatten().map(|e| e.path()).collect()).unwrap_or_default();
    assert!(entries.is_empty(), "the witness hosts something: {entries:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn either_data_node_can_die_and_the_witness_dying_changes_nothing() {
    let Some((mut lab, evidence)) = start(|_| D1).await else { return };

    // The owner d1 dies whole: g fails over to d2, never to the witness.
    lab.kill_node(D1);
    let run_d2 = lab.node(D2).run_dir("r");
    lab.wait_until("g online on d2 (as d2 and the witness see it), its evidence flowing", 20, async || {
        lab.online_on(D2, "g").await.as_deref() == Some("d2")
            && lab.online_on(W, "g").await.as_deref() == Some("d2")
            && lines_from(&evidence, &run_d2) > 0
    })
    .await;
    witness_runs_nothing(&lab);
    assert_no_overlap(&evidence);

    // d1 comes back and stays out of g's way.
    lab.restart_node(D1).await;
    lab.wait_until("d1 back, caught up", 20, async || {
        lab.sees_all_up(D1, 3).await && lab.group(D1, "g").await.is_some_and(|g| g.group.owner.as_deref() == Some("d2"))
    })
    .await;
    let pid = pid_in(&run_d2).expect("r's pid file on d2");

    // The witness dies: nothing moves, r keeps running (same process), writes still commit.
    lab.kill_node(W);
    let d2_lines = lines_from(&evidence, &run_d2);
    lab.hold_for("g stays on d2 with the same process, for longer than lease + margin", 3.0, async || {
        if !alive(pid) || pid_in(&run_d2) != Some(pid) {
            return Err(format!("r's process {pid} on d2 was stopped or replaced"));
        }
        if !processes_in(&lab.node(D1).run_dir("r")).is_empty() {
            return Err("r runs on d1 too".into());
        }
        for view in [D1, D2] {
            let owner = lab.group(view, "g").await.and_then(|g| g.group.owner);
            if owner.as_deref() != Some("d2") {
                return Err(format!("{} sees g owned by {owner:?}", lab.name(view)));
            }
        }
        Ok(())
    })
    .await;
    assert!(lines_from(&evidence, &run_d2) > d2_lines, "r on d2 stopped writing evidence");
    for (i, name) in [(D1, "h1"), (D2, "h2")] {
        lab.cli_json(i, &["group", "create", name]).await;
    }
    lab.wait_until("h1 and h2, written without the witness, on both data nodes", 5, async || {
        lab.group(D2, "h1").await.is_some() && lab.group(D1, "h2").await.is_some()
    })
    .await;
    let st = lab.status(D1).await.expect("status");
    assert!(st.lease_valid && st.leader.is_some(), "d1 without the witness: {st:?}");

    // The witness comes back.
    lab.restart_node(W).await;
    lab.wait_until("all three up again, seen from the witness", 20, async || lab.sees_all_up(W, 3).await).await;
    witness_runs_nothing(&lab);
    assert!(alive(pid), "r on d2 was stopped when the witness came back");
    assert_no_overlap(&evidence);
    assert_eq!(stints(&evidence).len(), 2, "r ran once on d1, then once on d2");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn partition_between_the_data_nodes_leaves_exactly_one_running() {
    // The harder case: g on the data node that is *not* the leader, so the owner is the
    // one cut off from the leader (and must stop before the leader's side takes g over).
    // If the witness leads, both data nodes keep their leases and g simply stays.
    let (mut leader, mut owner) = (0, 0);
    let Some((lab, evidence)) = start(|l| {
        leader = l;
        owner = if l == 1 { D2 } else { D1 };
        owner
    })
    .await
    else {
        return;
    };
    let runs = [lab.node(D1).run_dir("r"), lab.node(D2).run_dir("r")];
    println!("leader before the partition: node id {leader}");

    lab.separate(&[D1, D2]);
    // Which side keeps g depends on where the leader was; either is right, as long as it
    // is exactly one, and it settles.
    let exactly_one = || -> Result<usize, String> {
        let running: Vec<usize> = (0..2).filter(|k| !processes_in(&runs[*k]).is_empty()).collect();
        match running.as_slice() {
            [k] => Ok(*k),
            other => Err(format!("r runs on {} data nodes ({other:?})", other.len())),
        }
    };
    // The side that keeps the leader keeps (or takes over) g: the other data node can
    // renew its lease with no one. With the witness as leader, both keep their leases.
    let expected = if leader == lab.node(W).id { owner } else { (0..2).find(|k| lab.node(*k).id == leader).unwrap() };
    let k = lab
        .wait_for(
            &format!("r settled on {} only, the owner as the witness sees it", lab.name(expected)),
            20,
            async || {
                let k = exactly_one().ok().filter(|k| *k == expected)?;
                let owner = lab.online_on(W, "g").await?;
                (owner == lab.name(k) && lines_from(&evidence, &runs[k]) > 0).then_some(k)
            },
        )
        .await;
    let pid = pid_in(&runs[k]).expect("pid file");
    lab.hold_for(&format!("r keeps running on {} only (pid {pid})", lab.name(k)), 4.0, async || match exactly_one() {
        Ok(j) if j == k && alive(pid) => Ok(()),
        Ok(j) => Err(format!("r moved to {} (or pid {pid} died)", lab.name(j))),
        Err(e) => Err(e),
    })
    .await;
    witness_runs_nothing(&lab);
    assert_no_overlap(&evidence);
    println!("after the partition, r runs on {}", lab.name(k));

    lab.reconnect(&[D1, D2]);
    lab.wait_until("all three up again", 20, async || {
        lab.sees_all_up(D1, 3).await && lab.sees_all_up(D2, 3).await && lab.sees_all_up(W, 3).await
    })
    .await;
    lab.hold_for("still exactly one copy of r after the partition healed", 2.0, async || exactly_one().map(|_| ()))
        .await;
    assert_no_overlap(&evidence);
}
