//! Raft peer RPCs as JSON over HTTP (mutual TLS in the agent).
//!
//! Client side: [`HttpNetworkFactory`] hands openraft one [`HttpConnection`] per peer; all of
//! them share one `reqwest::Client` (one connection pool). The agent passes its peer client
//! (`haven_agent::pki`: its node certificate as identity, only the cluster CA trusted) and
//! `https` ([`HttpNetworkFactory::with_client`]); plain HTTP is for this crate's tests. Server side: [`router`] serves
//! `POST /internal/raft/{append,vote,snapshot}` and `GET /internal/raft/leader-contact` so the
//! agent can merge it into its own router (and put its peer authentication in front of it).
//!
//! Every response body is a JSON `Result<_, _>`: `Ok` with openraft's reply or `Err` with the
//! error the remote Raft returned. Transport failures map to openraft's `Unreachable` (peer
//! down, connection refused, or an HTTP error status such as 404 from a peer that does not
//! serve these routes: openraft backs off), `Timeout`, or `Network` (retry soon).

use std::io::Cursor;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{FromRequest, FromRequestParts, Query, Request, State as AxumState};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Extension, Json, Router};
use openraft::error::{
    Fatal, InstallSnapshotError, NetworkError, RPCError, RaftError, RemoteError, ReplicationClosed, StreamingError,
    Timeout, Unreachable,
};
use openraft::network::RPCOption;
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse, SnapshotResponse,
    VoteRequest, VoteResponse,
};
use openraft::{BasicNode, OptionalSend, RPCTypes, RaftNetwork, RaftNetworkFactory, Snapshot, SnapshotMeta, Vote};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::contact::{ContactReply, LeaderContact};
use crate::{ClusterDb, Raft, TypeConfig};

/// Path of the AppendEntries RPC (also the heartbeat).
pub const APPEND_PATH: &str = "/internal/raft/append";
/// Path of the RequestVote RPC.
pub const VOTE_PATH: &str = "/internal/raft/vote";
/// Path of the full-snapshot transfer.
pub const SNAPSHOT_PATH: &str = "/internal/raft/snapshot";
/// Path of the leader-contact query a new leader sends (see [`crate::contact`]).
pub const CONTACT_PATH: &str = "/internal/raft/leader-contact";

/// Most log entries one AppendEntries carries (openraft's `max_payload_entries`; its
/// default, 300, would let a batch of large entries exceed [`APPEND_LIMIT`]).
pub const MAX_PAYLOAD_ENTRIES: u64 = 64;

/// Largest AppendEntries body accepted: [`MAX_PAYLOAD_ENTRIES`] entries of up to 512 KiB of
/// JSON each. An entry is one command: an API write (its body is at most 64 KiB, so its
/// command a little more) or a command of the agents (a wizard report, a status change),
/// typically well under 4 KiB. So a batch is normally under 1 MiB; 32 MiB is the margin.
pub const APPEND_LIMIT: usize = 32 * 1024 * 1024;

/// Largest snapshot body accepted. Snapshots are sent whole, in one request, as the JSON of
/// the cluster state: nodes, groups, resources and the last 2,000 events. A cluster of
/// a hundred groups of five resources is about 1 MiB; 64 MiB leaves a margin of 60 times.
/// A leader whose snapshot would be larger says so in its log (see `full_snapshot`).
pub const SNAPSHOT_LIMIT: usize = 64 * 1024 * 1024;

/// How long a snapshot body may take to arrive once its turn came (the sender's own
/// install timeout is 10 s).
const SNAPSHOT_READ_TIMEOUT: Duration = Duration::from_secs(20);

/// Largest body of the small RPCs (RequestVote): a vote and a log id.
pub const VOTE_LIMIT: usize = 64 * 1024;

/// Body of `POST /internal/raft/snapshot`: a whole snapshot in one request.
#[derive(Debug, Serialize, Deserialize)]
pub struct SnapshotTransfer {
    pub vote: Vote<u64>,
    pub meta: SnapshotMeta<u64, BasicNode>,
    /// The snapshot data, which is the JSON of `haven_state::State`.
    pub data: String,
}

/// The HTTP client of peer traffic, replaceable while it is in use: when a node's
/// certificate is renewed, the connections made with the old one (which the peers refuse
/// once it is revoked) must go, and a new client is a new connection pool. Every request
/// takes the current client ([`PeerHttp::get`]); clones share the slot.
#[derive(Clone)]
pub struct PeerHttp(Arc<std::sync::RwLock<reqwest::Client>>);

