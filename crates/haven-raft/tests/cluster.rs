//! Real clusters of `ClusterDb` nodes in one process, each serving `haven_raft::router` over
//! HTTP on 127.0.0.1: replication, restart from disk, quorum loss, snapshots and compaction.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use haven_raft::contact::ContactRule;
use haven_raft::{BasicNode, ClusterDb, RaftTuning, State, WriteError};
use haven_state::{Command, Reply, Request};
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tokio::time::Instant;

const DEADLINE: Duration = Duration::from_secs(20);

fn tuning(snapshot_logs: u64) -> RaftTuning {
    RaftTuning { heartbeat_ms: 100, election_min_ms: 500, election_max_ms: 1000, snapshot_logs }
}

fn init_tracing() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
}

/// One node under test: its database and the HTTP server that serves its peer RPCs.
struct TestNode {
    id: u64,
    dir: PathBuf,
    addr: String,
    db: ClusterDb,
    stop_server: oneshot::Sender<()>,
    server: JoinHandle<()>,
}

impl TestNode {
    async fn start(id: u64, dir: &Path, listener: TcpListener, tuning: RaftTuning) -> TestNode {
        let addr = listener.local_addr().expect("listener address").to_string();
        let db = ClusterDb::open(dir, id, tuning).await.expect("open the cluster database");
        let app = haven_raft::router(&db);
        let (stop_server, stopped) = oneshot::channel::<()>();
        let server = tokio::spawn(async move {
            axum::serve(listener, app)
                .with_graceful_shutdown(async move {
                    let _ = stopped.await;
                })
                .await
                .expect("serve peer RPCs");
        });
        TestNode { id, dir: dir.to_path_buf(), addr, db, stop_server, server }
    }

    /// Stops the node as a crash-free shutdown would; returns what it takes to restart it.
    async fn stop(self) -> (u64, PathBuf, String) {
        let _ = self.stop_server.send(());
        tokio::time::timeout(DEADLINE, self.server)
            .await
            .expect("HTTP server stops in time")
            .expect("HTTP server task");
        self.db.shutdown().await;
        (self.id, self.dir, self.addr)
    }

    async fn restart((id, dir, addr): (u64, PathBuf, String), tuning: RaftTuning) -> TestNode {
        let listener = TcpListener::bind(&addr).await.expect("re-bind the node's address");
        TestNode::start(id, &dir, listener, tuning).await
    }

    fn basic_node(&self) -> BasicNode {
        BasicNode { addr: self.addr.clone() }
    }
}

async fn start_cluster(root: &Path, ids: &[u64], tuning: &RaftTuning) -> Vec<TestNode> {
    let mut nodes = Vec::new();
    for &id in ids {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind 127.0.0.1:0");
        nodes.push(TestNode::start(id, &root.join(format!("n{id}")), listener, tuning.clone()).await);
    }
    nodes
}

async fn initialize(nodes: &[TestNode]) {
    for n in nodes {
        assert!(!n.db.is_initialized(), "node {} is new", n.id);
    }
    let members: BTreeMap<u64, BasicNode> = nodes.iter().map(|n| (n.id, n.basic_node())).collect();
    nodes[0].db.initialize(members.clone()).await.expect("initialize the cluster");
    assert!(nodes[0].db.is_initialized());
    let again = nodes[0].db.initialize(members).await;
    assert!(matches!(again, Err(haven_raft::DbError::AlreadyInitialized)), "a second initialize is refused: {again:?}");
}

