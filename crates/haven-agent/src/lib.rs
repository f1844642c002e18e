//! The Haven node daemon (`haven agent`): the I/O shell around the pure crates.
//!
//! One process per node wires together:
//! - the cluster database ([`haven_raft::ClusterDb`]) and its peer routes;
//! - the lease keeper ([`lease`]): renews this node's lease with the leader; without a valid
//!   lease the node runs nothing;
//! - the controller loop ([`control`]): on the leader only, feeds the state and the
//!   heartbeats it received to the pure `haven_controller::decide` and commits its commands;
//! - the local resource manager ([`lrm`]): starts, monitors and stops the resources that the
//!   committed state places on this node;
//! - the REST API ([`api`]) and the internal peer routes ([`peer`]), on one port
//!   ([`listener`]: TLS or plain HTTP by the first byte; peer traffic is mutual TLS with the
//!   node certificates of [`pki`]).
//!
//! This crate decides nothing about placement or failover itself; it executes.

mod api;
mod certs;
pub mod config;
pub mod control;
pub mod fence;
mod forward;
mod guard;
pub mod host;
pub mod lease;
mod listener;
pub mod lrm;
mod peer;
pub mod pki;
mod report;
mod requests;

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use haven_raft::{ClusterDb, RaftTuning, WriteError};
use haven_state::{Command, Reply, Request, StateError};

pub use api::limits;
pub use config::{AgentConfig, Timing};

/// Milliseconds since the Unix epoch (the time stamped on commands).
pub fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

/// Everything the agent's tasks share.
pub struct Agent {
    pub config: AgentConfig,
    pub timing: Timing,
    pub db: ClusterDb,
    /// Client for all peer traffic (`forward`: writes to the leader, heartbeats, joins, VM
    /// calls to the owner; Raft's RPCs): mutual TLS with this node's certificate.
    /// The client of peer traffic (mutual TLS); replaced when this node's certificate is.
    pub peers: haven_raft::network::PeerHttp,
    /// The cluster CA and this node's certificate, hot-swapped at init and join.
    pub pki: Arc<pki::Pki>,
    /// Whether plain HTTP may reach the public API (a loopback address, or `plain_http_api`).
    plain_api: bool,
    /// One join at a time on the leader (`peer::join`).
    join_lock: tokio::sync::Mutex<()>,
    pub lease: lease::LeaseKeeper,
    /// The node guard's link (see [`guard`]).
    pub(crate) node_guard: Arc<guard::GuardLink>,
    /// Leader side: when each node's last renewal arrived (ms), while this node led (in any
    /// term since the agent started), and the grant rule: a renewal lands either before a
    /// controller tick reads the heartbeats or after what it decided is committed, never in
    /// between (`lease::Grants`, the only way to them).
    grants: lease::Grants,
    pub drivers: haven_drivers::Drivers,
    reports: report::Reporter,
    /// Set once the agent begins to stop: API writes are refused from then on, and those in
    /// flight are cut short (see [`Agent::submit`]).
    stopping: tokio::sync::watch::Sender<bool>,
    /// The API's limits: failed authentication per address, the audit queue.
    guard: api::auth::Guard,
}

/// Why a write through the cluster failed, ready to become an API error.
#[derive(Debug, thiserror::Error)]
pub enum SubmitError {
    /// The state machine refused the command (that is its committed outcome).
    #[error(transparent)]
    Refused(#[from] StateError),
    /// Surely not applied: no leader took it.
    #[error("{0}")]
    NoQuorum(String),
    #[error("{0}")]
    Unavailable(String),
    /// Not applied: this agent is stopping and takes no new writes.
    #[error("{0}")]
    ShuttingDown(String),
    /// It may or may not have been applied (a commit timeout, a leader lost mid-write): look
    /// `request_id` up, or retry with it.
    #[error("{message}")]
    Unknown { request_id: String, message: String },
    /// Not applied: the leader refused the forwarded request before proposing it (e.g. a
    /// body too large for it, 413); answered with the leader's status and error.
    #[error("{message}")]
    Rejected { status: u16, code: String, message: String },
}

/// How long a write may keep trying to reach a leader.
const SUBMIT_DEADLINE: Duration = Duration::from_secs(8);

/// How long an API write in flight when the agent begins to stop may still finish.
const STOP_GRACE: Duration = Duration::from_millis(500);

/// How long the API server may finish its open requests once the agent stops.
const SERVER_STOP_TIMEOUT: Duration = Duration::from_secs(1);

/// What one attempt to commit a request through the leader came to.
enum Attempt {
    Done(Box<haven_state::Response>),
    /// Try again; `maybe_sent`: the request may have reached a leader this time.
    Again {
        reason: String,
        maybe_sent: bool,
    },
    Failed(SubmitError),
}

impl Agent {
    pub fn name(&self) -> &str {
        &self.config.name
    }

