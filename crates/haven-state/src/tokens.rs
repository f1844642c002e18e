//! API access in the replicated state: the API's bearer tokens and the audit trail of API
//! requests.
//!
//! A token is stored only as the SHA-256 hash of its secret, with its name, role, creator,
//! creation time and optional expiry: the agent makes the secret, shows it once and hashes
//! it; the state machine never sees a secret. Revoking a token removes it.
//!
//! Every API request that reaches the state machine carries its [`ApiOrigin`] (method, path,
//! client address); applying it records an `api-request` event with its outcome, in the same
//! log entry (see [`audit_committed`]). Requests that never reach it (refused by the API's
//! authentication, by validation, or served without a write) are recorded by the agent with
//! [`crate::Command::RecordAudit`], rate-limited there.

use haven_model::{InvalidInput, Millis};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::{ErrorCode, Event, Reply, Request, Response, State, StateError};

/// Most API tokens a cluster keeps.
pub const TOKEN_LIMIT: usize = 1000;

/// Most audit entries one `RecordAudit` command carries.
pub const AUDIT_BATCH_LIMIT: usize = 200;

/// Names `Request::by` uses for the cluster's own authors and for callers without a valid
/// token; no API token may be called so.
pub const RESERVED_TOKEN_NAMES: &[&str] =
    &["anonymous", "bootstrap", "controller", "fencer", "invalid-token", "operator", "test"];

/// What a token may do. Ordered: each role may do everything the ones below it may.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Every read.
    Reader,
    /// Reads, and running the cluster: moving groups, bringing them online or offline,
    /// pausing (draining) and resuming nodes, clearing failures, guest control.
    Operator,
    /// Everything: creating, changing and deleting groups, resources and VMs (the
    /// commands hosts run), fencing, tokens, membership, the HA wizard.
    Admin,
}

impl Role {
    pub fn as_str(&self) -> &'static str {
        match self {
            Role::Reader => "reader",
            Role::Operator => "operator",
            Role::Admin => "admin",
        }
    }
}

impl std::fmt::Display for Role {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An API token as the cluster keeps it: never its secret.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ApiToken {
    pub name: String,
    pub role: Role,
    /// SHA-256 of the secret, 64 lowercase hex digits.
    pub hash: String,
    pub created_at: Millis,
    /// Who created it (a token's name, or `bootstrap` for the first admin token).
    pub created_by: String,
    /// When it stops being accepted (ms since the epoch); none: never.
    pub expires_at: Option<Millis>,
}

impl ApiToken {
    pub fn expired(&self, now: Millis) -> bool {
        self.expires_at.is_some_and(|t| now >= t)
    }
}

/// Where an API request came from, as the agent that took it saw it. Carried in
/// [`Request::origin`]; never holds a secret (no header, no body, no query string).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ApiOrigin {
    /// `POST`, `DELETE`, ...
    pub method: String,
    /// The request's path (without the query string), at most 160 characters.
    pub path: String,
    /// The client's address (`ip:port`) as the agent that took the request saw it.
    pub client: String,
}

/// One API request in the history (`api-request` events): what was asked, from where, and
/// how it ended. Who asked is the event's `by`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct AuditRecord {
    pub method: String,
    pub path: String,
    pub client: String,
    /// The HTTP status of the answer (for a committed request: what the state machine's
    /// outcome maps to).
    pub status: u16,
    /// `ok`, or the error code of the refusal (`unauthorized`, `forbidden`, `not_found`, ...).
    pub outcome: String,
    /// Requests of the same kind from the same client folded into this entry by the agent's
    /// rate limit (0: this one alone).
    #[serde(default)]
    pub suppressed: u64,
}

impl AuditRecord {
    /// The record of a request from `origin` answered with `status` (`outcome`: `ok` or the
    /// refusal's code), alone (nothing folded into it).
    pub fn new(origin: &ApiOrigin, status: u16, outcome: &str) -> AuditRecord {
        AuditRecord {
            method: origin.method.clone(),
            path: origin.path.clone(),
            client: origin.client.clone(),
            status,
            outcome: outcome.to_string(),
            suppressed: 0,
        }
    }
}

/// An audit entry the agent records (`Command::RecordAudit`): a request that did not
/// reach the state machine.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditEntry {
    /// When the agent answered it (the agent's clock).
    pub at: Millis,
    /// The token's name, `anonymous` (no token) or `invalid-token`.
    pub by: String,
    pub record: AuditRecord,
}

/// The HTTP status and error code the API answers a refusal of class `code` with (one
/// table, used by the API and by the audit entries of committed requests).
pub fn api_status(code: ErrorCode) -> (u16, &'static str) {
    match code {
        ErrorCode::NotFound => (404, "not_found"),
        ErrorCode::AlreadyExists => (409, "already_exists"),
        ErrorCode::Invalid => (400, "invalid"),
        ErrorCode::Conflict => (409, "conflict"),
        ErrorCode::RequestIdReused => (422, "request_id_reused"),
    }
}

