//! Running a thorough health check (`HealthCheck`): a command that must exit 0, a TCP
//! port that must accept a connection, or an HTTP URL that must answer 2xx/3xx, each
//! within its timeout. The outcome is `Ok` or a [`CheckError`], whose message is a
//! one-line reason an operator understands.
//!
//! HTTP checks use the project's HTTP client (`reqwest`), set up for checking rather than
//! fetching: no proxy (a `HTTP_PROXY` in the agent's environment must not stand between
//! the agent and a local service), no redirects followed (a 3xx is an answer), a new
//! connection for every check (a pooled one could hide a service that stopped accepting),
//! and the body never read: a failure names the status, never what the service wrote.

use std::io;
use std::process::Stdio;
use std::sync::LazyLock;
use std::time::Duration;

use haven_model::{Dur, HealthCheck};
use tokio::net::TcpStream;
use tokio::process::Command;
use tokio::time::timeout;

use crate::process::{describe_exit, show_command};
use crate::sys;

/// Why a health check did not pass. The agent shows the message as the resource's
/// failure reason, after "health check failed: ".
#[derive(Debug, thiserror::Error)]
pub(crate) enum CheckError {
    #[error("check command `{command}` cannot be run: {source}")]
    CommandSpawn {
        command: String,
        #[source]
        source: io::Error,
    },
    /// `exit` is "exited with status 1"; `said` its last line of output, if any.
    #[error("check command `{command}` {exit}{}", said.as_deref().map(|s| format!(": {s}")).unwrap_or_default())]
    CommandFailed { command: String, exit: String, said: Option<String> },
    #[error("check command `{command}` could not be waited for: {source}")]
    CommandWait {
        command: String,
        #[source]
        source: io::Error,
    },
    #[error("check command `{command}` did not finish within {timeout}")]
    CommandTimedOut { command: String, timeout: Dur },
    #[error("TCP check: cannot connect to {address}: {source}")]
    TcpConnect {
        address: String,
        #[source]
        source: io::Error,
    },
    #[error("TCP check: connecting to {address} took longer than {timeout}")]
    TcpTimedOut { address: String, timeout: Dur },
    /// `status` is the version and status, e.g. "HTTP/1.1 503 Service Unavailable".
    #[error("HTTP check: GET {url} answered {status}")]
    HttpStatus { url: String, status: String },
    #[error("HTTP check: GET {url} failed: {reason}")]
    HttpFailed { url: String, reason: String },
    #[error("HTTP check: GET {url} got no answer within {timeout}")]
    HttpTimedOut { url: String, timeout: Dur },
}

/// Runs `check`, giving up after its own timeout or `limit`, whichever is shorter.
/// `command` builds the process for a `Command` check (same user, environment and working
/// directory as the resource).
pub(crate) async fn run(
    check: &HealthCheck,
    command: impl FnOnce(&[String]) -> Command,
    limit: Duration,
) -> Result<(), CheckError> {
    match check {
        HealthCheck::Command { argv, timeout: t } => run_command(argv, command(argv), within(*t, limit)).await,
        HealthCheck::Tcp { address, timeout: t } => {
            let t = within(*t, limit);
            match timeout(t, TcpStream::connect(address.as_str())).await {
                Ok(Ok(_)) => Ok(()),
                Ok(Err(source)) => Err(CheckError::TcpConnect { address: address.clone(), source }),
                Err(_) => Err(CheckError::TcpTimedOut { address: address.clone(), timeout: Dur(t) }),
            }
        }
        HealthCheck::Http { url, timeout: t } => http_get(url, within(*t, limit)).await,
    }
}

/// The check's own timeout, or what is left of `limit` if that is shorter, in whole
/// milliseconds so that messages show "750ms" rather than "749ms 982us 17ns".
fn within(own: Dur, limit: Duration) -> Duration {
    let limit_ms = u64::try_from(limit.as_millis()).unwrap_or(u64::MAX).max(1);
    Duration::from_millis(own.as_millis().min(limit_ms))
}

