//! `/api/v1/cluster`: this agent's view of the cluster, founding one (`init`: the cluster CA
//! and this node's certificate), joining one (a signing request and a join token sent to a
//! member, which forwards it to the leader; the member is trusted only with the CA
//! fingerprint the operator gave) and creating join tokens (shown once, kept hashed).

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::Json;
use axum::extract::State as AxState;
use haven_api::{
    CaRotated, CaStatus, CaView, ClusterStatus, ErrorBody, InitRequest, InitResponse, JoinRequest, JoinTokenCreated,
    JoinTokenRequest, JoinTokenRevoked, JoinTokenView, NodeCertView, NodeIdentity, NodeView, PeerJoin, RetireCaRequest,
};
use haven_model::{Node, NodeLiveness, NodeRole};
use haven_state::{Command, State};

use super::nodes::node_view;
use super::{ApiError, ApiResult, Body, Name};
use crate::{Agent, SubmitError, now_ms};

pub(super) fn require_cluster(state: &State) -> Result<(), ApiError> {
    if state.cluster.is_none() {
        return Err(ApiError::new(
            409,
            "not_initialized",
            "this node is not part of a cluster yet; run `haven cluster init` here or `haven cluster join <address> --token <token> --ca-fingerprint <fingerprint>`",
        ));
    }
    Ok(())
}

#[utoipa::path(get, path = "/api/v1/cluster", tag = "cluster", responses((status = 200, body = ClusterStatus)))]
pub(super) async fn cluster_status(AxState(agent): AxState<Arc<Agent>>) -> Json<ClusterStatus> {
    let state = agent.db.state();
    let m = agent.db.raft().metrics().borrow().clone();
    let membership = m.membership_config.membership();
    let leader = agent.db.leader().map(|(id, address)| NodeIdentity {
        id,
        name: state.node_by_id(id).map(|n| n.name.clone()),
        address,
    });
    Json(ClusterStatus {
        name: state.cluster.as_ref().map(|c| c.name.clone()),
        this_node: NodeIdentity {
            id: agent.config.id,
            name: Some(agent.config.name.clone()),
            address: agent.config.advertise(),
        },
        leader,
        term: m.current_term,
        voters: membership.voter_ids().collect(),
        learners: membership.learner_ids().collect(),
        lease_valid: agent.lease.valid(),
        applied_index: m.last_applied.map(|l| l.index).unwrap_or(0),
        node_guard: agent.node_guard.describe().to_string(),
    })
}

#[utoipa::path(post, path = "/api/v1/cluster/init", tag = "cluster", request_body = InitRequest,
    responses((status = 200, body = InitResponse), (status = 409, body = ErrorBody)))]
pub(super) async fn cluster_init(
    AxState(agent): AxState<Arc<Agent>>,
    Body(req): Body<InitRequest>,
) -> ApiResult<InitResponse> {
    if agent.config.witness {
        return Err(ApiError::new(
            409,
            "conflict",
            "a witness cannot found a cluster; run `haven cluster init` on a data node, then join the witness to it",
        ));
    }
    let name = req.name.unwrap_or_else(|| "haven".to_string());
    haven_model::validate_name("name", &name).map_err(|e| SubmitError::Refused(e.into()))?;
    if agent.db.is_initialized() {
        return Err(ApiError::new(
            409,
            "conflict",
            "this node already belongs to a cluster; to found a new one, stop the agent and empty its state_dir first",
        ));
    }
    // The CA and this node's certificate first: the peers this node adds later must find
    // them in place.
    let (ca_fingerprint, serial) = agent
        .pki
        .found(&name, &agent.config.name, agent.config.id, &agent.config.advertise())
        .map_err(|e| ApiError::new(500, "internal", e.to_string()))?;
    let mut members = BTreeMap::new();
    members.insert(agent.config.id, haven_raft::BasicNode { addr: agent.config.advertise() });
    agent.db.initialize(members).await.map_err(|e| ApiError::new(409, "conflict", e.to_string()))?;
    let node = Node {
        id: agent.config.id,
        name: agent.config.name.clone(),
        address: agent.config.advertise(),
        role: NodeRole::Voter,
        liveness: NodeLiveness::Up,
        paused: false,
        capacity: agent.config.capacity(),
        since: now_ms(),
    };
    // The first admin token commits with the cluster, in one entry: there is no moment in
    // which the cluster exists and nobody may change it.
    let (admin_token, token) = super::tokens::mint(FIRST_TOKEN, haven_state::Role::Admin, None)?;
    let init = Command::InitCluster { name: name.clone(), node };
    let reply =
        agent.submit("operator", Command::Batch { commands: vec![init, Command::CreateToken { token }] }).await?;
    if let haven_state::Reply::Batch(replies) = reply {
        replies.into_iter().try_for_each(|r| r.map(drop)).map_err(SubmitError::Refused)?;
    }
    let record = Command::RecordNodeCert { node: agent.config.name.clone(), serial, ca: Some(ca_fingerprint.clone()) };
    agent.submit(&agent.config.name, record).await?;
    Ok(Json(InitResponse { name, ca_fingerprint, admin_token }))
}

