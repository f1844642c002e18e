//! Extractors of the API's handlers: a JSON body within the route's size limit, the
//! `{name}` of a path and a query string. Each refuses with an [`ApiError`] body, never with
//! axum's plain text, and never echoes what it refused.

use axum::extract::rejection::QueryRejection;
use axum::extract::{FromRequest, FromRequestParts, Path, Query, Request};
use axum::http::request::Parts;
use axum::http::{HeaderValue, header};

use super::{ApiError, root_cause};

/// How long a request body may take to arrive.
pub const BODY_READ_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

/// A JSON request body of at most `LIMIT` bytes (the route's limit). Every refusal is our
/// error body and none echoes the body: 413 when it is larger than the limit (known from
/// `Content-Length` before anything is read), 415 without a JSON content type, 400 when it
/// does not parse or fit (`haven_api::body::parse_json`), 408 when it has not all arrived
/// within [`BODY_READ_TIMEOUT`] (a slow client holds no request open).
pub struct Body<T, const LIMIT: usize = { haven_api::MAX_BODY_BYTES }>(pub T);

impl<S: Send + Sync, T: serde::de::DeserializeOwned, const LIMIT: usize> FromRequest<S> for Body<T, LIMIT> {
    type Rejection = ApiError;
    async fn from_request(req: Request, _state: &S) -> Result<Self, Self::Rejection> {
        {
            let header = |name| req.headers().get(name).and_then(|v: &HeaderValue| v.to_str().ok());
            if header(header::CONTENT_LENGTH).and_then(|v| v.parse::<u64>().ok()).is_some_and(|n| n > LIMIT as u64) {
                return Err(haven_api::body::too_large(LIMIT).into());
            }
            if !header(header::CONTENT_TYPE).is_some_and(haven_api::body::is_json_content_type) {
                return Err(haven_api::body::not_json().into());
            }
        }
        let read = axum::body::to_bytes(req.into_body(), LIMIT);
        let bytes = tokio::time::timeout(BODY_READ_TIMEOUT, read)
            .await
            .map_err(|_| {
                ApiError::new(
                    408,
                    "request_timeout",
                    format!(
                        "the request body did not arrive within {} s; send it at once",
                        BODY_READ_TIMEOUT.as_secs()
                    ),
                )
            })?
            .map_err(|_| haven_api::body::too_large(LIMIT))?;
        Ok(Body(haven_api::body::parse_json(&bytes)?))
    }
}

/// The `{name}` of a route's path. A segment that is not UTF-8 once percent-decoded is a
/// 400 error body (axum's own rejection is plain text).
pub struct Name(pub String);

impl<S: Send + Sync> FromRequestParts<S> for Name {
    type Rejection = ApiError;
    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        match Path::<String>::from_request_parts(parts, state).await {
            Ok(Path(name)) => Ok(Name(name)),
            Err(_) => Err(ApiError::new(
                400,
                "bad_request",
                "the name in the path is not valid: once percent-decoded it must be UTF-8 text",
            )),
        }
    }
}

/// A query string (`?group=g&limit=10`); one that does not fit is a 400 error body naming
/// the parameter.
pub struct Params<T>(pub T);

impl<S: Send + Sync, T: serde::de::DeserializeOwned> FromRequestParts<S> for Params<T> {
    type Rejection = ApiError;
    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        match Query::<T>::from_request_parts(parts, state).await {
            Ok(Query(q)) => Ok(Params(q)),
            Err(QueryRejection::FailedToDeserializeQueryString(e)) => {
                // The inner error is `<parameter>: <reason>`; the reason may quote the value.
                let why = haven_api::body::shorten(&root_cause(&e), 160);
                Err(ApiError::new(
                    400,
                    "bad_request",
                    format!("the query string does not fit: {why}; see the parameters in /api/v1/openapi.json"),
                ))
            }
            Err(_) => Err(ApiError::new(400, "bad_request", "the query string is not valid")),
        }
    }
}