async fn run_command(argv: &[String], mut cmd: Command, t: Duration) -> Result<(), CheckError> {
    let command = show_command(argv);
    cmd.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped());
    // Its own group, so that a timed-out check is killed with everything it started.
    cmd.process_group(0).kill_on_drop(true);
    let child = match cmd.spawn() {
        Ok(child) => child,
        Err(source) => return Err(CheckError::CommandSpawn { command, source }),
    };
    let pid = child.id().and_then(|p| i32::try_from(p).ok());
    match timeout(t, child.wait_with_output()).await {
        Ok(Ok(out)) if out.status.success() => Ok(()),
        Ok(Ok(out)) => {
            let text =
                String::from_utf8_lossy(if out.stderr.is_empty() { &out.stdout } else { &out.stderr }).into_owned();
            let last = text.lines().rev().find(|l| !l.trim().is_empty()).unwrap_or("").trim().to_string();
            let said = (!last.is_empty()).then_some(last);
            Err(CheckError::CommandFailed { command, exit: describe_exit(out.status), said })
        }
        Ok(Err(source)) => Err(CheckError::CommandWait { command, source }),
        Err(_) => {
            if let Some(pid) = pid.filter(|p| *p > 1) {
                // The check is already killed on drop; this gets whatever it started.
                let _ = sys::kill(-pid, libc::SIGKILL);
            }
            Err(CheckError::CommandTimedOut { command, timeout: Dur(t) })
        }
    }
}

/// The client every HTTP check shares (see the module header for how it is set up).
static HTTP: LazyLock<Result<reqwest::Client, String>> = LazyLock::new(|| {
    // reqwest's TLS needs a process-wide rustls provider (ring; see the workspace's Cargo.toml).
    let _ = rustls::crypto::ring::default_provider().install_default();
    reqwest::Client::builder()
        .no_proxy()
        .redirect(reqwest::redirect::Policy::none())
        .pool_max_idle_per_host(0)
        .user_agent("haven-agent")
        .build()
        .map_err(|e| innermost(&e))
});

/// GETs `url` and accepts a 2xx or 3xx status within `t`.
async fn http_get(url: &str, t: Duration) -> Result<(), CheckError> {
    let failed = |reason: String| CheckError::HttpFailed { url: url.to_string(), reason };
    let parsed = http_url(url).map_err(|reason| failed(reason.into()))?;
    let address = format!("{}:{}", parsed.host_str().unwrap_or_default(), parsed.port_or_known_default().unwrap_or(80));
    let client = HTTP.as_ref().map_err(|e| failed(format!("cannot set up the HTTP client: {e}")))?;
    let response = match timeout(t, client.get(parsed).send()).await {
        Err(_) => return Err(CheckError::HttpTimedOut { url: url.to_string(), timeout: Dur(t) }),
        Ok(Err(e)) if e.is_timeout() => return Err(CheckError::HttpTimedOut { url: url.to_string(), timeout: Dur(t) }),
        Ok(Err(e)) if e.is_connect() => return Err(failed(format!("cannot connect to {address}: {}", innermost(&e)))),
        Ok(Err(e)) => return Err(failed(innermost(&e))),
        Ok(Ok(response)) => response,
    };
    let status = response.status();
    if (200..400).contains(&status.as_u16()) {
        return Ok(());
    }
    Err(CheckError::HttpStatus { url: url.to_string(), status: format!("{:?} {status}", response.version()) })
}

/// Checks that `url` is `http://host[:port][/path]` (no user info: a check sends no
/// credentials) and parses it.
fn http_url(url: &str) -> Result<reqwest::Url, &'static str> {
    let rest = url.strip_prefix("http://").ok_or("only http:// URLs are supported")?;
    let authority = &rest[..rest.find(['/', '?', '#']).unwrap_or(rest.len())];
    if authority.is_empty() || authority.contains('@') {
        return Err("the URL has no host (or has user info, which is not supported)");
    }
    reqwest::Url::parse(url).map_err(|_| "the URL does not parse; write it like http://127.0.0.1:8080/health")
}

