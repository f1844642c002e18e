//! The guest heartbeat channel: QEMU's second serial port (the guest's ttyS1) is a unix
//! socket, `<run>/heartbeat.sock`. A watcher task stays connected to it, reads the guest's
//! `heartbeat <name> <boot_id> <seq>` lines, keeps the last one in memory (with a monotonic
//! time, for the thorough check) and in `<run>/heartbeat` (with a wall-clock time, for
//! status readers in other processes), and sends control lines (`freeze`, `thaw`,
//! `poweroff`) the other way.
//!
//! QEMU serves one client per socket; the watcher reconnects when the connection drops and
//! is aborted when dropped, which frees the socket for the next watcher.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use crate::time::instant_after;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixStream;
use tokio::net::unix::OwnedWriteHalf;
use tokio::task::JoinHandle;
use tokio::time::{Instant, sleep};

/// Between connection attempts.
const RECONNECT: Duration = Duration::from_millis(200);

/// Why a control line did not reach the guest.
#[derive(Debug, thiserror::Error)]
pub(crate) enum SendError {
    #[error("writing to the guest channel failed: {0}")]
    Write(#[source] std::io::Error),
    #[error("the guest channel did not take the line within {0:?}")]
    Stalled(Duration),
    #[error("the guest channel is not connected (waited {0:?})")]
    NotConnected(Duration),
}

/// The last heartbeat a guest sent.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Beat {
    pub at: Instant,
    pub seq: u64,
    pub boot_id: String,
}

#[derive(Debug)]
pub(crate) struct Seen {
    /// When the watcher started (the boot allowance counts from here).
    pub since: Instant,
    pub last: Option<Beat>,
}

/// A running watcher; dropping it stops the task and closes the connection.
pub(crate) struct Watcher {
    seen: Arc<Mutex<Seen>>,
    sender: Sender,
    task: JoinHandle<()>,
}

/// The sending side of a guest channel, usable without holding the watcher.
#[derive(Clone)]
pub(crate) struct Sender {
    writer: Arc<tokio::sync::Mutex<Option<OwnedWriteHalf>>>,
}

impl Drop for Watcher {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn lock(seen: &Mutex<Seen>) -> MutexGuard<'_, Seen> {
    seen.lock().unwrap_or_else(|p| p.into_inner())
}

/// `heartbeat <name> <boot_id> <seq>` → `(boot_id, seq)`.
pub(crate) fn parse_heartbeat(line: &str) -> Option<(String, u64)> {
    let mut f = line.split_whitespace();
    if f.next()? != "heartbeat" {
        return None;
    }
    let _name = f.next()?;
    let boot_id = f.next()?.to_string();
    let seq = f.next()?.parse().ok()?;
    Some((boot_id, seq))
}

/// The `<run>/heartbeat` file: `<epoch ms> <seq> <boot_id>`.
pub(crate) fn read_file(path: &Path) -> Option<(u64, u64, String)> {
    let text = std::fs::read_to_string(path).ok()?;
    let mut f = text.split_whitespace();
    Some((f.next()?.parse().ok()?, f.next()?.parse().ok()?, f.next()?.to_string()))
}

impl Watcher {
    pub fn spawn(socket: PathBuf, file: PathBuf) -> Watcher {
        let seen = Arc::new(Mutex::new(Seen { since: Instant::now(), last: None }));
        let writer = Arc::new(tokio::sync::Mutex::new(None));
        let task = tokio::spawn(watch(socket, file, seen.clone(), writer.clone()));
        Watcher { seen, sender: Sender { writer }, task }
    }

    pub fn since(&self) -> Instant {
        lock(&self.seen).since
    }

    pub fn last(&self) -> Option<Beat> {
        lock(&self.seen).last.clone()
    }

    pub fn sender(&self) -> Sender {
        self.sender.clone()
    }
}

impl Sender {
    /// Sends one line to the guest, waiting up to `within` for the channel to connect.
    pub async fn send(&self, line: &str, within: Duration) -> Result<(), SendError> {
        let deadline = instant_after(Instant::now(), within);
        loop {
            {
                let mut w = self.writer.lock().await;
                if let Some(writer) = w.as_mut() {
                    let mut bytes = line.as_bytes().to_vec();
                    bytes.push(b'\n');
                    return match tokio::time::timeout_at(deadline, writer.write_all(&bytes)).await {
                        Ok(Ok(())) => Ok(()),
                        Ok(Err(e)) => Err(SendError::Write(e)),
                        Err(_) => Err(SendError::Stalled(within)),
                    };
                }
            }
            if Instant::now() >= deadline {
                return Err(SendError::NotConnected(within));
            }
            sleep(Duration::from_millis(50)).await;
        }
    }
}

async fn watch(
    socket: PathBuf,
    file: PathBuf,
    seen: Arc<Mutex<Seen>>,
    writer: Arc<tokio::sync::Mutex<Option<OwnedWriteHalf>>>,
) {
    loop {
        let stream = match UnixStream::connect(&socket).await {
            Ok(s) => s,
            Err(_) => {
                sleep(RECONNECT).await;
                continue;
            }
        };
        let (r, w) = stream.into_split();
        *writer.lock().await = Some(w);
        let mut lines = BufReader::new(r).lines();
        while let Ok(Some(line)) = lines.next_line().await {
            let Some((boot_id, seq)) = parse_heartbeat(line.trim()) else { continue };
            lock(&seen).last = Some(Beat { at: Instant::now(), seq, boot_id: boot_id.clone() });
            let tmp = file.with_extension("tmp");
            let text = format!("{} {seq} {boot_id}\n", super::now_ms());
            if tokio::fs::write(&tmp, text).await.is_ok() {
                let _ = tokio::fs::rename(&tmp, &file).await;
            }
        }
        *writer.lock().await = None;
        sleep(RECONNECT).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_heartbeat_lines() {
        assert_eq!(parse_heartbeat("heartbeat t1 abc-123 7"), Some(("abc-123".into(), 7)));
        assert_eq!(parse_heartbeat("heartbeat t1 abc"), None);
        assert_eq!(parse_heartbeat("hello"), None);
    }
}
