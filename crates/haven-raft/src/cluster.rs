//! [`ClusterDb`]: the one handle the agent uses to run its node's part of the cluster database.
//!
//! It opens the redb store, starts openraft with Haven's tuning and the HTTP network, and
//! turns openraft's generic errors into [`DbError`] / [`WriteError`] with messages an
//! operator can act on. Every call that needs a quorum is bounded by a timeout, so a
//! minority partition answers "no quorum" instead of hanging. Serving the peer RPCs is the
//! agent's job (merge [`crate::router`] into its HTTP server).

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use haven_state::{Request, Response, State};
use openraft::error::{
    ChangeMembershipError, CheckIsLeaderError, ClientWriteError, ForwardToLeader, InitializeError, RaftError,
};
use openraft::storage::RaftLogStorage;
use openraft::{BasicNode, Config, SnapshotPolicy, Vote};
use tokio::sync::watch;

use crate::contact::{self, ContactRule, LeaderContact};
use crate::network::HttpNetworkFactory;
use crate::store::{StoreError, open_store};
use crate::{Raft, TypeConfig};

/// How long a write or leadership check may wait for a quorum before giving up.
pub const DEFAULT_WRITE_TIMEOUT: Duration = Duration::from_secs(5);

/// How long a membership change (or a new learner catching up) may take.
pub const MEMBERSHIP_TIMEOUT: Duration = Duration::from_secs(60);

/// How long the peer RPC carrying a whole snapshot may take.
const INSTALL_SNAPSHOT_TIMEOUT_MS: u64 = 10_000;

/// How long `shutdown` waits for the database file to be closed.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(10);

/// Timing and compaction knobs of the cluster database.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RaftTuning {
    /// Leader heartbeat interval; also the timeout of one AppendEntries RPC.
    pub heartbeat_ms: u64,
    /// A follower that hears nothing from a leader for a random time in
    /// `election_min_ms..election_max_ms` starts an election.
    pub election_min_ms: u64,
    pub election_max_ms: u64,
    /// Build a snapshot (and compact the log) every this many applied entries; the same
    /// number of entries is kept in the log behind a snapshot for slow followers.
    pub snapshot_logs: u64,
}

impl Default for RaftTuning {
    fn default() -> Self {
        RaftTuning { heartbeat_ms: 200, election_min_ms: 800, election_max_ms: 1600, snapshot_logs: 500 }
    }
}

impl RaftTuning {
    /// The openraft configuration for this tuning, validated.
    pub fn to_config(&self) -> Result<Config, DbError> {
        let config = Config {
            cluster_name: "haven".to_string(),
            heartbeat_interval: self.heartbeat_ms,
            election_timeout_min: self.election_min_ms,
            election_timeout_max: self.election_max_ms,
            install_snapshot_timeout: INSTALL_SNAPSHOT_TIMEOUT_MS,
            snapshot_policy: SnapshotPolicy::LogsSinceLast(self.snapshot_logs.max(1)),
            max_in_snapshot_log_to_keep: self.snapshot_logs,
            // Bounds an AppendEntries body (see `network::APPEND_LIMIT`).
            max_payload_entries: crate::network::MAX_PAYLOAD_ENTRIES,
            ..Config::default()
        };
        config.validate().map_err(|e| DbError::Tuning { tuning: self.clone(), reason: e.to_string() })
    }
}

/// Why a cluster database operation failed.
#[derive(Debug, thiserror::Error)]
pub enum DbError {
    #[error(
        "invalid raft tuning {tuning:?}: {reason}; use election_min_ms > heartbeat_ms and \
         election_max_ms > election_min_ms (defaults: 200, 800, 1600)"
    )]
    Tuning { tuning: RaftTuning, reason: String },
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("cannot create the data directory {path}: {source}; check its parent's permissions")]
    CreateDir { path: PathBuf, source: std::io::Error },
    #[error(
        "this node already belongs to a cluster (it has a raft log or a vote); to found a new \
         cluster, stop the agent and empty its data directory first"
    )]
    AlreadyInitialized,
    #[error("{0}")]
    NotLeader(NotLeader),
    #[error(
        "no quorum: {0}; check that more than half of the voting nodes are running and can \
         reach each other"
    )]
    NoQuorum(String),
    #[error("membership change refused: {0}")]
    Membership(String),
    #[error(
        "the cluster database on this node has stopped ({0}); restart the agent, and check \
         its log and the disk holding the data directory"
    )]
    Fatal(String),
}

