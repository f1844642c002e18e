//! A small JSON-over-HTTP client for `/api/v1`, used by the CLI and the tests.
//!
//! A client knows one or more servers (agents of the same cluster) and sends each request
//! to one of them: the one that answered last, else the first. When a server cannot be
//! reached it tries the next, but only when that is safe: a read (GET) on any transport
//! failure, a write only when the connection was never made — otherwise the write may have
//! reached the first server; it is then reported as possibly applied, with its key to look
//! it up. An HTTP error is an answer and is returned as it is, never retried elsewhere.
//!
//! Every write carries an `Idempotency-Key`: a random key made once per client (one per
//! CLI invocation) with a counter per write, the same on every server it is sent to, so the
//! cluster applies each at most once. [`Client::with_idempotency_key`] gives a client whose
//! writes all carry one key of the caller's choosing (to retry a write whose outcome is
//! unknown).
//!
//! A client made [`Client::with_token`] sends its API token on every request, as
//! `Authorization: Bearer <token>`; the token is never part of an error message.
//!
//! This module is the transport: methods that take a path. The operations of the API, one
//! method each with its wire types, are in [`crate::routes`]; call those. The path-taking
//! methods stay public for the agent's forwarding and for tests that send raw or malformed
//! requests on purpose.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicUsize, Ordering};
use std::time::Duration;

use reqwest::Method;
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::ErrorBody;

/// Why a call failed: the agent refused it (with its message), or no agent could be reached.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("{message}")]
    Api { status: u16, code: String, message: String, field: Option<String> },
    /// No server answered; `tried` holds every server the request was sent to, in order,
    /// with why it did not answer. `may_be_applied`: a write got as far as the last one
    /// (the connection was made), so it may have been applied there; it was not sent on.
    #[error("{}", unreachable_message(tried, *may_be_applied))]
    Unreachable { tried: Vec<Unanswered>, may_be_applied: bool },
    #[error("unexpected answer from {url}: {reason}")]
    Protocol { url: String, reason: String },
}

/// A server that did not answer a request, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unanswered {
    /// `http://host:port` (or `https://`).
    pub server: String,
    pub reason: String,
}

fn unreachable_message(tried: &[Unanswered], may_be_applied: bool) -> String {
    const FIX: &str = "is `haven agent` running there? (set --server or HAVEN_SERVER; \
                       several agents, separated by commas, are tried in turn)";
    // An agent that answered but whose certificate the pin refused is running: the fix is
    // the fingerprint, not the server.
    const PIN_FIX: &str = "check the CA fingerprint (--ca-fingerprint, HAVEN_CA_FINGERPRINT or ca_fingerprint in \
                           cli.toml; after a CA rotation it is the new CA's: `haven cluster ca status`)";
    let pin_refused = |u: &Unanswered| u.reason.contains("--ca-fingerprint") || u.reason.contains("pinned CA");
    let fix = if !tried.is_empty() && tried.iter().all(pin_refused) { PIN_FIX } else { FIX };
    let list = |us: &[Unanswered]| us.iter().map(|u| format!("{} ({})", u.server, u.reason)).collect::<Vec<_>>();
    match tried {
        [] => "no Haven agent to send the request to; set --server or HAVEN_SERVER (e.g. 127.0.0.1:7400)".into(),
        [before @ .., last] if may_be_applied => {
            let before = if before.is_empty() {
                String::new()
            } else {
                format!(" (before it, these could not be reached: {})", list(before).join(", "))
            };
            format!(
                "no answer from the Haven agent at {}: {}{before}; the request may have reached it and may \
                 still be applied, so it was not sent to another agent; check whether it took effect (e.g. \
                 `haven group list`) before you retry",
                last.server, last.reason
            )
        }
        [one] => format!("cannot reach the Haven agent at {}: {}; {fix}", one.server, one.reason),
        many => format!("cannot reach any of the {} Haven agents tried: {}; {fix}", many.len(), list(many).join(", ")),
    }
}

impl ClientError {
    pub fn status(&self) -> Option<u16> {
        match self {
            ClientError::Api { status, .. } => Some(*status),
            _ => None,
        }
    }
}