impl PeerHttp {
    pub fn new(client: reqwest::Client) -> PeerHttp {
        PeerHttp(Arc::new(std::sync::RwLock::new(client)))
    }

    /// The current client (a cheap handle on its pool).
    pub fn get(&self) -> reqwest::Client {
        self.0.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// From now on requests use `client`; the old pool closes once its last request ends.
    pub fn replace(&self, client: reqwest::Client) {
        *self.0.write().unwrap_or_else(|e| e.into_inner()) = client;
    }
}

impl std::fmt::Debug for PeerHttp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("PeerHttp")
    }
}

/// Opens connections to peers. Clones share the HTTP client.
#[derive(Clone)]
pub struct HttpNetworkFactory {
    node_id: u64,
    client: PeerHttp,
    scheme: &'static str,
}

impl HttpNetworkFactory {
    /// Plain HTTP to peers. `node_id` is this node's id, used in error reports.
    pub fn new(node_id: u64) -> Result<HttpNetworkFactory, reqwest::Error> {
        // Peer traffic goes straight to the peer, never through an `HTTP_PROXY` the node
        // may have set for other programs.
        // reqwest's TLS needs a process-wide rustls provider (ring; see the workspace's Cargo.toml).
        let _ = rustls::crypto::ring::default_provider().install_default();
        let client = reqwest::Client::builder().no_proxy().build()?;
        Ok(HttpNetworkFactory::with_client(node_id, PeerHttp::new(client), "http"))
    }

    /// Peers reached with `client` at `{scheme}://{addr}`, e.g. a client configured for mTLS
    /// with scheme `"https"`.
    pub fn with_client(node_id: u64, client: PeerHttp, scheme: &'static str) -> HttpNetworkFactory {
        HttpNetworkFactory { node_id, client, scheme }
    }
}

/// Why a peer gave no leader-contact answer. A new leader asks again until its deadline,
/// then counts every earlier lease from its own notes only (see [`crate::contact`]).
#[derive(Debug, thiserror::Error)]
pub enum ContactError {
    #[error("{url} did not answer ({source}); check that the peer's agent runs and that this node can reach it")]
    Request {
        url: String,
        #[source]
        source: reqwest::Error,
    },
    #[error("{url} answered HTTP {status}; check that the peer at that address is a Haven agent of the same version")]
    Status { url: String, status: reqwest::StatusCode },
    #[error("{url} answered with a body that is not a leader-contact reply ({source}); check the peer's version")]
    Decode {
        url: String,
        #[source]
        source: reqwest::Error,
    },
}

impl HttpNetworkFactory {
    /// Asks the peer at `addr` for its last contact with a leader of a term below `term`.
    pub async fn leader_contact(&self, addr: &str, term: u64, timeout: Duration) -> Result<ContactReply, ContactError> {
        let url = format!("{}://{addr}{CONTACT_PATH}?term={term}", self.scheme);
        let response = match self.client.get().get(&url).timeout(timeout).send().await {
            Ok(r) => r,
            Err(source) => return Err(ContactError::Request { url, source: source.without_url() }),
        };
        if !response.status().is_success() {
            return Err(ContactError::Status { status: response.status(), url });
        }
        response.json().await.map_err(|source| ContactError::Decode { url, source: source.without_url() })
    }
}

impl RaftNetworkFactory<TypeConfig> for HttpNetworkFactory {
    type Network = HttpConnection;

    async fn new_client(&mut self, target: u64, node: &BasicNode) -> HttpConnection {
        HttpConnection {
            node_id: self.node_id,
            target,
            base_url: format!("{}://{}", self.scheme, node.addr),
            client: self.client.clone(),
        }
    }
}

/// Sends RPCs to one peer.
pub struct HttpConnection {
    node_id: u64,
    target: u64,
    /// `http://host:port` of the peer.
    base_url: String,
    client: PeerHttp,
}

/// A transport failure, before it is shaped into the error type of the calling RPC.
enum TransportError {
    Timeout(Timeout<u64>),
    Unreachable(Unreachable),
    Network(NetworkError),
}