/// Who to ask instead, when this node is not the leader.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NotLeader {
    pub leader_id: Option<u64>,
    pub leader_addr: Option<String>,
}

impl std::fmt::Display for NotLeader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match (&self.leader_id, &self.leader_addr) {
            (Some(id), Some(addr)) => {
                write!(f, "this node is not the leader; send the request to node {id} at {addr}")
            }
            (Some(id), None) => write!(f, "this node is not the leader; node {id} is"),
            _ => write!(
                f,
                "this node is not the leader and no leader is elected right now; retry in a \
                 moment"
            ),
        }
    }
}

fn not_leader(f: ForwardToLeader<u64, BasicNode>) -> NotLeader {
    NotLeader { leader_id: f.leader_id, leader_addr: f.leader_node.map(|n| n.addr) }
}

/// Why a write (or a leadership check) failed.
#[derive(Debug, thiserror::Error)]
pub enum WriteError {
    #[error("{}", NotLeader { leader_id: *leader_id, leader_addr: leader_addr.clone() })]
    ForwardToLeader { leader_id: Option<u64>, leader_addr: Option<String> },
    #[error(
        "no quorum: {0}; check that more than half of the voting nodes are running and can \
         reach each other"
    )]
    NoQuorum(String),
    /// The write was proposed but not committed in time: it may still be applied later (or
    /// never). Its outcome is unknown, not refused.
    #[error(
        "the write was proposed but not committed within {0} ms, so its outcome is unknown: it \
         may still be applied"
    )]
    CommitTimeout(u128),
    #[error(
        "the cluster database on this node has stopped ({0}); restart the agent, and check \
         its log and the disk holding the data directory"
    )]
    Fatal(String),
}

impl From<NotLeader> for WriteError {
    fn from(n: NotLeader) -> Self {
        WriteError::ForwardToLeader { leader_id: n.leader_id, leader_addr: n.leader_addr }
    }
}

/// This node's handle on the cluster database. Cheap to clone.
#[derive(Clone)]
pub struct ClusterDb {
    inner: Arc<Inner>,
    write_timeout: Duration,
}

struct Inner {
    node_id: u64,
    raft: Raft,
    state: watch::Receiver<Arc<State>>,
    /// Whether the store had a log or a vote when opened (metrics lag behind at first).
    initialized_at_open: bool,
    /// Lets `shutdown` wait until openraft has dropped every handle on the database file.
    closed: watch::Receiver<()>,
    /// This node's notes of contact with leaders (see [`crate::contact`]).
    contact: LeaderContact,
    /// The peer client, for the leader-contact query.
    network: HttpNetworkFactory,
}

impl ClusterDb {
    /// Opens (or creates) the cluster database in `dir` and starts Raft as node `node_id`.
    ///
    /// An existing database is reopened as it was: log, vote, applied state and snapshot.
    /// A new one is empty and uninitialized: call [`ClusterDb::initialize`] on one node to
    /// found a cluster, or have the leader [`ClusterDb::add_learner`] this node.
    pub async fn open(dir: &Path, node_id: u64, tuning: RaftTuning) -> Result<ClusterDb, DbError> {
        let network = HttpNetworkFactory::new(node_id)
            .map_err(|e| DbError::Fatal(format!("cannot create the HTTP client for peer traffic: {e}")))?;
        ClusterDb::open_with_network(dir, node_id, tuning, network).await
    }

