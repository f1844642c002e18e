//! Lab: a resource whose start never finishes (its health check never passes, its pending
//! timeout is the longest allowed, a day) shows `starting`; taking its group offline
//! cancels the start and stops the process at once, and the resource can then be deleted.
//! Before that, a delete is refused with the rule and what to do. No process is left, and
//! no agent panicked.

mod common;

use std::time::{Duration, Instant};

use common::{Lab, alive, group_preferring, processes_in};
use haven_api::{Client, ClientError, specs};
use haven_model::{Dur, HealthCheck, ProcessParams, ResourceKind, ResourceProps, ResourceSpec, ResourceState};
use serde_json::json;

/// How long taking the group offline (cancel the start, stop the process) and deleting
/// may take in all: far below the pending timeout, which is a day.
const OFFLINE_AND_DELETE_WITHIN: Duration = Duration::from_secs(15);

/// Group `stuck` (node2 preferred) with one `process` resource `s` whose health check never
/// passes, so its start never finishes.
async fn create_stuck(c: &Client, params: ProcessParams, props: ResourceProps) {
    c.create_group(&group_preferring("stuck", &["node2"])).await.expect("group");
    let spec = ResourceSpec { props, ..specs::resource("s", "stuck", ResourceKind::Process, &params) };
    c.create_resource(&spec).await.expect("create resource s");
}

/// A health check that never passes.
fn never_healthy(timeout: Dur) -> Option<HealthCheck> {
    Some(HealthCheck::Command { argv: vec!["false".into()], timeout })
}

const DAY: Dur = Dur::from_secs(24 * 3600);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_start_that_never_finishes_is_cancelled_by_offline_and_the_resource_deleted() {
    let lab = Lab::start(2).await;
    let c = lab.client(0).clone();
    create_stuck(
        &c,
        ProcessParams {
            check: never_healthy(Dur::from_secs(3600)),
            ..specs::process_params(&["sh", "-c", "echo $$ > leader.pid; exec sleep 100000"])
        },
        ResourceProps { pending_timeout: DAY, is_alive_interval: DAY, looks_alive_interval: DAY, ..Default::default() },
    )
    .await;
    let node2 = lab.index_of("node2");
    let run_dir = lab.node(node2).run_dir("s");

    // Starting on node2, with its process running and its check failing.
    let pids = lab
        .wait_for("s starting on node2 with its process running", 20, async || {
            let r = lab.resource(0, "s").await?;
            // The resource's own process (the script writes its pid; `exec` keeps it), not
            // the health checks that come and go in the same directory.
            let pid: i32 = std::fs::read_to_string(run_dir.join("leader.pid")).ok()?.trim().parse().ok()?;
            (r.status.state == ResourceState::Starting && r.status.node.as_deref() == Some("node2") && alive(pid))
                .then_some(vec![pid])
        })
        .await;
    lab.note(&format!("s is starting on node2, processes {pids:?}"));

    // Deleting it now is refused: it may be running there. The message says what to do.
    match c.delete_resource("s").await {
        Err(ClientError::Api { status, message, .. }) => {
            assert_eq!(status, 409, "{message}");
            for needle in [
                "is starting on node \"node2\"",
                "deleted only when no node may be running it",
                "haven group offline stuck",
            ] {
                assert!(message.contains(needle), "{message:?} should say {needle:?}");
            }
        }
        other => panic!("deleting a starting resource was not refused: {other:?}"),
    }
    assert!(pids.iter().all(|p| alive(*p)), "the refused delete stopped nothing");

    // Offline: the start is cancelled and what it started stopped, long before a day.
    let began = Instant::now();
    let out = lab.cli_json(0, &["group", "offline", "stuck"]).await;
    assert_eq!(out["online"], json!(false), "{out}");
    let limit = OFFLINE_AND_DELETE_WITHIN.as_secs();
    let r = lab
        .wait_for("s offline after its group was taken offline", limit, async || {
            let r = lab.resource(0, "s").await?;
            (r.status.state == ResourceState::Offline).then_some(r)
        })
        .await;
    let reason = r.status.reason.unwrap_or_default();
    assert!(reason.contains("start cancelled: the group was taken offline"), "{reason:?}");
    lab.note(&format!("s offline after {:.1}s: {reason}", began.elapsed().as_secs_f64()));

    // Now the delete succeeds, through the CLI as an operator would do it.
    let _ = lab.cli_json(0, &["resource", "delete", "s"]).await;
    assert!(lab.resource(0, "s").await.is_none(), "s is still there after its delete");
    assert!(began.elapsed() < OFFLINE_AND_DELETE_WITHIN, "offline + delete took {:?}", began.elapsed());
    let _ = lab.cli_json(0, &["group", "delete", "stuck"]).await;

    // Nothing of it is left running, and no agent panicked on the way.
    lab.wait_until("no process of s left on node2", 5, async || {
        processes_in(&run_dir).is_empty() && pids.iter().all(|p| !alive(*p))
    })
    .await;
    for i in 0..2 {
        let log = std::fs::read_to_string(lab.node(i).log_path()).unwrap_or_default();
        assert!(!log.contains("panicked"), "{} panicked:\n{}", lab.name(i), lab.logs_tail());
    }
}

/// A move of a group whose start never finishes completes: the old owner cancels the
/// start, stops the process and releases the group, and the new owner starts it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_start_that_never_finishes_does_not_hold_up_a_move() {
    let lab = Lab::start(2).await;
    let c = lab.client(0).clone();
    create_stuck(
        &c,
        ProcessParams { check: never_healthy(Dur::from_secs(5)), ..specs::process_params(&["sleep", "100000"]) },
        ResourceProps { pending_timeout: DAY, ..Default::default() },
    )
    .await;
    let on = |name: &'static str| {
        let lab = &lab;
        async move || {
            let r = lab.resource(0, "s").await?;
            let dir = lab.node(lab.index_of(name)).run_dir("s");
            (r.status.state == ResourceState::Starting && r.status.node.as_deref() == Some(name))
                .then(|| processes_in(&dir))
                .filter(|p| !p.is_empty())
        }
    };
    let old = lab.wait_for("s starting on node2", 20, on("node2")).await;
    let _ = lab.cli_json(0, &["group", "move", "stuck", "--to", "node1"]).await;
    let limit = OFFLINE_AND_DELETE_WITHIN.as_secs();
    let new = lab.wait_for("s starting on node1 after the move", limit, on("node1")).await;
    assert!(old.iter().all(|p| !alive(*p)), "node2 left {old:?} running");
    assert!(processes_in(&lab.node(lab.index_of("node2")).run_dir("s")).is_empty());
    let g = lab.group(0, "stuck").await.expect("group");
    assert_eq!((g.group.owner.as_deref(), g.group.handoff.is_none()), (Some("node1"), true), "{:?}", g.group);
    lab.note(&format!("moved: s starts on node1 as {new:?}"));
}
