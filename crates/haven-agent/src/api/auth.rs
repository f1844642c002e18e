//! Who may call the API: bearer tokens, the one table of what each route needs
//! ([`required_access`]), the middleware that enforces it ([`layer`]), the limit on failed
//! authentication per client address, and the audit of API requests that never reach the
//! state machine ([`Guard`], written by [`audit_writer`]).
//!
//! A token is `hvn_` and 43 base64url characters (256 random bits); the cluster keeps only
//! its SHA-256 hash ([`haven_state::ApiToken`]). Every `/api/v1` route and `/metrics` asks
//! for a role, except the few in [`RULES`] marked [`Access::Public`] (the OpenAPI
//! document, the cluster status) or [`Access::Bootstrap`] (founding or joining a cluster,
//! only while this node has none). `/internal/*` and Raft's routes are peer traffic and
//! not handled here.
//!
//! The answer to a refused call: 401 (no token, an unknown, revoked or expired one) naming
//! the fix; 403 naming the role needed; 429 with `Retry-After` once an address has sent
//! [`FAILED_AUTH_LIMIT`] bad tokens within [`FAILED_AUTH_WINDOW`]. It never quotes the
//! token. Every write (any method but GET/HEAD/OPTIONS), refused or not, is recorded in the
//! history: by the state machine when it reaches it (the request's [`ApiOrigin`]), else by
//! this module's audit queue, which records at most [`AUDIT_PER_SECOND`] refused calls per
//! client address a second and counts the rest into one summary entry.

use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::{ConnectInfo, MatchedPath, OriginalUri, Request, State as AxState};
use axum::http::{HeaderMap, HeaderValue, Method, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use haven_state::{ApiOrigin, AuditEntry, AuditRecord, Command, Role};
use sha2::{Digest, Sha256};
use tokio::time::Instant;

use super::ApiError;
use crate::{Agent, now_ms};

/// What a route asks of its caller.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Access {
    /// Anyone: nothing here changes or reveals the cluster's objects.
    Public,
    /// Anyone while this node belongs to no cluster (it has no tokens to check yet); an
    /// admin once it does.
    Bootstrap,
    /// A token with this role or a higher one.
    Role(Role),
}

use Access::{Bootstrap, Public};
const READER: Access = Access::Role(Role::Reader);
const OPERATOR: Access = Access::Role(Role::Operator);
const ADMIN: Access = Access::Role(Role::Admin);

