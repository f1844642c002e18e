//! Peer identity in the replicated state: join tokens (only their SHA-256 hashes, with
//! their expiry and uses), the certificate serial each node was issued, and the serials
//! revoked when a node was removed.
//!
//! No key, certificate or token is kept here: the agents hold those in their state
//! directories (see docs/SECURITY.md). The state keeps what every node must agree on: which
//! token may still admit a node (so a single-use token admits one node, whichever member
//! the joiner asked), and which certificates are revoked (so every agent refuses them).
//! Like the rest of `apply`, nothing here reads a clock: `at` is the proposer's time.

use haven_model::{Millis, Node};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::{Reply, Response, State, StateError};

/// A join token lives 1 hour unless `--ttl` says otherwise.
pub const JOIN_TOKEN_TTL_DEFAULT_MS: Millis = 60 * 60 * 1000;
/// Shortest `--ttl`: 1 second.
pub const JOIN_TOKEN_TTL_MIN_MS: Millis = 1000;
/// Longest `--ttl`: 7 days.
pub const JOIN_TOKEN_TTL_MAX_MS: Millis = 7 * 24 * 60 * 60 * 1000;
/// Most joins one token allows (`--uses`); 1 unless told.
pub const JOIN_TOKEN_USES_MAX: u32 = 100;
/// Most join tokens the state keeps at once (used-up and expired ones count until they are
/// dropped, a day after they expired).
pub const JOIN_TOKEN_LIMIT: usize = 100;
/// How long an expired token is kept, so that a join with it is told "expired" rather than
/// "not valid".
const EXPIRED_KEPT_MS: Millis = 24 * 60 * 60 * 1000;

/// One join token, by the hex SHA-256 of its text (the key of [`State::join_tokens`]).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct JoinTokenRecord {
    pub created_at: Millis,
    pub created_by: String,
    pub expires_at: Millis,
    /// How many joins it allows in all.
    pub uses: u32,
    /// How many it admitted so far.
    pub used: u32,
}

/// The certificate a node was issued (`State::node_certs`, by node name).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct NodeCert {
    /// The certificate's serial number, lower-case hex.
    pub serial: String,
    pub issued_at: Millis,
    /// The fingerprint of the CA that signed it; empty for a certificate recorded before
    /// CA rotation existed.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub ca: String,
    /// An admin asked for it to be replaced (`haven node renew-cert`); cleared by the
    /// renewal.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub renew: bool,
}

/// A CA the cluster trusts (`State::cas`, the signing one first).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ClusterCa {
    /// SHA-256 of the certificate's DER, lower-case hex: what a joiner or the CLI pins.
    pub fingerprint: String,
    /// The self-signed CA certificate, PEM.
    pub certificate: String,
    /// The same CA (subject and key) certified by the CA before it, PEM: served in every
    /// chain while both are trusted, so that a client pinning the old fingerprint can
    /// still verify a certificate the new CA signed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cross_certificate: Option<String>,
    pub added_at: Millis,
    /// The node that made it: the other voters fetch its key from it (or from any voter
    /// that has it by then).
    pub holder: String,
}

/// Longest CA certificate PEM the state takes.
pub const CA_PEM_MAX: usize = 8 * 1024;

/// The CA that signs new certificates, once CAs are kept in the state.
pub fn signing_ca(s: &State) -> Option<&ClusterCa> {
    s.cas.first()
}

/// Whether `node`'s agent should replace its certificate: an admin asked, or the cluster
/// signs with a CA that did not sign it.
pub fn wants_new_cert(s: &State, node: &str) -> bool {
    let Some(cert) = s.node_certs.get(node) else { return false };
    cert.renew || signing_ca(s).is_some_and(|ca| ca.fingerprint != cert.ca)
}

/// A revoked certificate (`State::revoked_certs`, by serial).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct RevokedCert {
    /// The node it was issued to.
    pub node: String,
    pub revoked_at: Millis,
}

