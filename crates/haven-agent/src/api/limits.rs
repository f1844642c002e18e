//! Connection limits for the API's listener: a connection that does not send a whole
//! request head within [`HEADER_READ_TIMEOUT`] (a slow client, or an idle kept-alive
//! connection waiting for its next request) is closed, and every request carries the
//! client's address (`ConnectInfo<SocketAddr>`), which the API's audit and limits go by.
//!
//! `axum::serve` cannot set hyper's header timeout (it gives hyper no timer), so the
//! agent's listener (`crate::listener`) serves each accepted connection, plain or TLS, with
//! hyper's builder and this timeout. The request body's own limit is the extractor's
//! (`BODY_READ_TIMEOUT`).

use std::time::Duration;

/// How long a client may take to send a request's head (its first, or its next on a
/// kept-alive connection).
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);