/// The name of the admin token `cluster init` creates.
pub(super) const FIRST_TOKEN: &str = "admin";

#[utoipa::path(post, path = "/api/v1/cluster/join-tokens", tag = "cluster", request_body = JoinTokenRequest,
    responses((status = 200, body = JoinTokenCreated), (status = 400, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub(super) async fn create_join_token(
    AxState(agent): AxState<Arc<Agent>>,
    Body(req): Body<JoinTokenRequest>,
) -> ApiResult<JoinTokenCreated> {
    require_cluster(&agent.db.state())?;
    let ttl = req.ttl.map(|d| u64::try_from(d.0.as_millis()).unwrap_or(u64::MAX));
    let ttl_ms = ttl.unwrap_or(haven_state::pki::JOIN_TOKEN_TTL_DEFAULT_MS);
    let uses = req.uses.unwrap_or(1);
    haven_state::pki::validate_token_limits(ttl_ms, uses).map_err(SubmitError::Refused)?;
    let ca_fingerprint = agent.pki.ca_fingerprint().ok_or_else(|| {
        ApiError::new(503, "unavailable", "this node has no cluster CA certificate (pki/ca.pem); ask another member")
    })?;
    let bytes = crate::pki::random_bytes(32).map_err(|e| ApiError::new(500, "internal", e.to_string()))?;
    let token = crate::pki::hex(&bytes);
    let expires_at = now_ms().saturating_add(ttl_ms);
    let token_hash = crate::pki::sha256_hex(token.as_bytes());
    let id = token_hash[..haven_state::pki::JOIN_TOKEN_ID_LEN].to_string();
    agent.submit("operator", Command::CreateJoinToken { token_hash, expires_at, uses }).await?;
    Ok(Json(JoinTokenCreated { token, id, ca_fingerprint, expires_at, uses }))
}

#[utoipa::path(get, path = "/api/v1/cluster/join-tokens", tag = "cluster",
    responses((status = 200, body = Vec<JoinTokenView>), (status = 409, body = ErrorBody)))]
pub(super) async fn list_join_tokens(AxState(agent): AxState<Arc<Agent>>) -> ApiResult<Vec<JoinTokenView>> {
    let state = agent.db.state();
    require_cluster(&state)?;
    let now = now_ms();
    let mut tokens: Vec<JoinTokenView> = state
        .join_tokens
        .iter()
        .map(|(hash, t)| JoinTokenView {
            id: hash[..haven_state::pki::JOIN_TOKEN_ID_LEN.min(hash.len())].to_string(),
            created_at: t.created_at,
            created_by: t.created_by.clone(),
            expires_at: t.expires_at,
            uses: t.uses,
            used: t.used,
            status: if t.used >= t.uses {
                "used up"
            } else if now >= t.expires_at {
                "expired"
            } else {
                "valid"
            }
            .to_string(),
        })
        .collect();
    tokens.sort_by_key(|t| t.created_at);
    Ok(Json(tokens))
}

