//! A small JSON-over-HTTP client for `/api/v1`, used by the CLI and the tests.
//!
//! Every write carries an `Idempotency-Key`: a random key made once per client (one per
//! CLI invocation) with a counter per write, so the agent can apply each at most once.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::ErrorBody;

/// Why a call failed: the agent refused it (with its message), or it could not be reached.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("{message}")]
    Api { status: u16, code: String, message: String, field: Option<String> },
    #[error(
        "cannot reach the Haven agent at {url}: {reason}; is `haven agent` running there? (set --server or HAVEN_SERVER)"
    )]
    Unreachable { url: String, reason: String },
    #[error("unexpected answer from {url}: {reason}")]
    Protocol { url: String, reason: String },
}

impl ClientError {
    pub fn status(&self) -> Option<u16> {
        match self {
            ClientError::Api { status, .. } => Some(*status),
            _ => None,
        }
    }
}

/// Talks to one agent. Cheap to clone (clones share the request keys' counter).
#[derive(Clone, Debug)]
pub struct Client {
    base: String,
    http: reqwest::Client,
    /// This client's random part of every write's `Idempotency-Key`.
    key: String,
    writes: Arc<AtomicU32>,
}

/// The request header that carries a write's id.
pub const IDEMPOTENCY_KEY: &str = "Idempotency-Key";

impl Client {
    /// `base` is `http://host:port` (a bare `host:port` gets `http://`).
    pub fn new(base: &str) -> Client {
        Client::with_timeout(base, Duration::from_secs(30))
    }

    pub fn with_timeout(base: &str, timeout: Duration) -> Client {
        let base = base.trim_end_matches('/');
        let base = if base.contains("://") { base.to_string() } else { format!("http://{base}") };
        let http = reqwest::Client::builder()
            .timeout(timeout)
            .connect_timeout(Duration::from_secs(3))
            .build()
            .unwrap_or_else(|_| reqwest::Client::new());
        Client { base, http, key: random_key(), writes: Arc::new(AtomicU32::new(0)) }
    }

    /// The `Idempotency-Key` of this client's next write.
    fn next_key(&self) -> String {
        format!("{}-{}", self.key, self.writes.fetch_add(1, Ordering::Relaxed) + 1)
    }

    pub fn base(&self) -> &str {
        &self.base
    }

    pub async fn get<T: DeserializeOwned>(&self, path: &str) -> Result<T, ClientError> {
        self.send(self.http.get(self.url(path)), path).await
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
        self.send(self.http.post(self.url(path)).header(IDEMPOTENCY_KEY, key).json(body), path).await
    }
    pub async fn put<B: Serialize, T: DeserializeOwned>(&self, path: &str, body: &B) -> Result<T, ClientError> {
        self.send(self.http.put(self.url(path)).header(IDEMPOTENCY_KEY, self.next_key()).json(body), path).await
    }
    pub async fn patch<B: Serialize, T: DeserializeOwned>(&self, path: &str, body: &B) -> Result<T, ClientError> {
        self.send(self.http.patch(self.url(path)).header(IDEMPOTENCY_KEY, self.next_key()).json(body), path).await
    }
    pub async fn delete<T: DeserializeOwned>(&self, path: &str) -> Result<T, ClientError> {
        self.send(self.http.delete(self.url(path)).header(IDEMPOTENCY_KEY, self.next_key()), path).await
    }
    /// Sends raw bytes as a JSON body (tests of malformed input use this).
    pub async fn post_raw<T: DeserializeOwned>(&self, path: &str, body: Vec<u8>) -> Result<T, ClientError> {
        let req = self
            .http
            .post(self.url(path))
            .header("content-type", "application/json")
            .header(IDEMPOTENCY_KEY, self.next_key())
            .body(body);
        self.send(req, path).await
    }

    fn url(&self, path: &str) -> String {
        format!("{}{}", self.base, path)
    }

    async fn send<T: DeserializeOwned>(&self, req: reqwest::RequestBuilder, path: &str) -> Result<T, ClientError> {
        let url = self.url(path);
        let resp = req
            .send()
            .await
            .map_err(|e| ClientError::Unreachable { url: self.base.clone(), reason: root_cause(&e) })?;
        let status = resp.status().as_u16();
        let bytes =
            resp.bytes().await.map_err(|e| ClientError::Unreachable { url: url.clone(), reason: root_cause(&e) })?;
        if (200..300).contains(&status) {
            let body: &[u8] = if bytes.is_empty() { b"null" } else { &bytes };
            return serde_json::from_slice(body).map_err(|e| ClientError::Protocol { url, reason: e.to_string() });
        }
        match serde_json::from_slice::<ErrorBody>(&bytes) {
            Ok(b) => {
                Err(ClientError::Api { status, code: b.error.code, message: b.error.message, field: b.error.field })
            }
            Err(_) => Err(ClientError::Api {
                status,
                code: "http".into(),
                message: format!("HTTP {status} from {url}: {}", String::from_utf8_lossy(&bytes).trim()),
                field: None,
            }),
        }
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
    cur.to_string()
}
