//! Internal routes between agents (`/internal/*`): forwarded writes, lease renewals and
//! joins, plus the client side of each. Raft's own RPCs are served by `haven_raft::router`.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::State as AxState;
use axum::routing::post;
use axum::{Json, Router};
use haven_api::{Heartbeat, HeartbeatReply, PeerJoin};
use haven_model::{Node, NodeLiveness, NodeRole};
use haven_raft::WriteError;
use haven_state::{Command, Request, Response};

use crate::api::{ApiError, Body};
use crate::forward::{Failure, Forward, Wait};
use crate::{Agent, SubmitError};

/// Largest forwarded write (`/internal/write`): one command as the leader would commit it,
/// within the 512 KiB an entry may have in an AppendEntries batch (`haven_raft::network::APPEND_LIMIT`).
const FORWARD_LIMIT: usize = 512 * 1024;

/// Most voters a cluster has; later nodes join as learners.
const MAX_VOTERS: usize = 5;

pub(crate) fn router(agent: Arc<Agent>) -> Router {
    Router::new()
        .route("/internal/write", post(write))
        .route("/internal/heartbeat", post(heartbeat))
        .route("/internal/join", post(join))
        .with_state(agent)
}

/// Commits a request forwarded by another node; this node must be the leader. A commit
/// timeout is answered 504 (outcome unknown), never as a refusal.
async fn write(
    AxState(agent): AxState<Arc<Agent>>,
    Body(req): Body<Request, FORWARD_LIMIT>,
) -> Result<Json<Response>, ApiError> {
    match agent.db.write(req.clone()).await {
        Ok(resp) => Ok(Json(resp)),
        Err(e @ WriteError::ForwardToLeader { .. }) => Err(ApiError::new(421, "not_leader", e.to_string())),
        Err(WriteError::NoQuorum(m)) => Err(SubmitError::NoQuorum(m).into()),
        Err(e @ WriteError::CommitTimeout(_)) => {
            let request_id = req.request_id.unwrap_or_default();
            Err(SubmitError::Unknown { request_id, message: e.to_string() }.into())
        }
        Err(WriteError::Fatal(m)) => Err(SubmitError::Unavailable(m).into()),
    }
}

async fn heartbeat(
    AxState(agent): AxState<Arc<Agent>>,
    Body(hb): Body<Heartbeat>,
) -> Result<Json<HeartbeatReply>, ApiError> {
    match crate::lease::grant(&agent, &hb).await {
        Ok(r) => Ok(Json(r)),
        Err(e) => Err(ApiError::new(503, "not_leader", e.to_string())),
    }
}

/// Why a forwarded write got no answer from the state machine, by what it says about the
/// request.
pub(crate) enum ForwardError {
    /// Surely not applied, and worth another try: nothing reached the leader, or it answered
    /// that it is not one.
    NotSent(String),
    /// It may have been applied: the exchange broke after the request was sent.
    MaybeSent(String),
    /// The leader proposed it and could not commit it in time (its 504).
    Unknown(String),
    /// Not applied, and not worth another try: the leader refused the request before
    /// proposing it (a 4xx such as 413, the body too large for it). The answer as it is.
    Rejected(SubmitError),
}

/// Sends `req` to the leader at `addr` to commit (`/internal/write`).
pub(crate) async fn forward_write(http: &reqwest::Client, addr: &str, req: &Request) -> Result<Response, ForwardError> {
    let leader = Forward::new(http, "the leader", addr, Wait::Commit);
    // Committed: a retry with the same id reads the same outcome back.
    leader.post("/internal/write", req).await.map_err(|f| match f {
        Failure::NotSent(m) => ForwardError::NotSent(m),
        Failure::MaybeSent { message, .. } => ForwardError::MaybeSent(message),
        Failure::Answered(e) => match e.status {
            504 => ForwardError::Unknown(e.message),
            421 => ForwardError::NotSent(e.message),
            400..=499 => {
                ForwardError::Rejected(SubmitError::Rejected { status: e.status, code: e.code, message: e.message })
            }
            // 503 (no quorum, its database stopped) or a 502 from something else there.
            _ => ForwardError::MaybeSent(e.message),
        },
    })
}

/// Renews this node's lease with the leader at `addr`; `None` without a granted renewal.
pub async fn send_heartbeat(
    http: &reqwest::Client,
    addr: &str,
    hb: &Heartbeat,
    timeout: Duration,
) -> Option<HeartbeatReply> {
    Forward::new(http, "the leader", addr, Wait::Renewal(timeout)).post("/internal/heartbeat", hb).await.ok()
}

