//! Certificate renewal and CA rotation, as each agent carries them out.
//!
//! The replicated state says what should be (`State::cas`, the CAs the cluster trusts with
//! the signing one first; `State::node_certs`, each node's certificate, whether an admin
//! asked for a new one); [`run`] makes this node match it:
//!
//! 1. It trusts exactly the state's CAs ([`Pki::set_trusted`]): after a rotation, the new
//!    CA next to the old one, and the new CA's cross certificate in the chain it serves, so
//!    that a CLI pinning the old fingerprint still finds a path; after a retirement, the
//!    new CA alone (certificates the old one signed are refused from then on).
//! 2. A voter or witness (any of them may lead, and a leader signs joins and renewals)
//!    fetches the signing CA's key if it lacks it: from the node that made the CA, else
//!    from any voter that has it (`POST /internal/ca-key`, served to voters and witnesses
//!    only).
//! 3. When its certificate should be replaced (the signing CA did not sign it, or an admin
//!    asked), it renews it: a new key, a signing request to the leader
//!    (`POST /internal/renew`, the leader signs for the node the current certificate names),
//!    the new certificate installed, a new peer client (connections made with the old
//!    certificate would be refused once it is revoked), then `RecordNodeCert`, which
//!    revokes the old one.
//!
//! A rotation starts on a voter ([`rotate`], behind `POST /api/v1/cluster/ca/rotate`): it
//! makes the new CA, cross-signs it with the current one, stores the key, and commits
//! `RotateCa`. Nothing in a rotation stops the cluster: every step keeps both CAs trusted
//! until `RetireCa`, which the state refuses while a member's certificate is from the old
//! one.

use std::sync::Arc;
use std::time::Duration;

use axum::Extension;
use axum::extract::State as AxState;
use axum::routing::post;
use axum::{Json, Router};
use haven_api::{PeerCaKey, PeerCaKeyReply, PeerRenew, PeerRenewed};
use haven_model::NodeRole;
use haven_state::pki::{ClusterCa, signing_ca, wants_new_cert};
use haven_state::{Command, State};
use tokio::sync::watch;

use crate::Agent;
use crate::api::{ApiError, Body};
use crate::forward::{Forward, Wait};
use crate::pki::PeerCert;

/// How long the keeper waits after a step failed before it tries again.
const RETRY: Duration = Duration::from_secs(2);
/// How often it looks even when the state did not change (a failed fetch or renewal).
const LOOK_EVERY: Duration = Duration::from_secs(5);

pub(crate) fn router(agent: Arc<Agent>) -> Router {
    Router::new().route("/internal/renew", post(renew)).route("/internal/ca-key", post(ca_key)).with_state(agent)
}

/// Keeps this node's trust, CA key and certificate as the state says (module header).
pub async fn run(agent: Arc<Agent>, mut stop: watch::Receiver<bool>) {
    let mut state_rx = agent.db.subscribe();
    // The CA whose key this node was last seen to hold: the key file is read once per CA,
    // not at every commit.
    let mut key_of = None;
    loop {
        if *stop.borrow() {
            return;
        }
        let state = agent.db.state();
        let wait = match step(&agent, &state, &mut key_of).await {
            Ok(()) => LOOK_EVERY,
            Err(e) => {
                tracing::warn!(error = %e, "certificates: a step failed; retrying in {} s", RETRY.as_secs());
                RETRY
            }
        };
        tokio::select! {
            _ = state_rx.changed() => {}
            _ = tokio::time::sleep(wait) => {}
            _ = stop.changed() => {}
        }
    }
}

async fn step(agent: &Agent, state: &State, key_of: &mut Option<String>) -> Result<(), String> {
    if state.cluster.is_none() || agent.pki.identity().is_none() {
        return Ok(());
    }
    if agent.pki.set_trusted(&state.cas).map_err(|e| e.to_string())? {
        tracing::info!(cas = ?agent.pki.trusted_fingerprints(), "certificates: trusting the cluster's CAs");
    }
    let me = agent.name();
    let Some(node) = state.nodes.get(me) else { return Ok(()) };
    if let Some(ca) = signing_ca(state)
        && matches!(node.role, NodeRole::Voter | NodeRole::Witness)
        && key_of.as_deref() != Some(ca.fingerprint.as_str())
    {
        if agent.pki.ca_key_pem(&ca.fingerprint).map_err(|e| e.to_string())?.is_none() {
            fetch_ca_key(agent, state, ca).await?;
        }
        *key_of = Some(ca.fingerprint.clone());
    }
    if wants_new_cert(state, me) {
        renew_own(agent, state).await?;
    }
    Ok(())
}

