//! Running a thorough health check (`HealthCheck`): a command that must exit 0, a TCP
//! port that must accept a connection, or an HTTP URL that must answer 2xx/3xx, each
//! within its timeout. The outcome is `Ok` or a one-line reason an operator understands.

use std::process::Stdio;
use std::time::Duration;

use haven_model::{Dur, HealthCheck};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::process::Command;
use tokio::time::timeout;

use crate::process::{describe_exit, show_command};
use crate::sys;

/// Runs `check`, giving up after its own timeout or `limit`, whichever is shorter.
/// `command` builds the process for a `Command` check (same user, environment and working
/// directory as the resource).
pub(crate) async fn run(
    check: &HealthCheck,
    command: impl FnOnce(&[String]) -> Command,
    limit: Duration,
) -> Result<(), String> {
    match check {
        HealthCheck::Command { argv, timeout: t } => run_command(argv, command(argv), within(*t, limit)).await,
        HealthCheck::Tcp { address, timeout: t } => {
            let t = within(*t, limit);
            match timeout(t, TcpStream::connect(address.as_str())).await {
                Ok(Ok(_)) => Ok(()),
                Ok(Err(e)) => Err(format!("TCP check: cannot connect to {address}: {e}")),
                Err(_) => Err(format!("TCP check: connecting to {address} took longer than {}", Dur(t))),
            }
        }
        HealthCheck::Http { url, timeout: t } => {
            let t = within(*t, limit);
            match timeout(t, http_get_status(url)).await {
                Ok(Ok(status)) if (200..400).contains(&status.0) => Ok(()),
                Ok(Ok(status)) => Err(format!("HTTP check: GET {url} answered {}", status.1)),
                Ok(Err(e)) => Err(format!("HTTP check: GET {url} failed: {e}")),
                Err(_) => Err(format!("HTTP check: GET {url} got no answer within {}", Dur(t))),
            }
        }
    }
}

/// The check's own timeout, or what is left of `limit` if that is shorter, in whole
/// milliseconds so that messages show "750ms" rather than "749ms 982us 17ns".
fn within(own: Dur, limit: Duration) -> Duration {
    let limit_ms = u64::try_from(limit.as_millis()).unwrap_or(u64::MAX).max(1);
    Duration::from_millis(own.as_millis().min(limit_ms))
}

async fn run_command(argv: &[String], mut cmd: Command, t: Duration) -> Result<(), String> {
    let shown = show_command(argv);
    cmd.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped());
    // Its own group, so that a timed-out check is killed with everything it started.
    cmd.process_group(0).kill_on_drop(true);
    let child = cmd.spawn().map_err(|e| format!("check command `{shown}` cannot be run: {e}"))?;
    let pid = child.id().and_then(|p| i32::try_from(p).ok());
    match timeout(t, child.wait_with_output()).await {
        Ok(Ok(out)) if out.status.success() => Ok(()),
        Ok(Ok(out)) => {
            let text =
                String::from_utf8_lossy(if out.stderr.is_empty() { &out.stdout } else { &out.stderr }).into_owned();
            let last = text.lines().rev().find(|l| !l.trim().is_empty()).unwrap_or("").trim().to_string();
            let said = if last.is_empty() { String::new() } else { format!(": {last}") };
            Err(format!("check command `{shown}` {}{said}", describe_exit(out.status)))
        }
        Ok(Err(e)) => Err(format!("check command `{shown}` could not be waited for: {e}")),
        Err(_) => {
            if let Some(pid) = pid.filter(|p| *p > 1) {
                // The check is already killed on drop; this gets whatever it started.
                let _ = sys::kill(-pid, libc::SIGKILL);
            }
            Err(format!("check command `{shown}` did not finish within {}", Dur(t)))
        }
    }
}

/// Splits an `http://host[:port][/path]` URL into (address to connect, Host header, path).
fn split_url(url: &str) -> Result<(String, String, String), String> {
    let rest = url.strip_prefix("http://").ok_or_else(|| "only http:// URLs are supported".to_string())?;
    let (authority, path) = match rest.find(['/', '?']) {
        Some(i) if rest[i..].starts_with('/') => (&rest[..i], rest[i..].to_string()),
        Some(i) => (&rest[..i], format!("/{}", &rest[i..])),
        None => (rest, "/".to_string()),
    };
    if authority.is_empty() || authority.contains('@') {
        return Err("the URL has no host (or has user info, which is not supported)".into());
    }
    let has_port = match authority.rfind(']') {
        Some(close) => authority[close..].contains(':'), // [v6]:port
        None => authority.contains(':'),
    };
    let address = if has_port { authority.to_string() } else { format!("{authority}:80") };
    Ok((address, authority.to_string(), path))
}

/// A minimal HTTP/1.0 GET; returns the status code and the status line.
async fn http_get_status(url: &str) -> Result<(u16, String), String> {
    let (address, host, path) = split_url(url)?;
    let mut stream =
        TcpStream::connect(address.as_str()).await.map_err(|e| format!("cannot connect to {address}: {e}"))?;
    let request =
        format!("GET {path} HTTP/1.0\r\nHost: {host}\r\nUser-Agent: haven-agent\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.map_err(|e| format!("cannot send the request: {e}"))?;
    let mut head = Vec::with_capacity(256);
    let mut buf = [0u8; 256];
    while !head.windows(2).any(|w| w == b"\r\n") && head.len() < 4096 {
        let n = stream.read(&mut buf).await.map_err(|e| format!("cannot read the answer: {e}"))?;
        if n == 0 {
            break;
        }
        head.extend_from_slice(&buf[..n]);
    }
    let text = String::from_utf8_lossy(&head);
    let status_line = text.lines().next().unwrap_or("").trim().to_string();
    let mut parts = status_line.split_whitespace();
    match (parts.next(), parts.next().and_then(|c| c.parse::<u16>().ok())) {
        (Some(v), Some(code)) if v.starts_with("HTTP/") => Ok((code, status_line)),
        _ => Err(format!("the answer is not HTTP (it starts with {:?})", truncate(&status_line, 80))),
    }
}

fn truncate(s: &str, max: usize) -> &str {
    match s.char_indices().nth(max) {
        Some((i, _)) => &s[..i],
        None => s,
    }
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
    fn urls_split_into_address_host_and_path() {
        let s = |u: &str| split_url(u).map(|(a, h, p)| format!("{a} | {h} | {p}"));
        assert_eq!(s("http://127.0.0.1:8080/health"), Ok("127.0.0.1:8080 | 127.0.0.1:8080 | /health".into()));
        assert_eq!(s("http://example.org"), Ok("example.org:80 | example.org | /".into()));
        assert_eq!(s("http://[::1]:81/x?y=1"), Ok("[::1]:81 | [::1]:81 | /x?y=1".into()));
        assert_eq!(s("http://[::1]"), Ok("[::1]:80 | [::1] | /".into()));
        assert_eq!(s("http://h?q"), Ok("h:80 | h | /?q".into()));
        assert!(s("http:///x").is_err());
        assert!(s("https://h/").is_err());
    }
}
