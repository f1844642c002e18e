//! Lab: planned moves (operator move, drain) hand the group off: the new owner starts it
//! only after the old owner reported that it stopped it. The resource takes ~1.5 s to stop
//! (it finishes its work after SIGTERM), so a one-step move would make two copies write
//! at once; the resource's own evidence shows that never happens.

mod common;

use std::path::Path;

use common::{Lab, assert_no_overlap, group_preferring, stints};
use haven_api::{HistoryQuery, specs};
use haven_model::{Dur, ResourceProps, ResourceSpec};
use serde_json::Value;

/// Like `evidence_script`, but SIGTERM only makes it finish: it goes on writing for ~150
/// more lines (well over a second) before it exits.
fn slow_stop_script(file: &Path) -> String {
    format!(
        "trap 'stopping=1' TERM; n=0; while :; do echo \"$(pwd) $$ $(date +%s%N)\" >> {f}; \
         if [ -n \"$stopping\" ]; then n=$((n+1)); [ $n -ge 150 ] && exit 0; fi; sleep 0.01; done",
        f = file.display()
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn moves_and_drains_wait_for_the_old_owner_to_stop() {
    let lab = Lab::start(3).await;
    let evidence = lab.dir().join("evidence.log");
    common::writable_by_anyone(&evidence); // the resource runs as nobody
    let c = lab.client(0).clone();
    c.create_group(&group_preferring("g", &["node1"])).await.expect("create group g");
    let r = ResourceSpec {
        props: ResourceProps { pending_timeout: Dur::from_secs(20), ..common::looks_alive(200) },
        ..specs::process("r", "g", &["sh", "-c", &slow_stop_script(&evidence)])
    };
    c.create_resource(&r).await.expect("create resource r");
    lab.wait_until("g online on node1", 30, async || lab.online_on(0, "g").await.as_deref() == Some("node1")).await;

    // Operator move: the group shows as moving (no owner) while node1 finishes its copy.
    let moved = lab.cli_json(1, &["group", "move", "g", "--to", "node2"]).await;
    assert_eq!(moved["state"], "moving", "right after the move: {moved}");
    assert_eq!(moved["handoff"]["from"], "node1", "{moved}");
    assert_eq!(moved["handoff"]["to"], "node2", "{moved}");
    assert_eq!(moved["owner"], Value::Null, "{moved}");
    lab.wait_until("g online on node2", 30, async || lab.online_on(1, "g").await.as_deref() == Some("node2")).await;

    // Drain node2: its group goes (planned) to the best other node, again only once stopped.
    lab.cli_json(0, &["node", "pause", "node2"]).await;
    let target = lab
        .wait_for("g online on a node other than node2", 30, async || {
            let owner = lab.online_on(0, "g").await?;
            (owner != "node2").then_some(owner)
        })
        .await;
    lab.cli_json(0, &["node", "resume", "node2"]).await;

    let copies = stints(&evidence);
    assert!(copies.len() >= 3, "expected a copy on node1, node2 and {target}: {copies:?}");
    assert_no_overlap(&evidence);

    // The history tells the story: moving, then moved once the old owner stopped it.
    let history = c.history(&HistoryQuery::group("g").limit(1000)).await.expect("history");
    let messages: Vec<&str> = history.iter().map(|e| e.message.as_str()).collect();
    assert!(
        messages.iter().any(|m| m.contains("is moving from \"node1\" to \"node2\"")),
        "no handoff start in the history: {messages:#?}"
    );
    assert!(
        messages.iter().any(|m| m.contains("moved from \"node1\" to \"node2\"") && m.contains("\"node1\" stopped it")),
        "no handoff end in the history: {messages:#?}"
    );
}
