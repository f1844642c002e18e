//! The node guard, end to end (real agents, real processes, SIGSTOP and SIGKILL): an agent
//! frozen while its resource keeps running loses the resource at its lease end, before a
//! survivor starts it, and after SIGCONT nothing runs twice; a guard that is killed makes
//! its agent stop the node's resources and start a new guard; an agent that is killed
//! alone (not its resources) leaves no process behind.

mod common;

use std::time::{Duration, Instant};

use common::{Lab, assert_no_overlap, stints};

fn signal(pid: i32, sig: i32) {
    // (No unsafe here: the `kill` program sends it.)
    let ok = std::process::Command::new("kill")
        .arg(format!("-{sig}"))
        .arg(pid.to_string())
        .status()
        .is_ok_and(|s| s.success());
    assert!(ok, "kill -{sig} {pid} failed");
}

/// The pid of node `i`'s agent.
fn agent_pid(lab: &Lab, i: usize) -> i32 {
    lab.agent_pid(i).expect("the agent runs")
}

/// The pid of node `i`'s guard: the process of its session started as `haven guard`.
fn guard_pid(lab: &Lab, i: usize) -> Option<i32> {
    let sid = agent_pid(lab, i);
    haven_agent::host::session_members(sid)
        .into_iter()
        .find(|pid| haven_drivers::procfs::cmdline(*pid).is_some_and(|c| c.get(1).map(String::as_str) == Some("guard")))
}

const SIGKILL: i32 = 9;
const SIGCONT: i32 = 18;
const SIGSTOP: i32 = 19;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frozen_agent_loses_its_resources_at_its_lease_end_and_nothing_runs_twice() {
    let lab = Lab::start(3).await;
    let evidence = lab.dir().join("evidence");
    // The owner is a follower: the cluster keeps its leader while the owner is frozen.
    let leader = lab.leader_seen_by(0).await.expect("a leader");
    let owner = (0..3).find(|i| lab.node(*i).id != leader).expect("a follower");
    let owner_name = lab.name(owner).to_string();
    let via = (0..3).find(|i| *i != owner).expect("a survivor");
    lab.create_evidence_group(via, &owner_name, &evidence).await;
    lab.wait_for("g online on its owner", 30, async || lab.online_on(via, "g").await.filter(|n| *n == owner_name))
        .await;
    lab.wait_until("g's evidence", 10, async || !stints(&evidence).is_empty()).await;
    assert!(guard_pid(&lab, owner).is_some(), "the owner runs a guard");
    assert_eq!(lab.status(owner).await.map(|s| s.node_guard).as_deref(), Some("running"));

    // Freeze only the agent: its resource keeps running until the guard kills it.
    let frozen_at = Instant::now();
    signal(agent_pid(&lab, owner), SIGSTOP);
    lab.note(&format!("SIGSTOP to {owner_name}'s agent only"));
    let elsewhere = lab
        .wait_for("g online on a survivor", 30, async || lab.online_on(via, "g").await.filter(|n| *n != owner_name))
        .await;
    lab.note(&format!("g online on {elsewhere} after {:.1} s", frozen_at.elapsed().as_secs_f64()));
    // Three leases in all, frozen (the lab's `aggressive` profile: a 1.5 s lease).
    let lease = Duration::from_millis(1500);
    if let Some(left) = (lease * 3).checked_sub(frozen_at.elapsed()) {
        tokio::time::sleep(left).await;
    }
    let copies = stints(&evidence);
    assert_eq!(copies.len(), 2, "the first copy, then the survivor's: {copies:?}");
    signal(agent_pid(&lab, owner), SIGCONT);
    lab.note(&format!("SIGCONT to {owner_name}'s agent"));
    lab.wait_until(&format!("{owner_name} up again, seeing all 3"), 30, async || lab.sees_all_up(owner, 3).await).await;
    lab.hold_for("g stays where it went, one copy", 3.0, async || {
        let on = lab.online_on(via, "g").await;
        if on.as_deref() != Some(elsewhere.as_str()) {
            return Err(format!("g is on {on:?}, not {elsewhere}"));
        }
        Ok(())
    })
    .await;
    assert_eq!(stints(&evidence).len(), 2, "nothing started twice after the thaw");
    // The first copy stopped before the second started: killed at the owner's lease end.
    assert_no_overlap(&evidence);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_guard_stops_the_resources_and_is_restarted_and_a_killed_agent_leaves_nothing() {
    let mut lab = Lab::start(3).await;
    let evidence = lab.dir().join("evidence");
    let owner = 1;
    let owner_name = lab.name(owner).to_string();
    lab.create_evidence_group(0, &owner_name, &evidence).await;
    lab.wait_for("g online on its owner", 30, async || lab.online_on(0, "g").await.filter(|n| *n == owner_name)).await;
    lab.wait_until("g's evidence", 10, async || !stints(&evidence).is_empty()).await;

    // The guard dies: the agent stops its resources (it has no guard) and starts another;
    // then, guarded again, it starts them again.
    let first = guard_pid(&lab, owner).expect("a guard");
    let resource = common::pid_in(&lab.node(owner).run_dir("r")).expect("r's pid");
    signal(first, SIGKILL);
    lab.note(&format!("SIGKILL to {owner_name}'s guard ({first})"));
    lab.wait_until("r stopped", 10, async || !common::alive(resource)).await;
    let second = lab.wait_for("a new guard", 10, async || guard_pid(&lab, owner).filter(|p| *p != first)).await;
    lab.wait_until("r running again on its owner", 20, async || {
        common::pid_in(&lab.node(owner).run_dir("r")).is_some_and(|p| p != resource && common::alive(p))
    })
    .await;
    assert!(common::alive(second));
    assert_eq!(lab.status(owner).await.map(|s| s.node_guard).as_deref(), Some("running"), "shown again");
    let history = lab.cli_json(0, &["history", "--group", "g", "--limit", "200"]).await;
    println!("{history}");

    // The agent alone dies: the guard kills the resources, then itself ends; nothing of
    // the node's session is left.
    let agent = agent_pid(&lab, owner);
    signal(agent, SIGKILL);
    lab.note(&format!("SIGKILL to {owner_name}'s agent only ({agent})"));
    lab.reap(owner);
    lab.wait_until("nothing left of the node", 10, async || haven_agent::host::session_members(agent).is_empty()).await;
    assert!(!common::alive(second), "the guard ended with its agent");
}