/// Fetches the key of the signing CA `ca` from its holder, else from any voter that has it.
async fn fetch_ca_key(agent: &Agent, state: &State, ca: &ClusterCa) -> Result<(), String> {
    // The holder first, then the other voters and witnesses; never this node itself.
    let holder = state.nodes.get(&ca.holder).into_iter();
    let others =
        state.nodes.values().filter(|n| n.name != ca.holder && matches!(n.role, NodeRole::Voter | NodeRole::Witness));
    let from = holder.chain(others).filter(|n| n.name != agent.name()).map(|n| (n.name.as_str(), n.address.as_str()));
    let ask = PeerCaKey { fingerprint: ca.fingerprint.clone() };
    let mut why = Vec::new();
    for (name, addr) in from {
        let to = format!("node {name:?}");
        match Forward::new(&agent.peers.get(), to, addr, Wait::Short)
            .post::<_, PeerCaKeyReply>("/internal/ca-key", &ask)
            .await
        {
            Ok(reply) => {
                agent.pki.store_ca_key(&ca.fingerprint, &reply.key).map_err(|e| e.to_string())?;
                tracing::info!(ca = %ca.fingerprint, from = %name, "certificates: fetched the signing CA's key");
                return Ok(());
            }
            Err(e) => why.push(format!("{name}: {}", e.into_api_error().message)),
        }
    }
    Err(format!("no member gave the key of the signing CA {} ({})", ca.fingerprint, why.join("; ")))
}

/// Replaces this node's certificate: a new key, signed by the leader, installed, recorded.
async fn renew_own(agent: &Agent, state: &State) -> Result<(), String> {
    let me = agent.name().to_string();
    // A renewal installed here whose record did not commit (a crash, a lost answer): record
    // the certificate this node has rather than ask for yet another.
    let current = agent.pki.identity().ok_or("this node has no certificate")?;
    let issuer = agent.pki.issuer_of_own().unwrap_or_default();
    let on_record = state.node_certs.get(&me);
    let asked = on_record.is_some_and(|c| c.renew);
    if on_record.is_none_or(|c| c.serial != current.serial)
        && !asked
        && signing_ca(state).is_none_or(|s| s.fingerprint == issuer)
    {
        return record(agent, &me, &current.serial, &issuer).await;
    }
    let leader = crate::forward::leader_addr(agent).map_err(|e| e.message)?;
    let csr = agent.pki.renewal_request(&me).map_err(|e| e.to_string())?;
    let renewed: PeerRenewed = Forward::new(&agent.peers.get(), "the leader", &leader, Wait::Commit)
        .post("/internal/renew", &PeerRenew { csr })
        .await
        .map_err(|e| e.into_api_error().message)?;
    let cert =
        agent.pki.accept_renewal(&me, &renewed.certificate, &renewed.ca_fingerprint).map_err(|e| e.to_string())?;
    tracing::info!(%cert, ca = %renewed.ca_fingerprint, "certificates: renewed this node's certificate");
    // Connections made with the old certificate are refused once it is revoked: a new
    // client (a new pool) from now on, before the record revokes it.
    agent.peers.replace(agent.pki.peer_client().map_err(|e| e.to_string())?);
    record(agent, &me, &cert.serial, &renewed.ca_fingerprint).await
}

async fn record(agent: &Agent, me: &str, serial: &str, ca: &str) -> Result<(), String> {
    let command =
        Command::RecordNodeCert { node: me.to_string(), serial: serial.to_string(), ca: Some(ca.to_string()) };
    agent.submit(me, command).await.map(drop).map_err(|e| e.to_string())
}