/// Polls `check` every 20 ms until it returns `Some`, or panics after `DEADLINE`.
async fn wait_for<T>(what: &str, mut check: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + DEADLINE;
    loop {
        if let Some(v) = check() {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out after {DEADLINE:?} waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Waits until every node agrees on one leader; returns its index in `nodes`.
async fn wait_for_leader(nodes: &[TestNode]) -> usize {
    wait_for("all nodes to agree on a leader", || {
        let (id, addr) = nodes[0].db.leader()?;
        let agreed = nodes.iter().all(|n| n.db.leader().as_ref().map(|l| l.0) == Some(id));
        let index = nodes.iter().position(|n| n.id == id)?;
        (agreed && nodes[index].addr == addr).then_some(index)
    })
    .await
}

async fn wait_for_same_state(nodes: &[&TestNode], expected: &State) {
    wait_for("every node to apply the leader's state", || {
        nodes.iter().all(|n| *n.db.state() == *expected).then_some(())
    })
    .await
}

fn init_cluster() -> Request {
    Request::new(1, "test", Command::InitCluster { name: "test".to_string(), node: haven_scenario::node(1, "node-1") })
}

fn add_node(id: u64) -> Request {
    Request::new(id, "test", Command::AddNode { node: haven_scenario::node(id, &format!("node-{id}")) })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn three_nodes_replicate_and_a_restarted_node_catches_up() {
    init_tracing();
    let root = tempfile::tempdir().expect("temp dir");
    let tuning = tuning(500);
    let mut nodes = start_cluster(root.path(), &[1, 2, 3], &tuning).await;
    initialize(&nodes).await;
    let leader = wait_for_leader(&nodes).await;
    let follower = (leader + 1) % nodes.len();
    let mut changes = nodes[follower].db.subscribe();

    // Writes go through the leader; a follower names the leader instead.
    let reply = nodes[leader].db.write(init_cluster()).await.expect("write on the leader");
    assert!(matches!(reply, Ok(Reply::Node(_))), "InitCluster is applied: {reply:?}");
    let refused = nodes[follower].db.write(Request::noop()).await;
    match refused {
        Err(WriteError::ForwardToLeader { leader_id, leader_addr }) => {
            assert_eq!(leader_id, Some(nodes[leader].id));
            assert_eq!(leader_addr.as_deref(), Some(nodes[leader].addr.as_str()));
        }
        other => panic!("a follower refuses writes and names the leader, got {other:?}"),
    }
    nodes[leader].db.ensure_leader().await.expect("the leader proves its leadership");
    assert!(matches!(nodes[follower].db.ensure_leader().await, Err(WriteError::ForwardToLeader { .. })));

    let expected = nodes[leader].db.state();
    assert!(expected.cluster.is_some());
    wait_for_same_state(&nodes.iter().collect::<Vec<_>>(), &expected).await;
    tokio::time::timeout(DEADLINE, changes.changed())
        .await
        .expect("the follower's subscription sees the write")
        .expect("the state machine is running");
    assert!(changes.borrow().cluster.is_some());

    // One follower goes away; the other two still form a majority.
    let stopped = nodes.remove(follower).stop().await;
    let leader = nodes.iter().position(|n| n.db.leader().map(|l| l.0) == Some(n.id));
    let leader = leader.expect("the leader keeps leading");
    let before_stop = expected;
    for id in 2..=6 {
        let reply = nodes[leader].db.write(add_node(id)).await.expect("write with one node down");
        assert!(matches!(reply, Ok(Reply::Node(_))), "AddNode {id}: {reply:?}");
    }

    // The stopped node comes back with exactly what it had, then catches up.
    let restarted = TestNode::restart(stopped, tuning.clone()).await;
    assert!(restarted.db.is_initialized());
    assert_eq!(*restarted.db.state(), *before_stop, "state survives a restart as it was");
    nodes.push(restarted);
    let expected = nodes[leader].db.state();
    assert_eq!(expected.nodes.len(), 6);
    wait_for_same_state(&nodes.iter().collect::<Vec<_>>(), &expected).await;

    // Without a majority the leader gives up quickly instead of hanging: the write it
    // proposed has an unknown outcome (it may commit once a majority is back).
    let leader_node = nodes.remove(leader);
    for n in nodes.drain(..) {
        n.stop().await;
    }
    let short = leader_node.db.clone().with_write_timeout(Duration::from_millis(1500));
    let started = Instant::now();
    let lost = short.write(Request::noop()).await;
    assert!(
        matches!(lost, Err(WriteError::CommitTimeout(_)) | Err(WriteError::ForwardToLeader { .. })),
        "a lone node cannot write: {lost:?}"
    );
    assert!(started.elapsed() < Duration::from_secs(5), "the write gave up in time");
    let check = short.ensure_leader().await;
    assert!(check.is_err(), "a lone node cannot prove leadership: {check:?}");
    leader_node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn snapshots_compact_the_log_and_bring_lagging_nodes_up_to_date() {
    init_tracing();
    const SNAPSHOT_LOGS: u64 = 20;
    let root = tempfile::tempdir().expect("temp dir");
    let tuning = tuning(SNAPSHOT_LOGS);
    let mut nodes = start_cluster(root.path(), &[1, 2, 3], &tuning).await;
    initialize(&nodes).await;
    let leader = wait_for_leader(&nodes).await;
    nodes[leader].db.write(init_cluster()).await.expect("InitCluster").expect("applied");

    // A follower falls behind while the log is compacted past where it stopped.
    let follower = (leader + 1) % nodes.len();
    let follower_last_log = nodes[follower].db.raft().metrics().borrow().last_log_index.expect("follower has a log");
    let stopped = nodes.remove(follower).stop().await;
    let leader = nodes.iter().position(|n| n.db.leader().map(|l| l.0) == Some(n.id));
    let leader = leader.expect("the leader keeps leading");
    for id in 2..=(4 * SNAPSHOT_LOGS + 1) {
        nodes[leader].db.write(add_node(id)).await.expect("AddNode").expect("applied");
    }
    let raft = nodes[leader].db.raft().clone();
    let purged = wait_for("the leader to snapshot and purge its log", || {
        let m = raft.metrics().borrow().clone();
        let snapshot = m.snapshot?.index;
        let purged = m.purged?.index;
        (snapshot >= 3 * SNAPSHOT_LOGS && purged > follower_last_log).then_some(purged)
    })
    .await;
    let first_log = raft.metrics().borrow().purged.map(|p| p.index + 1);
    assert_eq!(first_log, Some(purged + 1));

    // The snapshot is stored and holds the state.
    let snapshot = raft.get_snapshot().await.expect("get snapshot").expect("a snapshot exists");
    let snapshot_index = snapshot.meta.last_log_id.expect("snapshot has a log id").index;
    assert!(snapshot_index >= 3 * SNAPSHOT_LOGS);
    let in_snapshot: State = serde_json::from_slice(snapshot.snapshot.get_ref()).expect("snapshot data is a State");
    assert!(in_snapshot.nodes.len() as u64 >= 2 * SNAPSHOT_LOGS, "snapshot holds the nodes");

    // The lagging follower can only catch up from the snapshot.
    nodes.push(TestNode::restart(stopped, tuning.clone()).await);
    let expected = nodes[leader].db.state();
    assert_eq!(expected.nodes.len() as u64, 4 * SNAPSHOT_LOGS + 1);
    wait_for_same_state(&nodes.iter().collect::<Vec<_>>(), &expected).await;
    let caught_up = nodes.last().expect("restarted node");
    let installed = caught_up.db.raft().metrics().borrow().snapshot;
    assert!(installed.is_some_and(|s| s.index >= snapshot_index), "it installed a snapshot");

    // A brand-new learner joins from the snapshot too.
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let learner = TestNode::start(4, &root.path().join("n4"), listener, tuning.clone()).await;
    nodes[leader].db.add_learner(4, learner.addr.clone()).await.expect("add learner 4");
    nodes.push(learner);
    wait_for_same_state(&nodes.iter().collect::<Vec<_>>(), &expected).await;
    let voters: BTreeSet<u64> = nodes.iter().map(|n| n.id).collect();
    nodes[leader].db.change_membership(voters.clone()).await.expect("promote the learner");
    let membership = nodes[leader].db.raft().metrics().borrow().membership_config.clone();
    let now_voters: BTreeSet<u64> = membership.membership().voter_ids().collect();
    assert_eq!(now_voters, voters);

    // Every node restarts from its own disk with the same state.
    let expected: Arc<State> = nodes[leader].db.state();
    let mut stopped = Vec::new();
    for n in nodes.drain(..) {
        stopped.push(n.stop().await);
    }
    for s in stopped {
        let node = TestNode::restart(s, tuning.clone()).await;
        assert_eq!(*node.db.state(), *expected, "node {} restored its state", node.id);
        nodes.push(node);
    }
    let leader = wait_for_leader(&nodes).await;
    nodes[leader].db.write(Request::noop()).await.expect("write after a full restart").expect("ok");
    for n in nodes {
        n.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_data_directory_belongs_to_one_node_id() {
    let root = tempfile::tempdir().expect("temp dir");
    let db = ClusterDb::open(root.path(), 7, RaftTuning::default()).await.expect("open as node 7");
    db.shutdown().await;
    let wrong = ClusterDb::open(root.path(), 8, RaftTuning::default()).await;
    match wrong {
        Err(e @ haven_raft::DbError::Store(haven_raft::store::StoreError::WrongNode { .. })) => {
            assert!(e.to_string().contains("belongs to node 7"), "{e}");
        }
        Err(e) => panic!("expected WrongNode, got {e}"),
        Ok(_) => panic!("node 8 must not open node 7's data directory"),
    }
    let again = ClusterDb::open(root.path(), 7, RaftTuning::default()).await.expect("reopen as node 7");
    assert!(!again.is_initialized());
    again.shutdown().await;
}

/// The bound a new leader gets from `earlier_leaders_last_contact` is never earlier than
/// the last request the old leader noted and then confirmed with a majority (what a lease
/// grant does), and not much later than the old leader's loss: the new leader need not
/// wait a whole lease from its own election.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_new_leader_bounds_what_the_old_leader_confirmed() {
    init_tracing();
    let root = tempfile::tempdir().expect("tempdir");
    let t = tuning(1000);
    let mut nodes = start_cluster(root.path(), &[1, 2, 3], &t).await;
    initialize(&nodes).await;
    let old = wait_for_leader(&nodes).await;
    let old_term = nodes[old].db.raft().metrics().borrow().current_term;

    // The old leader confirms "grants" until it stops; remember the last confirmed one.
    let mut last_confirmed = None;
    for _ in 0..10 {
        let noted = Instant::now();
        nodes[old].db.note_grant_request();
        nodes[old].db.ensure_leader().await.expect("the leader confirms its leadership");
        last_confirmed = Some(noted);
        tokio::time::sleep(Duration::from_millis(30)).await;
    }
    let last_confirmed = last_confirmed.expect("at least one confirmed");
    let stopped = Instant::now();
    nodes.remove(old).stop().await;

    let new = wait_for_leader(&nodes).await;
    let term = nodes[new].db.raft().metrics().borrow().current_term;
    assert!(term > old_term, "a new term: {term} after {old_term}");
    let elected = Instant::now();
    let bound = nodes[new]
        .db
        .earlier_leaders_last_contact(term, Duration::from_secs(5), ContactRule::Majority)
        .await
        .expect("the surviving majority answers");
    println!(
        "last confirmed grant {:?} before the stop; bound {:?} after it; election noticed {:?} after it",
        stopped - last_confirmed,
        bound.saturating_duration_since(stopped),
        elected - stopped
    );
    assert!(bound >= last_confirmed, "the bound is before a grant the old leader confirmed");
    assert!(bound <= Instant::now(), "the bound is in the future");
    assert!(
        bound < elected,
        "the bound should come from the old leader's last heartbeats, before the election: {:?} after it",
        bound - elected
    );
    // Asking for a term this node does not lead (a later one) gives no answer.
    assert!(
        nodes[new]
            .db
            .earlier_leaders_last_contact(term + 1, Duration::from_millis(300), ContactRule::Majority)
            .await
            .is_none()
    );
    for n in nodes {
        n.stop().await;
    }
}
