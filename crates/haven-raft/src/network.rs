//! Raft peer RPCs as JSON over HTTP.
//!
//! Client side: [`HttpNetworkFactory`] hands openraft one [`HttpConnection`] per peer; all of
//! them share one `reqwest::Client` (one connection pool). Server side: [`router`] serves
//! `POST /internal/raft/{append,vote,snapshot}` and `GET /internal/raft/leader-contact` so the
//! agent can merge it into its own router (and put its peer authentication in front of it).
//!
//! Every response body is a JSON `Result<_, _>`: `Ok` with openraft's reply or `Err` with the
//! error the remote Raft returned. Transport failures map to openraft's `Unreachable` (peer
//! down, connection refused, or an HTTP error status such as 404 from a peer that does not
//! serve these routes: openraft backs off), `Timeout`, or `Network` (retry soon).

use std::io::Cursor;
use std::time::Duration;

use axum::extract::{DefaultBodyLimit, Query, State as AxumState};
use axum::routing::{get, post};
use axum::{Json, Router};
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

/// Largest RPC body accepted: snapshots carry the whole cluster state.
const MAX_BODY_BYTES: usize = 256 * 1024 * 1024;

/// Body of `POST /internal/raft/snapshot`: a whole snapshot in one request.
#[derive(Debug, Serialize, Deserialize)]
pub struct SnapshotTransfer {
    pub vote: Vote<u64>,
    pub meta: SnapshotMeta<u64, BasicNode>,
    /// The snapshot data, which is the JSON of `haven_state::State`.
    pub data: String,
}

/// Opens connections to peers. Clones share the HTTP connection pool.
#[derive(Clone)]
pub struct HttpNetworkFactory {
    node_id: u64,
    client: reqwest::Client,
    scheme: &'static str,
}

impl HttpNetworkFactory {
    /// Plain HTTP to peers. `node_id` is this node's id, used in error reports.
    pub fn new(node_id: u64) -> Result<HttpNetworkFactory, reqwest::Error> {
        let client = reqwest::Client::builder().build()?;
        Ok(HttpNetworkFactory::with_client(node_id, client, "http"))
    }

    /// Peers reached with `client` at `{scheme}://{addr}`, e.g. a client configured for mTLS
    /// with scheme `"https"`.
    pub fn with_client(node_id: u64, client: reqwest::Client, scheme: &'static str) -> HttpNetworkFactory {
        HttpNetworkFactory { node_id, client, scheme }
    }
}

impl HttpNetworkFactory {
    /// Asks the peer at `addr` for its last contact with a leader of a term below `term`.
    pub async fn leader_contact(&self, addr: &str, term: u64, timeout: Duration) -> Result<ContactReply, String> {
        let url = format!("{}://{addr}{CONTACT_PATH}?term={term}", self.scheme);
        let response = self.client.get(&url).timeout(timeout).send().await.map_err(|e| e.to_string())?;
        if !response.status().is_success() {
            return Err(format!("{url} answered HTTP {}", response.status()));
        }
        response.json().await.map_err(|e| e.to_string())
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
    client: reqwest::Client,
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
    "peer {target} answered {url} with HTTP {status}: {body}; check that its agent serves the \
     raft peer routes at that address"
)]
struct HttpStatusError {
    target: u64,
    url: String,
    status: reqwest::StatusCode,
    body: String,
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
        let response = self.client.post(&url).timeout(timeout).json(body).send().await.map_err(classify)?;
        let status = response.status();
        if !status.is_success() {
            let body: String = response.text().await.unwrap_or_default().chars().take(200).collect();
            // A peer that answers but not as a raft peer will not fix itself soon: back off.
            let e = HttpStatusError { target: self.target, url, status, body };
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

/// The peer RPC endpoints of `db`, to merge into the agent's HTTP router.
pub fn router(db: &ClusterDb) -> Router {
    let peer = Peer { raft: db.raft().clone(), contact: db.contact().clone() };
    Router::new()
        .route(APPEND_PATH, post(append))
        .route(VOTE_PATH, post(vote))
        .route(SNAPSHOT_PATH, post(snapshot))
        .route(CONTACT_PATH, get(contact))
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .with_state(peer)
}

#[derive(Clone)]
struct Peer {
    raft: Raft,
    contact: LeaderContact,
}

async fn append(
    AxumState(peer): AxumState<Peer>,
    Json(rpc): Json<AppendEntriesRequest<TypeConfig>>,
) -> Json<Result<AppendEntriesResponse<u64>, RaftError<u64>>> {
    // Noted before Raft sees it, so that it is noted before any reply can vouch for the
    // sender (see `contact`).
    peer.contact.note(rpc.vote.leader_id().term);
    Json(peer.raft.append_entries(rpc).await)
}

/// Query of `GET /internal/raft/leader-contact`.
#[derive(Debug, Serialize, Deserialize)]
pub struct ContactQuery {
    pub term: u64,
}

async fn contact(AxumState(peer): AxumState<Peer>, Query(q): Query<ContactQuery>) -> Json<ContactReply> {
    // The term first: once it is at least `q.term`, no contact of a lower term can follow.
    let term = peer.raft.metrics().borrow().current_term;
    let last = peer.contact.last_before(q.term);
    let since_ms = tokio::time::Instant::now().saturating_duration_since(last).as_millis() as u64;
    Json(ContactReply { term, since_ms })
}

async fn vote(
    AxumState(peer): AxumState<Peer>,
    Json(rpc): Json<VoteRequest<u64>>,
) -> Json<Result<VoteResponse<u64>, RaftError<u64>>> {
    Json(peer.raft.vote(rpc).await)
}

async fn snapshot(
    AxumState(peer): AxumState<Peer>,
    Json(transfer): Json<SnapshotTransfer>,
) -> Json<Result<SnapshotResponse<u64>, Fatal<u64>>> {
    let raft = peer.raft;
    let snapshot = Snapshot { meta: transfer.meta, snapshot: Box::new(Cursor::new(transfer.data.into_bytes())) };
    Json(raft.install_full_snapshot(transfer.vote, snapshot).await)
}