/// Talks to the agents of one cluster (one or several servers). Cheap to clone; clones
/// share which server answered last and the request keys' counter.
#[derive(Clone, Debug)]
pub struct Client {
    /// `http://host:port` (or `https://`) of each server, in the order given.
    servers: Arc<[String]>,
    /// Index in `servers` of the one that answered last: the next request starts there.
    current: Arc<AtomicUsize>,
    http: reqwest::Client,
    /// This client's random part of every write's `Idempotency-Key`.
    key: String,
    writes: Arc<AtomicU32>,
    /// Set by [`Client::with_idempotency_key`]: every write carries this key instead.
    fixed_key: Option<Arc<str>>,
    /// The API token sent with every request (see [`Client::with_token`]).
    token: Option<Arc<str>>,
}

/// How long opening a connection to one server may take before the next is tried.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);

/// The request header that carries a write's id.
pub const IDEMPOTENCY_KEY: &str = "Idempotency-Key";

impl Client {
    /// One server; `base` is `http://host:port` (a bare `host:port` gets `http://`).
    pub fn new(base: &str) -> Client {
        Client::with_timeout(base, Duration::from_secs(30))
    }

    /// One server, with `timeout` for each whole request.
    pub fn with_timeout(base: &str, timeout: Duration) -> Client {
        Client::with_servers(&[base], timeout)
    }

    /// Several servers of one cluster, tried in turn when one is unreachable (see the
    /// module header for when a request moves on). With no servers every request fails
    /// with [`ClientError::Unreachable`] saying how to name one.
    pub fn with_servers<S: AsRef<str>>(servers: &[S], timeout: Duration) -> Client {
        // reqwest's TLS needs a process-wide rustls provider (ring; see the workspace's Cargo.toml).
        let _ = rustls::crypto::ring::default_provider().install_default();
        let http = reqwest::Client::builder()
            .timeout(timeout)
            .connect_timeout(CONNECT_TIMEOUT)
            .build()
            .unwrap_or_else(|_| reqwest::Client::new());
        Client::with_http(servers, http, "http")
    }

    /// Several servers reached through `http`, a client the caller set up (the CLI's
    /// pins the cluster CA for HTTPS); a server given as a bare `host:port` gets
    /// `scheme://`, one with a scheme keeps it.
    pub fn with_http<S: AsRef<str>>(servers: &[S], http: reqwest::Client, scheme: &str) -> Client {
        let servers: Vec<String> = servers
            .iter()
            .map(|s| {
                let s = s.as_ref().trim().trim_end_matches('/');
                if s.contains("://") { s.to_string() } else { format!("{scheme}://{s}") }
            })
            .collect();
        Client {
            servers: servers.into(),
            current: Arc::new(AtomicUsize::new(0)),
            http,
            key: random_key(),
            writes: Arc::new(AtomicU32::new(0)),
            fixed_key: None,
            token: None,
        }
    }

    /// This client (same servers, sharing which answered last) sending `token` (an API
    /// token's secret, `hvn_...`) with every request; an empty one sends none.
    pub fn with_token(&self, token: &str) -> Client {
        let token = token.trim();
        Client { token: (!token.is_empty()).then(|| token.into()), ..self.clone() }
    }

    /// Whether this client sends an API token.
    pub fn has_token(&self) -> bool {
        self.token.is_some()
    }

    /// This client (same servers, sharing which answered last) with every write carrying
    /// `key` as its `Idempotency-Key`: send a write again under the key it was first sent
    /// with, and the cluster applies it at most once.
    pub fn with_idempotency_key(&self, key: &str) -> Client {
        Client { fixed_key: Some(key.into()), ..self.clone() }
    }

    /// The `Idempotency-Key` of this client's next write.
    fn next_key(&self) -> String {
        match &self.fixed_key {
            Some(k) => k.to_string(),
            None => format!("{}-{}", self.key, self.writes.fetch_add(1, Ordering::Relaxed) + 1),
        }
    }

