//! Sending a request on to another agent: a write to the leader (`/internal/write`), a
//! join, a node removal or a request lookup to the leader, a VM call to the node that runs
//! it, the HA wizard to the node that holds the definition, a lease renewal. One client
//! (`Agent::peers`), one timeout policy ([`Wait`]), one reading of the answer
//! ([`Failure`]) and one mapping of a failure to the API's error
//! ([`Failure::into_api_error`]).
//!
//! A forwarded `/api/v1` write carries the `Idempotency-Key` of the request being served,
//! so the other node commits it under the same id: a retry through either node is applied
//! at most once, and a forwarded write whose answer was lost is "outcome unknown" with that
//! id, never a refusal.
//!
//! A forwarded `/api/v1` request carries the caller's `Authorization` header: the other
//! agent checks the same token against its copy of the state.
//!
//! It decides nothing about retrying: each caller knows what its request may do twice.
//! Every request is HTTPS: the client carries this node's certificate and trusts only the
//! cluster CA (see [`crate::pki`]).

use std::time::Duration;

use reqwest::Method;
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::api::{ApiError, root_cause};

/// How long a forwarded request may take, by what the other node does before it answers.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Wait {
    /// 5 s: a read or a quick action there (a VM's runtime status or console, a line to its
    /// guest, a request's outcome).
    Short,
    /// 10 s: a write the leader commits (`/internal/write`). Longer than the leader's own
    /// commit timeout (the lease, a few seconds), so that its 504 arrives before ours.
    Commit,
    /// 120 s: work that runs there before it answers: a join (the learner catches up and
    /// the voter set changes), a node removal (a commit and a membership change), the HA
    /// wizard (it scans `/proc` and runs `qemu-img`).
    Long,
    /// A lease renewal: the lease keeper's own bound, derived from the lease.
    Renewal(Duration),
}

impl Wait {
    fn timeout(self) -> Duration {
        match self {
            Wait::Short => Duration::from_secs(5),
            Wait::Commit => Duration::from_secs(10),
            Wait::Long => Duration::from_secs(120),
            Wait::Renewal(d) => d,
        }
    }
}

/// Why a forwarded request got no success answer, by what it says about the request.
#[derive(Debug)]
pub(crate) enum Failure {
    /// Nothing reached the other node (no connection was made): surely not carried out.
    NotSent(String),
    /// The exchange broke after the request was sent (a timeout, a reset connection, an
    /// answer that does not parse): it may have been carried out. `request_id`: the
    /// `Idempotency-Key` it carried, under which the other node commits it.
    MaybeSent { message: String, request_id: Option<String> },
    /// The other node answered with an error: its status and body as it sent them (a
    /// non-agent answer without our error body is a 502).
    Answered(ApiError),
}

impl Failure {
    /// The API's answer to this failure: the other node's own error as it is; a request
    /// that did not get there, 502 `unavailable`; a write that may have been applied there,
    /// 504 `outcome_unknown` with its request id (any other request, 502).
    pub(crate) fn into_api_error(self) -> ApiError {
        match self {
            Failure::Answered(e) => e,
            Failure::NotSent(m) => ApiError::new(502, "unavailable", m),
            Failure::MaybeSent { message, request_id: Some(id) } => {
                crate::requests::outcome_unknown(Some(&id), &message).into()
            }
            Failure::MaybeSent { message, request_id: None } => ApiError::new(502, "unavailable", message),
        }
    }
}

/// The leader's address, to forward to; 503 while none is elected.
pub(crate) fn leader_addr(agent: &crate::Agent) -> Result<String, ApiError> {
    agent
        .db
        .leader()
        .map(|(_, addr)| addr)
        .ok_or_else(|| ApiError::new(503, "unavailable", "no leader is elected right now; retry in a moment"))
}

/// A request for one other agent.
pub(crate) struct Forward<'a> {
    /// (A handle on the pool: the agent's peer client may be replaced meanwhile.)
    http: reqwest::Client,
    /// The other node as messages name it ("the leader (node 2)", "node \"b\"").
    to: String,
    /// Its `host:port`.
    addr: &'a str,
    wait: Wait,
}

