//! A small QMP (QEMU Machine Protocol) client over a unix socket: JSON lines, a greeting,
//! `qmp_capabilities`, then `execute` commands matched to their replies by `id`, with
//! asynchronous events skipped. Every read has a deadline, so a busy or hung QEMU makes a
//! call fail instead of blocking the agent.
//!
//! QEMU serves one QMP client at a time; callers connect per operation and drop the
//! connection right after, so they never keep QEMU's only QMP slot.

use std::path::Path;
use std::time::Duration;

use crate::time::instant_after;
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixStream;
use tokio::net::unix::{OwnedReadHalf, OwnedWriteHalf};
use tokio::time::{Instant, timeout_at};

/// Why a QMP exchange failed.
#[derive(Debug, thiserror::Error)]
pub(crate) enum QmpError {
    #[error("cannot connect to QMP socket {path}: {source}")]
    Connect { path: String, source: std::io::Error },
    #[error("QMP did not answer {what} within {waited:?} (QEMU busy or hung)")]
    Timeout { what: String, waited: Duration },
    #[error("QMP connection closed while waiting for {what}")]
    Closed { what: String },
    #[error("QMP I/O error: {0}")]
    Io(#[from] std::io::Error),
    #[error("QMP sent something unexpected: {0}")]
    Protocol(String),
    #[error("QMP command {command} failed: {class}: {desc}")]
    Command { command: String, class: String, desc: String },
}

pub(crate) struct Qmp {
    reader: BufReader<OwnedReadHalf>,
    writer: OwnedWriteHalf,
    next_id: u64,
}

impl Qmp {
    /// Connects, reads the greeting and leaves capabilities negotiation mode, all within
    /// `within`.
    pub async fn connect(path: &Path, within: Duration) -> Result<Qmp, QmpError> {
        let deadline = instant_after(Instant::now(), within);
        let stream = match timeout_at(deadline, UnixStream::connect(path)).await {
            Ok(Ok(s)) => s,
            Ok(Err(source)) => return Err(QmpError::Connect { path: path.display().to_string(), source }),
            Err(_) => return Err(QmpError::Timeout { what: "the connection".into(), waited: within }),
        };
        let (r, w) = stream.into_split();
        let mut qmp = Qmp { reader: BufReader::new(r), writer: w, next_id: 1 };
        let greeting = qmp.read_message(deadline, "the greeting", within).await?;
        if greeting.get("QMP").is_none() {
            return Err(QmpError::Protocol(format!("expected a greeting, got {greeting}")));
        }
        qmp.execute_until("qmp_capabilities", None, deadline, within).await?;
        Ok(qmp)
    }

    /// Runs `command` with `arguments`; returns its `return` value.
    pub async fn execute(
        &mut self,
        command: &str,
        arguments: Option<Value>,
        within: Duration,
    ) -> Result<Value, QmpError> {
        self.execute_until(command, arguments, instant_after(Instant::now(), within), within).await
    }

    async fn execute_until(
        &mut self,
        command: &str,
        arguments: Option<Value>,
        deadline: Instant,
        within: Duration,
    ) -> Result<Value, QmpError> {
        let id = self.next_id;
        self.next_id += 1;
        let mut msg = json!({"execute": command, "id": id});
        if let Some(args) = arguments {
            msg["arguments"] = args;
        }
        let mut line = msg.to_string();
        line.push('\n');
        match timeout_at(deadline, self.writer.write_all(line.as_bytes())).await {
            Ok(r) => r?,
            Err(_) => return Err(QmpError::Timeout { what: format!("sending {command}"), waited: within }),
        }
        loop {
            let reply = self.read_message(deadline, command, within).await?;
            if reply.get("event").is_some() {
                continue; // asynchronous event: not our answer
            }
            if reply.get("id").and_then(Value::as_u64) != Some(id) {
                continue; // a reply to someone else's command (a previous, abandoned one)
            }
            if let Some(ret) = reply.get("return") {
                return Ok(ret.clone());
            }
            if let Some(err) = reply.get("error") {
                let field = |k: &str| err.get(k).and_then(Value::as_str).unwrap_or("?").to_string();
                return Err(QmpError::Command { command: command.into(), class: field("class"), desc: field("desc") });
            }
            return Err(QmpError::Protocol(format!("reply without return or error: {reply}")));
        }
    }

    async fn read_message(&mut self, deadline: Instant, what: &str, within: Duration) -> Result<Value, QmpError> {
        let mut line = String::new();
        loop {
            line.clear();
            let n = match timeout_at(deadline, self.reader.read_line(&mut line)).await {
                Ok(r) => r?,
                Err(_) => return Err(QmpError::Timeout { what: what.into(), waited: within }),
            };
            if n == 0 {
                return Err(QmpError::Closed { what: what.into() });
            }
            if line.trim().is_empty() {
                continue;
            }
            return serde_json::from_str(line.trim())
                .map_err(|e| QmpError::Protocol(format!("not JSON ({e}): {:?}", line.trim())));
        }
    }
}

/// Connects, runs one command and disconnects.
pub(crate) async fn run_once(
    path: &Path,
    command: &str,
    arguments: Option<Value>,
    within: Duration,
) -> Result<Value, QmpError> {
    let start = Instant::now();
    let mut qmp = Qmp::connect(path, within).await?;
    let left = within.saturating_sub(start.elapsed()).max(Duration::from_millis(50));
    qmp.execute(command, arguments, left).await
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::net::UnixListener;

    /// A fake QEMU: greeting, events interleaved, replies echoing ids.
    #[tokio::test]
    async fn skips_events_and_matches_ids() {
        let dir = tempfile::tempdir().expect("tempdir");
        let sock = dir.path().join("qmp.sock");
        let listener = UnixListener::bind(&sock).expect("bind");
        let server = tokio::spawn(async move {
            let (s, _) = listener.accept().await.expect("accept");
            let (r, mut w) = s.into_split();
            let mut lines = BufReader::new(r).lines();
            w.write_all(b"{\"QMP\": {\"version\": {}, \"capabilities\": []}}\r\n").await.expect("greet");
            while let Ok(Some(line)) = lines.next_line().await {
                let msg: Value = serde_json::from_str(&line).expect("json");
                let id = msg["id"].clone();
                w.write_all(b"{\"event\": \"RESUME\", \"timestamp\": {}}\r\n").await.expect("event");
                let reply = match msg["execute"].as_str() {
                    Some("query-status") => json!({"return": {"status": "running", "running": true}, "id": id}),
                    Some("qmp_capabilities") => json!({"return": {}, "id": id}),
                    _ => json!({"error": {"class": "CommandNotFound", "desc": "nope"}, "id": id}),
                };
                w.write_all(format!("{reply}\r\n").as_bytes()).await.expect("reply");
            }
        });
        let mut qmp = Qmp::connect(&sock, Duration::from_secs(5)).await.expect("connect");
        let st = qmp.execute("query-status", None, Duration::from_secs(5)).await.expect("status");
        assert_eq!(st["status"], "running");
        let e = qmp.execute("bogus", None, Duration::from_secs(5)).await.unwrap_err();
        assert_eq!(e.to_string(), "QMP command bogus failed: CommandNotFound: nope");
        drop(qmp);
        server.await.expect("server");
    }
}