    /// The server the next request goes to first: the one that answered last, else the
    /// first given.
    pub fn base(&self) -> &str {
        let i = self.current.load(Ordering::Relaxed);
        self.servers.get(i).or(self.servers.first()).map(String::as_str).unwrap_or("")
    }

    /// Every server, as `http://host:port` (or `https://`), in the order given.
    pub fn servers(&self) -> &[String] {
        &self.servers
    }

    pub async fn get<T: DeserializeOwned>(&self, path: &str) -> Result<T, ClientError> {
        self.send(Method::GET, path, None, None).await
    }
    pub async fn post<B: Serialize, T: DeserializeOwned>(&self, path: &str, body: &B) -> Result<T, ClientError> {
        self.post_keyed(path, body, &self.next_key()).await
    }
    /// A POST with the caller's own `Idempotency-Key`: send the same key again to retry it.
    pub async fn post_keyed<B: Serialize, T: DeserializeOwned>(
        &self,
        path: &str,
        body: &B,
        key: &str,
    ) -> Result<T, ClientError> {
        self.send(Method::POST, path, Some(json_body(body, path)?), Some(key)).await
    }
    pub async fn put<B: Serialize, T: DeserializeOwned>(&self, path: &str, body: &B) -> Result<T, ClientError> {
        self.send(Method::PUT, path, Some(json_body(body, path)?), Some(&self.next_key())).await
    }
    pub async fn patch<B: Serialize, T: DeserializeOwned>(&self, path: &str, body: &B) -> Result<T, ClientError> {
        self.send(Method::PATCH, path, Some(json_body(body, path)?), Some(&self.next_key())).await
    }
    pub async fn delete<T: DeserializeOwned>(&self, path: &str) -> Result<T, ClientError> {
        self.send(Method::DELETE, path, None, Some(&self.next_key())).await
    }
    /// Sends raw bytes as a JSON body (tests of malformed input use this).
    pub async fn post_raw<T: DeserializeOwned>(&self, path: &str, body: Vec<u8>) -> Result<T, ClientError> {
        self.send(Method::POST, path, Some(body), Some(&self.next_key())).await
    }

    /// Sends the request to the servers in turn, starting with the one that answered last,
    /// until one answers or moving on is no longer safe.
    async fn send<T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        body: Option<Vec<u8>>,
        key: Option<&str>,
    ) -> Result<T, ClientError> {
        let n = self.servers.len();
        let start = self.current.load(Ordering::Relaxed);
        let mut tried = Vec::new();
        for k in 0..n {
            let i = (start + k) % n;
            let server = &self.servers[i];
            let url = format!("{server}{path}");
            let mut req = self.http.request(method.clone(), &url);
            if let Some(k) = key {
                req = req.header(IDEMPOTENCY_KEY, k);
            }
            if let Some(t) = &self.token {
                req = req.bearer_auth(t);
            }
            if let Some(b) = &body {
                req = req.header("content-type", "application/json").body(b.clone());
            }
            match req.send().await {
                Ok(resp) => {
                    self.current.store(i, Ordering::Relaxed);
                    return read_answer(resp, server, url, method != Method::GET).await;
                }
                Err(e) => {
                    tried.push(Unanswered { server: server.clone(), reason: root_cause(&e) });
                    // A connect error proves the request was not delivered, so any request
                    // may go to the next server. Any other transport failure (timeout,
                    // connection reset) may come after the server got the request: a read
                    // may still move on, but a write must not, or it could be applied
                    // twice.
                    if !e.is_connect() && method != Method::GET {
                        return Err(ClientError::Unreachable { tried, may_be_applied: true });
                    }
                }
            }
        }
        Err(ClientError::Unreachable { tried, may_be_applied: false })
    }
}

fn json_body<B: Serialize>(body: &B, path: &str) -> Result<Vec<u8>, ClientError> {
    serde_json::to_vec(body)
        .map_err(|e| ClientError::Protocol { url: path.to_string(), reason: format!("cannot encode the request: {e}") })
}

