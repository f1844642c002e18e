//! Lab: a node dies whole (agent and resource processes, SIGKILL) and its group fails over
//! to a survivor, where its process really runs; the dead node comes back, rejoins with its
//! state intact, and does not start the group a second time.

mod common;

use std::path::Path;

use common::{Lab, alive, cwd_of, group_preferring, looks_alive, pid_in, processes_in};
use haven_api::{GroupView, specs};
use haven_model::ResourceSpec;

/// The `start <pid> <cwd>` lines the resource wrote, one per start.
fn starts(evidence: &Path) -> Vec<(i32, String)> {
    let text = std::fs::read_to_string(evidence).unwrap_or_default();
    text.lines()
        .map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            assert!(f.len() == 3 && f[0] == "start", "unexpected evidence line {l:?}");
            (f[1].parse().expect("a pid"), f[2].to_string())
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_follower_owner_fails_over_and_does_not_start_again_when_back() {
    killed_owner_fails_over_and_does_not_start_again_when_back(false).await;
}

/// The harder case: the owner is also the leader, so the survivors must first elect a
/// leader, which then waits out the dead node's lease before it moves the group.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_leader_owner_fails_over_and_does_not_start_again_when_back() {
    killed_owner_fails_over_and_does_not_start_again_when_back(true).await;
}

async fn killed_owner_fails_over_and_does_not_start_again_when_back(owner_is_leader: bool) {
    let mut lab = Lab::start(3).await;
    let evidence = lab.dir().join("evidence.log");
    common::writable_by_anyone(&evidence); // the resource runs as nobody

    let leader = lab.leader_seen_by(0).await.expect("a leader");
    let a = (0..3).find(|i| (lab.node(*i).id == leader) == owner_is_leader).expect("a node of that kind");
    let a_name = lab.name(a).to_string();
    let c = lab.client(0).clone();
    c.create_group(&group_preferring("g", &[&a_name])).await.unwrap();
    let script = format!("echo start $$ $(pwd) >> {}; exec sleep infinity", evidence.display());
    c.create_resource(&ResourceSpec { props: looks_alive(200), ..specs::process("r", "g", &["sh", "-c", &script]) })
        .await
        .unwrap();
    let owner = lab
        .wait_for("group g online, and its process's start recorded", 20, async || {
            let owner = lab.online_on(0, "g").await?;
            (starts(&evidence).len() == 1).then_some(owner)
        })
        .await;
    assert_eq!(owner, a_name, "g should start on its preferred owner");
    let pid_a = pid_in(&lab.node(a).run_dir("r")).expect("a pid file on the owner");
    assert!(alive(pid_a), "the resource process {pid_a} on {a_name} is not running");
    assert_eq!(cwd_of(pid_a), Some(lab.node(a).run_dir("r")));
    assert_eq!(starts(&evidence), vec![(pid_a, lab.node(a).run_dir("r").display().to_string())]);

    lab.kill_node(a);
    assert!(!alive(pid_a), "killing {a_name} whole must kill its resource process {pid_a}");
    let survivors: Vec<usize> = (0..3).filter(|i| *i != a).collect();

    let s = lab
        .wait_for("g online on a survivor, as both survivors see it", 30, async || {
            let first = lab.online_on(survivors[0], "g").await?;
            let second = lab.online_on(survivors[1], "g").await?;
            (first == second && first != a_name && starts(&evidence).len() == 2).then_some(first)
        })
        .await;
    let si = lab.index_of(&s);
    let run_dir = lab.node(si).run_dir("r");
    let pid_s = pid_in(&run_dir).expect("a pid file on the new owner");
    assert!(alive(pid_s), "the resource process {pid_s} on {s} is not running");
    let cwd = cwd_of(pid_s).expect("a cwd");
    assert!(cwd.starts_with(lab.node(si).state_dir()), "{cwd:?} is not under {s}'s state dir");
    let after_failover = starts(&evidence);
    assert_eq!(after_failover.len(), 2, "one start on {a_name}, one on {s}: {after_failover:?}");
    assert_eq!(after_failover[1], (pid_s, run_dir.display().to_string()));

    // The dead node comes back. From the moment it starts, and while it catches up from a
    // stale copy of the state that still places g on it, it must not start r.
    let run_dirs: Vec<_> = (0..3).map(|i| lab.node(i).run_dir("r")).collect();
    let only_one_r = || {
        let running: Vec<i32> = run_dirs.iter().flat_map(|d| processes_in(d)).collect();
        if running == vec![pid_s] { Ok(()) } else { Err(format!("processes of r: {running:?}, expected only {pid_s}")) }
    };
    lab.restart_node(a).await;
    lab.wait_until(&format!("{a_name} up and caught up, as a survivor and {a_name} itself see it"), 20, async || {
        if let Err(why) = only_one_r() {
            panic!("while {a_name} rejoined: {why}\n{}", lab.logs_tail());
        }
        let survivor_sees = lab
            .node_list(survivors[0])
            .await
            .is_some_and(|ns| ns.iter().any(|n| n.node.name == a_name && n.status == "up"));
        let caught_up = lab.group(a, "g").await.is_some_and(|g| g.group.owner.as_deref() == Some(s.as_str()));
        survivor_sees && caught_up && lab.sees_all_up(a, 3).await
    })
    .await;
    let specs = |groups: Vec<GroupView>| groups.into_iter().map(|g| g.group.spec).collect::<Vec<_>>();
    assert_eq!(
        specs(lab.groups(a).await.expect("groups from the restarted node")),
        specs(lab.groups(si).await.expect("groups from the survivor")),
        "{a_name} should have the same groups as the survivors"
    );
    let res_a = lab.client(a).resources().await.unwrap();
    let res_s = lab.client(si).resources().await.unwrap();
    assert_eq!(
        res_a.iter().map(|r| &r.spec).collect::<Vec<_>>(),
        res_s.iter().map(|r| &r.spec).collect::<Vec<_>>(),
        "{a_name} should have the same resources as the survivors"
    );

    // Two leases and more: the group stays where it is and only one copy of r runs.
    lab.hold_for(&format!("g stays on {s} and exactly one r process runs (pid {pid_s})"), 4.0, async || {
        for view in [a, si] {
            let g = lab.group(view, "g").await.ok_or("cannot read g")?;
            if g.group.owner.as_deref() != Some(s.as_str()) {
                return Err(format!("{} sees g owned by {:?}", lab.name(view), g.group.owner));
            }
        }
        only_one_r()
    })
    .await;
    assert_eq!(starts(&evidence), after_failover, "r was started again after {a_name} came back");
}
