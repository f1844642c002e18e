//! Request ids for exactly-once writes: the `Idempotency-Key` header of `/api/v1` writes,
//! the lookup of a request's committed outcome (`GET /api/v1/requests/{id}`), and the
//! refusal of new writes while the agent stops.
//!
//! The middleware ([`layer`]) validates the client's key (or makes one up), refuses a
//! write at once while the agent is stopping, and runs the handler with the key in a task
//! local, where [`crate::Agent::submit`] finds it: the id goes into the committed
//! [`haven_state::Request`], so re-forwarding or retrying the write cannot apply it twice.
//! It decides nothing else: outcomes are recorded by the state machine.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};

use axum::Json;
use axum::extract::{Path, Request, State as AxState};
use axum::http::{HeaderValue, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use haven_api::{ErrorBody, ErrorDetail};
use haven_state::{REQUEST_OUTCOME_AGE_MS, REQUEST_OUTCOME_LIMIT, StateError};
use serde::Serialize;
use utoipa::openapi::path::{ParameterBuilder, ParameterIn};
use utoipa::openapi::{ContentBuilder, ObjectBuilder, Ref, Required, ResponseBuilder, Type};
use utoipa::{Modify, ToSchema};

use crate::api::ApiError;
use crate::{Agent, SubmitError};

/// The request header that carries a write's id.
pub const IDEMPOTENCY_KEY: &str = "idempotency-key";

tokio::task_local! {
    static CLIENT_REQUEST: Arc<ClientRequest>;
}

/// The API request being served: its key, and the ids its writes were committed under.
pub(crate) struct ClientRequest {
    key: String,
    submits: AtomicU32,
    last: Mutex<Option<String>>,
}

impl ClientRequest {
    /// The id of the handler's next write: the key itself for the first, `key#n` for the
    /// n-th (a handler that writes twice, e.g. the HA wizard's refusal record, stays
    /// deterministic, so a retry of the whole request maps onto the same ids).
    pub(crate) fn next_id(&self) -> String {
        let n = self.submits.fetch_add(1, Ordering::Relaxed) + 1;
        let id = if n == 1 { self.key.clone() } else { format!("{}#{n}", self.key) };
        if let Ok(mut last) = self.last.lock() {
            *last = Some(id.clone());
        }
        id
    }

    /// The request's key: the client's `Idempotency-Key`, or the one the agent made up.
    pub(crate) fn key(&self) -> &str {
        &self.key
    }

    fn last_id(&self) -> String {
        self.last.lock().ok().and_then(|l| l.clone()).unwrap_or_else(|| self.key.clone())
    }
}

/// The API request this task serves, if it serves one.
pub(crate) fn current() -> Option<Arc<ClientRequest>> {
    CLIENT_REQUEST.try_with(Arc::clone).ok()
}

/// A new random request id (32 hex digits), for writes whose caller sent none.
pub fn new_request_id() -> String {
    use std::io::Read;
    let mut bytes = [0u8; 16];
    if std::fs::File::open("/dev/urandom").and_then(|mut f| f.read_exact(&mut bytes)).is_err() {
        // No randomness: still unique within this process and unlikely to collide elsewhere.
        static COUNTER: AtomicU32 = AtomicU32::new(0);
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let mix = crate::now_ms() ^ (u64::from(std::process::id()) << 32);
        bytes[..8].copy_from_slice(&mix.to_le_bytes());
        bytes[8..12].copy_from_slice(&n.to_le_bytes());
    }
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Middleware of `/api/v1`: gives every write an id, and refuses writes while stopping.
pub async fn layer(AxState(agent): AxState<Arc<Agent>>, req: Request, next: Next) -> Response {
    if matches!(*req.method(), Method::GET | Method::HEAD | Method::OPTIONS) {
        return next.run(req).await;
    }
    let key = match req.headers().get(IDEMPOTENCY_KEY) {
        None => new_request_id(),
        Some(v) => {
            let key = String::from_utf8_lossy(v.as_bytes()).into_owned();
            if let Err(e) = haven_state::validate_request_id(&key) {
                return ApiError::from(SubmitError::Refused(StateError::from(e))).into_response();
            }
            key
        }
    };
    if agent.is_stopping() {
        return ApiError::from(SubmitError::ShuttingDown(agent.shutting_down_message())).into_response();
    }
    let ctx = Arc::new(ClientRequest { key: key.clone(), submits: AtomicU32::new(0), last: Mutex::new(None) });
    let mut resp = CLIENT_REQUEST.scope(ctx.clone(), next.run(req)).await;
    if let Ok(v) = HeaderValue::from_str(&key) {
        resp.headers_mut().insert(IDEMPOTENCY_KEY, v);
    }
    if resp.status() == StatusCode::GATEWAY_TIMEOUT {
        resp = with_request_id(resp, &ctx.last_id()).await;
    }
    resp
}

/// Adds `request_id` to an error body, so that a client that sent no key can look it up.
async fn with_request_id(resp: Response, id: &str) -> Response {
    let (parts, body) = resp.into_parts();
    let Ok(bytes) = axum::body::to_bytes(body, 64 * 1024).await else {
        return (parts.status, "the outcome of the request is unknown").into_response();
    };
    let mut value: serde_json::Value = serde_json::from_slice(&bytes).unwrap_or(serde_json::Value::Null);
    match value.get_mut("error").and_then(|e| e.as_object_mut()) {
        Some(e) => {
            e.insert("request_id".into(), serde_json::Value::String(id.to_string()));
        }
        None => return Response::from_parts(parts, axum::body::Body::from(bytes)),
    }
    let mut resp = (parts.status, Json(value)).into_response();
    for (name, v) in parts.headers.iter() {
        if name != axum::http::header::CONTENT_LENGTH {
            resp.headers_mut().insert(name.clone(), v.clone());
        }
    }
    resp
}

/// The body of a 504 `outcome_unknown` error: the usual error with the request's id.
#[derive(Serialize, ToSchema)]
pub struct OutcomeUnknownBody {
    pub error: OutcomeUnknownDetail,
}

#[derive(Serialize, ToSchema)]
pub struct OutcomeUnknownDetail {
    /// `outcome_unknown`.
    pub code: String,
    /// What happened and how to find out whether the request was applied.
    pub message: String,
    /// The request's id: look it up with `GET /api/v1/requests/{request_id}`.
    pub request_id: String,
}

/// The committed outcome of a request: the wire type of `haven-api`.
pub use haven_api::RequestView;

/// Looks up the committed outcome of a write by its request id (`Idempotency-Key`).
#[utoipa::path(get, path = "/api/v1/requests/{id}", tag = "requests",
    params(("id" = String, Path, description = "the request id (`Idempotency-Key`), percent-encoded")),
    responses((status = 200, body = RequestView), (status = 404, body = ErrorBody)))]
