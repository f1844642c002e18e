//! What a trivial commit costs the state machine with an empty state and with 8,000
//! groups: the bytes of the rows it writes, the bytes the process writes to the file, and
//! its latency (fsync included). Prints `scale_<measure> groups=<G> value=<v>` lines; run
//! with `cargo test -p haven-raft --release --test scale -- --nocapture` for the numbers
//! (debug builds are slower, the byte counts the same).

use std::time::{Duration, Instant};

use haven_raft::TypeConfig;
use haven_raft::store::{StateMachineStore, open_store};
use haven_state::{Command, Request};
use openraft::storage::RaftStateMachine;
use openraft::{CommittedLeaderId, Entry, EntryPayload, LogId};

const COMMITS: u64 = 40;

async fn apply(sm: &mut StateMachineStore, index: &mut u64, requests: Vec<Request>) {
    let entries: Vec<Entry<TypeConfig>> = requests
        .into_iter()
        .map(|r| {
            *index += 1;
            Entry { log_id: LogId::new(CommittedLeaderId::new(1, 1), *index), payload: EntryPayload::Normal(r) }
        })
        .collect();
    if let Err(e) = sm.apply(entries).await {
        panic!("apply failed: {e}");
    }
}

/// Bytes this process passed to write(2) and friends so far, if /proc says.
fn bytes_written_by_process() -> Option<u64> {
    let io = std::fs::read_to_string("/proc/self/io").ok()?;
    io.lines().find_map(|l| l.strip_prefix("wchar:")).and_then(|v| v.trim().parse().ok())
}

struct Cost {
    rows_per_commit: u64,
    file_bytes_per_commit: Option<u64>,
    median_latency: Duration,
    old_layout_bytes: u64,
}

/// A 3-node state with `groups` offline groups, then `COMMITS` trivial writes (pausing and
/// resuming a node), one commit each.
async fn measure(groups: u64) -> Cost {
    let dir = tempfile::tempdir().expect("temp dir");
    let (_log, mut sm) = open_store(dir.path()).expect("open");
    let mut index = 0;
    let mut setup = vec![Request::new(
        1,
        "test",
        Command::InitCluster { name: "scale".into(), node: haven_scenario::node(1, "node-1") },
    )];
    for id in 2..=3 {
        setup.push(Request::new(1, "test", Command::AddNode { node: haven_scenario::node(id, &format!("node-{id}")) }));
    }
    apply(&mut sm, &mut index, setup).await;
    let mut batch = Vec::new();
    for g in 0..groups {
        let spec = serde_json::from_value(serde_json::json!({ "name": format!("group-{g:05}"), "online": false }))
            .expect("group spec");
        batch.push(Request::new(2, "test", Command::CreateGroup { spec }));
        if batch.len() == 500 || g + 1 == groups {
            apply(&mut sm, &mut index, std::mem::take(&mut batch)).await;
        }
    }
    assert_eq!(sm.state().groups.len() as u64, groups);

    let rows_before = sm.bytes_written();
    let file_before = bytes_written_by_process();
    let mut latencies = Vec::new();
    for i in 0..COMMITS {
        let paused = i % 2 == 0;
        let request = Request::new(3 + i, "test", Command::SetNodePaused { name: "node-2".into(), paused });
        let started = Instant::now();
        apply(&mut sm, &mut index, vec![request]).await;
        latencies.push(started.elapsed());
        assert_eq!(sm.state().nodes.get("node-2").map(|n| n.paused), Some(paused));
    }
    let file_after = bytes_written_by_process();
    latencies.sort();
    Cost {
        rows_per_commit: (sm.bytes_written() - rows_before) / COMMITS,
        file_bytes_per_commit: file_before.zip(file_after).map(|(b, a)| (a - b) / COMMITS),
        median_latency: latencies[latencies.len() / 2],
        old_layout_bytes: serde_json::to_vec(&*sm.state()).expect("json").len() as u64,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trivial_commit_costs_the_same_with_8000_groups() {
    let empty = measure(0).await;
    let large = measure(8_000).await;
    for (groups, cost) in [(0, &empty), (8_000, &large)] {
        println!("scale_bytes_per_commit groups={groups} value={}", cost.rows_per_commit);
        if let Some(bytes) = cost.file_bytes_per_commit {
            println!("scale_file_bytes_per_commit groups={groups} value={bytes}");
        }
        println!("scale_commit_latency_ms groups={groups} value={:.2}", cost.median_latency.as_secs_f64() * 1e3);
        println!("scale_old_layout_bytes_per_commit groups={groups} value={}", cost.old_layout_bytes);
    }
    assert!(
        large.rows_per_commit <= 2 * empty.rows_per_commit,
        "rows written per commit: {} bytes with 8,000 groups, {} with none",
        large.rows_per_commit,
        empty.rows_per_commit
    );
    if let (Some(large), Some(empty)) = (large.file_bytes_per_commit, empty.file_bytes_per_commit) {
        assert!(large <= 2 * empty, "file bytes written per commit: {large} with 8,000 groups, {empty} with none");
    }
}