/// Revokes the join token whose id (or a longer prefix of its hash) is `id`.
#[utoipa::path(delete, path = "/api/v1/cluster/join-tokens/{id}", tag = "cluster",
    params(("id" = String, Path, description = "the token's id, as `haven cluster token list` shows it")),
    responses((status = 200, body = JoinTokenRevoked), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody),
        (status = 409, body = ErrorBody)))]
pub(super) async fn revoke_join_token(
    AxState(agent): AxState<Arc<Agent>>,
    Name(id): Name,
) -> ApiResult<JoinTokenRevoked> {
    let state = agent.db.state();
    require_cluster(&state)?;
    let id = id.to_ascii_lowercase();
    if !(8..=64).contains(&id.len()) || !id.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(ApiError::new(
            400,
            "invalid",
            "a join token id is 8 to 64 hex digits (`haven cluster token list` shows 12)",
        ));
    }
    let matches: Vec<&String> = state.join_tokens.keys().filter(|h| h.starts_with(&id)).collect();
    let token_hash = match matches.as_slice() {
        [one] => (*one).clone(),
        [] => {
            let message = format!("no join token with id {id:?}; `haven cluster token list` shows the ones kept");
            return Err(ApiError::new(404, "not_found", message));
        }
        _ => return Err(ApiError::new(409, "conflict", "that id names several join tokens; give more of it")),
    };
    agent.submit("operator", Command::RevokeJoinToken { token_hash }).await?;
    Ok(Json(JoinTokenRevoked { revoked: id }))
}

#[utoipa::path(post, path = "/api/v1/cluster/join", tag = "cluster", request_body = JoinRequest,
    responses((status = 200, body = NodeView), (status = 403, body = ErrorBody), (status = 502, body = ErrorBody)))]
pub(super) async fn cluster_join(
    AxState(agent): AxState<Arc<Agent>>,
    Body(req): Body<JoinRequest>,
) -> ApiResult<NodeView> {
    if agent.db.state().cluster.is_some() {
        return Err(ApiError::new(409, "conflict", "this node is already a member of a cluster"));
    }
    let fingerprint =
        crate::pki::normalize_fingerprint(&req.ca_fingerprint, "ca_fingerprint", crate::pki::PINNED_FROM).map_err(
            |m| ApiError { status: 400, code: "invalid".into(), message: m, field: Some("ca_fingerprint".into()) },
        )?;
    let address =
        req.address.trim_start_matches("http://").trim_start_matches("https://").trim_end_matches('/').to_string();
    let csr = agent.pki.join_request(&agent.config.name).map_err(|e| ApiError::new(500, "internal", e.to_string()))?;
    let join = PeerJoin {
        id: agent.config.id,
        name: agent.config.name.clone(),
        address: agent.config.advertise(),
        token: req.token,
        capacity: agent.config.capacity(),
        witness: agent.config.witness,
        csr,
    };
    let (client, mismatch) =
        crate::pki::join_client(&fingerprint).map_err(|e| ApiError::new(500, "internal", e.to_string()))?;
    // Until the reply brings the CA, the leader (adding this node as a learner) is trusted
    // by the fingerprint too.
    agent.pki.set_pending(Some(fingerprint.clone()));
    let joined = crate::peer::forward_join(&client, "the cluster member", &address, &join).await;
    let joined = match joined {
        Ok(j) => j,
        Err(e) => {
            agent.pki.set_pending(None);
            let refused = mismatch.lock().unwrap_or_else(|p| p.into_inner()).take();
            return Err(match refused {
                Some(m) => ApiError {
                    status: 403,
                    code: "ca_mismatch".into(),
                    message: m,
                    field: Some("ca_fingerprint".into()),
                },
                None => e,
            });
        }
    };
    let identity = agent
        .pki
        .accept_join(
            &fingerprint,
            &agent.config.name,
            &joined.certificate,
            &joined.ca_certificate,
            joined.ca_key.as_deref(),
            &joined.trusted_cas,
        )
        .map_err(|e| ApiError::new(502, "unavailable", e.to_string()))?;
    tracing::info!(%identity, "joined: this node's certificate is installed");
    let node = joined.node;
    // Wait (bounded) until this node has received the state that lists it.
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(30);
    while !agent.db.state().nodes.contains_key(&node.name) {
        if tokio::time::Instant::now() >= deadline {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    Ok(Json(node_view(&agent, &agent.db.state(), &node)))
}

/// The CAs and node certificates as the state has them.
pub(super) fn ca_status_of(agent: &Agent, state: &State) -> CaStatus {
    let cas = if state.cas.is_empty() {
        // Before the first rotation the state keeps no CA: the one this node trusts is it.
        agent
            .pki
            .ca_fingerprint()
            .into_iter()
            .map(|fingerprint| CaView { fingerprint, signing: true, added_at: None })
            .collect()
    } else {
        state
            .cas
            .iter()
            .enumerate()
            .map(|(i, c)| CaView { fingerprint: c.fingerprint.clone(), signing: i == 0, added_at: Some(c.added_at) })
            .collect()
    };
    let nodes = state
        .node_certs
        .iter()
        .filter(|(name, _)| state.nodes.contains_key(*name))
        .map(|(name, c)| NodeCertView {
            node: name.clone(),
            serial: c.serial.clone(),
            ca: c.ca.clone(),
            issued_at: c.issued_at,
            renewal_pending: haven_state::pki::wants_new_cert(state, name),
        })
        .collect();
    CaStatus { cas, nodes }
}

#[utoipa::path(get, path = "/api/v1/cluster/ca", tag = "cluster",
    responses((status = 200, body = CaStatus), (status = 409, body = ErrorBody)))]
