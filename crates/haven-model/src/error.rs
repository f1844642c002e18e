//! The one error type for rejected user input: it names the field, the value and the fix.

use std::fmt;

/// User input that failed validation. `field` is a dotted path (`props.restart_threshold`),
/// `message` says what is wrong with the value and what to write instead.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct InvalidInput {
    pub field: String,
    pub message: String,
}

impl InvalidInput {
    pub fn new(field: impl Into<String>, message: impl Into<String>) -> Self {
        InvalidInput { field: field.into(), message: message.into() }
    }
}

impl fmt::Display for InvalidInput {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "invalid {}: {}", self.field, self.message)
    }
}

impl std::error::Error for InvalidInput {}
