//! The REST API's wire types (shared by the agent that serves them and the CLI that calls
//! them) and a small HTTP client. No server code lives here, only shapes and transport.

pub mod client;
pub mod types;

pub use client::{Client, ClientError};
pub use types::*;

/// Prefix of every public route.
pub const API_PREFIX: &str = "/api/v1";

/// Largest request body the agent accepts (1 MiB).
pub const MAX_BODY_BYTES: usize = 1024 * 1024;
