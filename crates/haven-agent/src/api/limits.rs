//! Connection limits for the API's listener: a connection that does not send a whole
//! request head within [`HEADER_READ_TIMEOUT`] (a slow client, or an idle kept-alive
//! connection waiting for its next request) is closed, and every request carries the
//! client's address (`ConnectInfo<SocketAddr>`), which the API's audit and limits go by.
//!
//! `axum::serve` cannot set hyper's header timeout (it gives hyper no timer), so the
//! listener serves each accepted connection, plain or TLS, with [`serve_connection`];
//! [`serve`] is the accept loop for plain TCP. The request body's own limit is the
//! extractor's (`BODY_READ_TIMEOUT`).

use std::net::SocketAddr;
use std::time::Duration;

use axum::Router;
use axum::extract::ConnectInfo;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::io::{AsyncRead, AsyncWrite};

/// How long a client may take to send a request's head (its first, or its next on a
/// kept-alive connection).
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);

/// Serves one accepted connection `io` from `remote` with `app` until it ends, or until
/// `stop` turns true (then it finishes the request in progress and closes).
pub async fn serve_connection<I>(io: I, remote: SocketAddr, app: Router, mut stop: tokio::sync::watch::Receiver<bool>)
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let service = TowerToHyperService::new(app.layer(axum::Extension(ConnectInfo(remote))));
    let mut builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
    builder.http1().timer(TokioTimer::new()).header_read_timeout(HEADER_READ_TIMEOUT);
    let conn = builder.serve_connection_with_upgrades(TokioIo::new(io), service);
    tokio::pin!(conn);
    tokio::select! {
        r = conn.as_mut() => {
            if let Err(e) = r {
                tracing::debug!(client = %remote, error = %e, "API connection ended");
            }
            return;
        }
        _ = stop.wait_for(|s| *s) => conn.as_mut().graceful_shutdown(),
    }
    let _ = conn.await;
}

/// Accepts connections on `listener` and serves each with [`serve_connection`] until
/// `stop` turns true.
pub async fn serve(listener: tokio::net::TcpListener, app: Router, mut stop: tokio::sync::watch::Receiver<bool>) {
    loop {
        let accepted = tokio::select! {
            a = listener.accept() => a,
            _ = stop.wait_for(|s| *s) => return,
        };
        match accepted {
            Ok((tcp, remote)) => {
                let _ = tcp.set_nodelay(true);
                tokio::spawn(serve_connection(tcp, remote, app.clone(), stop.clone()));
            }
            // Out of file descriptors and the like: wait a little rather than spin.
            Err(e) => {
                tracing::warn!(error = %e, "cannot accept an API connection");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::io::{Read, Write};

    use axum::routing::get;

    use super::*;

    /// A client that sends half a request head is cut off after the timeout; one that
    /// sends a whole request gets its answer and its address is known.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_slow_client_is_cut_off_and_a_quick_one_is_answered() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let app =
            Router::new().route("/", get(|ConnectInfo(a): ConnectInfo<SocketAddr>| async move { a.ip().to_string() }));
        let (stop_tx, stop) = tokio::sync::watch::channel(false);
        let server = tokio::spawn(serve(listener, app, stop));

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
            s.set_read_timeout(Some(HEADER_READ_TIMEOUT * 3)).expect("timeout");
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
        assert!(waited >= HEADER_READ_TIMEOUT - Duration::from_secs(1), "closed after {waited:?}");
        assert!(waited < HEADER_READ_TIMEOUT * 2, "the slow client held its connection for {waited:?}");
        let _ = stop_tx.send(true);
        server.await.expect("the accept loop ends");
    }
}