/// Every route and what it needs: the one table. A route missing here is refused to all
/// but admins (and fails the table test over the OpenAPI document).
pub const RULES: &[(&str, &str, Access)] = &[
    ("GET", "/api/v1/openapi.json", Public),
    ("GET", "/api/v1/cluster", Public),
    ("POST", "/api/v1/cluster/init", Bootstrap),
    ("POST", "/api/v1/cluster/join", Bootstrap),
    ("POST", "/api/v1/cluster/join-tokens", ADMIN),
    ("GET", "/api/v1/cluster/join-tokens", READER),
    ("DELETE", "/api/v1/cluster/join-tokens/{id}", ADMIN),
    ("GET", "/api/v1/cluster/ca", READER),
    ("POST", "/api/v1/cluster/ca/rotate", ADMIN),
    ("POST", "/api/v1/cluster/ca/retire", ADMIN),
    ("GET", "/api/v1/nodes", READER),
    ("GET", "/api/v1/nodes/{name}", READER),
    ("DELETE", "/api/v1/nodes/{name}", ADMIN),
    ("POST", "/api/v1/nodes/{name}/pause", OPERATOR),
    ("POST", "/api/v1/nodes/{name}/resume", OPERATOR),
    ("POST", "/api/v1/nodes/{name}/renew-certificate", ADMIN),
    ("PUT", "/api/v1/nodes/{name}/fence", ADMIN),
    ("DELETE", "/api/v1/nodes/{name}/fence", ADMIN),
    ("GET", "/api/v1/groups", READER),
    ("POST", "/api/v1/groups", ADMIN),
    ("GET", "/api/v1/groups/{name}", READER),
    ("PATCH", "/api/v1/groups/{name}", ADMIN),
    ("DELETE", "/api/v1/groups/{name}", ADMIN),
    ("POST", "/api/v1/groups/{name}/move", OPERATOR),
    ("POST", "/api/v1/groups/{name}/online", OPERATOR),
    ("POST", "/api/v1/groups/{name}/offline", OPERATOR),
    ("GET", "/api/v1/resources", READER),
    ("POST", "/api/v1/resources", ADMIN),
    ("GET", "/api/v1/resources/{name}", READER),
    ("PATCH", "/api/v1/resources/{name}", ADMIN),
    ("DELETE", "/api/v1/resources/{name}", ADMIN),
    ("POST", "/api/v1/resources/{name}/clear", OPERATOR),
    ("GET", "/api/v1/history", READER),
    ("GET", "/api/v1/requests/{id}", READER),
    ("GET", "/api/v1/vms", READER),
    ("POST", "/api/v1/vms", ADMIN),
    ("POST", "/api/v1/vms/make-ha", ADMIN),
    ("GET", "/api/v1/vms/{name}", READER),
    ("POST", "/api/v1/vms/{name}/guest-control", OPERATOR),
    ("GET", "/api/v1/vms/{name}/console", READER),
    ("PUT", "/api/v1/vms/{name}/definition", ADMIN),
    ("GET", "/api/v1/tokens", ADMIN),
    ("POST", "/api/v1/tokens", ADMIN),
    ("DELETE", "/api/v1/tokens/{name}", ADMIN),
    ("GET", "/metrics", READER),
];

/// What `method` on the route `route` (its pattern, e.g. `/api/v1/groups/{name}`) needs;
/// `None` for a route [`RULES`] does not list. HEAD is GET.
pub fn required_access(method: &Method, route: &str) -> Option<Access> {
    let method = if method == Method::HEAD { "GET" } else { method.as_str() };
    RULES.iter().find(|(m, r, _)| *m == method && *r == route).map(|(_, _, a)| *a)
}

/// Bad tokens one client address may send within [`FAILED_AUTH_WINDOW`] before it gets 429.
pub const FAILED_AUTH_LIMIT: u32 = 10;
/// The window of [`FAILED_AUTH_LIMIT`]; an address over the limit waits until it ends.
pub const FAILED_AUTH_WINDOW: Duration = Duration::from_secs(60);
/// Refused writes recorded one by one per client address and second; the rest are counted
/// into one summary entry per address.
pub const AUDIT_PER_SECOND: u32 = 5;
/// Audit entries waiting to be written at most; more are counted and summarised.
const AUDIT_QUEUE_LIMIT: usize = 1000;
/// Client addresses tracked at most by each limit (older entries are dropped first).
const TRACKED_ADDRESSES: usize = 10_000;
/// How often the audit queue is written (one commit for all that waits).
const AUDIT_FLUSH: Duration = Duration::from_millis(250);

/// The secret of a new API token: `hvn_` and 43 base64url characters of 256 random bits.
pub fn new_secret() -> Result<String, ApiError> {
    use std::io::Read;
    let mut bytes = [0u8; 32];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut bytes))
        .map_err(|e| ApiError::new(500, "internal", format!("cannot read /dev/urandom for a token: {e}")))?;
    Ok(format!("hvn_{}", base64url(&bytes)))
}

/// The SHA-256 of `secret`, as the cluster stores it (64 lowercase hex digits).
pub fn hash_secret(secret: &str) -> String {
    Sha256::digest(secret.as_bytes()).iter().map(|b| format!("{b:02x}")).collect()
}