/// Checks a new token's name: a valid object name, not one of [`RESERVED_TOKEN_NAMES`].
pub fn validate_token_name(name: &str) -> Result<(), InvalidInput> {
    haven_model::validate_name("name", name)?;
    if RESERVED_TOKEN_NAMES.contains(&name) {
        return Err(InvalidInput::new(
            "name",
            format!(
                "{name:?} is reserved (the history uses it for {}); pick another token name",
                if name == "anonymous" || name == "invalid-token" {
                    "callers without a valid token"
                } else {
                    "the cluster's own changes"
                }
            ),
        ));
    }
    Ok(())
}

/// `CreateToken`: adds `token` (with the request's time and author), refusing a taken
/// name, a malformed hash or more than [`TOKEN_LIMIT`] tokens.
pub(crate) fn create(s: &mut State, req: &Request, token: &ApiToken) -> Response {
    if s.cluster.is_none() {
        return Err(StateError::conflict("the cluster is not initialized; run `haven cluster init` on the first node"));
    }
    validate_token_name(&token.name)?;
    if token.hash.len() != 64 || !token.hash.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)) {
        return Err(InvalidInput::new("hash", "is not a SHA-256 digest (64 lowercase hex digits)").into());
    }
    if s.api_tokens.contains_key(&token.name) {
        return Err(StateError::exists("token", &token.name));
    }
    if s.api_tokens.len() >= TOKEN_LIMIT {
        return Err(StateError::conflict(format!(
            "the cluster already has {TOKEN_LIMIT} API tokens; revoke unused ones first (`haven token list`, `haven \
             token revoke <name>`)"
        )));
    }
    if let Some(t) = token.expires_at.filter(|t| *t <= req.at) {
        return Err(InvalidInput::new("ttl", format!("the token would expire at {t}, before it is created")).into());
    }
    let stored = ApiToken {
        created_at: req.at,
        created_by: req.by.clone(),
        hash: token.hash.to_ascii_lowercase(),
        ..token.clone()
    };
    let expiry = match stored.expires_at {
        Some(t) => format!(", expires at {t} (ms since the epoch)"),
        None => ", never expires".to_string(),
    };
    let message = format!("API token {:?} created with role {}{expiry}", stored.name, stored.role);
    s.api_tokens.insert(stored.name.clone(), stored);
    crate::apply::event(s, req.at, &req.by, "token-created", None, None, None, message);
    Ok(Reply::None)
}

/// `RevokeToken`: removes the token; refuses to remove the last admin token that has not
/// expired (nobody could change the cluster any more).
pub(crate) fn revoke(s: &mut State, req: &Request, name: &str) -> Response {
    let Some(token) = s.api_tokens.get(name) else { return Err(StateError::not_found("token", name)) };
    let other_admin = s.api_tokens.values().any(|t| t.name != name && t.role == Role::Admin && !t.expired(req.at));
    if token.role == Role::Admin && !other_admin {
        return Err(StateError::conflict(format!(
            "token {name:?} is the last admin token that has not expired; create another one first (`haven token \
             create --name <name> --role admin`), then revoke this one"
        )));
    }
    s.api_tokens.remove(name);
    crate::apply::event(s, req.at, &req.by, "token-revoked", None, None, None, format!("API token {name:?} revoked"));
    Ok(Reply::None)
}

/// `RecordAudit`: an `api-request` event per entry, at most [`AUDIT_BATCH_LIMIT`].
pub(crate) fn record(s: &mut State, entries: &[AuditEntry]) -> Response {
    if entries.len() > AUDIT_BATCH_LIMIT {
        return Err(InvalidInput::new(
            "entries",
            format!("{} audit entries in one command, more than {AUDIT_BATCH_LIMIT}", entries.len()),
        )
        .into());
    }
    for e in entries {
        push(s, e.at, &e.by, e.record.clone());
    }
    Ok(Reply::None)
}

/// Records the outcome of a committed API request (one with an origin): called by
/// `State::apply` once the request was applied.
pub(crate) fn audit_committed(s: &mut State, req: &Request, origin: &ApiOrigin, response: &Response) {
    let refusal = match response {
        Err(e) => Some(e.code),
        // A batch (the founding of a cluster with its first token) is refused as a whole
        // only when malformed; otherwise its first refused command is its outcome.
        Ok(Reply::Batch(replies)) => replies.iter().find_map(|r| r.as_ref().err().map(|e| e.code)),
        Ok(_) => None,
    };
    let (status, outcome) = match refusal {
        Some(code) => api_status(code),
        None => (200, "ok"),
    };
    push(s, req.at, &req.by, AuditRecord::new(origin, status, outcome));
}

fn push(s: &mut State, at: Millis, by: &str, record: AuditRecord) {
    let folded =
        if record.suppressed > 0 { format!(" (and {} more like it)", record.suppressed) } else { String::new() };
    let message = format!(
        "{} {} from {}: {} {}{folded}",
        record.method, record.path, record.client, record.status, record.outcome
    );
    crate::apply::event(s, at, by, "api-request", None, None, None, message);
    if let Some(last) = s.history.back_mut() {
        last.audit = Some(record);
    }
}

/// Whether `e` is an audit entry (an `api-request` event).
pub fn is_audit(e: &Event) -> bool {
    e.audit.is_some()
}