impl<E: std::error::Error> From<TransportError> for RPCError<u64, BasicNode, E> {
    fn from(e: TransportError) -> Self {
        match e {
            TransportError::Timeout(e) => RPCError::Timeout(e),
            TransportError::Unreachable(e) => RPCError::Unreachable(e),
            TransportError::Network(e) => RPCError::Network(e),
        }
    }
}

impl From<TransportError> for StreamingError<TypeConfig, Fatal<u64>> {
    fn from(e: TransportError) -> Self {
        match e {
            TransportError::Timeout(e) => StreamingError::Timeout(e),
            TransportError::Unreachable(e) => StreamingError::Unreachable(e),
            TransportError::Network(e) => StreamingError::Network(e),
        }
    }
}

#[derive(Debug, thiserror::Error)]
#[error(
    "peer {target} answered {url} with HTTP {status}; check that its agent serves the raft peer \
     routes at that address (its log says why it refused)"
)]
struct HttpStatusError {
    target: u64,
    url: String,
    status: reqwest::StatusCode,
}

impl HttpConnection {
    /// POSTs `body` as JSON and decodes a JSON `Result<Resp, Err>`.
    async fn call<Req, Resp, Err>(
        &self,
        path: &'static str,
        action: RPCTypes,
        body: &Req,
        timeout: Duration,
    ) -> Result<Result<Resp, Err>, TransportError>
    where
        Req: Serialize,
        Resp: DeserializeOwned,
        Err: DeserializeOwned,
    {
        let url = format!("{}{}", self.base_url, path);
        let timeout_error =
            || TransportError::Timeout(Timeout { action, id: self.node_id, target: self.target, timeout });
        let classify = |e: reqwest::Error| {
            if e.is_timeout() {
                timeout_error()
            } else if e.is_connect() {
                TransportError::Unreachable(Unreachable::new(&e))
            } else {
                TransportError::Network(NetworkError::new(&e))
            }
        };
        let response = self.client.get().post(&url).timeout(timeout).json(body).send().await.map_err(classify)?;
        let status = response.status();
        if !status.is_success() {
            // A peer that answers but not as a raft peer will not fix itself soon: back off.
            // (Its body is not quoted: whatever answered there may not be ours.)
            let e = HttpStatusError { target: self.target, url, status };
            return Err(TransportError::Unreachable(Unreachable::new(&e)));
        }
        response.json().await.map_err(classify)
    }
}

impl RaftNetwork<TypeConfig> for HttpConnection {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<u64>, RPCError<u64, BasicNode, RaftError<u64>>> {
        let res: Result<_, RaftError<u64>> =
            self.call(APPEND_PATH, RPCTypes::AppendEntries, &rpc, option.hard_ttl()).await?;
        res.map_err(|e| RPCError::RemoteError(RemoteError::new(self.target, e)))
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<u64>,
        option: RPCOption,
    ) -> Result<VoteResponse<u64>, RPCError<u64, BasicNode, RaftError<u64>>> {
        let res: Result<_, RaftError<u64>> = self.call(VOTE_PATH, RPCTypes::Vote, &rpc, option.hard_ttl()).await?;
        res.map_err(|e| RPCError::RemoteError(RemoteError::new(self.target, e)))
    }

    /// Chunked snapshot transfer is not used: openraft 0.9 calls [`Self::full_snapshot`],
    /// which this type overrides to send the snapshot in one request.
    async fn install_snapshot(
        &mut self,
        _rpc: InstallSnapshotRequest<TypeConfig>,
        _option: RPCOption,
    ) -> Result<InstallSnapshotResponse<u64>, RPCError<u64, BasicNode, RaftError<u64, InstallSnapshotError>>> {
        let e = std::io::Error::other("chunked snapshot transfer is not supported; haven sends whole snapshots");
        Err(RPCError::Network(NetworkError::new(&e)))
    }