pub(super) async fn ca_status(AxState(agent): AxState<Arc<Agent>>) -> ApiResult<CaStatus> {
    let state = agent.db.state();
    require_cluster(&state)?;
    Ok(Json(ca_status_of(&agent, &state)))
}

/// Starts a CA rotation: see `crate::certs`.
#[utoipa::path(post, path = "/api/v1/cluster/ca/rotate", tag = "cluster",
    responses((status = 200, body = CaRotated), (status = 409, body = ErrorBody), (status = 503, body = ErrorBody)))]
pub(super) async fn ca_rotate(AxState(agent): AxState<Arc<Agent>>) -> ApiResult<CaRotated> {
    require_cluster(&agent.db.state())?;
    let (fingerprint, previous) = crate::certs::rotate(&agent).await?;
    Ok(Json(CaRotated { fingerprint, previous }))
}

#[utoipa::path(post, path = "/api/v1/cluster/ca/retire", tag = "cluster", request_body = RetireCaRequest,
    responses((status = 200, body = CaStatus), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody),
        (status = 409, body = ErrorBody)))]
pub(super) async fn ca_retire(
    AxState(agent): AxState<Arc<Agent>>,
    Body(req): Body<RetireCaRequest>,
) -> ApiResult<CaStatus> {
    require_cluster(&agent.db.state())?;
    let fingerprint = crate::pki::normalize_fingerprint(&req.fingerprint, "fingerprint", "`haven cluster ca status`")
        .map_err(|message| {
        SubmitError::Refused(haven_state::StateError {
            code: haven_state::ErrorCode::Invalid,
            message,
            field: Some("fingerprint".into()),
        })
    })?;
    agent.submit("operator", Command::RetireCa { fingerprint: fingerprint.clone() }).await?;
    // (This node may not have applied the commit yet: the answer says what it did.)
    let mut status = ca_status_of(&agent, &agent.db.state());
    status.cas.retain(|c| c.fingerprint != fingerprint);
    Ok(Json(status))
}