pub async fn get_request(
    AxState(agent): AxState<Arc<Agent>>,
    Path(id): Path<String>,
) -> Result<Json<RequestView>, ApiError> {
    if let Some(v) = local_outcome(&agent, &id) {
        return Ok(Json(v));
    }
    // This node may lag behind: the leader (after confirming what is committed) knows.
    if agent.is_leader() {
        if agent.db.ensure_leader().await.is_ok()
            && let Some(v) = local_outcome(&agent, &id)
        {
            return Ok(Json(v));
        }
    } else if let Some((_, addr)) = agent.db.leader() {
        let http = agent.peers.get();
        let leader = crate::forward::Forward::new(&http, "the leader", &addr, crate::forward::Wait::Short);
        if let Ok(v) = leader.get::<RequestView>(&format!("/api/v1/requests/{}", percent_encode(&id))).await {
            return Ok(Json(v));
        }
    }
    Err(ApiError::new(
        404,
        "not_found",
        format!(
            "no request with id {id:?} is committed (the cluster keeps the outcome of the last {REQUEST_OUTCOME_LIMIT} \
             requests for {} minutes); a write whose outcome was unknown may still commit within a few seconds, so \
             look again shortly, or send the same request again with the same Idempotency-Key: it is applied at \
             most once",
            REQUEST_OUTCOME_AGE_MS / 60_000
        ),
    ))
}