impl<'a> Forward<'a> {
    pub(crate) fn new(http: &reqwest::Client, to: impl Into<String>, addr: &'a str, wait: Wait) -> Forward<'a> {
        Forward { http: http.clone(), to: to.into(), addr, wait }
    }

    pub(crate) async fn get<T: DeserializeOwned>(&self, path: &str) -> Result<T, Failure> {
        self.send::<(), T>(Method::GET, path, None).await
    }

    pub(crate) async fn post<B: Serialize, T: DeserializeOwned>(&self, path: &str, body: &B) -> Result<T, Failure> {
        self.send(Method::POST, path, Some(body)).await
    }

    pub(crate) async fn delete<T: DeserializeOwned>(&self, path: &str) -> Result<T, Failure> {
        self.send::<(), T>(Method::DELETE, path, None).await
    }

    async fn send<B: Serialize, T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        body: Option<&B>,
    ) -> Result<T, Failure> {
        let (to, addr) = (&self.to, self.addr);
        // Mutual TLS (the client is `Agent::peers`, or a joiner's pinned one: `pki`).
        let url = format!("https://{addr}{path}");
        let mut req = self.http.request(method.clone(), &url).timeout(self.wait.timeout());
        // A public write keeps the id of the request it serves (see the module header).
        let request_id = (method != Method::GET && path.starts_with(haven_api::API_PREFIX))
            .then(crate::requests::current)
            .flatten()
            .map(|c| c.key().to_string());
        if let Some(id) = &request_id {
            req = req.header(crate::requests::IDEMPOTENCY_KEY, id);
        }
        // A public route asks the other agent for the same caller's token.
        if path.starts_with(haven_api::API_PREFIX)
            && let Some(auth) = crate::api::auth::forwarded_authorization()
        {
            req = req.header(reqwest::header::AUTHORIZATION, auth);
            if let Some(client) = crate::api::auth::forwarded_client() {
                req = req.header(crate::api::auth::FORWARDED_CLIENT, client);
            }
        }
        if let Some(b) = body {
            req = req.json(b);
        }
        let maybe_sent = |message: String| Failure::MaybeSent { message, request_id: request_id.clone() };
        let resp = req.send().await.map_err(|e| {
            let why = root_cause(&e);
            if e.is_connect() {
                Failure::NotSent(format!(
                    "cannot reach {to} at {addr}: {why}; check the address and that its agent runs"
                ))
            } else {
                maybe_sent(format!("{to} at {addr} did not answer {method} {path}: {why}"))
            }
        })?;
        let status = resp.status().as_u16();
        let bytes = resp
            .bytes()
            .await
            .map_err(|e| maybe_sent(format!("the answer of {to} at {addr} broke off: {}", root_cause(&e))))?;
        if (200..300).contains(&status) {
            return serde_json::from_slice(&bytes)
                .map_err(|e| maybe_sent(format!("{to} at {addr} sent an answer this agent cannot read: {e}")));
        }
        Err(Failure::Answered(match serde_json::from_slice::<haven_api::ErrorBody>(&bytes) {
            Ok(b) => ApiError { status, code: b.error.code, message: b.error.message, field: b.error.field },
            Err(_) => ApiError::new(
                502,
                "unavailable",
                format!(
                    "{to} at {addr} answered {method} {path} with HTTP {status} and no error body; is it a Haven \
                     agent of the same version?"
                ),
            ),
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::{Failure, Forward, Wait};
    use crate::api::ApiError;

    fn answer(f: Failure) -> (u16, String, String) {
        let e = f.into_api_error();
        (e.status, e.code, e.message)
    }

    #[test]
    fn a_failure_is_answered_by_what_it_says_about_the_request() {
        let (status, code, message) =
            answer(Failure::MaybeSent { message: "node \"b\" did not answer".into(), request_id: Some("k-1".into()) });
        assert_eq!((status, code.as_str()), (504, "outcome_unknown"), "{message}");
        assert!(message.contains("node \"b\" did not answer") && message.contains("Idempotency-Key: k-1"), "{message}");
        let (status, code, _) = answer(Failure::MaybeSent { message: "read timed out".into(), request_id: None });
        assert_eq!((status, code.as_str()), (502, "unavailable"));
        let (status, code, _) = answer(Failure::NotSent("cannot reach".into()));
        assert_eq!((status, code.as_str()), (502, "unavailable"));
        let refused = ApiError::new(409, "conflict", "VM \"web\" is online");
        assert_eq!(answer(Failure::Answered(refused)), (409, "conflict".into(), "VM \"web\" is online".into()));
    }

    #[tokio::test]
    async fn a_node_that_does_not_listen_was_surely_not_sent_the_request() {
        let port = std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).expect("a free port").port();
        let addr = format!("127.0.0.1:{port}");
        crate::pki::provider();
        let http = reqwest::Client::new();
        let peer = Forward::new(&http, "node \"b\"", &addr, Wait::Short);
        match peer.post::<_, serde_json::Value>("/api/v1/groups", &serde_json::json!({"name": "g"})).await {
            Err(Failure::NotSent(m)) => assert!(m.starts_with(&format!("cannot reach node \"b\" at {addr}: ")), "{m}"),
            other => panic!("a request to a closed port: {other:?}"),
        }
    }
}