    /// Like [`ClusterDb::open`], reaching peers through `network` (e.g. an mTLS client, see
    /// [`HttpNetworkFactory::with_client`]).
    pub async fn open_with_network(
        dir: &Path,
        node_id: u64,
        tuning: RaftTuning,
        network: HttpNetworkFactory,
    ) -> Result<ClusterDb, DbError> {
        let config = tuning.to_config()?;
        std::fs::create_dir_all(dir).map_err(|source| DbError::CreateDir { path: dir.to_path_buf(), source })?;
        let owned_dir = dir.to_path_buf();
        let opened = tokio::task::spawn_blocking(move || {
            let (log_store, sm) = open_store(&owned_dir)?;
            log_store.claim_node_id(node_id)?;
            Ok::<_, StoreError>((log_store, sm))
        })
        .await
        .map_err(|e| DbError::Fatal(format!("opening the database panicked: {e}")))?;
        let (mut log_store, sm) = opened?;

        let log_state = log_store.get_log_state().await.map_err(|e| DbError::Fatal(e.to_string()))?;
        let vote = log_store.read_vote().await.map_err(|e| DbError::Fatal(e.to_string()))?;
        let initialized_at_open = log_state.last_log_id.is_some() || vote.is_some_and(|v| v != Vote::default());
        let state = sm.subscribe();
        let closed = log_store.closed();
        let peer_client = network.clone();
        let raft = openraft::Raft::<TypeConfig>::new(node_id, Arc::new(config), network, log_store, sm)
            .await
            .map_err(|e| DbError::Fatal(e.to_string()))?;
        tracing::info!(node_id, dir = %dir.display(), "cluster database opened");
        Ok(ClusterDb {
            inner: Arc::new(Inner {
                node_id,
                raft,
                state,
                initialized_at_open,
                closed,
                contact: LeaderContact::new(),
                network: peer_client,
            }),
            write_timeout: DEFAULT_WRITE_TIMEOUT,
        })
    }

    /// The same handle with another bound on writes and leadership checks (default 5 s).
    pub fn with_write_timeout(mut self, timeout: Duration) -> ClusterDb {
        self.write_timeout = timeout;
        self
    }

    /// This node's id.
    pub fn node_id(&self) -> u64 {
        self.inner.node_id
    }

    /// The openraft handle, e.g. for metrics or to serve [`crate::router`].
    pub fn raft(&self) -> &Raft {
        &self.inner.raft
    }

    /// This node's notes of contact with leaders.
    pub fn contact(&self) -> &LeaderContact {
        &self.inner.contact
    }

    /// Notes that this node, as the leader of its current term (or about to find out that it
    /// is not), received a request it may vouch for with its leadership, such as a lease
    /// renewal: call it *before* `ensure_leader`. See [`crate::contact`].
    pub fn note_grant_request(&self) {
        let term = self.inner.raft.metrics().borrow().current_term;
        self.inner.contact.note(term);
    }

    /// For a leader of `term`: the latest moment at which any leader of an earlier term can
    /// have received a request it then confirmed with a majority (e.g. a lease renewal it
    /// granted), from the answers of a majority of the voters (see [`crate::contact`];
    /// `rule` is [`ContactRule::Majority`] but in the simulator's proof that anything else
    /// is caught). `None` if no majority answered within `timeout`; the caller then keeps a
    /// safe default (its own election time).
    pub async fn earlier_leaders_last_contact(
        &self,
        term: u64,
        timeout: Duration,
        rule: ContactRule,
    ) -> Option<tokio::time::Instant> {
        use tokio::time::{Instant, sleep};
        const RETRY: Duration = Duration::from_millis(20);
        let deadline = Instant::now() + timeout;
        let (configs, peers) = {
            let metrics = self.inner.raft.metrics();
            let m = metrics.borrow();
            if m.current_term != term {
                return None;
            }
            let membership = m.membership_config.membership();
            let configs: Vec<Vec<u64>> =
                membership.get_joint_config().iter().map(|c| c.iter().copied().collect()).collect();
            let peers: Vec<(u64, String)> = membership
                .voter_ids()
                .filter(|id| *id != self.inner.node_id)
                .filter_map(|id| membership.get_node(&id).map(|n| (id, n.addr.clone())))
                .collect();
            (configs, peers)
        };
        let mut answers = BTreeMap::new();
        answers.insert(self.inner.node_id, self.inner.contact.last_before(term));
        let mut asks = tokio::task::JoinSet::new();
        for (id, addr) in peers {
            let network = self.inner.network.clone();
            asks.spawn(async move {
                // Ask again while the peer is unreachable or has not seen this term yet.
                loop {
                    let left = deadline.saturating_duration_since(Instant::now());
                    if left.is_zero() {
                        return None;
                    }
                    if let Ok(reply) = network.leader_contact(&addr, term, left).await
                        && reply.term >= term
                    {
                        return Some((id, contact::contact_instant(Instant::now(), reply.since_ms)));
                    }
                    sleep(RETRY.min(deadline.saturating_duration_since(Instant::now()))).await;
                }
            });
        }
        loop {
            if let Some(latest) = contact::combine(&configs, self.inner.node_id, &answers, rule) {
                return Some(latest);
            }
            match asks.join_next().await {
                Some(Ok(Some((id, at)))) => {
                    answers.insert(id, at);
                }
                Some(_) => {}
                None => return None,
            }
        }
    }