/// Base64url without padding (RFC 4648 §5).
fn base64url(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let n = chunk.iter().enumerate().fold(0u32, |n, (i, b)| n | (u32::from(*b) << (16 - 8 * i)));
        for i in 0..=chunk.len() {
            out.push(ALPHABET[((n >> (18 - 6 * i)) & 63) as usize] as char);
        }
    }
    out
}

/// The caller of the API request this task serves: who (its token's name), from where,
/// and whether the request was committed (then the state machine recorded it).
pub(crate) struct Caller {
    pub(crate) name: String,
    pub(crate) origin: ApiOrigin,
    /// The `Authorization` header as the caller sent it, for a request forwarded to another
    /// agent on its behalf.
    authorization: Option<HeaderValue>,
    committed: AtomicU32,
}

impl Caller {
    /// Called by `Agent::submit` when the state machine answered one of this caller's
    /// writes: its outcome is in the history already.
    pub(crate) fn committed(&self) {
        self.committed.fetch_add(1, Ordering::Relaxed);
    }
}

tokio::task_local! {
    static CALLER: Arc<Caller>;
}

/// The caller of the API request this task serves, if it serves one.
pub(crate) fn current() -> Option<Arc<Caller>> {
    CALLER.try_with(Arc::clone).ok()
}

/// The `Authorization` header to send with a request forwarded to another agent on behalf
/// of the caller this task serves.
pub(crate) fn forwarded_authorization() -> Option<HeaderValue> {
    current().and_then(|c| c.authorization.clone())
}

/// Why a call was refused, and who the history says made it.
struct Refusal {
    by: String,
    error: Box<ApiError>,
    headers: Vec<(header::HeaderName, HeaderValue)>,
}

impl Refusal {
    fn unauthorized(by: &str, message: String) -> Refusal {
        Refusal {
            by: by.to_string(),
            error: Box::new(ApiError::new(401, "unauthorized", message)),
            headers: vec![(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer realm=\"haven\""))],
        }
    }

    fn into_response(self) -> Response {
        let mut resp = (*self.error).into_response();
        for (k, v) in self.headers {
            resp.headers_mut().insert(k, v);
        }
        resp
    }
}

/// How to pass a token: the end of every 401 message.
const TOKEN_FIX: &str = "pass one with `--token` or HAVEN_TOKEN (the CLI also reads `token` from \
                         ~/.config/haven/cli.toml), as `Authorization: Bearer <token>`; an admin creates tokens with \
                         `haven token create --name <name> --role reader|operator|admin`";

/// The shared state of the limits: failed authentication and the audit queue.
#[derive(Default)]
pub struct Guard {
    failures: Mutex<HashMap<IpAddr, Window>>,
    audit: Mutex<AuditQueue>,
    wake: tokio::sync::Notify,
}

/// Failed authentications of one address in its current window.
#[derive(Clone, Copy)]
struct Window {
    start: Instant,
    count: u32,
}

#[derive(Default)]
struct AuditQueue {
    entries: Vec<AuditEntry>,
    /// Refused writes recorded in the current second, per address.
    recorded: HashMap<IpAddr, Window>,
    /// Refused writes not recorded one by one, per address: how many, and the last one.
    suppressed: BTreeMap<String, (u64, AuditEntry)>,
    /// Entries dropped because the queue was full.
    overflow: u64,
}

impl Guard {
    /// `Some(seconds to wait)` if `ip` sent too many bad tokens lately.
    fn blocked(&self, ip: IpAddr, now: Instant) -> Option<u64> {
        let map = self.failures.lock().ok()?;
        let w = map.get(&ip)?;
        let ends = w.start + FAILED_AUTH_WINDOW;
        (w.count >= FAILED_AUTH_LIMIT && now < ends).then(|| ends.duration_since(now).as_secs().max(1))
    }

    fn failed(&self, ip: IpAddr, now: Instant) {
        let Ok(mut map) = self.failures.lock() else { return };
        bump(&mut map, ip, now, FAILED_AUTH_WINDOW);
    }