/// The answer of `server` to a request for `url` (a `write` unless a GET): its JSON on
/// success, else its error body.
async fn read_answer<T: DeserializeOwned>(
    resp: reqwest::Response,
    server: &str,
    url: String,
    write: bool,
) -> Result<T, ClientError> {
    let status = resp.status().as_u16();
    let bytes = resp.bytes().await.map_err(|e| ClientError::Unreachable {
        tried: vec![Unanswered {
            server: server.to_string(),
            reason: format!("the connection broke while reading its answer (HTTP {status}): {}", root_cause(&e)),
        }],
        // It answered, so a write arrived; unless it was refused (4xx) it may be applied.
        may_be_applied: write && !(400..500).contains(&status),
    })?;
    if (200..300).contains(&status) {
        let body: &[u8] = if bytes.is_empty() { b"null" } else { &bytes };
        return serde_json::from_slice(body).map_err(|e| ClientError::Protocol { url, reason: e.to_string() });
    }
    match serde_json::from_slice::<ErrorBody>(&bytes) {
        Ok(b) => Err(ClientError::Api { status, code: b.error.code, message: b.error.message, field: b.error.field }),
        Err(_) => Err(ClientError::Api {
            status,
            code: "http".into(),
            message: format!("HTTP {status} from {url}: {}", String::from_utf8_lossy(&bytes).trim()),
            field: None,
        }),
    }
}

/// 32 random hex digits (from the time and the process id if the system has no random
/// source: unique enough for one invocation's keys).
fn random_key() -> String {
    use std::io::Read;
    let mut bytes = [0u8; 16];
    if std::fs::File::open("/dev/urandom").and_then(|mut f| f.read_exact(&mut bytes)).is_err() {
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0);
        bytes = (now ^ (u128::from(std::process::id()) << 64)).to_le_bytes();
    }
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn root_cause(e: &(dyn std::error::Error + 'static)) -> String {
    let mut cur = e;
    while let Some(next) = cur.source() {
        cur = next;
    }
    // rustls shows a verifier's own refusal as "unexpected error: <it>"; the refusal is
    // the message.
    let text = cur.to_string();
    text.strip_prefix("unexpected error: ").map(str::to_string).unwrap_or(text)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn down(server: &str, reason: &str) -> Unanswered {
        Unanswered { server: server.into(), reason: reason.into() }
    }

    #[test]
    fn the_unreachable_error_names_every_server_tried_and_whether_a_write_may_be_applied() {
        let one = unreachable_message(&[down("http://a:1", "refused")], false);
        assert!(one.starts_with("cannot reach the Haven agent at http://a:1: refused; "), "{one}");
        let many = unreachable_message(&[down("http://a:1", "refused"), down("http://b:2", "timed out")], false);
        assert!(
            many.starts_with(
                "cannot reach any of the 2 Haven agents tried: http://a:1 (refused), http://b:2 (timed out); "
            ),
            "{many}"
        );
        let maybe = unreachable_message(&[down("http://a:1", "refused"), down("http://b:2", "reset")], true);
        assert!(maybe.starts_with("no answer from the Haven agent at http://b:2: reset (before it"), "{maybe}");
        assert!(maybe.contains("http://a:1 (refused)") && maybe.contains("may still be applied"), "{maybe}");
        let pin = "the member's cluster CA has fingerprint ab, not the one given with --ca-fingerprint";
        let pinned = unreachable_message(&[down("https://a:1", pin)], false);
        assert!(pinned.contains("check the CA fingerprint") && !pinned.contains("running there"), "{pinned}");
        assert!(unreachable_message(&[], false).contains("set --server or HAVEN_SERVER"));
    }

    #[test]
    fn servers_get_a_scheme_and_lose_a_trailing_slash() {
        let c = Client::with_servers(&["127.0.0.1:7401", " http://h:2/ "], Duration::from_secs(1));
        assert_eq!(c.servers(), ["http://127.0.0.1:7401", "http://h:2"]);
        assert_eq!(c.base(), "http://127.0.0.1:7401");
        assert_eq!(Client::with_servers::<&str>(&[], Duration::from_secs(1)).base(), "");
    }
}
