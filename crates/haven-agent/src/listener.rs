//! The agent's one port: each connection is TLS or plain HTTP, told apart by its first byte
//! (a TLS ClientHello starts with 0x16), and served by the same router.
//!
//! TLS is served with this node's certificate ([`crate::pki`]); a client certificate is
//! optional at the TLS layer and verified when given. Every request carries its
//! [`Connection`] (plain, or TLS with the verified peer certificate) and the remote address
//! (`axum::extract::ConnectInfo`), for [`gate`]: the peer routes (`/internal/*`, Raft's
//! included) take only TLS with a valid, unrevoked peer certificate (the join route takes TLS
//! without one: the join token authenticates it); plain HTTP reaches the public routes only
//! when the agent listens on a loopback address (or has `plain_http_api = true`, with a
//! warning at start), or from this host itself: a client on loopback, or one whose source
//! address is the address it connected to (Linux drops packets from outside that claim one
//! of the host's own addresses as their source, unless `accept_local` is set). That is how
//! an agent on a public address is founded or joined from its own host before it has a
//! certificate the CLI could check.
//!
//! It decides nothing about what a peer may do once identified; the routes do.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::{ConnectInfo, Request, State as AxState};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::Agent;
use crate::api::ApiError;
use crate::pki::{PeerCert, Pki};

/// How long a new connection may take to send its first byte and finish the TLS handshake
/// (a client that opens a connection and sends nothing holds no task for long).
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// How a request reached the agent.
#[derive(Clone, Debug)]
pub enum Connection {
    /// Plain HTTP; `local`: from this host itself (see the module header).
    Plain { local: bool },
    /// TLS; `peer`: the client's verified certificate, if it gave one, and the
    /// fingerprint of the trusted CA that signed it (checked again per request: a retired
    /// CA's connections end with it).
    Tls { peer: Option<VerifiedPeer> },
}

/// A client certificate the handshake verified.
#[derive(Clone, Debug)]
pub struct VerifiedPeer {
    cert: PeerCert,
    /// The fingerprint of the trusted CA that vouched for it (see [`Pki::issuer_of`]).
    issuer: String,
    /// The chain it presented (DER), to look at again under a later trust.
    chain: Arc<Vec<Vec<u8>>>,
}

impl VerifiedPeer {
    /// Why this certificate may not speak for a member now, if it may not: the replicated
    /// state and this node's trust, read per request, so that a removal revokes connections
    /// that are already open too, and a retired CA ends its certificates'. (A connection
    /// made while a rotation was reaching this node may have been vouched for by the old CA
    /// through the new one's cross certificate: it is looked at again under what this node
    /// trusts now.)
    fn refusal(&self, agent: &Agent) -> Option<ApiError> {
        let p = &self.cert;
        if !agent.pki.trusts(&self.issuer) && agent.pki.issuer_of(&self.chain).is_none_or(|i| !agent.pki.trusts(&i)) {
            let message = format!("the certificate of {p} is from a CA this cluster no longer trusts (it was retired)");
            return Some(ApiError::new(403, "untrusted", message));
        }
        if haven_state::pki::is_revoked(&agent.db.state(), &p.serial) {
            let message = format!(
                "the certificate of {p} is revoked: the node was removed from the cluster, or its certificate was \
                 replaced (renewed)"
            );
            return Some(ApiError::new(403, "revoked", message));
        }
        None
    }
}

/// Serves `router` on `listener` until `stop` turns true; open connections are then asked
/// to finish (the caller bounds how long it waits).
pub async fn serve(listener: TcpListener, router: Router, pki: Arc<Pki>, mut stop: watch::Receiver<bool>) {
    let tls = match pki.server_config() {
        Ok(c) => tokio_rustls::TlsAcceptor::from(c),
        Err(e) => {
            tracing::error!(error = %e, "cannot set up TLS; the agent serves nothing");
            return;
        }
    };
    let mut connections = tokio::task::JoinSet::new();
    loop {
        let (tcp, remote) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // Out of file descriptors and the like: do not spin.
                    tracing::warn!(error = %e, "accepting a connection failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = async { let _ = stop.wait_for(|s| *s).await; } => break,
        };
        while connections.try_join_next().is_some() {}
        let (router, tls, stop, pki) = (router.clone(), tls.clone(), stop.clone(), pki.clone());
        connections.spawn(async move { connection(tcp, remote, router, tls, &pki, stop).await });
    }
    while connections.join_next().await.is_some() {}
}

