//! Why a command was refused, in words an operator can act on.

use haven_model::InvalidInput;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// The class of a refusal; the API maps it to an HTTP status.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// 404: a named object does not exist.
    NotFound,
    /// 409: the name is taken.
    AlreadyExists,
    /// 400: a value is malformed or out of range.
    Invalid,
    /// 409: the request is valid but the cluster's current state forbids it.
    Conflict,
    /// 422: the request's id was already used for a different request.
    RequestIdReused,
}

/// A refused command. `field` names the input at fault when there is one.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, thiserror::Error, ToSchema)]
#[error("{message}")]
pub struct StateError {
    pub code: ErrorCode,
    pub message: String,
    pub field: Option<String>,
}

impl StateError {
    pub fn not_found(kind: &str, name: &str) -> Self {
        StateError {
            code: ErrorCode::NotFound,
            message: format!("no {kind} named {name:?}; see `haven {kind} list` for the names that exist"),
            field: None,
        }
    }
    pub fn not_found_in(field: &str, kind: &str, name: &str) -> Self {
        StateError {
            code: ErrorCode::NotFound,
            message: format!("{field}: no {kind} named {name:?}; see `haven {kind} list` for the names that exist"),
            field: Some(field.to_string()),
        }
    }
    pub fn exists(kind: &str, name: &str) -> Self {
        StateError {
            code: ErrorCode::AlreadyExists,
            message: format!("a {kind} named {name:?} already exists; pick another name or change the existing one"),
            field: Some("name".into()),
        }
    }
    pub fn conflict(message: impl Into<String>) -> Self {
        StateError { code: ErrorCode::Conflict, message: message.into(), field: None }
    }
}

impl From<InvalidInput> for StateError {
    fn from(e: InvalidInput) -> Self {
        StateError { code: ErrorCode::Invalid, message: e.to_string(), field: Some(e.field) }
    }
}