/// The deepest cause of an error ("Connection refused (os error 111)"), which says more
/// than the outer layers ("error sending request").
fn innermost(e: &(dyn std::error::Error + 'static)) -> String {
    let mut cause = e;
    while let Some(next) = cause.source() {
        cause = next;
    }
    cause.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timeouts_are_capped_and_rounded() {
        assert_eq!(within(Dur::from_secs(5), Duration::from_micros(750_900)), Duration::from_millis(750));
        assert_eq!(within(Dur::from_secs(5), Duration::MAX), Duration::from_secs(5));
        assert_eq!(within(Dur::from_secs(5), Duration::ZERO), Duration::from_millis(1));
    }

    #[test]
    fn only_plain_http_urls_with_a_host() {
        let ok = |u: &str| http_url(u).map(|url| url.to_string());
        assert_eq!(ok("http://127.0.0.1:8080/health"), Ok("http://127.0.0.1:8080/health".into()));
        assert_eq!(ok("http://example.org"), Ok("http://example.org/".into()));
        assert_eq!(ok("http://[::1]:81/x?y=1"), Ok("http://[::1]:81/x?y=1".into()));
        assert_eq!(ok("http://h?q"), Ok("http://h/?q".into()));
        assert!(http_url("http:///x").is_err());
        assert!(http_url("http://user:pw@h/").is_err());
        assert!(http_url("https://h/").is_err());
        assert!(http_url("http://h:99999/").is_err());
    }

    /// A one-connection-at-a-time HTTP server on loopback that answers every request with
    /// `answer` (or nothing, if `None`) and hands each request head to the test.
    async fn server(answer: Option<&'static str>) -> (String, tokio::sync::mpsc::UnboundedReceiver<String>) {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr").to_string();
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((mut conn, _)) = listener.accept().await {
                let mut head = Vec::new();
                let mut buf = [0u8; 1024];
                while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < 16 * 1024 {
                    match conn.read(&mut buf).await {
                        Ok(0) | Err(_) => break,
                        Ok(n) => head.extend_from_slice(&buf[..n]),
                    }
                }
                let _ = tx.send(String::from_utf8_lossy(&head).into_owned());
                match answer {
                    Some(a) => {
                        let _ = conn.write_all(a.as_bytes()).await;
                    }
                    None => held.push(conn), // keep it open, say nothing
                }
            }
        });
        (addr, rx)
    }

    fn http(url: &str, ms: u64) -> HealthCheck {
        HealthCheck::Http { url: url.to_string(), timeout: Dur::from_millis(ms) }
    }

    async fn check(c: &HealthCheck) -> Result<(), String> {
        run(c, |argv| Command::new(&argv[0]), Duration::MAX).await.map_err(|e| e.to_string())
    }

    #[tokio::test]
    async fn http_2xx_and_3xx_pass_without_following_redirects() {
        let (addr, mut seen) = server(Some("HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")).await;
        assert_eq!(check(&http(&format!("http://{addr}/health?deep=1"), 2000)).await, Ok(()));
        let head = seen.recv().await.expect("a request");
        assert!(head.starts_with("GET /health?deep=1 HTTP/1.1\r\n"), "{head}");
        assert!(head.to_ascii_lowercase().contains(&format!("host: {addr}\r\n")), "{head}");
        assert!(head.contains("haven-agent"), "the user agent names Haven: {head}");

        // A redirect to a port nobody listens on: following it would fail the check.
        let (addr, mut seen) =
            server(Some("HTTP/1.1 302 Found\r\nLocation: http://127.0.0.1:1/\r\nContent-Length: 0\r\n\r\n")).await;
        assert_eq!(check(&http(&format!("http://{addr}/"), 2000)).await, Ok(()));
        seen.recv().await.expect("a request");
    }

    #[tokio::test]
    async fn http_errors_name_the_status_but_never_quote_the_body() {
        let (addr, _seen) =
            server(Some("HTTP/1.1 503 Service Unavailable\r\nContent-Length: 13\r\n\r\nsecret-token!")).await;
        let url = format!("http://{addr}/health");
        let e = check(&http(&url, 2000)).await.expect_err("503 fails");
        assert_eq!(e, format!("HTTP check: GET {url} answered HTTP/1.1 503 Service Unavailable"));

        let (addr, _seen) = server(Some("SSH-2.0-secret-banner\r\n")).await;
        let url = format!("http://{addr}/");
        let e = check(&http(&url, 2000)).await.expect_err("not HTTP");
        assert!(e.starts_with(&format!("HTTP check: GET {url} failed: ")), "{e}");
        assert!(!e.contains("secret") && !e.contains("SSH"), "the answer is not quoted: {e}");
    }

    #[tokio::test]
    async fn http_timeouts_and_refused_connections() {
        let (addr, _seen) = server(None).await;
        let url = format!("http://{addr}/");
        let started = std::time::Instant::now();
        let e = check(&http(&url, 300)).await.expect_err("no answer");
        assert_eq!(e, format!("HTTP check: GET {url} got no answer within 300ms"));
        assert!(started.elapsed() < Duration::from_secs(5), "the timeout holds: {:?}", started.elapsed());
        // The shorter of the check's timeout and the caller's limit.
        let e = run(&http(&url, 5000), |argv| Command::new(&argv[0]), Duration::from_millis(200)).await;
        assert_eq!(e.map_err(|e| e.to_string()), Err(format!("HTTP check: GET {url} got no answer within 200ms")));

        let port = std::net::TcpListener::bind("127.0.0.1:0").expect("bind").local_addr().expect("addr").port();
        let url = format!("http://127.0.0.1:{port}/");
        let e = check(&http(&url, 2000)).await.expect_err("nobody listens");
        assert!(e.starts_with(&format!("HTTP check: GET {url} failed: cannot connect to 127.0.0.1:{port}: ")), "{e}");
        assert!(e.to_lowercase().contains("refused"), "{e}");
    }

    #[tokio::test]
    async fn command_and_tcp_results_read_as_before() {
        let sh = |script: &str, ms: u64| HealthCheck::Command {
            argv: vec!["sh".into(), "-c".into(), script.into()],
            timeout: Dur::from_millis(ms),
        };
        let run_sh = |c: HealthCheck| async move {
            run(
                &c,
                |argv| {
                    let mut cmd = Command::new(&argv[0]);
                    cmd.args(&argv[1..]);
                    cmd
                },
                Duration::MAX,
            )
            .await
            .map_err(|e| e.to_string())
        };
        assert_eq!(run_sh(sh("exit 0", 2000)).await, Ok(()));
        assert_eq!(
            run_sh(sh("echo not ready; exit 3", 2000)).await,
            Err("check command `sh -c \"echo not ready; exit 3\"` exited with status 3: not ready".into())
        );
        assert_eq!(
            run_sh(sh("sleep 10", 200)).await,
            Err("check command `sh -c \"sleep 10\"` did not finish within 200ms".into())
        );
        let port = std::net::TcpListener::bind("127.0.0.1:0").expect("bind").local_addr().expect("addr").port();
        let tcp = HealthCheck::Tcp { address: format!("127.0.0.1:{port}"), timeout: Dur::from_millis(500) };
        let e = check(&tcp).await.expect_err("nobody listens");
        assert!(e.starts_with(&format!("TCP check: cannot connect to 127.0.0.1:{port}: ")), "{e}");
    }
}