    /// Commits `command` through the leader (this node or a forwarded request) and returns
    /// the state machine's answer. Retries briefly while a leader is being elected.
    ///
    /// An API write carries its request id (the client's `Idempotency-Key` or one the agent
    /// made up, see [`requests`]), so that sending it again after a lost answer cannot apply
    /// it twice: the state machine answers a known id with its first outcome. When it may
    /// have reached a leader but no answer came back in time, the outcome is
    /// [`SubmitError::Unknown`].
    pub async fn submit(&self, by: &str, command: Command) -> Result<Reply, SubmitError> {
        let client = requests::current();
        // An API request's write is its caller's: the token's name is its author, and the
        // request's method, path and client address go into the history with its outcome.
        let caller = api::auth::current();
        let by = caller.as_ref().map_or(by, |c| c.name.as_str());
        // The agent's own writes (status reports, controller decisions) carry no id, as
        // before ids: they are frequent, and their outcomes would crowd the clients' out of
        // the bounded table. (A re-forwarded one can, rarely, be applied twice.)
        let mut req = Request::new(now_ms(), by, command);
        req.request_id = client.as_ref().map(|c| c.next_id());
        req.origin = caller.as_ref().map(|c| c.origin.clone());
        // API writes stop with the agent; the agent's own (e.g. the last status reports of
        // the resources it stops) go on until their task ends.
        let cut_short = client.is_some();
        if cut_short && self.is_stopping() {
            return Err(SubmitError::ShuttingDown(self.shutting_down_message()));
        }
        let mut stopping = self.stopping.subscribe();
        let deadline = tokio::time::Instant::now() + SUBMIT_DEADLINE;
        let mut maybe_sent = false;
        loop {
            let attempt = self.attempt(&req);
            let outcome = if cut_short {
                let stop = async {
                    let _ = stopping.wait_for(|s| *s).await;
                    tokio::time::sleep(STOP_GRACE).await;
                };
                tokio::select! {
                    a = attempt => a,
                    _ = stop => return Err(unknown(&req, &format!("node {:?} stopped while the write was on its way to the leader", self.name()))),
                }
            } else {
                attempt.await
            };
            let reason = match outcome {
                Attempt::Done(resp) => {
                    if let Some(c) = &caller {
                        c.committed();
                    }
                    return (*resp).map_err(SubmitError::Refused);
                }
                Attempt::Failed(e) => return Err(e),
                Attempt::Again { reason, maybe_sent: sent } => {
                    maybe_sent |= sent;
                    reason
                }
            };
            if tokio::time::Instant::now() >= deadline || (cut_short && self.is_stopping()) {
                return Err(match (maybe_sent, cut_short && self.is_stopping()) {
                    (true, _) => {
                        unknown(&req, &format!("no leader answered within {} s ({reason})", SUBMIT_DEADLINE.as_secs()))
                    }
                    (false, true) => SubmitError::ShuttingDown(self.shutting_down_message()),
                    (false, false) => SubmitError::NoQuorum(no_quorum_message(&reason)),
                });
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// One try: commit `req` here if this node leads, else forward it to the leader.
    async fn attempt(&self, req: &Request) -> Attempt {
        let (addr, leader_id) = match self.db.write(req.clone()).await {
            Ok(resp) => return Attempt::Done(Box::new(resp)),
            Err(WriteError::ForwardToLeader { leader_addr: Some(addr), leader_id })
                if leader_id != Some(self.db.node_id()) =>
            {
                (addr, leader_id)
            }
            // Not proposed (or proposed and then overwritten by another leader's log).
            Err(e @ WriteError::ForwardToLeader { .. }) => {
                return Attempt::Again { reason: e.to_string(), maybe_sent: false };
            }
            Err(e @ WriteError::NoQuorum(_)) => {
                return Attempt::Again { reason: e.to_string(), maybe_sent: false };
            }
            Err(e @ WriteError::CommitTimeout(_)) => {
                return Attempt::Failed(unknown(req, &e.to_string()));
            }
            // Raft stopped here, before or after taking the request: it cannot tell which.
            Err(e @ WriteError::Fatal(_)) => return Attempt::Failed(unknown(req, &e.to_string())),
        };
        if self.pki.identity().is_none() {
            // Mid-join: no certificate yet to reach the leader with.
            let reason = "this node has no certificate yet (its join is in progress)".to_string();
            return Attempt::Again { reason, maybe_sent: false };
        }
        match peer::forward_write(&self.peers.get(), &addr, req).await {
            Ok(resp) => Attempt::Done(Box::new(resp)),
            Err(peer::ForwardError::NotSent(m)) => Attempt::Again { reason: m, maybe_sent: false },
            Err(peer::ForwardError::MaybeSent(m)) => Attempt::Again { reason: m, maybe_sent: true },
            Err(peer::ForwardError::Rejected(e)) => Attempt::Failed(e),
            Err(peer::ForwardError::Unknown(m)) => {
                let detail = format!("the leader (node {}) said: {m}", leader_id.unwrap_or_default());
                Attempt::Failed(unknown(req, &detail))
            }
        }
    }

    /// Whether the agent has begun to stop.
    pub fn is_stopping(&self) -> bool {
        *self.stopping.borrow()
    }

    /// Why a write is refused while the agent stops, naming a node to send it to instead.
    pub fn shutting_down_message(&self) -> String {
        let state = self.db.state();
        let leader =
            self.db.leader().filter(|(id, _)| *id != self.config.id).map(|(id, addr)| {
                (state.node_by_id(id).map(|n| n.name.clone()).unwrap_or_else(|| format!("{id}")), addr)
            });
        let other = leader.or_else(|| {
            state
                .nodes
                .values()
                .find(|n| n.name != self.config.name && n.is_up())
                .map(|n| (n.name.clone(), n.address.clone()))
        });
        let instead = match other {
            Some((name, addr)) => format!("send it to node {name:?} at {addr} instead (e.g. `--server {addr}`)"),
            None => "send it to another node of the cluster".to_string(),
        };
        format!(
            "node {:?} is shutting down and takes no new writes, so this one was not applied; {instead}",
            self.name()
        )
    }

    pub fn applied_index(&self) -> u64 {
        self.db.raft().metrics().borrow().last_applied.map(|l| l.index).unwrap_or(0)
    }

    pub fn is_leader(&self) -> bool {
        let m = self.db.raft().metrics().borrow().clone();
        m.current_leader == Some(self.db.node_id()) && m.state.is_leader()
    }

    /// Sends a status report of the local resource manager (`ReportResource`,
    /// `ReleaseGroup`) to the cluster, in the background and in order.
    pub fn send_report(&self, report: Command) {
        self.reports.send(report);
    }
}

/// `req`'s outcome is unknown because of `detail`: the error says how to find it out.
fn unknown(req: &Request, detail: &str) -> SubmitError {
    requests::outcome_unknown(req.request_id.as_deref(), detail)
}

fn no_quorum_message(detail: &str) -> String {
    format!(
        "the cluster has no quorum, so it refuses changes ({detail}); more than half of the voting nodes must be up and reachable"
    )
}

/// Why the agent could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Config(#[from] config::ConfigError),
    #[error("cannot create state_dir {dir}: {source}; check that the agent may write there (it runs as root)")]
    StateDir { dir: String, source: std::io::Error },
    #[error(
        "cannot open the cluster database: {0}; check the state_dir (another agent using the same one holds it locked)"
    )]
    Database(String),
    #[error("cannot listen on {addr}: {source}; is another agent using that address?")]
    Listen { addr: String, source: std::io::Error },
    #[error("cannot build the HTTP client: {0}")]
    HttpClient(#[from] reqwest::Error),
    #[error(transparent)]
    Pki(#[from] pki::PkiError),
}

/// Runs the agent until `shutdown` resolves, then stops local resources and exits.
pub async fn run(config: AgentConfig, shutdown: impl Future<Output = ()>) -> Result<(), StartError> {
    let timing = config.timing()?;
    std::fs::create_dir_all(&config.state_dir)
        .map_err(|source| StartError::StateDir { dir: config.state_dir.display().to_string(), source })?;
    let tuning = RaftTuning {
        heartbeat_ms: timing.raft_heartbeat.as_millis() as u64,
        election_min_ms: timing.election_min.as_millis() as u64,
        election_max_ms: timing.election_max.as_millis() as u64,
        ..RaftTuning::default()
    };
    // Refuses to start with a key file others can read (the error names it and the fix).
    let pki = Arc::new(pki::Pki::open(&config.state_dir.join("pki"))?);
    // Peer traffic goes straight to the peer (never through an `HTTP_PROXY` the node may
    // have set for other programs), over mutual TLS.
    let peers = haven_raft::network::PeerHttp::new(pki.peer_client()?);
    let network = haven_raft::network::HttpNetworkFactory::with_client(config.id, peers.clone(), "https");
    let db = ClusterDb::open_with_network(&config.state_dir.join("raft"), config.id, tuning, network)
        .await
        .map_err(|e| StartError::Database(e.to_string()))?
        .with_write_timeout(timing.lease);
    {
        // Every handshake consults the replicated state: a removed node's serial is refused.
        let db = db.clone();
        pki.set_revocation_check(move |serial| haven_state::pki::is_revoked(&db.state(), serial));
    }
    let listener = tokio::net::TcpListener::bind(&config.listen)
        .await
        .map_err(|source| StartError::Listen { addr: config.listen.clone(), source })?;
    let plain_api = listener::plain_api_allowed(&config.listen, config.plain_http_api);
    if plain_api {
        tracing::warn!(
            listen = %config.listen,
            "the API also answers plain HTTP here (a loopback address, or plain_http_api = true): anyone who can \
             reach this address can read it unencrypted; peer traffic is mutual TLS regardless"
        );
    }

    let (reports, report_rx) = report::Reporter::new();
    // A witness runs no resources: it needs no guard.
    let node_guard = Arc::new(guard::GuardLink::new(!config.witness));
    let agent = Arc::new(Agent {
        lease: lease::LeaseKeeper::new(timing, node_guard.clone()),
        node_guard,
        config,
        timing,
        db,
        peers,
        pki: pki.clone(),
        plain_api,
        join_lock: tokio::sync::Mutex::new(()),
        grants: lease::Grants::default(),
        drivers: haven_drivers::Drivers::new(),
        reports,
        stopping: tokio::sync::watch::channel(false).0,
        guard: api::auth::Guard::default(),
    });
    tracing::info!(node = %agent.config.name, id = agent.config.id, listen = %agent.config.listen, "agent starting");

    let router = api::app(agent.clone());
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);

    let tasks = vec![
        tokio::spawn(report::run(agent.clone(), report_rx)),
        tokio::spawn(lease::run(agent.clone(), stop_rx.clone())),
        tokio::spawn(control::run(agent.clone(), stop_rx.clone())),
        tokio::spawn(api::auth::audit_writer(agent.clone())),
        tokio::spawn(api::auth::first_token_for_an_upgraded_cluster(agent.clone())),
        tokio::spawn(certs::run(agent.clone(), stop_rx.clone())),
        tokio::spawn(guard::supervise(agent.clone(), stop_rx.clone())),
    ];
    // A witness votes and renews its lease but never runs resources.
    // Probe KVM in the background so the first VM start does not pay for it.
    let mut kvm_probe = None;
    if host::in_path("qemu-system-x86_64") && !agent.config.witness {
        let a = agent.clone();
        kvm_probe = Some(tokio::spawn(async move {
            let scratch = a.config.state_dir.join("run");
            let _ = std::fs::create_dir_all(&scratch);
            let verdict = a.drivers.vm().probe_accelerator(&scratch).await;
            tracing::info!(%verdict, "VM accelerator for accel = \"auto\"");
        }));
    }
    let lrm = if agent.config.witness {
        tokio::spawn(async {})
    } else {
        tokio::spawn(lrm::run(agent.clone(), stop_rx.clone()))
    };

    let (server_stop_tx, server_stop) = tokio::sync::watch::channel(false);
    let server = tokio::spawn(listener::serve(listener, router, pki, server_stop));

    shutdown.await;
    tracing::info!("shutting down: refusing new writes, stopping local resources");
    // First of all: new API writes are refused, and those in flight end within STOP_GRACE.
    agent.stopping.send_replace(true);
    let _ = stop_tx.send(true);
    // The resource manager stops everything this node runs before the agent goes away, so
    // that nobody else starts a second copy while ours still runs.
    let _ = lrm.await;
    // A probe still running has a QEMU process of ours: cancel it rather than wait for it
    // (up to seconds); dropping the probe kills its QEMU (`kill_on_drop`), nothing is left.
    if let Some(p) = kvm_probe {
        p.abort();
        let _ = p.await;
    }
    for t in tasks {
        t.abort();
    }
    let _ = server_stop_tx.send(true);
    // In-flight API writes end within STOP_GRACE; anything else still open (a console, a
    // peer's request to a leader that is going away) must not hold the stop up.
    let mut server = server;
    if tokio::time::timeout(SERVER_STOP_TIMEOUT, &mut server).await.is_err() {
        tracing::warn!("requests still open {} ms after shutdown; closing them", SERVER_STOP_TIMEOUT.as_millis());
        server.abort();
    }
    agent.db.shutdown().await;
    tracing::info!("agent stopped");
    Ok(())
}