    async fn full_snapshot(
        &mut self,
        vote: Vote<u64>,
        snapshot: Snapshot<TypeConfig>,
        cancel: impl Future<Output = ReplicationClosed> + OptionalSend + 'static,
        option: RPCOption,
    ) -> Result<SnapshotResponse<u64>, StreamingError<TypeConfig, Fatal<u64>>> {
        let data = String::from_utf8(snapshot.snapshot.into_inner()).map_err(|e| {
            StreamingError::Network(NetworkError::new(&std::io::Error::other(format!(
                "snapshot {} is not UTF-8 JSON: {e}",
                snapshot.meta.snapshot_id
            ))))
        })?;
        if data.len() + 4096 > SNAPSHOT_LIMIT {
            let e = std::io::Error::other(format!(
                "snapshot {} is {} bytes, more than the {SNAPSHOT_LIMIT} bytes a peer accepts; the cluster state \
                 is too large to replicate (delete unused groups and resources)",
                snapshot.meta.snapshot_id,
                data.len()
            ));
            tracing::error!("{e}");
            return Err(StreamingError::Unreachable(Unreachable::new(&e)));
        }
        let transfer = SnapshotTransfer { vote, meta: snapshot.meta, data };
        let send = self.call::<_, SnapshotResponse<u64>, Fatal<u64>>(
            SNAPSHOT_PATH,
            RPCTypes::InstallSnapshot,
            &transfer,
            option.hard_ttl(),
        );
        let res = tokio::select! {
            res = send => res?,
            closed = cancel => return Err(StreamingError::Closed(closed)),
        };
        res.map_err(|e| StreamingError::RemoteError(RemoteError::new(self.target, e)))
    }
}

/// The peer RPC endpoints of `db`, to merge into the agent's HTTP router. Each route
/// reads at most its own limit ([`APPEND_LIMIT`], [`VOTE_LIMIT`], [`SNAPSHOT_LIMIT`]);
/// a larger body gets 413, a body that does not parse 400, both as the API's JSON error
/// body and without echoing the request. One snapshot is read at a time.
pub fn router(db: &ClusterDb) -> Router {
    let peer = Peer {
        raft: db.raft().clone(),
        contact: db.contact().clone(),
        snapshots: std::sync::Arc::new(tokio::sync::Semaphore::new(1)),
    };
    Router::new()
        .route(APPEND_PATH, post(append))
        .route(VOTE_PATH, post(vote))
        .route(SNAPSHOT_PATH, post(snapshot))
        .route(CONTACT_PATH, get(contact))
        .with_state(peer)
}

/// A JSON RPC body of at most `LIMIT` bytes.
pub struct RpcBody<T, const LIMIT: usize>(pub T);

/// A refused RPC request: the API's JSON error body.
pub struct RpcRejection(haven_api::body::BodyError);

impl IntoResponse for RpcRejection {
    fn into_response(self) -> Response {
        let status = StatusCode::from_u16(self.0.status).unwrap_or(StatusCode::BAD_REQUEST);
        (status, Json(self.0.into_body())).into_response()
    }
}

impl<S: Send + Sync, T: DeserializeOwned, const LIMIT: usize> FromRequest<S> for RpcBody<T, LIMIT> {
    type Rejection = RpcRejection;
    async fn from_request(req: Request, _state: &S) -> Result<Self, Self::Rejection> {
        let declared = req.headers().get(axum::http::header::CONTENT_LENGTH);
        if declared.and_then(|v| v.to_str().ok()).and_then(|v| v.parse::<u64>().ok()).is_some_and(|n| n > LIMIT as u64)
        {
            return Err(RpcRejection(haven_api::body::too_large(LIMIT)));
        }
        let bytes = axum::body::to_bytes(req.into_body(), LIMIT)
            .await
            .map_err(|_| RpcRejection(haven_api::body::too_large(LIMIT)))?;
        haven_api::body::parse_json(&bytes).map(RpcBody).map_err(RpcRejection)
    }
}

/// A query string that does not parse is a 400 JSON error body too.
pub struct RpcQuery<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequestParts<S> for RpcQuery<T> {
    type Rejection = RpcRejection;
    async fn from_request_parts(parts: &mut axum::http::request::Parts, state: &S) -> Result<Self, Self::Rejection> {
        Query::<T>::from_request_parts(parts, state).await.map(|Query(q)| RpcQuery(q)).map_err(|_| {
            RpcRejection(haven_api::body::BodyError {
                status: 400,
                code: "bad_request",
                message: "the query string does not fit this route; send ?term=<u64>".into(),
                field: None,
            })
        })
    }
}

#[derive(Clone)]
struct Peer {
    raft: Raft,
    contact: LeaderContact,
    /// One snapshot body in memory at a time, however many are sent.
    snapshots: std::sync::Arc<tokio::sync::Semaphore>,
}