    /// Founds a new cluster with `members` as its voters. Call it on one node only; it
    /// fails with [`DbError::AlreadyInitialized`] if this node has a log or a vote.
    pub async fn initialize(&self, members: BTreeMap<u64, BasicNode>) -> Result<(), DbError> {
        match self.inner.raft.initialize(members).await {
            Ok(()) => {
                // Metrics trail the core a little; make `is_initialized` true on return.
                let wait = self.inner.raft.wait(Some(self.write_timeout));
                let logged = wait.metrics(|m| m.last_log_index.is_some(), "initialized").await;
                logged.map(|_| ()).map_err(|e| DbError::Fatal(e.to_string()))
            }
            Err(RaftError::APIError(InitializeError::NotAllowed(_))) => Err(DbError::AlreadyInitialized),
            Err(RaftError::APIError(InitializeError::NotInMembers(e))) => {
                Err(DbError::Membership(format!("node {} must be one of the initial members: {e}", e.node_id)))
            }
            Err(RaftError::Fatal(e)) => Err(DbError::Fatal(e.to_string())),
        }
    }

    /// Whether this node belongs to a cluster already: it has a raft log or a vote.
    pub fn is_initialized(&self) -> bool {
        let metrics = self.inner.raft.metrics();
        let m = metrics.borrow();
        self.inner.initialized_at_open || m.last_log_index.is_some() || m.vote != Vote::default()
    }

    /// Proposes `req` and waits until it is committed and applied on this node, which must
    /// be the leader.
    ///
    /// What each failure says about the request: `ForwardToLeader` — not applied (openraft
    /// answers it before proposing on a follower, or after truncating the proposed entry
    /// when another leader overwrote it); `CommitTimeout` — proposed, not committed in time:
    /// it may still be applied later (give the request an id and look it up or retry it);
    /// `Fatal` — this node's Raft stopped, possibly after proposing it.
    pub async fn write(&self, req: Request) -> Result<Response, WriteError> {
        let write = self.inner.raft.client_write(req);
        match tokio::time::timeout(self.write_timeout, write).await {
            Err(_) => Err(WriteError::CommitTimeout(self.write_timeout.as_millis())),
            Ok(Ok(resp)) => Ok(resp.data),
            Ok(Err(RaftError::APIError(ClientWriteError::ForwardToLeader(f)))) => Err(not_leader(f).into()),
            Ok(Err(RaftError::APIError(ClientWriteError::ChangeMembershipError(e)))) => {
                Err(WriteError::Fatal(format!("unexpected membership error on a write: {e}")))
            }
            Ok(Err(RaftError::Fatal(e))) => Err(WriteError::Fatal(e.to_string())),
        }
    }

    /// The latest applied state. Cheap: it shares the state, it does not copy it.
    pub fn state(&self) -> Arc<State> {
        self.inner.state.borrow().clone()
    }

    /// A receiver that changes on every apply batch (and snapshot install) on this node.
    /// `changed()` fails once the database has shut down.
    pub fn subscribe(&self) -> watch::Receiver<Arc<State>> {
        let mut rx = self.inner.state.clone();
        rx.mark_unchanged();
        rx
    }

    /// The current leader's id and peer address, as far as this node knows.
    pub fn leader(&self) -> Option<(u64, String)> {
        let metrics = self.inner.raft.metrics();
        let m = metrics.borrow();
        let id = m.current_leader?;
        let node = m.membership_config.membership().get_node(&id)?;
        Some((id, node.addr.clone()))
    }