    /// Queues `entry` for the history. A refused one (`limited`) counts against its
    /// address's [`AUDIT_PER_SECOND`].
    fn record(&self, ip: Option<IpAddr>, entry: AuditEntry, limited: bool, now: Instant) {
        let Ok(mut q) = self.audit.lock() else { return };
        if limited && let Some(ip) = ip {
            let count = bump(&mut q.recorded, ip, now, Duration::from_secs(1));
            if count > AUDIT_PER_SECOND {
                let slot = q.suppressed.entry(client_ip(&entry.record)).or_insert((0, entry.clone()));
                slot.0 += 1;
                slot.1 = entry;
                return;
            }
        }
        if q.entries.len() >= AUDIT_QUEUE_LIMIT {
            q.overflow += 1;
            return;
        }
        q.entries.push(entry);
        drop(q);
        self.wake.notify_one();
    }

    /// Everything waiting, the summaries included; empties the queue.
    fn take(&self) -> Vec<AuditEntry> {
        let Ok(mut q) = self.audit.lock() else { return Vec::new() };
        let mut out = std::mem::take(&mut q.entries);
        for (_, (n, mut last)) in std::mem::take(&mut q.suppressed) {
            // The summary stands for the last refused call and the others before it.
            last.record.suppressed = n - 1;
            out.push(last);
        }
        if q.overflow > 0 {
            tracing::warn!(dropped = q.overflow, "audit queue full: API requests not recorded in the history");
            q.overflow = 0;
        }
        out
    }
}

/// Counts one more event of `ip` in its window of `len` (a new window once the last one
/// ended) and returns the count; keeps at most [`TRACKED_ADDRESSES`] addresses.
fn bump(map: &mut HashMap<IpAddr, Window>, ip: IpAddr, now: Instant, len: Duration) -> u32 {
    if map.len() >= TRACKED_ADDRESSES && !map.contains_key(&ip) {
        map.retain(|_, w| now < w.start + len);
        if map.len() >= TRACKED_ADDRESSES {
            map.clear();
        }
    }
    let w = map.entry(ip).or_insert(Window { start: now, count: 0 });
    if now >= w.start + len {
        *w = Window { start: now, count: 0 };
    }
    w.count = w.count.saturating_add(1);
    w.count
}

/// The client's address without the port: what the summaries are kept by.
fn client_ip(record: &AuditRecord) -> String {
    record.client.parse::<SocketAddr>().map(|a| a.ip().to_string()).unwrap_or_else(|_| record.client.clone())
}

/// `ms` since the epoch as RFC 3339 UTC, to the second.
pub(crate) fn time_text(ms: u64) -> String {
    humantime::format_rfc3339_seconds(std::time::UNIX_EPOCH + Duration::from_millis(ms)).to_string()
}

/// Writes the audit queue into the history, one commit per [`AUDIT_FLUSH`] at most, until
/// the task is aborted. An entry that cannot be committed (no quorum, no cluster yet) is
/// dropped: the queue stays bounded.
pub async fn audit_writer(agent: Arc<Agent>) {
    loop {
        agent.guard.wake.notified().await;
        tokio::time::sleep(AUDIT_FLUSH).await;
        let entries = agent.guard.take();
        if entries.is_empty() || agent.db.state().cluster.is_none() {
            continue;
        }
        for chunk in entries.chunks(haven_state::tokens::AUDIT_BATCH_LIMIT) {
            if let Err(e) = agent.submit(agent.name(), Command::RecordAudit { entries: chunk.to_vec() }).await {
                tracing::warn!(entries = chunk.len(), error = %e, "could not record API requests in the history");
            }
        }
        // Summaries wait for the next write, so that a flood is folded rather than woken for.
        if !agent.guard.audit.lock().map(|q| q.suppressed.is_empty()).unwrap_or(true) {
            agent.guard.wake.notify_one();
        }
    }
}

