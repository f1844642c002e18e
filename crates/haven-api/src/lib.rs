//! The REST API's wire types (shared by the agent that serves them and the CLI that calls
//! them) and a small HTTP client. No server code lives here, only shapes and transport.

pub mod body;
pub mod client;
pub mod types;
pub mod vm;

pub use body::{MAX_BODY_BYTES, MAX_DEFINITION_BODY_BYTES, MAX_URI_BYTES};
pub use client::{Client, ClientError};
pub use types::*;
pub use vm::*;

/// Prefix of every public route.
pub const API_PREFIX: &str = "/api/v1";
