//! Lab, loss of quorum: two of three nodes die whole. The survivor cannot renew its lease
//! (no leader can prove a majority), so it stops its resources when its lease ends; writes
//! are refused with a clear "no quorum" error (CLI exit status 3; 4, outcome unknown, had the
//! survivor been the leader) while reads still work.
//! When the two nodes come back, every group runs again without any operator command.

mod common;

use std::path::Path;
use std::time::Instant;

use common::{Lab, alive, pid_in, processes_in};
use haven_api::specs;
use haven_model::ResourceSpec;

/// The `start <pid> <cwd>` lines the resources wrote, one per start.
fn starts(evidence: &Path) -> Vec<String> {
    std::fs::read_to_string(evidence).unwrap_or_default().lines().map(str::to_string).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn survivor_without_quorum_stops_its_resources_refuses_writes_and_recovers_alone() {
    let mut lab = Lab::start(3).await;
    let evidence = lab.dir().join("evidence");
    common::writable_by_anyone(&evidence); // the resource runs as nobody
    let c = lab.client(0).clone();
    // One group per node: g1 on node1, g2 on node2, g3 on node3.
    for i in 0..3 {
        let (g, r, node) = (format!("g{}", i + 1), format!("r{}", i + 1), lab.name(i).to_string());
        c.create_group(&common::group_preferring(&g, &[&node])).await.unwrap();
        let script = format!("echo start {r} $$ $(pwd) >> {}; exec sleep infinity", evidence.display());
        let spec = ResourceSpec { props: common::looks_alive(200), ..specs::process(&r, &g, &["sh", "-c", &script]) };
        c.create_resource(&spec).await.unwrap();
    }
    lab.wait_until("g1, g2, g3 online on node1, node2, node3", 20, async || {
        for i in 0..3 {
            if lab.online_on(0, &format!("g{}", i + 1)).await.as_deref() != Some(lab.name(i)) {
                return false;
            }
        }
        starts(&evidence).len() == 3
    })
    .await;

    // node3 survives; node1 and node2 die whole.
    let s = 2;
    let run_s = lab.node(s).run_dir("r3");
    let pid3 = pid_in(&run_s).expect("r3's pid file");
    assert!(alive(pid3));
    lab.kill_node(0);
    lab.kill_node(1);
    let killed = Instant::now();
    // Lease 1.5 s (aggressive), plus margin 0.5 s, plus 2 s for a loaded host.
    lab.wait_until("node3, alone, to stop r3 (self-fence at the end of its lease)", 4, async || {
        !alive(pid3) && processes_in(&run_s).is_empty()
    })
    .await;
    println!("r3 stopped {:.2}s after its peers died", killed.elapsed().as_secs_f64());
    let st = lab.status(s).await.expect("node3 answers");
    assert!(!st.lease_valid, "node3 claims a lease without a majority");

    // Writes are refused, clearly; reads still answer from node3's copy of the state.
    let mut cli = tokio::process::Command::from(lab.cli(s));
    let out = cli.args(["group", "create", "x"]).output().await.expect("cannot run the haven CLI");
    let stderr = String::from_utf8_lossy(&out.stderr);
    // A follower has no leader to send it to: refused (3). Had node3 been the leader, it
    // would have proposed the write and could not commit it: its outcome is unknown (4).
    match out.status.code() {
        Some(3) => assert!(stderr.contains("no quorum"), "the error should say the cluster has no quorum: {stderr}"),
        Some(4) => assert!(stderr.contains("unknown"), "the error should say the outcome is unknown: {stderr}"),
        _ => panic!("`haven group create x` without quorum: {}, stderr: {stderr}", out.status),
    }
    println!("refused as expected: {}", stderr.trim());
    let groups = lab.groups(s).await.expect("reads keep working without quorum");
    assert_eq!(groups.len(), 3, "node3 should still list the three groups: {groups:?}");
    assert!(groups.iter().all(|g| g.group.spec.name != "x"), "x was created without quorum");

    // The others come back; nobody touches anything: every group runs again where it was.
    lab.restart_node(0).await;
    lab.restart_node(1).await;
    lab.wait_until("every group running again on its node (processes and start lines)", 30, async || {
        for i in 0..3 {
            let run = lab.node(i).run_dir(&format!("r{}", i + 1));
            if !pid_in(&run).is_some_and(alive) {
                return false;
            }
            if lab.online_on(i, &format!("g{}", i + 1)).await.as_deref() != Some(lab.name(i)) {
                return false;
            }
        }
        // Three first starts, then one more of each; and every node reported `online`
        // (a process can be running a moment before its node's report is committed).
        starts(&evidence).len() == 6
            && lab.sees_all_up(s, 3).await
            && lab.groups(s).await.is_some_and(|gs| gs.iter().all(|g| g.state == "online"))
    })
    .await;
    lab.cli_json(s, &["group", "create", "x"]).await;
    lab.wait_until("x, created once quorum came back, to reach node1", 5, async || lab.group(0, "x").await.is_some())
        .await;
}