/// Where the leader writes the admin token it makes for a cluster that has none.
pub const UPGRADE_TOKEN_FILE: &str = "admin.token";

/// A cluster founded before API tokens existed has none, and nobody could call its API:
/// the leader (only it, once) makes an admin token called `admin` and writes its secret to
/// `<state_dir>/admin.token` (mode 0600), for whoever is root on that host. Does nothing
/// on a cluster with tokens (one founded now gets its first with the founding). Checks
/// every 2 s for 10 minutes at most.
pub async fn first_token_for_an_upgraded_cluster(agent: Arc<Agent>) {
    for _ in 0..300 {
        tokio::time::sleep(Duration::from_secs(2)).await;
        let state = agent.db.state();
        if state.cluster.is_none() || !agent.is_leader() {
            continue;
        }
        if !state.api_tokens.is_empty() {
            return;
        }
        let path = agent.config.state_dir.join(UPGRADE_TOKEN_FILE);
        let Ok((secret, token)) = super::tokens::mint(super::cluster::FIRST_TOKEN, Role::Admin, None) else { return };
        match agent.submit(agent.name(), Command::CreateToken { token }).await {
            Ok(_) => match write_private(&path, &format!("{secret}\n")) {
                Ok(()) => tracing::warn!(
                    file = %path.display(),
                    "this cluster had no API token: made the admin token \"admin\"; its secret is in the file (use it \
                     with --token or cli.toml, then delete the file)"
                ),
                Err(e) => tracing::error!(file = %path.display(), error = %e, "cannot write the new admin token"),
            },
            Err(e) => tracing::warn!(error = %e, "cannot make the first API token of this cluster; will try again"),
        }
    }
}

/// Writes `text` to a new file at `path` only its owner may read (mode 0600).
fn write_private(path: &std::path::Path, text: &str) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let _ = std::fs::remove_file(path);
    let mut f = std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(path)?;
    f.write_all(text.as_bytes())
}

/// The header in which a member forwarding a public request names its client's address.
pub(crate) const FORWARDED_CLIENT: &str = "x-haven-forwarded-client";

/// The client address of the API request this task serves, for a request forwarded on its
/// behalf (the address the first agent saw, without any "via").
pub(crate) fn forwarded_client() -> Option<String> {
    let caller = current()?;
    let client = caller.origin.client.split(' ').next().unwrap_or_default();
    client.parse::<SocketAddr>().ok().map(|a| a.to_string())
}