async fn connection(
    tcp: tokio::net::TcpStream,
    remote: SocketAddr,
    router: Router,
    tls: tokio_rustls::TlsAcceptor,
    pki: &Pki,
    stop: watch::Receiver<bool>,
) {
    let _ = tcp.set_nodelay(true);
    let mut first = [0u8; 1];
    let peeked = tokio::time::timeout(HANDSHAKE_TIMEOUT, tcp.peek(&mut first)).await;
    if !matches!(peeked, Ok(Ok(1))) {
        return;
    }
    if first[0] == 0x16 {
        let stream = match tokio::time::timeout(HANDSHAKE_TIMEOUT, tls.accept(tcp)).await {
            Ok(Ok(s)) => s,
            Ok(Err(e)) => {
                tracing::info!(%remote, error = %e, "TLS handshake refused");
                return;
            }
            Err(_) => return,
        };
        let peer = stream.get_ref().1.peer_certificates().and_then(|chain| {
            let chain: Vec<Vec<u8>> = chain.iter().map(|c| c.to_vec()).collect();
            let cert = crate::pki::peer_cert(chain.first()?)?;
            let issuer = pki.issuer_of(&chain)?;
            Some(VerifiedPeer { cert, issuer, chain: Arc::new(chain) })
        });
        http(TokioIo::new(stream), remote, Connection::Tls { peer }, router, stop).await;
    } else {
        let local = from_this_host(remote, tcp.local_addr().ok());
        http(TokioIo::new(tcp), remote, Connection::Plain { local }, router, stop).await;
    }
}

async fn http<I>(io: I, remote: SocketAddr, conn: Connection, router: Router, mut stop: watch::Receiver<bool>)
where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let service = hyper::service::service_fn(move |mut req: hyper::Request<hyper::body::Incoming>| {
        req.extensions_mut().insert(conn.clone());
        req.extensions_mut().insert(ConnectInfo(remote));
        let mut router = router.clone();
        async move { tower_service::Service::call(&mut router, req.map(axum::body::Body::new)).await }
    });
    let mut builder = auto::Builder::new(TokioExecutor::new());
    // A client that does not send a whole request head in time (a slow one, or a kept-alive
    // connection left idle) is closed: it holds no worker.
    builder.http1().timer(hyper_util::rt::TokioTimer::new()).header_read_timeout(crate::limits::HEADER_READ_TIMEOUT);
    let serving = builder.serve_connection_with_upgrades(io, service);
    tokio::pin!(serving);
    tokio::select! {
        _ = serving.as_mut() => {}
        _ = async { let _ = stop.wait_for(|s| *s).await; } => {
            serving.as_mut().graceful_shutdown();
            let _ = serving.await;
        }
    }
}

/// Whether plain HTTP may reach the public routes: on a loopback address, or when the
/// config says so (`plain_http_api`).
pub fn plain_api_allowed(listen: &str, configured: bool) -> bool {
    configured || listen.parse::<SocketAddr>().is_ok_and(|a| a.ip().is_loopback())
}

/// Whether a plain connection from `remote` to `local` comes from this host itself (see
/// the module header).
fn from_this_host(remote: SocketAddr, local: Option<SocketAddr>) -> bool {
    remote.ip().is_loopback() || local.is_some_and(|l| l.ip() == remote.ip())
}

/// The member whose verified, unrevoked certificate of a CA trusted now opened the
/// connection `req` came on, if one did (a public request another agent forwarded).
pub(crate) fn member_of(agent: &Agent, req: &Request) -> Option<PeerCert> {
    let Some(Connection::Tls { peer: Some(peer) }) = req.extensions().get::<Connection>() else {
        return None;
    };
    peer.refusal(agent).is_none().then(|| peer.cert.clone())
}

/// A refusal of a peer connection that the client should not use again (over HTTP/1.1
/// `Connection: close`; a client then reconnects with what it has now).
fn closing(e: ApiError) -> Response {
    let mut refusal = e.into_response();
    refusal.headers_mut().insert(axum::http::header::CONNECTION, axum::http::HeaderValue::from_static("close"));
    refusal
}

