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
//! - the REST API ([`api`]) and the internal peer routes ([`peer`]).
//!
//! This crate decides nothing about placement or failover itself; it executes.

pub mod api;
pub mod config;
pub mod control;
pub mod fence;
pub mod host;
pub mod lease;
pub mod lrm;
pub mod make_ha;
pub mod peer;
mod report;
pub mod vm_api;

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use haven_raft::{ClusterDb, RaftTuning, WriteError};
use haven_state::{Command, Reply, Request, StateError};

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
    /// Client for peer traffic (forwarded writes, heartbeats, joins).
    pub peers: reqwest::Client,
    pub lease: lease::LeaseKeeper,
    /// Leader side: when each node's last heartbeat arrived (ms), while this node led (in any
    /// term since the agent started: each is a renewal this node received itself).
    pub heartbeats: Mutex<BTreeMap<String, u64>>,
    /// Held by the controller from reading the heartbeats until its decisions are committed,
    /// and by every lease grant: a renewal lands either before a tick looks or after what
    /// the tick decided is committed, never in between (see `lease::grant`).
    pub control_lock: tokio::sync::Mutex<()>,
    pub drivers: haven_drivers::Drivers,
    reports: report::Reporter,
}

/// Why a write through the cluster failed, ready to become an API error.
#[derive(Debug, thiserror::Error)]
pub enum SubmitError {
    #[error(transparent)]
    Refused(#[from] StateError),
    #[error("{0}")]
    NoQuorum(String),
    #[error("{0}")]
    Unavailable(String),
}

impl Agent {
    pub fn name(&self) -> &str {
        &self.config.name
    }

    /// Commits `command` through the leader (this node or a forwarded request) and returns
    /// the state machine's answer. Retries briefly while a leader is being elected.
    pub async fn submit(&self, by: &str, command: Command) -> Result<Reply, SubmitError> {
        let req = Request::new(now_ms(), by, command);
        let deadline = tokio::time::Instant::now() + Duration::from_secs(8);
        let mut last_error;
        loop {
            match self.db.write(req.clone()).await {
                Ok(resp) => return resp.map_err(SubmitError::Refused),
                Err(WriteError::NoQuorum(m)) => return Err(SubmitError::NoQuorum(no_quorum_message(&m))),
                Err(WriteError::Fatal(m)) => return Err(SubmitError::Unavailable(m)),
                Err(WriteError::ForwardToLeader { leader_addr: Some(addr), leader_id })
                    if leader_id != Some(self.db.node_id()) =>
                {
                    match peer::forward_write(&self.peers, &addr, &req).await {
                        Ok(resp) => return resp.map_err(SubmitError::Refused),
                        Err(peer::ForwardError::NoQuorum(m)) => return Err(SubmitError::NoQuorum(m)),
                        Err(peer::ForwardError::Retry(m)) => last_error = m,
                    }
                }
                Err(e) => last_error = e.to_string(),
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(SubmitError::NoQuorum(no_quorum_message(&last_error)));
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Whether this node may run resources now: it holds a lease and has applied the state
    /// the leader had when it granted it.
    pub fn may_run(&self) -> bool {
        self.lease.may_run(self.applied_index())
    }

    pub fn applied_index(&self) -> u64 {
        self.db.raft().metrics().borrow().last_applied.map(|l| l.index).unwrap_or(0)
    }

    pub fn is_leader(&self) -> bool {
        let m = self.db.raft().metrics().borrow().clone();
        m.current_leader == Some(self.db.node_id()) && m.state.is_leader()
    }

    /// Records what a local resource is doing, in the background and in order.
    pub fn report(&self, resource: &str, state: haven_model::ResourceState, reason: Option<String>, failure: bool) {
        self.reports.send(Command::ReportResource {
            node: self.config.name.clone(),
            resource: resource.to_string(),
            state,
            reason,
            failure,
        });
    }

    /// Tells the cluster, after this node's status reports so far, that it stopped every
    /// resource of `group`, which it was asked to hand off at placement `generation`.
    pub fn release(&self, group: &str, generation: u64) {
        self.reports.send(Command::ReleaseGroup {
            node: self.config.name.clone(),
            group: group.to_string(),
            generation,
        });
    }
}

fn no_quorum_message(detail: &str) -> String {
    format!(
        "the cluster has no quorum, so it refuses changes ({detail}); more than half of the voting nodes must be up and reachable"
    )
}

/// Runs the agent until `shutdown` resolves, then stops local resources and exits.
pub async fn run(config: AgentConfig, shutdown: impl Future<Output = ()>) -> Result<(), String> {
    let timing = config.timing()?;
    std::fs::create_dir_all(&config.state_dir)
        .map_err(|e| format!("cannot create state_dir {}: {e}", config.state_dir.display()))?;
    let tuning = RaftTuning {
        heartbeat_ms: timing.raft_heartbeat.as_millis() as u64,
        election_min_ms: timing.election_min.as_millis() as u64,
        election_max_ms: timing.election_max.as_millis() as u64,
        ..RaftTuning::default()
    };
    let db = ClusterDb::open(&config.state_dir.join("raft"), config.id, tuning)
        .await
        .map_err(|e| format!("cannot open the cluster database: {e}"))?
        .with_write_timeout(timing.lease);
    let listener = tokio::net::TcpListener::bind(&config.listen)
        .await
        .map_err(|e| format!("cannot listen on {}: {e}; is another agent using that address?", config.listen))?;
    let peers = reqwest::Client::builder()
        .connect_timeout(Duration::from_millis(500))
        .timeout(Duration::from_secs(70))
        .build()
        .map_err(|e| format!("cannot build the HTTP client: {e}"))?;

    let (reports, report_rx) = report::Reporter::new();
    let agent = Arc::new(Agent {
        lease: lease::LeaseKeeper::new(timing),
        config,
        timing,
        db,
        peers,
        heartbeats: Mutex::new(BTreeMap::new()),
        control_lock: tokio::sync::Mutex::new(()),
        drivers: haven_drivers::Drivers::new(),
        reports,
    });
    tracing::info!(node = %agent.config.name, id = agent.config.id, listen = %agent.config.listen, "agent starting");

    let router = api::app(agent.clone());
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);

    let tasks = vec![
        tokio::spawn(report::run(agent.clone(), report_rx)),
        tokio::spawn(lease::run(agent.clone(), stop_rx.clone())),
        tokio::spawn(control::run(agent.clone(), stop_rx.clone())),
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

    let (server_stop_tx, mut server_stop) = tokio::sync::watch::channel(false);
    let server = tokio::spawn(async move {
        let serve = axum::serve(listener, router).with_graceful_shutdown(async move {
            let _ = server_stop.wait_for(|s| *s).await;
        });
        if let Err(e) = serve.await {
            tracing::error!(error = %e, "API server failed");
        }
    });

    shutdown.await;
    tracing::info!("shutting down: stopping local resources");
    let _ = stop_tx.send(true);
    // The resource manager stops everything this node runs before the agent goes away, so
    // that nobody else starts a second copy while ours still runs.
    let _ = lrm.await;
    // A probe still running has a QEMU process of ours: let it end (the probe gives up after
    // a few seconds and reaps it) rather than leave it behind.
    if let Some(p) = kvm_probe {
        let _ = tokio::time::timeout(std::time::Duration::from_secs(10), p).await;
    }
    for t in tasks {
        t.abort();
    }
    let _ = server_stop_tx.send(true);
    let _ = server.await;
    agent.db.shutdown().await;
    tracing::info!("agent stopped");
    Ok(())
}