/// The node id the sender's certificate vouches for, put in a request's extensions by the
/// server in front of these routes (the agent's listener). A vote, an append or a snapshot
/// that speaks for another node is refused: a member cannot campaign or lead in another's
/// name. Without it (a server that authenticates no one, as in this crate's tests) nothing
/// is checked.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SenderId(pub u64);

/// The refusal (403) when the sender's certificate is for another node than the one `vote`
/// speaks for.
fn wrong_sender(sender: Option<Extension<SenderId>>, vote: &Vote<u64>, what: &str) -> Option<Response> {
    match sender {
        Some(Extension(SenderId(id))) if id != vote.leader_id().node_id => Some(
            RpcRejection(haven_api::body::BodyError {
                status: 403,
                code: "wrong_node",
                message: format!(
                    "this {what} speaks for node {}, but the sender's certificate is node {id}'s: a node sends Raft \
                 messages in its own name only",
                    vote.leader_id().node_id
                ),
                field: None,
            })
            .into_response(),
        ),
        _ => None,
    }
}

async fn append(
    AxumState(peer): AxumState<Peer>,
    sender: Option<Extension<SenderId>>,
    RpcBody(rpc): RpcBody<AppendEntriesRequest<TypeConfig>, APPEND_LIMIT>,
) -> Response {
    if let Some(refused) = wrong_sender(sender, &rpc.vote, "append") {
        return refused;
    }
    // Noted before Raft sees it, so that it is noted before any reply can vouch for the
    // sender (see `contact`).
    peer.contact.note(rpc.vote.leader_id().term);
    Json(peer.raft.append_entries(rpc).await).into_response()
}

/// Query of `GET /internal/raft/leader-contact`.
#[derive(Debug, Serialize, Deserialize)]
pub struct ContactQuery {
    pub term: u64,
}

async fn contact(AxumState(peer): AxumState<Peer>, RpcQuery(q): RpcQuery<ContactQuery>) -> Json<ContactReply> {
    // The term first: once it is at least `q.term`, no contact of a lower term can follow.
    let term = peer.raft.metrics().borrow().current_term;
    let last = peer.contact.last_before(q.term);
    let since_ms = tokio::time::Instant::now().saturating_duration_since(last).as_millis() as u64;
    Json(ContactReply { term, since_ms })
}

async fn vote(
    AxumState(peer): AxumState<Peer>,
    sender: Option<Extension<SenderId>>,
    RpcBody(rpc): RpcBody<VoteRequest<u64>, VOTE_LIMIT>,
) -> Response {
    if let Some(refused) = wrong_sender(sender, &rpc.vote, "vote request") {
        return refused;
    }
    Json(peer.raft.vote(rpc).await).into_response()
}

async fn snapshot(AxumState(peer): AxumState<Peer>, sender: Option<Extension<SenderId>>, req: Request) -> Response {
    // The permit is taken before the body is read: a second sender waits, its body unread.
    let Ok(_permit) = peer.snapshots.clone().acquire_owned().await else {
        return RpcRejection(haven_api::body::BodyError {
            status: 503,
            code: "unavailable",
            message: "this node is shutting down".into(),
            field: None,
        })
        .into_response();
    };
    // A sender that trickles its body must not keep the permit: a real one sends it well
    // within its own install timeout.
    let read = RpcBody::<SnapshotTransfer, SNAPSHOT_LIMIT>::from_request(req, &());
    let transfer = match tokio::time::timeout(SNAPSHOT_READ_TIMEOUT, read).await {
        Ok(Ok(RpcBody(t))) => t,
        Ok(Err(e)) => return e.into_response(),
        Err(_) => {
            return RpcRejection(haven_api::body::BodyError {
                status: 408,
                code: "bad_request",
                message: format!(
                    "the snapshot body did not arrive within {} s; send it at once",
                    SNAPSHOT_READ_TIMEOUT.as_secs()
                ),
                field: None,
            })
            .into_response();
        }
    };
    if let Some(refused) = wrong_sender(sender, &transfer.vote, "snapshot") {
        return refused;
    }
    let raft = peer.raft;
    let snapshot = Snapshot { meta: transfer.meta, snapshot: Box::new(Cursor::new(transfer.data.into_bytes())) };
    let reply: Result<SnapshotResponse<u64>, Fatal<u64>> = raft.install_full_snapshot(transfer.vote, snapshot).await;
    Json(reply).into_response()
}
