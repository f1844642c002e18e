//! The state machine's per-object tables: what a restart reads back is what was applied,
//! after random commands, after a snapshot install, and after opening a file of the old
//! single-value layout.

use std::collections::BTreeSet;
use std::path::Path;

use haven_raft::TypeConfig;
use haven_raft::store::{DB_FILE, StateMachineStore, open_store};
use haven_state::{Command, Request, State};
use openraft::storage::{RaftSnapshotBuilder, RaftStateMachine};
use openraft::{CommittedLeaderId, Entry, EntryPayload, LogId};
use redb::{ReadableDatabase, ReadableTableMetadata};
use serde_json::json;

fn log_id(index: u64) -> LogId<u64> {
    LogId::new(CommittedLeaderId::new(1, 1), index)
}

/// Applies `requests` as one batch, the entries numbered from `first`.
async fn apply(sm: &mut StateMachineStore, first: u64, requests: &[Request]) {
    let entries: Vec<Entry<TypeConfig>> = requests
        .iter()
        .enumerate()
        .map(|(i, r)| Entry { log_id: log_id(first + i as u64), payload: EntryPayload::Normal(r.clone()) })
        .collect();
    if let Err(e) = sm.apply(entries).await {
        panic!("apply failed: {e}");
    }
}

/// The state a fresh open of `dir` reads back.
async fn reopened(dir: &Path) -> (Option<LogId<u64>>, State) {
    let (_log, mut sm) = open_store(dir).unwrap_or_else(|e| panic!("reopening {}: {e}", dir.display()));
    let state = (*sm.state()).clone();
    let (last, _) = sm.applied_state().await.unwrap_or_else(|e| panic!("applied state: {e}"));
    (last, state)
}

/// A small deterministic generator (xorshift64*).
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d) % n
    }
}

/// Asserts `read == applied`, naming the first part of the state that differs.
fn assert_same(read: &State, applied: &State, what: &str) {
    let parts = [
        ("nodes", format!("{:?}", read.nodes) == format!("{:?}", applied.nodes)),
        ("groups", read.groups == applied.groups),
        ("resources", read.resources == applied.resources),
        ("history", read.history == applied.history),
        ("fencing", read.fencing == applied.fencing),
        ("fence_status", read.fence_status == applied.fence_status),
        ("requests", read.requests == applied.requests),
        ("api_tokens", read.api_tokens == applied.api_tokens),
    ];
    for (part, same) in parts {
        assert!(same, "{what}: the {part} differ");
    }
    assert_eq!(read, applied, "{what}");
}

fn init_cluster() -> Request {
    Request::new(1, "test", Command::InitCluster { name: "test".into(), node: haven_scenario::node(1, "node-1") })
}

fn from_json<T: serde::de::DeserializeOwned>(value: serde_json::Value) -> T {
    serde_json::from_value(value).unwrap_or_else(|e| panic!("test fixture does not parse: {e}"))
}

