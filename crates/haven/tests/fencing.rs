//! Lab, fencing with a real fence agent (`fence_dummy` from the fence-agents package): a
//! node whose fence agent fails is never presumed dead; its group waits, and the history
//! shows every attempt. Once its fence agent works, the node is fenced and the group fails
//! over. (A node without a fence agent fails over on its lease alone: failover_kill.rs.)

mod common;

use std::path::Path;

use common::{Lab, group_preferring, looks_alive, processes_in};
use haven_api::{GroupView, HistoryQuery, specs};
use haven_model::ResourceSpec;
use haven_state::Event;

/// The `start <pid> <cwd>` lines the resource wrote, one per start.
fn starts(evidence: &Path) -> Vec<String> {
    std::fs::read_to_string(evidence).unwrap_or_default().lines().map(str::to_string).collect()
}

/// Events of kind `kind` about node `node`, as node `i` sees the history.
async fn events(lab: &Lab, i: usize, node: &str, kind: &str) -> Option<Vec<Event>> {
    let all: Vec<Event> = lab.client(i).history(&HistoryQuery::node(node).limit(1000)).await.ok()?;
    Some(all.into_iter().filter(|e| e.kind == kind).collect())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn group_waits_while_fencing_fails_and_fails_over_once_fenced() {
    if std::process::Command::new("fence_dummy").arg("--version").output().is_err() {
        panic!("fence_dummy is not installed: apt-get install fence-agents (scripts/test does it)");
    }
    let mut lab = Lab::start(3).await;
    let evidence = lab.dir().join("evidence");
    common::writable_by_anyone(&evidence); // the resource runs as nobody
    let status_file = lab.dir().join("fence_dummy.status");

    // The owner is a follower, so the leader (which runs fence agents) survives.
    let leader = lab.leader_seen_by(0).await.expect("a leader");
    let a = (0..3).find(|i| lab.node(*i).id != leader).expect("a follower");
    let a_name = lab.name(a).to_string();
    let survivors: Vec<usize> = (0..3).filter(|i| *i != a).collect();
    let v = survivors[0];

    // A fence agent that always fails (and says so after 1 s rather than fence_dummy's 20).
    let set = lab
        .cli_json(
            v,
            &[
                "node",
                "fence",
                &a_name,
                "--agent",
                "fence_dummy",
                "--param",
                "type=fail",
                "--param",
                "power_timeout=1",
                "--timeout",
                "10s",
            ],
        )
        .await;
    assert_eq!(set["fence"]["agent"], "fence_dummy", "fence agent not set: {set}");

    let c = lab.client(v).clone();
    c.create_group(&group_preferring("g", &[&a_name])).await.unwrap();
    let script = format!("echo start $$ $(pwd) >> {}; exec sleep infinity", evidence.display());
    c.create_resource(&ResourceSpec { props: looks_alive(200), ..specs::process("r", "g", &["sh", "-c", &script]) })
        .await
        .unwrap();
    lab.wait_until(&format!("g online on {a_name}"), 20, async || {
        lab.online_on(v, "g").await.as_deref() == Some(a_name.as_str()) && starts(&evidence).len() == 1
    })
    .await;

    lab.kill_node(a);
    let run_dirs: Vec<_> = survivors.iter().map(|i| lab.node(*i).run_dir("r")).collect();
    let not_started_elsewhere = || {
        let running: Vec<i32> = run_dirs.iter().flat_map(|d| processes_in(d)).collect();
        let n = starts(&evidence).len();
        if running.is_empty() && n == 1 {
            Ok(())
        } else {
            Err(format!("g was started on a survivor although {a_name} was never fenced: {running:?}, {n} starts"))
        }
    };
    // Fence attempts fail (each after ~1 s) and are retried every 5 s: wait for two.
    let failures = lab
        .wait_for(&format!("two failed fence attempts on {a_name}, and g not started elsewhere"), 25, async || {
            if let Err(why) = not_started_elsewhere() {
                panic!("{why}\n{}", lab.logs_tail());
            }
            let failed = events(&lab, v, &a_name, "fence-failed").await?;
            (failed.len() >= 2).then_some(failed)
        })
        .await;
    let requested = events(&lab, v, &a_name, "fence-requested").await.expect("history");
    assert!(requested.len() >= 2, "each attempt should be requested: {requested:?}");
    for f in &failures {
        assert!(f.message.contains("fence_dummy"), "the failure should name the agent: {}", f.message);
    }
    println!("fence failures: {:#?}", failures.iter().map(|e| &e.message).collect::<Vec<_>>());
    let g: GroupView = lab.group(v, "g").await.expect("g");
    assert_eq!(g.group.owner.as_deref(), Some(a_name.as_str()), "g must wait for {a_name} to be fenced");
    assert!(events(&lab, v, &a_name, "node-fenced").await.expect("history").is_empty());
    let n = lab.client(v).node(&a_name).await.expect("node view");
    assert_eq!(n.status, "down");
    assert!(n.fence_status.as_ref().is_some_and(|s| s.failures >= 2), "fence status: {:?}", n.fence_status);

    // Now a fence agent that works: the node is fenced ("powered off") and g fails over.
    std::fs::write(&status_file, "on").expect("cannot write the fence status file");
    // The fence agent runs as nobody (the agents run as root and the config names no user).
    common::writable_by_anyone(&status_file);
    let status_param = format!("status_file={}", status_file.display());
    lab.cli_json(
        v,
        &["node", "fence", &a_name, "--agent", "fence_dummy", "--param", "type=file", "--param", &status_param],
    )
    .await;
    let s = lab
        .wait_for("g online on a survivor after fencing succeeded", 20, async || {
            let s = lab.online_on(v, "g").await?;
            (s != a_name && starts(&evidence).len() == 2).then_some(s)
        })
        .await;
    let fenced = events(&lab, v, &a_name, "node-fenced").await.expect("history");
    assert_eq!(fenced.len(), 1, "one successful fence: {fenced:?}");
    let status = std::fs::read_to_string(&status_file).expect("the status file");
    assert_eq!(status.trim().to_lowercase(), "off", "fence_dummy should have powered {a_name} off");
    // Recovery came after the fence, never before.
    let history = lab.client(v).history(&HistoryQuery::group("g").limit(1000)).await.expect("history");
    let failover = history
        .iter()
        .find(|e| e.kind == "group-failover" && e.node.as_deref() == Some(s.as_str()))
        .unwrap_or_else(|| panic!("no group-failover event to {s}: {history:?}"));
    assert!(
        failover.id > fenced[0].id,
        "g failed over (event {}) before the fence (event {})",
        failover.id,
        fenced[0].id
    );
    assert!(failover.at >= fenced[0].at);
}
