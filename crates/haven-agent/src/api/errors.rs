//! The API's error answer: [`ApiError`] (an HTTP status and `{"error": {code, message,
//! field}}`), how the agent's own errors become one, and the middleware that turns every
//! other error response (axum's 405, a too-long target, an unmatched route) into it.

use axum::Json;
use axum::extract::Request;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use haven_api::{ErrorBody, ErrorDetail};

use crate::SubmitError;

/// An API error: HTTP status plus the JSON error body.
#[derive(Debug)]
pub struct ApiError {
    pub status: u16,
    pub code: String,
    pub message: String,
    pub field: Option<String>,
}

impl ApiError {
    pub fn new(status: u16, code: &str, message: impl Into<String>) -> ApiError {
        ApiError { status, code: code.into(), message: message.into(), field: None }
    }
}

impl From<SubmitError> for ApiError {
    fn from(e: SubmitError) -> Self {
        match e {
            SubmitError::Refused(s) => {
                let (status, code) = haven_state::tokens::api_status(s.code);
                ApiError { status, code: code.into(), message: s.message, field: s.field }
            }
            SubmitError::NoQuorum(m) => ApiError::new(503, "no_quorum", m),
            SubmitError::Unavailable(m) => ApiError::new(503, "unavailable", m),
            SubmitError::ShuttingDown(m) => ApiError::new(503, "shutting_down", m),
            // The body gets the `request_id` from `requests::layer`.
            SubmitError::Unknown { message, .. } => ApiError::new(504, "outcome_unknown", message),
            SubmitError::Rejected { status, code, message } => ApiError { status, code, message, field: None },
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = StatusCode::from_u16(self.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let body = ErrorBody { error: ErrorDetail { code: self.code, message: self.message, field: self.field } };
        (status, Json(body)).into_response()
    }
}

impl From<haven_api::body::BodyError> for ApiError {
    fn from(e: haven_api::body::BodyError) -> Self {
        ApiError { status: e.status, code: e.code.into(), message: e.message, field: e.field }
    }
}

/// Refuses a request target longer than `haven_api::MAX_URI_BYTES` (414), and turns every
/// error response that is not already our JSON body (axum's 405, a rejection of an
/// extractor we do not wrap) into it. The original text is dropped, never echoed.
pub(super) async fn error_bodies(req: Request, next: axum::middleware::Next) -> Response {
    let target = req.uri().path_and_query().map_or(0, |p| p.as_str().len());
    if target > haven_api::MAX_URI_BYTES {
        return ApiError::new(
            414,
            "uri_too_long",
            format!(
                "the request target is {target} bytes, more than the {} this agent reads; send long values in a \
                 JSON body",
                haven_api::MAX_URI_BYTES
            ),
        )
        .into_response();
    }
    let method = req.method().clone();
    let response = next.run(req).await;
    let status = response.status();
    let is_json = response
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(haven_api::body::is_json_content_type);
    if status.as_u16() < 400 || is_json {
        return response;
    }
    let allow = response.headers().get(header::ALLOW).cloned();
    let mut error = match status.as_u16() {
        405 => {
            let takes = allow.as_ref().and_then(|v| v.to_str().ok()).unwrap_or("another method").to_string();
            ApiError::new(405, "method_not_allowed", format!("{method} is not allowed on this route; it takes {takes}"))
        }
        404 => ApiError::new(404, "not_found", "no such route; see /api/v1/openapi.json"),
        413 => haven_api::body::too_large(haven_api::MAX_BODY_BYTES).into(),
        415 => haven_api::body::not_json().into(),
        s if s < 500 => ApiError::new(s, "bad_request", format!("the request was refused (HTTP {s})")),
        s => ApiError::new(s, "internal", format!("the agent failed to answer (HTTP {s}); see its log")),
    }
    .into_response();
    if let Some(allow) = allow {
        error.headers_mut().insert(header::ALLOW, allow);
    }
    error
}

/// The innermost cause of `e`: what went wrong, without the layers that wrap it.
pub(crate) fn root_cause(e: &(dyn std::error::Error + 'static)) -> String {
    let mut cur = e;
    while let Some(next) = cur.source() {
        cur = next;
    }
    cur.to_string()
}