/// Whether `s` is a lower-case hex string of `min..=max` characters.
fn is_hex(s: &str, min: usize, max: usize) -> bool {
    (min..=max).contains(&s.len()) && s.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

fn invalid(field: &str, message: String) -> StateError {
    StateError { code: crate::ErrorCode::Invalid, message, field: Some(field.to_string()) }
}

/// Checks `--ttl` (ms) and `--uses` against their bounds, with a message naming the value
/// and the bounds.
pub fn validate_token_limits(ttl_ms: Millis, uses: u32) -> Result<(), StateError> {
    if !(JOIN_TOKEN_TTL_MIN_MS..=JOIN_TOKEN_TTL_MAX_MS).contains(&ttl_ms) {
        return Err(invalid(
            "ttl",
            format!(
                "ttl {} ms is out of bounds: a join token lives from 1s to 7d (e.g. --ttl 1h, the default)",
                ttl_ms
            ),
        ));
    }
    if !(1..=JOIN_TOKEN_USES_MAX).contains(&uses) {
        return Err(invalid(
            "uses",
            format!("uses {uses} is out of bounds: a join token admits 1 to {JOIN_TOKEN_USES_MAX} nodes (default 1)"),
        ));
    }
    Ok(())
}

/// Whether the token hashed `hash` may admit a node at `at`; the refusal says why without
/// quoting the token (the caller knows it; a log or history line must not).
pub fn check_join_token(s: &State, hash: &str, at: Millis) -> Result<(), String> {
    let Some(t) = s.join_tokens.get(hash) else {
        return Err("the join token is not valid for this cluster (mistyped, revoked, from another cluster, or \
                    expired more than a day ago); create one on a member with `haven cluster token create`"
            .to_string());
    };
    if t.used >= t.uses {
        return Err(format!(
            "the join token is used up (it allowed {} join{}); create another with `haven cluster token create`",
            t.uses,
            if t.uses == 1 { "" } else { "s" }
        ));
    }
    if at >= t.expires_at {
        return Err(format!(
            "the join token expired {} s ago; create another with `haven cluster token create [--ttl 1h]`",
            (at - t.expires_at) / 1000
        ));
    }
    Ok(())
}

/// Whether the certificate with `serial` (hex) was revoked.
pub fn is_revoked(s: &State, serial: &str) -> bool {
    s.revoked_certs.contains_key(serial)
}

/// `CreateJoinToken`.
pub(crate) fn create_join_token(
    s: &mut State,
    at: Millis,
    by: &str,
    token_hash: &str,
    expires_at: Millis,
    uses: u32,
) -> Response {
    crate::apply::require_cluster(s)?;
    if !is_hex(token_hash, 64, 64) {
        return Err(invalid("token_hash", "token_hash must be the 64 hex digits of a SHA-256".into()));
    }
    validate_token_limits(expires_at.saturating_sub(at), uses)?;
    if s.join_tokens.contains_key(token_hash) {
        return Err(StateError::conflict("this join token exists already; create another one"));
    }
    let kept = |t: &JoinTokenRecord| t.expires_at.saturating_add(EXPIRED_KEPT_MS) > at;
    let live = s.join_tokens.values().filter(|t| kept(t)).count();
    if live >= JOIN_TOKEN_LIMIT {
        return Err(StateError::conflict(format!(
            "the cluster keeps at most {JOIN_TOKEN_LIMIT} join tokens and has that many; wait for some to expire \
             (a day after their expiry they are dropped) or join nodes with the ones you have"
        )));
    }
    let dropped: Vec<String> = s.join_tokens.iter().filter(|(_, t)| !kept(t)).map(|(k, _)| k.clone()).collect();
    for k in dropped {
        s.join_tokens.remove(&k);
    }
    s.join_tokens.insert(
        token_hash.to_string(),
        JoinTokenRecord { created_at: at, created_by: by.to_string(), expires_at, uses, used: 0 },
    );
    crate::apply::event(
        s,
        at,
        by,
        "join-token-created",
        None,
        None,
        None,
        format!(
            "join token created: admits {uses} node{}, expires in {} s",
            if uses == 1 { "" } else { "s" },
            expires_at.saturating_sub(at) / 1000
        ),
    );
    Ok(Reply::None)
}

/// How many hex digits of a join token's hash name it (`haven cluster token list`): its id.
pub const JOIN_TOKEN_ID_LEN: usize = 12;

/// `RevokeJoinToken`: the token is dropped (a join with it is then "not valid").
pub(crate) fn revoke_join_token(s: &mut State, at: Millis, by: &str, token_hash: &str) -> Response {
    let id = token_hash.get(..JOIN_TOKEN_ID_LEN).unwrap_or(token_hash);
    if s.join_tokens.remove(token_hash).is_none() {
        return Err(StateError {
            code: crate::ErrorCode::NotFound,
            message: format!("no join token with id {id:?}; `haven cluster token list` shows the ones kept"),
            field: None,
        });
    }
    crate::apply::event(s, at, by, "join-token-revoked", None, None, None, format!("join token {id} revoked"));
    Ok(Reply::None)
}

/// `JoinNode`: the token's use, the node and its certificate, in one change.
pub(crate) fn join_node(
    s: &mut State,
    req_at: Millis,
    by: &str,
    node: &Node,
    token_hash: &str,
    serial: &str,
    ca: Option<&str>,
) -> Response {
    check_join_token(s, token_hash, req_at).map_err(StateError::conflict)?;
    validate_serial(serial)?;
    let ca = validate_ca_ref(s, ca)?;
    if s.revoked_certs.contains_key(serial) {
        return Err(invalid("cert_serial", format!("certificate serial {serial} is revoked; issue a new one")));
    }
    let reply = crate::apply::add_node(s, req_at, by, node)?;
    if let Some(t) = s.join_tokens.get_mut(token_hash) {
        t.used += 1;
    }
    s.node_certs
        .insert(node.name.clone(), NodeCert { serial: serial.to_string(), issued_at: req_at, ca, renew: false });
    Ok(reply)
}

/// The fingerprint a certificate record names: 64 hex digits, of a CA the cluster trusts
/// once the state keeps them.
fn validate_ca_ref(s: &State, ca: Option<&str>) -> Result<String, StateError> {
    let Some(ca) = ca else { return Ok(String::new()) };
    if !is_hex(ca, 64, 64) {
        return Err(invalid("ca", "ca must be the 64 lower-case hex digits of a CA certificate's SHA-256".into()));
    }
    if !s.cas.is_empty() && !s.cas.iter().any(|c| c.fingerprint == ca) {
        return Err(invalid(
            "ca",
            format!("the CA {ca} is not one the cluster trusts (`haven cluster ca status` lists them)"),
        ));
    }
    Ok(ca.to_string())
}

fn validate_serial(serial: &str) -> Result<(), StateError> {
    if is_hex(serial, 2, 40) {
        Ok(())
    } else {
        Err(invalid("cert_serial", format!("certificate serial {serial:?} is not 2 to 40 lower-case hex digits")))
    }
}

/// `RecordNodeCert`: the founding node's own certificate (joined nodes get theirs with
/// `JoinNode`).
pub(crate) fn record_node_cert(
    s: &mut State,
    at: Millis,
    by: &str,
    node: &str,
    serial: &str,
    ca: Option<&str>,
) -> Response {
    if !s.nodes.contains_key(node) {
        return Err(StateError::not_found("node", node));
    }
    validate_serial(serial)?;
    if s.revoked_certs.contains_key(serial) {
        return Err(invalid("serial", format!("certificate serial {serial} is revoked; renew again")));
    }
    let ca = validate_ca_ref(s, ca)?;
    let mut message = None;
    if let Some(old) = s.node_certs.get(node)
        && old.serial != serial
    {
        s.revoked_certs.insert(old.serial.clone(), RevokedCert { node: node.to_string(), revoked_at: at });
        message = Some(format!(
            "node {node:?} has a new certificate (serial {serial}{}); the old one (serial {}) is revoked",
            if ca.is_empty() { String::new() } else { format!(", CA {}", short(&ca)) },
            old.serial
        ));
    }
    s.node_certs.insert(node.to_string(), NodeCert { serial: serial.to_string(), issued_at: at, ca, renew: false });
    if let Some(message) = message {
        crate::apply::event(s, at, by, "node-cert-renewed", Some(node), None, None, message);
    }
    Ok(Reply::None)
}

/// The first 16 hex digits of a fingerprint, for history lines.
fn short(fingerprint: &str) -> &str {
    &fingerprint[..fingerprint.len().min(16)]
}

/// `RenewNodeCert`.
pub(crate) fn renew_node_cert(s: &mut State, at: Millis, by: &str, node: &str) -> Response {
    if !s.nodes.contains_key(node) {
        return Err(StateError::not_found("node", node));
    }
    let Some(cert) = s.node_certs.get_mut(node) else {
        return Err(StateError::conflict(format!(
            "node {node:?} has no certificate on record (it joined before certificates existed); remove it and \
             join it again"
        )));
    };
    cert.renew = true;
    let message = format!("a new certificate was asked for node {node:?}: its agent renews it, the old one is revoked");
    crate::apply::event(s, at, by, "node-cert-renewal-requested", Some(node), None, None, message);
    Ok(Reply::None)
}

fn validate_ca(field: &str, ca: &ClusterCa) -> Result<(), StateError> {
    if !is_hex(&ca.fingerprint, 64, 64) {
        return Err(invalid(field, format!("{field}.fingerprint must be 64 lower-case hex digits")));
    }
    for (what, pem) in [("certificate", Some(&ca.certificate)), ("cross_certificate", ca.cross_certificate.as_ref())] {
        if let Some(pem) = pem
            && (pem.len() > CA_PEM_MAX || !pem.starts_with("-----BEGIN CERTIFICATE-----"))
        {
            return Err(invalid(
                field,
                format!("{field}.{what} must be one PEM certificate of at most {CA_PEM_MAX} bytes"),
            ));
        }
    }
    haven_model::validate_name(&format!("{field}.holder"), &ca.holder).map_err(|e| invalid(field, e.to_string()))
}

/// `RotateCa`: the new CA signs from now on; the one before stays trusted until retired.
pub(crate) fn rotate_ca(s: &mut State, at: Millis, by: &str, ca: &ClusterCa, previous: Option<&ClusterCa>) -> Response {
    crate::apply::require_cluster(s)?;
    validate_ca("ca", ca)?;
    if let Some(p) = previous {
        validate_ca("previous", p)?;
    }
    if s.cas.len() > 1 {
        return Err(StateError::conflict(format!(
            "a CA rotation is in progress: the cluster trusts CA {} and CA {}; retire the old one first \
             (`haven cluster ca retire {}`, once `haven cluster ca status` shows every node renewed)",
            short(&s.cas[0].fingerprint),
            short(&s.cas[1].fingerprint),
            s.cas[1].fingerprint
        )));
    }
    if ca.cross_certificate.is_none() {
        return Err(invalid("ca", "ca.cross_certificate is required: the new CA certified by the current one".into()));
    }
    let old = match (s.cas.first(), previous) {
        (Some(cur), None) => cur.clone(),
        (Some(cur), Some(p)) if cur.fingerprint == p.fingerprint => cur.clone(),
        (Some(cur), Some(_)) => {
            return Err(StateError::conflict(format!(
                "the cluster's signing CA is {}, not the previous CA given; retry (the rotation raced another)",
                short(&cur.fingerprint)
            )));
        }
        (None, Some(p)) => p.clone(),
        (None, None) => {
            return Err(invalid("previous", "previous is required: the cluster's CAs are not in the state yet".into()));
        }
    };
    if old.fingerprint == ca.fingerprint {
        return Err(invalid("ca", "the new CA is the current one".into()));
    }
    let message = format!(
        "CA rotation: CA {} signs from now on, CA {} stays trusted until it is retired; every node renews its \
         certificate",
        short(&ca.fingerprint),
        short(&old.fingerprint)
    );
    s.cas = vec![ca.clone(), old];
    crate::apply::event(s, at, by, "ca-rotated", None, None, None, message);
    Ok(Reply::None)
}

/// `RetireCa`.
pub(crate) fn retire_ca(s: &mut State, at: Millis, by: &str, fingerprint: &str) -> Response {
    let Some(i) = s.cas.iter().position(|c| c.fingerprint == fingerprint) else {
        return Err(StateError {
            code: crate::ErrorCode::NotFound,
            message: format!(
                "the cluster trusts no CA with fingerprint {fingerprint} (or keeps one CA only, which signs); \
                 `haven cluster ca status` lists them"
            ),
            field: Some("fingerprint".into()),
        });
    };
    if i == 0 {
        return Err(StateError::conflict(format!(
            "CA {} is the one that signs; only an older CA can be retired (`haven cluster ca rotate` makes a new one)",
            short(fingerprint)
        )));
    }
    let signing = s.cas[0].fingerprint.clone();
    let behind: Vec<String> = s
        .node_certs
        .iter()
        .filter(|(name, c)| s.nodes.contains_key(*name) && c.ca != signing)
        .map(|(name, _)| name.clone())
        .collect();
    if !behind.is_empty() {
        return Err(StateError::conflict(format!(
            "nodes {} still have certificates the new CA did not sign; wait until they renewed (`haven cluster ca status` \
             shows progress; a node that is down renews when it is back) or remove them",
            crate::apply::quoted(&behind)
        )));
    }
    s.cas.remove(i);
    let message = format!("CA {} retired: certificates it signed are refused from now on", short(fingerprint));
    crate::apply::event(s, at, by, "ca-retired", None, None, None, message);
    Ok(Reply::None)
}

/// Part of `RemoveNode`: the removed node's certificate is revoked everywhere.
pub(crate) fn revoke_node_cert(s: &mut State, at: Millis, node: &str) {
    if let Some(cert) = s.node_certs.remove(node) {
        s.revoked_certs.insert(cert.serial, RevokedCert { node: node.to_string(), revoked_at: at });
    }
}

/// The history line of a revocation, if `node` had a certificate.
pub(crate) fn revoked_note(s: &State, node: &str) -> Option<String> {
    s.node_certs.get(node).map(|c| format!("; its certificate (serial {}) is revoked", c.serial))
}

#[cfg(test)]
mod tests {
    use haven_model::{Capacity, NodeLiveness, NodeRole};

    use super::*;
    use crate::{Command, Request};

    fn node(id: u64, name: &str) -> Node {
        Node {
            id,
            name: name.into(),
            address: format!("127.0.0.1:{}", 7400 + id),
            role: NodeRole::Voter,
            liveness: NodeLiveness::Up,
            paused: false,
            capacity: Capacity { cpus: 1, memory_mib: 1024 },
            since: 0,
        }
    }

    fn cluster() -> State {
        let mut s = State::default();
        let init = Command::InitCluster { name: "c".into(), node: node(1, "a") };
        s.apply(&Request::new(0, "operator", init)).expect("init");
        s
    }

    fn hash(c: char) -> String {
        std::iter::repeat_n(c, 64).collect()
    }

    fn join(s: &mut State, at: Millis, id: u64, name: &str, token: &str, serial: &str) -> Response {
        let cmd = Command::JoinNode {
            node: node(id, name),
            token_hash: token.into(),
            cert_serial: serial.into(),
            cert_ca: None,
        };
        s.apply(&Request::new(at, name, cmd))
    }

    #[test]
    fn a_single_use_token_admits_one_node_and_then_says_it_is_used_up() {
        let mut s = cluster();
        let create = Command::CreateJoinToken { token_hash: hash('a'), expires_at: 3_600_000, uses: 1 };
        s.apply(&Request::new(0, "operator", create)).expect("token created");
        join(&mut s, 1000, 2, "b", &hash('a'), "0b").expect("the first join");
        assert_eq!(s.node_certs.get("b").map(|c| c.serial.as_str()), Some("0b"));
        let e = join(&mut s, 2000, 3, "c", &hash('a'), "0c").unwrap_err();
        assert!(e.message.contains("used up"), "{e}");
        assert!(!s.nodes.contains_key("c"), "a refused join adds nothing");
        let e = join(&mut s, 2000, 3, "c", &hash('f'), "0c").unwrap_err();
        assert!(e.message.contains("not valid"), "{e}");
    }

    #[test]
    fn a_revoked_token_admits_nobody_and_says_it_may_have_been_revoked() {
        let mut s = cluster();
        let create = Command::CreateJoinToken { token_hash: hash('a'), expires_at: 3_600_000, uses: 5 };
        s.apply(&Request::new(0, "operator", create)).expect("token created");
        s.apply(&Request::new(1, "admin", Command::RevokeJoinToken { token_hash: hash('a') })).expect("revoked");
        assert!(
            s.history.back().is_some_and(|e| e.kind == "join-token-revoked" && e.message.contains(&hash('a')[..12]))
        );
        let e = join(&mut s, 1000, 2, "b", &hash('a'), "0b").unwrap_err();
        assert!(e.message.contains("revoked"), "{e}");
        let e = s.apply(&Request::new(2, "admin", Command::RevokeJoinToken { token_hash: hash('a') })).unwrap_err();
        assert!(e.message.contains("no join token with id"), "{e}");
    }

    #[test]
    fn an_expired_token_is_refused_and_bounds_are_checked() {
        let mut s = cluster();
        let create = Command::CreateJoinToken { token_hash: hash('a'), expires_at: 1000, uses: 2 };
        s.apply(&Request::new(0, "operator", create)).expect("token created");
        let e = join(&mut s, 5000, 2, "b", &hash('a'), "0b").unwrap_err();
        assert!(e.message.contains("expired 4 s ago"), "{e}");
        let too_long =
            Command::CreateJoinToken { token_hash: hash('b'), expires_at: JOIN_TOKEN_TTL_MAX_MS + 1, uses: 1 };
        let e = s.apply(&Request::new(0, "operator", too_long)).unwrap_err();
        assert_eq!(e.field.as_deref(), Some("ttl"), "{e}");
        let no_uses = Command::CreateJoinToken { token_hash: hash('b'), expires_at: 5000, uses: 0 };
        let e = s.apply(&Request::new(0, "operator", no_uses)).unwrap_err();
        assert!(e.message.contains("uses 0") && e.message.contains("1 to 100"), "{e}");
        let bad_hash = Command::CreateJoinToken { token_hash: "secret".into(), expires_at: 5000, uses: 1 };
        let e = s.apply(&Request::new(0, "operator", bad_hash)).unwrap_err();
        assert!(!e.message.contains("secret"), "the refusal does not quote the value: {e}");
    }

    #[test]
    fn removing_a_node_revokes_its_certificate() {
        let mut s = cluster();
        s.apply(&Request::new(0, "a", Command::RecordNodeCert { node: "a".into(), serial: "01".into(), ca: None }))
            .expect("the founder's certificate");
        let create = Command::CreateJoinToken { token_hash: hash('a'), expires_at: 3_600_000, uses: 1 };
        s.apply(&Request::new(0, "operator", create)).expect("token created");
        join(&mut s, 1000, 2, "b", &hash('a'), "0b").expect("joined");
        s.apply(&Request::new(2000, "operator", Command::RemoveNode { name: "b".into() })).expect("removed");
        assert!(is_revoked(&s, "0b"));
        assert!(!is_revoked(&s, "01"));
        assert!(s.history.back().is_some_and(|e| e.message.contains("serial 0b")), "{:?}", s.history.back());
    }
    fn ca(c: char, holder: &str, cross: bool) -> ClusterCa {
        ClusterCa {
            fingerprint: hash(c),
            certificate: format!("-----BEGIN CERTIFICATE-----\n{c}\n-----END CERTIFICATE-----\n"),
            cross_certificate: cross.then(|| "-----BEGIN CERTIFICATE-----\nx\n-----END CERTIFICATE-----\n".into()),
            added_at: 0,
            holder: holder.into(),
        }
    }

    fn record(s: &mut State, node: &str, serial: &str, ca: Option<char>) -> Response {
        let cmd = Command::RecordNodeCert { node: node.into(), serial: serial.into(), ca: ca.map(hash) };
        s.apply(&Request::new(0, node, cmd))
    }

    #[test]
    fn a_ca_rotation_makes_every_node_renew_and_the_old_ca_retires_only_after_the_last_renewal() {
        let mut s = cluster();
        record(&mut s, "a", "01", Some('1')).expect("the founder's certificate");
        let create = Command::CreateJoinToken { token_hash: hash('a'), expires_at: 3_600_000, uses: 1 };
        s.apply(&Request::new(0, "operator", create)).expect("token created");
        join(&mut s, 1000, 2, "b", &hash('a'), "0b").expect("joined (a certificate from before rotation)");
        assert!(!wants_new_cert(&s, "a") && !wants_new_cert(&s, "b"), "no rotation, no renewal");

        // The first rotation must bring the CA the cluster had, and a cross certificate.
        let rotate = |ca, previous| Command::RotateCa { ca, previous };
        let e = s.apply(&Request::new(0, "admin", rotate(ca('2', "a", true), None))).unwrap_err();
        assert_eq!(e.field.as_deref(), Some("previous"), "{e}");
        let e = s.apply(&Request::new(0, "admin", rotate(ca('2', "a", false), Some(ca('1', "a", false))))).unwrap_err();
        assert!(e.message.contains("cross_certificate"), "{e}");
        s.apply(&Request::new(0, "admin", rotate(ca('2', "a", true), Some(ca('1', "a", false))))).expect("rotated");
        assert_eq!(signing_ca(&s).map(|c| c.fingerprint.clone()), Some(hash('2')));
        assert_eq!(s.cas.len(), 2);
        assert!(wants_new_cert(&s, "a") && wants_new_cert(&s, "b"), "every node renews");
        let e = s.apply(&Request::new(0, "admin", rotate(ca('3', "a", true), None))).unwrap_err();
        assert!(e.message.contains("in progress"), "one rotation at a time: {e}");

        // Retiring waits for the last node; a certificate of an unknown CA is refused.
        let retire = |c| Command::RetireCa { fingerprint: hash(c) };
        let e = s.apply(&Request::new(0, "admin", retire('2'))).unwrap_err();
        assert!(e.message.contains("signs"), "the signing CA is not retired: {e}");
        let e = record(&mut s, "a", "02", Some('9')).unwrap_err();
        assert_eq!(e.field.as_deref(), Some("ca"), "{e}");
        record(&mut s, "a", "02", Some('2')).expect("a renewed");
        assert!(is_revoked(&s, "01"), "the renewed node's old certificate is revoked");
        assert!(!wants_new_cert(&s, "a") && wants_new_cert(&s, "b"));
        let e = s.apply(&Request::new(0, "admin", retire('1'))).unwrap_err();
        assert!(e.message.contains("\"b\""), "names the node still behind: {e}");
        record(&mut s, "b", "0c", Some('2')).expect("b renewed");
        let e = record(&mut s, "b", "0b", Some('2')).unwrap_err();
        assert!(e.message.contains("revoked"), "a revoked serial does not come back: {e}");
        s.apply(&Request::new(0, "admin", retire('1'))).expect("retired");
        assert_eq!(s.cas.iter().map(|c| c.fingerprint.clone()).collect::<Vec<_>>(), vec![hash('2')]);
        assert!(s.history.back().is_some_and(|e| e.kind == "ca-retired"));
    }

    #[test]
    fn an_admin_asked_renewal_is_pending_until_the_node_records_a_new_certificate() {
        let mut s = cluster();
        let renew = Command::RenewNodeCert { node: "a".into() };
        let e = s.apply(&Request::new(0, "admin", renew.clone())).unwrap_err();
        assert!(e.message.contains("no certificate on record"), "{e}");
        record(&mut s, "a", "01", None).expect("the founder's certificate");
        s.apply(&Request::new(0, "admin", renew)).expect("asked");
        assert!(wants_new_cert(&s, "a"));
        record(&mut s, "a", "02", None).expect("renewed");
        assert!(!wants_new_cert(&s, "a") && is_revoked(&s, "01"));
        let e = s.apply(&Request::new(0, "admin", Command::RenewNodeCert { node: "zz".into() })).unwrap_err();
        assert!(e.message.contains("zz"), "{e}");
    }
}