/// A node asks to join: only the leader admits it (as a learner that has caught up, then a
/// voter while there are fewer than five), then records it in the cluster state.
async fn join(AxState(agent): AxState<Arc<Agent>>, Body(j): Body<PeerJoin>) -> Result<Json<Node>, ApiError> {
    let state = agent.db.state();
    let Some(cluster) = &state.cluster else {
        return Err(ApiError::new(409, "not_initialized", "this node is not in an initialized cluster"));
    };
    if !agent.is_leader() {
        let Some((_, addr)) = agent.db.leader() else {
            return Err(ApiError::new(503, "unavailable", "no leader is elected right now; retry in a moment"));
        };
        return forward_join(&agent.peers, "the leader", &addr, &j).await.map(Json);
    }
    if j.token != cluster.join_token {
        return Err(ApiError::new(
            403,
            "bad_token",
            "the join token is wrong; get the right one with `haven cluster token` on a member",
        ));
    }
    haven_model::validate_name("name", &j.name).map_err(|e| ApiError::from(SubmitError::Refused(e.into())))?;
    if let Some(existing) = state.nodes.get(&j.name) {
        if existing.id == j.id {
            // The same node asking again (e.g. its first attempt timed out): fine.
            return Ok(Json(existing.clone()));
        }
        return Err(SubmitError::Refused(haven_state::StateError::exists("node", &j.name)).into());
    }
    if let Some(other) = state.node_by_id(j.id) {
        return Err(ApiError::new(
            409,
            "conflict",
            format!(
                "node id {} is already used by node {:?}; give the new node another id in its config",
                j.id, other.name
            ),
        ));
    }
    agent
        .db
        .add_learner(j.id, j.address.clone())
        .await
        .map_err(|e| ApiError::new(503, "unavailable", e.to_string()))?;
    let voters: BTreeSet<u64> = {
        let m = agent.db.raft().metrics().borrow().clone();
        m.membership_config.membership().voter_ids().collect()
    };
    let role = if j.witness || voters.len() < MAX_VOTERS {
        let mut v = voters.clone();
        v.insert(j.id);
        agent.db.change_membership(v).await.map_err(|e| ApiError::new(503, "unavailable", e.to_string()))?;
        if j.witness { NodeRole::Witness } else { NodeRole::Voter }
    } else {
        NodeRole::Learner
    };
    let node = Node {
        id: j.id,
        name: j.name.clone(),
        address: j.address.clone(),
        role,
        liveness: NodeLiveness::Up,
        paused: false,
        capacity: j.capacity,
        since: crate::now_ms(),
    };
    match agent.submit("operator", Command::AddNode { node: node.clone() }).await {
        Ok(_) => Ok(Json(node)),
        Err(e) => Err(e.into()),
    }
}

/// Asks the member at `addr` (named `to` in errors) to admit `j`; a member forwards it to
/// the leader.
pub(crate) async fn forward_join(http: &reqwest::Client, to: &str, addr: &str, j: &PeerJoin) -> Result<Node, ApiError> {
    Forward::new(http, to, addr, Wait::Long).post("/internal/join", j).await.map_err(Failure::into_api_error)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use haven_model::GroupSpec;
    use haven_state::{Command, Request};

    use super::{ForwardError, forward_write};
    use crate::{AgentConfig, SubmitError};

    /// A real agent (not in a cluster) on a loopback port: its `/internal/write` refuses a
    /// write, as a leader would refuse one, by the route's own rules.
    #[tokio::test]
    async fn a_forwarded_write_too_large_for_the_leader_is_refused_at_once_and_a_not_leader_is_retried() {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let port = std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).expect("a free port").port();
        let addr = format!("127.0.0.1:{port}");
        let config = AgentConfig {
            id: 1,
            name: "n1".into(),
            listen: addr.clone(),
            advertise: None,
            state_dir: dir.path().to_path_buf(),
            timing: Default::default(),
            capacity: None,
            witness: true,
        };
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let agent = tokio::spawn(crate::run(config, async move {
            let _ = stopped.await;
        }));
        let http = reqwest::Client::new();
        let small = Request::new(1, "operator", Command::CreateGroup { spec: GroupSpec::new("g".to_string()) });
        let mut big = small.clone();
        big.by = "x".repeat(super::FORWARD_LIMIT + 1);

        // Not the leader (421): worth another try. Polled until the agent listens.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        loop {
            match forward_write(&http, &addr, &small).await {
                Err(ForwardError::NotSent(m)) if m.starts_with("cannot reach") => {}
                Err(ForwardError::NotSent(m)) => {
                    assert!(m.contains("leader"), "{m}");
                    break;
                }
                Err(e) => panic!("a write to a node that is not the leader: {}", describe(&e)),
                Ok(r) => panic!("a node outside any cluster committed a write: {r:?}"),
            }
            assert!(tokio::time::Instant::now() < deadline, "the agent at {addr} never listened");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        // Too large (413): the answer, not retried until a deadline.
        let started = tokio::time::Instant::now();
        match forward_write(&http, &addr, &big).await {
            Err(ForwardError::Rejected(SubmitError::Rejected { status, code, message })) => {
                assert_eq!((status, code.as_str()), (413, "too_large"), "{message}");
            }
            Err(e) => panic!("an oversized forwarded write: {}", describe(&e)),
            Ok(r) => panic!("an oversized forwarded write was committed: {r:?}"),
        }
        assert!(started.elapsed() < Duration::from_secs(5), "took {:?}", started.elapsed());
        let _ = stop.send(());
        let _ = tokio::time::timeout(Duration::from_secs(20), agent).await;
    }

    fn describe(e: &ForwardError) -> String {
        match e {
            ForwardError::NotSent(m) => format!("not sent: {m}"),
            ForwardError::MaybeSent(m) => format!("maybe sent: {m}"),
            ForwardError::Unknown(m) => format!("unknown: {m}"),
            ForwardError::Rejected(e) => format!("rejected: {e}"),
        }
    }
}
