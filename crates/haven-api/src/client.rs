//! A small JSON-over-HTTP client for `/api/v1`, used by the CLI and the tests.

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

/// Talks to one agent. Cheap to clone.
#[derive(Clone, Debug)]
pub struct Client {
    base: String,
    http: reqwest::Client,
}

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
        Client { base, http }
    }

    pub fn base(&self) -> &str {
        &self.base
    }

    pub async fn get<T: DeserializeOwned>(&self, path: &str) -> Result<T, ClientError> {
        self.send(self.http.get(self.url(path)), path).await
    }
    pub async fn post<B: Serialize, T: DeserializeOwned>(&self, path: &str, body: &B) -> Result<T, ClientError> {
        self.send(self.http.post(self.url(path)).json(body), path).await
    }
    pub async fn put<B: Serialize, T: DeserializeOwned>(&self, path: &str, body: &B) -> Result<T, ClientError> {
        self.send(self.http.put(self.url(path)).json(body), path).await
    }
    pub async fn patch<B: Serialize, T: DeserializeOwned>(&self, path: &str, body: &B) -> Result<T, ClientError> {
        self.send(self.http.patch(self.url(path)).json(body), path).await
    }
    pub async fn delete<T: DeserializeOwned>(&self, path: &str) -> Result<T, ClientError> {
        self.send(self.http.delete(self.url(path)), path).await
    }
    /// Sends raw bytes as a JSON body (tests of malformed input use this).
    pub async fn post_raw<T: DeserializeOwned>(&self, path: &str, body: Vec<u8>) -> Result<T, ClientError> {
        let req = self.http.post(self.url(path)).header("content-type", "application/json").body(body);
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

fn root_cause(e: &(dyn std::error::Error + 'static)) -> String {
    let mut cur = e;
    while let Some(next) = cur.source() {
        cur = next;
    }
    cur.to_string()
}