/// The rule of the port (see the module header), in front of every route.
pub async fn gate(AxState(agent): AxState<Arc<Agent>>, mut req: Request, next: Next) -> Response {
    let conn = req.extensions().get::<Connection>().cloned().unwrap_or(Connection::Plain { local: false });
    let path = req.uri().path();
    if path.starts_with("/internal/") {
        let join = path == "/internal/join";
        match conn {
            Connection::Plain { .. } => {
                return ApiError::new(
                    403,
                    "tls_required",
                    "the peer routes (/internal/*) take mutual TLS with a node certificate of this cluster only",
                )
                .into_response();
            }
            Connection::Tls { peer: None } if join => {}
            Connection::Tls { peer: None } => {
                // A client's pooled connection without a certificate must not be reused once
                // it has one (a joiner that just got its certificate): it is closed.
                return closing(ApiError::new(
                    401,
                    "no_certificate",
                    "the peer routes (/internal/*) need a node certificate of this cluster; join the node with \
                     `haven cluster join` to get one",
                ));
            }
            Connection::Tls { peer: Some(peer) } => {
                if let Some(refusal) = peer.refusal(&agent) {
                    return closing(refusal);
                }
                // Raft's routes bind each message to the node it speaks for (`SenderId`).
                req.extensions_mut().insert(haven_raft::network::SenderId(peer.cert.id));
                req.extensions_mut().insert(peer.cert);
            }
        }
    } else if matches!(conn, Connection::Plain { local: false }) && !agent.plain_api {
        return ApiError::new(
            403,
            "tls_required",
            format!(
                "this agent listens on {}, not a loopback address, so from other hosts it takes the API over \
                 HTTPS only: give the CLI the cluster's CA fingerprint (--ca-fingerprint, printed by `haven \
                 cluster init` and `haven cluster token create`); to found or join it, run the CLI on its own \
                 host (or set plain_http_api = true in its config, for a trusted network only)",
                agent.config.listen,
            ),
        )
        .into_response();
    }
    next.run(req).await
}

#[cfg(test)]
mod tests {
    use std::io::{Read, Write};

    use axum::routing::get;

    use super::*;

    #[test]
    fn plain_http_is_local_only_from_loopback_or_the_hosts_own_address() {
        let at = |s: &str| s.parse::<SocketAddr>().expect("an address");
        assert!(from_this_host(at("127.0.0.1:5000"), Some(at("127.0.0.1:7400"))));
        assert!(from_this_host(at("[::1]:5000"), Some(at("[::1]:7400"))));
        assert!(from_this_host(at("10.1.2.3:5000"), Some(at("10.1.2.3:7400"))), "the host's own address");
        assert!(!from_this_host(at("10.1.2.4:5000"), Some(at("10.1.2.3:7400"))), "another host");
        assert!(!from_this_host(at("10.1.2.4:5000"), None));
        assert!(plain_api_allowed("127.0.0.1:7400", false) && plain_api_allowed("10.0.0.1:7400", true));
        assert!(!plain_api_allowed("10.0.0.1:7400", false) && !plain_api_allowed("0.0.0.0:7400", false));
    }

    /// A client that sends half a request head is cut off after the header timeout
    /// (`limits::HEADER_READ_TIMEOUT`); one that sends a whole request over plain HTTP gets
    /// its answer and its address is known.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_slow_client_is_cut_off_and_a_quick_one_is_answered() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let app =
            Router::new().route("/", get(|ConnectInfo(a): ConnectInfo<SocketAddr>| async move { a.ip().to_string() }));
        let (stop_tx, stop) = tokio::sync::watch::channel(false);
        let dir = tempfile::tempdir().expect("temp dir");
        let pki = Arc::new(Pki::open(dir.path()).expect("pki"));
        let server = tokio::spawn(serve(listener, app, pki, stop));

        let quick = tokio::task::spawn_blocking(move || {
            let mut s = std::net::TcpStream::connect(addr).expect("connect");
            s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").expect("send");
            let mut out = String::new();
            let _ = s.read_to_string(&mut out);
            out
        });
        let answer = quick.await.expect("quick client");
        assert!(answer.starts_with("HTTP/1.1 200") && answer.ends_with("127.0.0.1"), "{answer}");

        let slow = tokio::task::spawn_blocking(move || {
            let mut s = std::net::TcpStream::connect(addr).expect("connect");
            s.set_read_timeout(Some(crate::limits::HEADER_READ_TIMEOUT * 3)).expect("timeout");
            s.write_all(b"GET / HTTP/1.1\r\nHost:").expect("send");
            let began = std::time::Instant::now();
            let mut buf = [0u8; 512];
            // The server closes (0 bytes, or a 408 then close) well before our own timeout.
            let mut total = 0;
            while let Ok(n) = s.read(&mut buf) {
                if n == 0 {
                    break;
                }
                total += n;
            }
            (began.elapsed(), total)
        });
        let (waited, _) = slow.await.expect("slow client");
        assert!(waited >= crate::limits::HEADER_READ_TIMEOUT - Duration::from_secs(1), "closed after {waited:?}");
        assert!(waited < crate::limits::HEADER_READ_TIMEOUT * 2, "the slow client held its connection for {waited:?}");
        let _ = stop_tx.send(true);
        server.await.expect("the accept loop ends");
    }
}