fn local_outcome(agent: &Agent, id: &str) -> Option<RequestView> {
    let state = agent.db.state();
    let o = state.requests.get(id)?;
    let (outcome, status, error, reply) = match &o.response {
        Ok(reply) => ("succeeded", 200, None, Some(reply.clone())),
        Err(e) => {
            let api = ApiError::from(SubmitError::Refused(e.clone()));
            let detail = ErrorDetail { code: api.code, message: api.message, field: api.field };
            ("refused", api.status, Some(detail), None)
        }
    };
    Some(RequestView {
        request_id: id.to_string(),
        outcome: outcome.into(),
        status,
        at: o.at,
        by: o.by.clone(),
        error,
        reply,
    })
}

/// A write's outcome is unknown because of `detail`: the error says how to find it out,
/// by its request id when it has one.
pub(crate) fn outcome_unknown(request_id: Option<&str>, detail: &str) -> SubmitError {
    let Some(id) = request_id else {
        let message = format!("the outcome of the write is unknown: {detail}; it may or may not have been applied");
        return SubmitError::Unknown { request_id: String::new(), message };
    };
    let message = format!(
        "the outcome of request {id:?} is unknown: {detail}; it may or may not have been applied. Look it up with \
         `GET /api/v1/requests/{}`, or send the same request again with the header `Idempotency-Key: {id}`: it is \
         applied at most once",
        percent_encode(id)
    );
    SubmitError::Unknown { request_id: id.to_string(), message }
}

/// `id` fit for a URL path segment (one encoding for the agent and the typed client).
pub use haven_api::segment as percent_encode;

/// Documents, on every write route of the OpenAPI document, the `Idempotency-Key` header
/// and the 504 `outcome_unknown` answer (its own body schema). The other error statuses of
/// writes, 422 `request_id_reused` and 503 `shutting_down` among them, are in the
/// API's `WRITE_ERRORS`.
pub struct WriteDocs;

impl Modify for WriteDocs {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        for item in openapi.paths.paths.values_mut() {
            let ops = [&mut item.post, &mut item.put, &mut item.patch, &mut item.delete];
            for op in ops.into_iter().flatten() {
                let header = ParameterBuilder::new()
                    .name("Idempotency-Key")
                    .parameter_in(ParameterIn::Header)
                    .required(Required::False)
                    .description(Some(
                        "The request's id, 1 to 128 printable ASCII characters: a write retried with the same \
                         key is applied at most once and answers its first outcome. Without it the agent picks \
                         one (returned in the reply's `Idempotency-Key` header).",
                    ))
                    .schema(Some(
                        ObjectBuilder::new().schema_type(Type::String).min_length(Some(1)).max_length(Some(128)),
                    ))
                    .build();
                op.parameters.get_or_insert_with(Vec::new).push(header);
                let unknown = ResponseBuilder::new()
                    .description(
                        "`outcome_unknown`: the write may or may not have been applied (commit timeout, leader \
                         lost); look it up with `GET /api/v1/requests/{request_id}` or retry it with the same \
                         `Idempotency-Key`",
                    )
                    .content(
                        "application/json",
                        ContentBuilder::new().schema(Some(Ref::from_schema_name("OutcomeUnknownBody"))).build(),
                    )
                    .build();
                op.responses.responses.entry("504".into()).or_insert(unknown.into());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn request_ids_are_percent_encoded_for_a_path() {
        assert_eq!(super::percent_encode("a-b_c.d~1"), "a-b_c.d~1");
        assert_eq!(super::percent_encode("a/b?c#d%"), "a%2Fb%3Fc%23d%25");
    }
}