    /// Adds node `id` (peer address `addr`, "host:port") as a learner and waits until it has
    /// caught up with the leader's log. Must be called on the leader.
    pub async fn add_learner(&self, id: u64, addr: String) -> Result<(), DbError> {
        let node = BasicNode { addr: addr.clone() };
        let add = self.inner.raft.add_learner(id, node, true);
        match tokio::time::timeout(MEMBERSHIP_TIMEOUT, add).await {
            Err(_) => Err(DbError::Membership(format!(
                "learner {id} at {addr} did not catch up within {} s; check that it runs and \
                 that the leader can reach it at that address (it stays a learner and keeps \
                 catching up)",
                MEMBERSHIP_TIMEOUT.as_secs()
            ))),
            Ok(res) => res.map(|_| ()).map_err(membership_error),
        }
    }

    /// Makes `voters` the set of voting members (each must already be a voter or a learner);
    /// nodes that are no longer voters leave the cluster. Must be called on the leader.
    pub async fn change_membership(&self, voters: BTreeSet<u64>) -> Result<(), DbError> {
        let change = self.inner.raft.change_membership(voters.clone(), false);
        match tokio::time::timeout(MEMBERSHIP_TIMEOUT, change).await {
            Err(_) => Err(DbError::NoQuorum(format!(
                "changing the voters to {voters:?} did not commit within {} s",
                MEMBERSHIP_TIMEOUT.as_secs()
            ))),
            Ok(res) => res.map(|_| ()).map_err(membership_error),
        }
    }

    /// Proves that this node is still the leader (a quorum answers its heartbeat) and waits
    /// until everything committed before the call is applied here. Bounded like `write`.
    pub async fn ensure_leader(&self) -> Result<(), WriteError> {
        let check = self.inner.raft.ensure_linearizable();
        match tokio::time::timeout(self.write_timeout, check).await {
            Err(_) => Err(WriteError::NoQuorum(format!(
                "no majority confirmed this node's leadership within {} ms",
                self.write_timeout.as_millis()
            ))),
            Ok(Ok(_)) => Ok(()),
            Ok(Err(RaftError::APIError(CheckIsLeaderError::ForwardToLeader(f)))) => Err(not_leader(f).into()),
            Ok(Err(RaftError::APIError(CheckIsLeaderError::QuorumNotEnough(e)))) => {
                Err(WriteError::NoQuorum(e.to_string()))
            }
            Ok(Err(RaftError::Fatal(e))) => Err(WriteError::Fatal(e.to_string())),
        }
    }

    /// Stops Raft on this node and waits until the database file is closed, so that it can
    /// be reopened (by this process or another). Other clones of this handle stop working.
    pub async fn shutdown(&self) {
        if let Err(e) = self.inner.raft.shutdown().await {
            tracing::warn!(error = %e, "raft did not stop cleanly");
        }
        let mut closed = self.inner.closed.clone();
        let wait_closed = async move { while closed.changed().await.is_ok() {} };
        if tokio::time::timeout(CLOSE_TIMEOUT, wait_closed).await.is_err() {
            tracing::warn!("the cluster database file is still open {} s after shutdown", CLOSE_TIMEOUT.as_secs());
            return;
        }
        tracing::info!(node_id = self.inner.node_id, "cluster database closed");
    }
}

fn membership_error(e: RaftError<u64, ClientWriteError<u64, BasicNode>>) -> DbError {
    match e {
        RaftError::APIError(ClientWriteError::ForwardToLeader(f)) => DbError::NotLeader(not_leader(f)),
        RaftError::APIError(ClientWriteError::ChangeMembershipError(e)) => match e {
            ChangeMembershipError::InProgress(e) => DbError::Membership(format!(
                "{e}; another membership change is still being committed, retry when it is done"
            )),
            ChangeMembershipError::EmptyMembership(e) => DbError::Membership(format!("{e}; keep at least one voter")),
            ChangeMembershipError::LearnerNotFound(e) => {
                DbError::Membership(format!("node {} is not a learner yet; add it with add_learner first", e.node_id))
            }
        },
        RaftError::Fatal(e) => DbError::Fatal(e.to_string()),
    }
}