/// Middleware of every public route: authenticates the caller, checks its role against
/// [`RULES`], runs the handler as that caller (see [`current`]), and queues the audit entry
/// of a write the state machine did not record.
pub async fn layer(AxState(agent): AxState<Arc<Agent>>, req: Request, next: Next) -> Response {
    let method = req.method().clone();
    let route = req.extensions().get::<MatchedPath>().map(|m| m.as_str().to_string());
    let mut addr = req.extensions().get::<ConnectInfo<SocketAddr>>().map(|c| c.0);
    // A request another member forwarded names the client it came from: believed only from
    // a member's certificate (anyone else could claim any address).
    let mut via = None;
    if let Some(claimed) = req.headers().get(FORWARDED_CLIENT).and_then(|v| v.to_str().ok())
        && let Ok(client) = claimed.parse::<SocketAddr>()
        && let Some(member) = crate::listener::member_of(&agent, &req)
    {
        addr = Some(client);
        via = Some(member.name);
    }
    // Inside `/api/v1` the URI has lost its prefix; the original has it.
    let full_path = req.extensions().get::<OriginalUri>().map_or_else(|| req.uri().path(), |u| u.0.path());
    let client = addr.map_or_else(|| "unknown".to_string(), |a| a.to_string());
    let origin = ApiOrigin {
        method: method.to_string(),
        path: haven_api::body::shorten(full_path, 160),
        client: match via {
            Some(node) => format!("{client} via {node}"),
            None => client,
        },
    };
    let write = !matches!(method, Method::GET | Method::HEAD | Method::OPTIONS);
    let route = route.unwrap_or_else(|| req.uri().path().to_string());
    let access = required_access(&method, &route).unwrap_or_else(|| {
        tracing::warn!(%method, %route, "a route without a rule in api::auth::RULES; only admins may call it");
        ADMIN
    });
    let now = Instant::now();
    let decided = authenticate(&agent, access, req.headers(), addr.map(|a| a.ip()), now);
    let caller = match decided {
        Ok(name) => Arc::new(Caller {
            name,
            origin: origin.clone(),
            authorization: req.headers().get(header::AUTHORIZATION).cloned(),
            committed: AtomicU32::new(0),
        }),
        Err(refusal) => {
            if write {
                let record = AuditRecord::new(&origin, refusal.error.status, &refusal.error.code);
                let entry = AuditEntry { at: now_ms(), by: refusal.by.clone(), record };
                agent.guard.record(addr.map(|a| a.ip()), entry, true, now);
            }
            return refusal.into_response();
        }
    };
    let resp = CALLER.scope(caller.clone(), next.run(req)).await;
    if write && caller.committed.load(Ordering::Relaxed) == 0 {
        let status = resp.status().as_u16();
        let outcome = if status < 400 { "ok".to_string() } else { format!("HTTP {status}") };
        let entry =
            AuditEntry { at: now_ms(), by: caller.name.clone(), record: AuditRecord::new(&origin, status, &outcome) };
        agent.guard.record(addr.map(|a| a.ip()), entry, status >= 400, now);
    }
    resp
}

