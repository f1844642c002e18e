//! Lab: a resource whose process keeps dying is restarted in place up to its restart
//! threshold, then its group fails over to another node; the history (CLI and API) says
//! which resource failed, why, and why the group moved.

mod common;

use common::{Lab, alive, cwd_of, group_preferring, pid_in, sigkill};
use haven_api::{HistoryQuery, specs};
use haven_model::{Dur, ResourceProps, ResourceSpec};
use haven_state::Event;

/// The pid of `r` on node `owner` once `g` is online there with a live process other
/// than `not`.
async fn running_on(lab: &Lab, owner: &str, not: Option<i32>) -> Option<i32> {
    let o = lab.online_on(0, "g").await?;
    if o != owner {
        return None;
    }
    let run_dir = lab.node(lab.index_of(owner)).run_dir("r");
    let pid = pid_in(&run_dir)?;
    (Some(pid) != not && alive(pid) && cwd_of(pid).as_deref() == Some(run_dir.as_path())).then_some(pid)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restarts_in_place_up_to_the_threshold_then_fails_over() {
    let lab = Lab::start(3).await;
    let c = lab.client(0).clone();
    c.create_group(&group_preferring("g", &["node2"])).await.unwrap();
    let r = ResourceSpec {
        props: ResourceProps { restart_threshold: 2, restart_delay: Dur::from_millis(200), ..common::looks_alive(200) },
        ..specs::process("r", "g", &["sleep", "infinity"])
    };
    c.create_resource(&r).await.unwrap();
    let mut pid = lab.wait_for("g online on node2", 20, async || running_on(&lab, "node2", None).await).await;

    // Two failures within the threshold: restarted in place each time.
    for n in 1..=2 {
        println!("killing r (pid {pid}), failure {n} of 2 allowed");
        sigkill(pid);
        let old = pid;
        let what = format!("r restarted in place on node2 (new pid) with {n} failures recorded");
        pid = lab
            .wait_for(&what, 10, async || {
                let p = running_on(&lab, "node2", Some(old)).await?;
                let r = lab.resource(0, "r").await?;
                assert!(r.status.failures.len() <= n, "failures recorded for r: {:?}", r.status.failures);
                (r.status.failures.len() == n).then_some(p)
            })
            .await;
    }

    // The third: past the threshold, the group fails over.
    println!("killing r (pid {pid}), past its threshold");
    sigkill(pid);
    let (owner, new_pid) = lab
        .wait_for("g failed over to another node, with r running there", 15, async || {
            let g = lab.group(0, "g").await?;
            let owner = g.group.owner.filter(|o| o != "node2")?;
            let p = running_on(&lab, &owner, None).await?;
            Some((owner, p))
        })
        .await;
    assert!(!alive(pid), "the old process {pid} must be gone");
    assert_eq!(pid_in(&lab.node(lab.index_of("node2")).run_dir("r")), None, "node2 left a pid file behind");
    println!("g moved to {owner}, r runs there as pid {new_pid}");

    // The history, through the CLI and the API, says what happened and why.
    let cli = lab.cli_json(0, &["history", "--group", "g"]).await;
    let cli_events: Vec<Event> = serde_json::from_value(cli).expect("`history -o json` prints events");
    let api_events = c.history(&HistoryQuery::group("g")).await.unwrap();
    for (source, events) in [("haven history", &cli_events), ("the API's history", &api_events)] {
        let failed: Vec<&Event> = events.iter().filter(|e| e.kind == "resource-failed").collect();
        assert!(failed.len() >= 3, "{source}: expected 3 resource-failed events, got {failed:#?}");
        for e in &failed {
            assert_eq!(e.resource.as_deref(), Some("r"), "{source}: {e:?}");
            assert_eq!(e.node.as_deref(), Some("node2"), "{source}: {e:?}");
        }
        let restarting: Vec<&&Event> =
            failed.iter().filter(|e| e.message.contains("restarting in place (failure")).collect();
        assert_eq!(restarting.len(), 2, "{source}: two restarts in place: {failed:#?}");
        assert!(
            failed.iter().any(|e| e.message.contains("restart threshold 2")),
            "{source}: a resource-failed event gives the threshold as the reason to give up: {failed:#?}"
        );
        let failover = events
            .iter()
            .find(|e| e.kind == "group-failover")
            .unwrap_or_else(|| panic!("{source}: no group-failover event: {events:#?}"));
        // Two steps: the group is unplaced (node2 stops it), then placed on the new owner.
        assert_eq!(failover.node, None, "{source}: the failover first takes g off node2: {failover:?}");
        assert!(failover.message.contains("resource \"r\""), "{source}: the failover names r: {failover:?}");
        assert!(failover.message.contains("node2"), "{source}: the failover names the old owner: {failover:?}");
        assert_eq!(failover.by, "controller");
        let placed = events
            .iter()
            .find(|e| {
                e.id > failover.id && e.group.as_deref() == Some("g") && e.node.as_deref() == Some(owner.as_str())
            })
            .unwrap_or_else(|| panic!("{source}: no event placing g on {owner} after the failover: {events:#?}"));
        assert!(placed.kind == "group-placed" || placed.kind == "group-failover", "{source}: {placed:?}");
    }
    assert_eq!(cli_events.len(), api_events.len(), "the CLI and the API show the same history");
}