/// The leader signs a new certificate for the node the sender's certificate names (its
/// name, id and address as the state has them); a follower passes it on to the leader.
async fn renew(
    AxState(agent): AxState<Arc<Agent>>,
    Extension(peer): Extension<PeerCert>,
    Body(r): Body<PeerRenew>,
) -> Result<Json<PeerRenewed>, ApiError> {
    if !agent.is_leader() {
        let addr = crate::forward::leader_addr(&agent)?;
        return Forward::new(&agent.peers.get(), "the leader", &addr, Wait::Commit)
            .post("/internal/renew", &r)
            .await
            .map(Json)
            .map_err(|e| e.into_api_error());
    }
    let state = agent.db.state();
    let Some(node) = state.nodes.get(&peer.name).filter(|n| n.id == peer.id) else {
        return Err(ApiError::new(403, "forbidden", format!("{peer} is not a member of this cluster")));
    };
    let ca = signing_ca_here(&agent, &state)?;
    let ca_fingerprint = ca.fingerprint();
    let (certificate, serial) = ca
        .issue(&r.csr, &node.name, node.id, &node.address)
        .map_err(|e| ApiError::new(503, "unavailable", e.to_string()))?;
    Ok(Json(PeerRenewed { certificate, serial, ca_fingerprint }))
}

/// The cluster's signing CA as this node holds it; 503 while a rotation has not reached
/// this node yet (it trusts another CA as the signing one).
fn signing_ca_here(agent: &Agent, state: &State) -> Result<crate::pki::Ca, ApiError> {
    let ca = agent.pki.ca().map_err(|e| ApiError::new(503, "unavailable", e.to_string()))?;
    if signing_ca(state).is_some_and(|c| c.fingerprint != ca.fingerprint()) {
        return Err(ApiError::new(
            503,
            "unavailable",
            format!(
                "node {:?} does not trust the cluster's signing CA yet (a rotation is reaching it); retry in a moment",
                agent.name()
            ),
        ));
    }
    Ok(ca)
}

/// A CA key, to a voter or witness only (a learner never holds one; see docs/SECURITY.md).
async fn ca_key(
    AxState(agent): AxState<Arc<Agent>>,
    Extension(peer): Extension<PeerCert>,
    Body(r): Body<PeerCaKey>,
) -> Result<Json<PeerCaKeyReply>, ApiError> {
    let state = agent.db.state();
    let allowed = state
        .nodes
        .get(&peer.name)
        .is_some_and(|n| n.id == peer.id && matches!(n.role, NodeRole::Voter | NodeRole::Witness));
    if !allowed {
        return Err(ApiError::new(
            403,
            "forbidden",
            format!("{peer} is not a voter or witness of this cluster, and only those hold a CA key"),
        ));
    }
    match agent.pki.ca_key_pem(&r.fingerprint) {
        Ok(Some(key)) => Ok(Json(PeerCaKeyReply { key })),
        Ok(None) => Err(ApiError::new(404, "not_found", "this node does not hold that CA's key")),
        Err(e) => Err(ApiError::new(500, "internal", e.to_string())),
    }
}

/// Starts a CA rotation on this node (a voter): a new CA, certified by the current one,
/// its key stored here, and `RotateCa` committed. Returns (new, previous) fingerprints.
pub(crate) async fn rotate(agent: &Agent) -> Result<(String, String), ApiError> {
    let state = agent.db.state();
    let current = signing_ca_here(agent, &state)?;
    let previous = current.fingerprint();
    let cluster = state.cluster.as_ref().map(|c| c.name.clone()).unwrap_or_default();
    let (next, cross) = current.successor(&cluster).map_err(|e| match e {
        crate::pki::PkiError::Refused(m) => ApiError::new(409, "conflict", m),
        e => ApiError::new(500, "internal", e.to_string()),
    })?;
    let fingerprint = next.fingerprint();
    let key = next.key_pem().unwrap_or_default();
    agent.pki.keep_new_ca_key(&fingerprint, &key).map_err(|e| ApiError::new(500, "internal", e.to_string()))?;
    let now = crate::now_ms();
    let ca = ClusterCa {
        fingerprint: fingerprint.clone(),
        certificate: next.cert_pem().to_string(),
        cross_certificate: Some(cross),
        added_at: now,
        holder: agent.name().to_string(),
    };
    let before = state.cas.is_empty().then(|| ClusterCa {
        fingerprint: previous.clone(),
        certificate: current.cert_pem().to_string(),
        cross_certificate: None,
        added_at: 0,
        holder: agent.name().to_string(),
    });
    agent.submit("operator", Command::RotateCa { ca, previous: before }).await.map_err(ApiError::from)?;
    Ok((fingerprint, previous))
}