/// One random command over a few nodes, groups and resources, so that objects are
/// created, changed and deleted again; some are refused, which changes nothing.
fn random_command(rng: &mut Rng) -> Command {
    let n = rng.below(6) + 2;
    let node = format!("node-{n}");
    let group = format!("g-{}", rng.below(30));
    let resource = format!("r-{}", rng.below(40));
    match rng.below(14) {
        0 => Command::AddNode { node: haven_scenario::node(n, &node) },
        1 => Command::RemoveNode { name: node },
        2 => Command::SetNodePaused { name: node, paused: rng.below(2) == 0 },
        3 => Command::SetNodeLiveness {
            name: node,
            liveness: from_json(json!(if rng.below(2) == 0 { "down" } else { "up" })),
            reason: "test".into(),
        },
        4 | 5 => Command::CreateGroup { spec: from_json(json!({ "name": group, "online": false })) },
        6 => Command::DeleteGroup { name: group },
        7 | 8 => Command::CreateResource {
            spec: from_json(json!({
                "name": resource, "group": group, "type": "process",
                "params": { "argv": ["sleep", "100"] },
            })),
        },
        9 => Command::DeleteResource { name: resource },
        10 => {
            Command::SetFence { node, config: (rng.below(3) > 0).then(|| from_json(json!({ "agent": "fence_test" }))) }
        }
        11 => Command::RequestFence { node, reason: "test".into() },
        12 => Command::CreateToken {
            token: from_json(json!({
                "name": format!("t-{}", rng.below(5)), "role": "reader", "hash": format!("{:064x}", rng.below(99)),
                "created_at": 0, "created_by": "", "expires_at": null,
            })),
        },
        _ => Command::RevokeToken { name: format!("t-{}", rng.below(5)) },
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_tables_hold_the_applied_state_after_random_commands() {
    let dir = tempfile::tempdir().expect("temp dir");
    let (mut log, mut sm) = open_store(dir.path()).expect("open");
    let mut restarts = 0;
    let mut reference = State::default();
    let mut rng = Rng(0x5eed_1234_abcd_0001);
    let mut index = 1;
    let mut requests = vec![init_cluster()];
    let mut ids_used = 0u64;
    // Enough commands to overflow the history (2,000 events) and the request outcomes
    // (1,000, and 10 minutes by the requests' time stamps).
    for i in 0..8_000u64 {
        let mut request = Request::new(10_000 + i * 700, "test", random_command(&mut rng));
        match rng.below(4) {
            0 => {}
            1 if ids_used > 0 => request = request.with_id(format!("req-{}", rng.below(ids_used))),
            _ => {
                request = request.with_id(format!("req-{ids_used}"));
                ids_used += 1;
            }
        }
        requests.push(request);
        if rng.below(8) == 0 || i % 2_000 == 1_999 {
            for r in &requests {
                let _ = reference.apply(r);
            }
            apply(&mut sm, index, &requests).await;
            index += requests.len() as u64;
            requests.clear();
            assert_eq!(*sm.state(), reference, "the store applied the commands as State::apply does");
        }
        if i % 2_000 == 1_999 && requests.is_empty() {
            // Restart: what the tables hold is what was applied, and applying goes on from it.
            drop(sm);
            drop(log);
            let (last, state) = reopened(dir.path()).await;
            assert_eq!(last, Some(log_id(index - 1)));
            assert_same(&state, &reference, &format!("the state read back after {i} commands"));
            (log, sm) = open_store(dir.path()).expect("reopen");
            restarts += 1;
        }
    }
    assert!(restarts > 0, "the store was reopened on the way");
    assert!(
        reference.history.len() == haven_state::HISTORY_LIMIT
            && reference.next_event_id > haven_state::HISTORY_LIMIT as u64,
        "the history was trimmed: {} events kept of {}",
        reference.history.len(),
        reference.next_event_id
    );
    assert!(reference.requests.len() > 100, "request outcomes were recorded: {}", reference.requests.len());
    let groups: BTreeSet<_> = reference.groups.keys().collect();
    assert!(!groups.is_empty() && !reference.resources.is_empty(), "objects exist at the end");

    drop(sm);
    drop(log);
    let (last, state) = reopened(dir.path()).await;
    assert_eq!(last, Some(log_id(index - 1)));
    assert_eq!(state, reference, "the state read back from the tables is the state applied");
}

/// `count` random requests, half of them with ids, stamped from `at` on.
fn random_requests(rng: &mut Rng, count: u64, at: u64) -> Vec<Request> {
    (0..count)
        .map(|i| {
            let request = Request::new(at + i * 1_000, "test", random_command(rng));
            if i % 2 == 0 { request.with_id(format!("req-{at}-{i}")) } else { request }
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_of_the_old_layout_is_rewritten_into_tables_at_open() {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut rng = Rng(0x0123_4567_89ab_cdef);
    let mut reference = State::default();
    let mut requests = vec![init_cluster()];
    requests.extend(random_requests(&mut rng, 400, 10_000));
    for r in &requests {
        let _ = reference.apply(r);
    }
    assert!(!reference.groups.is_empty() && !reference.requests.is_empty(), "the fixture has objects");

    // The layout before per-object tables: the whole state as one JSON value in `machine`.
    {
        let db = redb::Database::create(dir.path().join(DB_FILE)).expect("create the old file");
        let txn = db.begin_write().expect("write");
        {
            let def: redb::TableDefinition<&str, &[u8]> = redb::TableDefinition::new("machine");
            let mut machine = txn.open_table(def).expect("machine table");
            let last_applied = serde_json::to_vec(&Some(log_id(401))).expect("json");
            let membership =
                serde_json::to_vec(&openraft::StoredMembership::<u64, openraft::BasicNode>::default()).expect("json");
            let state = serde_json::to_vec(&reference).expect("json");
            machine.insert("last_applied", last_applied.as_slice()).expect("insert");
            machine.insert("last_membership", membership.as_slice()).expect("insert");
            machine.insert("state", state.as_slice()).expect("insert");
        }
        txn.commit().expect("commit");
    }

    let (last, state) = reopened(dir.path()).await;
    assert_eq!(last, Some(log_id(401)));
    assert_eq!(state, reference, "the migrated state is the old file's state");
    {
        let db = redb::Database::create(dir.path().join(DB_FILE)).expect("open the migrated file");
        let txn = db.begin_read().expect("read");
        let def: redb::TableDefinition<&str, &[u8]> = redb::TableDefinition::new("machine");
        let machine = txn.open_table(def).expect("machine table");
        // The old single value is replaced by a marker that an agent of the old version, which
        // reads a whole state there, refuses (quoting it) instead of starting empty.
        let old_value = machine.get("state").expect("get").expect("the marker").value().to_vec();
        let old_reader = serde_json::from_slice::<State>(&old_value).expect_err("an old agent cannot read it");
        assert!(old_reader.to_string().contains("needs a newer haven agent"), "old agent's error: {old_reader}");
        let layout: u32 =
            serde_json::from_slice(machine.get("layout").expect("get").expect("layout").value()).expect("json");
        assert_eq!(layout, haven_raft::store::LAYOUT);
        let groups: redb::TableDefinition<&str, &[u8]> = redb::TableDefinition::new("groups");
        let groups = txn.open_table(groups).expect("groups table");
        assert_eq!(groups.len().expect("len"), reference.groups.len() as u64, "one row per group");
    }

    // Applying goes on from the migrated tables, and a restart reads that back.
    let (log, mut sm) = open_store(dir.path()).expect("open");
    let more = random_requests(&mut rng, 300, 500_000);
    for r in &more {
        let _ = reference.apply(r);
    }
    apply(&mut sm, 402, &more).await;
    assert_eq!(*sm.state(), reference);
    drop((log, sm));
    let (last, state) = reopened(dir.path()).await;
    assert_eq!(last, Some(log_id(701)));
    assert_eq!(state, reference, "the state read back after applying on a migrated file");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_installed_snapshot_replaces_every_row() {
    let leader_dir = tempfile::tempdir().expect("temp dir");
    let follower_dir = tempfile::tempdir().expect("temp dir");
    let mut rng = Rng(0xfeed_beef_0000_0042);

    let (_leader_log, mut leader) = open_store(leader_dir.path()).expect("open");
    let mut leader_requests = vec![init_cluster()];
    leader_requests.extend(random_requests(&mut rng, 300, 10_000));
    apply(&mut leader, 1, &leader_requests).await;
    let snapshot = leader.get_snapshot_builder().await.build_snapshot().await.expect("snapshot");

    // The follower holds other objects, which the snapshot must remove.
    let (follower_log, mut follower) = open_store(follower_dir.path()).expect("open");
    let mut follower_requests = vec![init_cluster()];
    follower_requests.extend(random_requests(&mut rng, 200, 20_000));
    apply(&mut follower, 1, &follower_requests).await;
    assert_ne!(*follower.state(), *leader.state());

    follower.install_snapshot(&snapshot.meta, snapshot.snapshot).await.expect("install");
    let mut reference = (*leader.state()).clone();
    assert_eq!(*follower.state(), reference);

    let more = random_requests(&mut rng, 200, 900_000);
    for r in &more {
        let _ = reference.apply(r);
    }
    apply(&mut follower, 302, &more).await;
    drop((follower_log, follower));
    let (last, state) = reopened(follower_dir.path()).await;
    assert_eq!(last, Some(log_id(501)));
    assert_eq!(state, reference, "the state read back after a snapshot install and more applies");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_snapshot_stores_no_state_blob_and_is_served_from_the_current_state() {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut rng = Rng(0x5eed_0000_1111_2222);
    let (log, mut sm) = open_store(dir.path()).expect("open");
    assert!(sm.get_current_snapshot().await.expect("get").is_none(), "no snapshot before one is built");

    let mut requests = vec![init_cluster()];
    requests.extend(random_requests(&mut rng, 300, 10_000));
    apply(&mut sm, 1, &requests).await;
    let built = sm.get_snapshot_builder().await.build_snapshot().await.expect("snapshot");
    assert_eq!(built.meta.last_log_id, Some(log_id(301)));
    let more = random_requests(&mut rng, 100, 500_000);
    apply(&mut sm, 302, &more).await;

    // Served at the last applied entry, with the state as it is now.
    let current = sm.get_current_snapshot().await.expect("get").expect("a snapshot");
    assert_eq!(current.meta.last_log_id, Some(log_id(401)));
    let served: State = serde_json::from_slice(current.snapshot.get_ref()).expect("a state");
    assert_eq!(served, *sm.state());

    // The file holds the snapshot's meta, not a copy of the state.
    drop((log, sm));
    let db = redb::Database::create(dir.path().join(DB_FILE)).expect("open");
    let txn = db.begin_read().expect("read");
    let def: redb::TableDefinition<&str, &[u8]> = redb::TableDefinition::new("snapshot");
    let table = txn.open_table(def).expect("snapshot table");
    assert!(table.get("meta").expect("get").is_some(), "the snapshot's meta is kept");
    assert!(table.get("data").expect("get").is_none(), "no state blob");
    drop((table, txn, db));

    // After a restart it is still served, from the tables.
    let (_log, mut sm) = open_store(dir.path()).expect("reopen");
    let current = sm.get_current_snapshot().await.expect("get").expect("a snapshot after restart");
    assert_eq!(current.meta.last_log_id, Some(log_id(401)));
    let served: State = serde_json::from_slice(current.snapshot.get_ref()).expect("a state");
    assert_eq!(served, *sm.state());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_of_a_newer_layout_is_refused_and_left_alone() {
    let dir = tempfile::tempdir().expect("temp dir");
    drop(open_store(dir.path()).expect("create"));
    {
        let db = redb::Database::create(dir.path().join(DB_FILE)).expect("open");
        let txn = db.begin_write().expect("write");
        {
            let def: redb::TableDefinition<&str, &[u8]> = redb::TableDefinition::new("machine");
            let mut machine = txn.open_table(def).expect("machine table");
            machine.insert("layout", b"99".as_slice()).expect("insert");
        }
        txn.commit().expect("commit");
    }
    let Err(e) = open_store(dir.path()) else { panic!("a file of layout 99 was opened") };
    let message = e.to_string();
    assert!(message.contains("layout 99") && message.contains("upgrade haven"), "{message}");
    // Refusing changed nothing: the layout is still 99.
    let db = redb::Database::create(dir.path().join(DB_FILE)).expect("open");
    let txn = db.begin_read().expect("read");
    let def: redb::TableDefinition<&str, &[u8]> = redb::TableDefinition::new("machine");
    let machine = txn.open_table(def).expect("machine table");
    assert_eq!(machine.get("layout").expect("get").expect("layout").value(), b"99");
}