/// Who calls, if `access` lets them: the token's name (`anonymous` on a public route,
/// `bootstrap` on a bootstrap route of a node without a cluster), or the refusal.
fn authenticate(
    agent: &Agent,
    access: Access,
    headers: &HeaderMap,
    ip: Option<IpAddr>,
    now: Instant,
) -> Result<String, Refusal> {
    let needed = match access {
        Public => return Ok("anonymous".into()),
        Bootstrap if agent.db.state().cluster.is_none() && !agent.db.is_initialized() => {
            return Ok("bootstrap".into());
        }
        Bootstrap => Role::Admin,
        Access::Role(r) => r,
    };
    if let Some(wait) = ip.and_then(|ip| agent.guard.blocked(ip, now)) {
        let ip = ip.map(|i| i.to_string()).unwrap_or_default();
        return Err(Refusal {
            by: "invalid-token".into(),
            error: Box::new(ApiError::new(
                429,
                "too_many_requests",
                format!(
                    "{FAILED_AUTH_LIMIT} requests from {ip} came with an invalid API token within {} s; try again in \
                     {wait} s with a valid token",
                    FAILED_AUTH_WINDOW.as_secs()
                ),
            )),
            headers: vec![(header::RETRY_AFTER, HeaderValue::from(wait))],
        });
    }
    let fail = |message: String, by: &str| {
        if let Some(ip) = ip {
            agent.guard.failed(ip, now);
        }
        Refusal::unauthorized(by, message)
    };
    let Some(value) = headers.get(header::AUTHORIZATION) else {
        return Err(Refusal::unauthorized("anonymous", format!("this request needs an API token: {TOKEN_FIX}")));
    };
    // The scheme is case-insensitive (RFC 9110).
    let secret = value
        .to_str()
        .ok()
        .and_then(|v| v.trim().split_once(' '))
        .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
        .map(|(_, t)| t.trim())
        .filter(|t| !t.is_empty());
    let Some(secret) = secret else {
        return Err(fail(format!("the Authorization header is not `Bearer <token>`; {TOKEN_FIX}"), "invalid-token"));
    };
    let hash = hash_secret(secret);
    let state = agent.db.state();
    let Some(token) = state.api_tokens.values().find(|t| t.hash == hash) else {
        return Err(fail(format!("the API token is not valid (unknown or revoked); {TOKEN_FIX}"), "invalid-token"));
    };
    if token.expired(now_ms()) {
        let at = token.expires_at.map(time_text).unwrap_or_default();
        return Err(fail(
            format!("API token {:?} expired at {at}; ask an admin for a new one; {TOKEN_FIX}", token.name),
            &token.name,
        ));
    }
    if token.role < needed {
        return Err(Refusal {
            by: token.name.clone(),
            error: Box::new(ApiError::new(
                403,
                "forbidden",
                format!(
                    "this request needs the {needed} role; API token {:?} has the {} role; use a token with role \
                     {needed} (an admin creates one with `haven token create --name <name> --role {needed}`)",
                    token.name, token.role
                ),
            )),
            headers: Vec::new(),
        });
    }
    Ok(token.name.clone())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every operation of the OpenAPI document has a rule, and every rule an operation
    /// (but `/metrics` and the document itself, which it does not describe).
    #[test]
    fn every_route_of_the_openapi_document_has_exactly_one_rule() {
        let doc = super::super::openapi::openapi_document();
        let paths = doc["paths"].as_object().expect("paths");
        let mut seen = Vec::new();
        for (path, item) in paths {
            for method in item.as_object().expect("path item").keys() {
                let Ok(m) = method.to_uppercase().parse::<Method>() else { continue };
                if !["GET", "POST", "PUT", "PATCH", "DELETE"].contains(&m.as_str()) {
                    continue;
                }
                assert!(required_access(&m, path).is_some(), "{m} {path} has no rule in api::auth::RULES");
                seen.push((m.to_string(), path.clone()));
            }
        }
        for (m, r, _) in RULES {
            let n = RULES.iter().filter(|(m2, r2, _)| m2 == m && r2 == r).count();
            assert_eq!(n, 1, "{m} {r} has {n} rules");
            assert!(
                ["/metrics", "/api/v1/openapi.json"].contains(r) || seen.iter().any(|(sm, sr)| sm == m && sr == r),
                "{m} {r} has a rule but no operation in the OpenAPI document"
            );
        }
        assert!(seen.len() >= 35, "only {} operations documented", seen.len());
    }

    /// The roles the brief gives: reads for readers, running the cluster for operators,
    /// everything that changes what runs (and how) for admins.
    #[test]
    fn writes_that_change_commands_fencing_tokens_or_membership_are_admin_only() {
        for (m, r, a) in RULES {
            if *m == "GET" && !r.starts_with("/api/v1/tokens") {
                assert!(matches!(a, Public | Access::Role(Role::Reader)), "{m} {r}: a read, but {a:?}");
            }
        }
        let admin = [
            ("POST", "/api/v1/resources"),
            ("PATCH", "/api/v1/resources/{name}"),
            ("POST", "/api/v1/groups"),
            ("PUT", "/api/v1/nodes/{name}/fence"),
            ("DELETE", "/api/v1/nodes/{name}"),
            ("POST", "/api/v1/tokens"),
            ("POST", "/api/v1/cluster/join-tokens"),
            ("DELETE", "/api/v1/cluster/join-tokens/{id}"),
            ("POST", "/api/v1/cluster/ca/rotate"),
            ("POST", "/api/v1/cluster/ca/retire"),
            ("POST", "/api/v1/nodes/{name}/renew-certificate"),
            ("PUT", "/api/v1/vms/{name}/definition"),
            ("POST", "/api/v1/vms"),
            ("POST", "/api/v1/vms/make-ha"),
        ];
        for (m, r) in admin {
            assert_eq!(required_access(&m.parse().expect("method"), r), Some(ADMIN), "{m} {r}");
        }
        let operator: Vec<_> = RULES.iter().filter(|(_, _, a)| *a == OPERATOR).map(|(m, r, _)| (*m, *r)).collect();
        assert_eq!(
            operator,
            [
                ("POST", "/api/v1/nodes/{name}/pause"),
                ("POST", "/api/v1/nodes/{name}/resume"),
                ("POST", "/api/v1/groups/{name}/move"),
                ("POST", "/api/v1/groups/{name}/online"),
                ("POST", "/api/v1/groups/{name}/offline"),
                ("POST", "/api/v1/resources/{name}/clear"),
                ("POST", "/api/v1/vms/{name}/guest-control"),
            ],
            "operator routes (none of them takes a command a host runs)"
        );
        assert_eq!(required_access(&Method::HEAD, "/api/v1/groups"), Some(READER));
        assert_eq!(required_access(&Method::GET, "/api/v1/nope"), None);
    }

    #[test]
    fn secrets_are_256_bits_of_base64url_and_hashed_with_sha256() {
        let a = new_secret().expect("urandom");
        let b = new_secret().expect("urandom");
        assert_ne!(a, b);
        assert!(a.starts_with("hvn_") && a.len() == 4 + 43, "{a}");
        assert!(a[4..].bytes().all(|c| c.is_ascii_alphanumeric() || c == b'-' || c == b'_'), "{a}");
        assert_eq!(hash_secret("abc"), "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
        assert_eq!(base64url(b""), "");
        assert_eq!(base64url(b"f"), "Zg");
        assert_eq!(base64url(b"fo"), "Zm8");
        assert_eq!(base64url(b"foo"), "Zm9v");
        assert_eq!(base64url(b"foob"), "Zm9vYg");
        assert_eq!(base64url(&[0xfb, 0xff]), "-_8");
    }

    #[test]
    fn an_address_is_blocked_after_the_limit_until_its_window_ends() {
        let g = Guard::default();
        let ip: IpAddr = "10.0.0.1".parse().expect("ip");
        let other: IpAddr = "10.0.0.2".parse().expect("ip");
        let t0 = Instant::now();
        for _ in 0..FAILED_AUTH_LIMIT - 1 {
            g.failed(ip, t0);
        }
        assert_eq!(g.blocked(ip, t0), None);
        g.failed(ip, t0);
        assert_eq!(g.blocked(ip, t0), Some(FAILED_AUTH_WINDOW.as_secs()));
        assert_eq!(g.blocked(other, t0), None);
        assert_eq!(g.blocked(ip, t0 + FAILED_AUTH_WINDOW), None);
    }

    #[test]
    fn refused_writes_beyond_the_rate_are_folded_into_one_summary_per_address() {
        let g = Guard::default();
        let t0 = Instant::now();
        let entry = |client: &str, status: u16| AuditEntry {
            at: 1,
            by: "anonymous".into(),
            record: AuditRecord {
                method: "POST".into(),
                path: "/api/v1/groups".into(),
                client: client.into(),
                status,
                outcome: "unauthorized".into(),
                suppressed: 0,
            },
        };
        let ip: IpAddr = "10.0.0.1".parse().expect("ip");
        for _ in 0..100 {
            g.record(Some(ip), entry("10.0.0.1:5000", 401), true, t0);
        }
        // Accepted writes are never folded.
        for _ in 0..10 {
            g.record(Some(ip), entry("10.0.0.1:5000", 200), false, t0);
        }
        let out = g.take();
        assert_eq!(out.len(), AUDIT_PER_SECOND as usize + 10 + 1, "{out:?}");
        let summary = out.last().expect("summary");
        assert_eq!(summary.record.suppressed, 100 - u64::from(AUDIT_PER_SECOND) - 1);
        assert!(g.take().is_empty());
        // A new second records again.
        g.record(Some(ip), entry("10.0.0.1:5000", 401), true, t0 + Duration::from_secs(1));
        assert_eq!(g.take().len(), 1);
    }
}
